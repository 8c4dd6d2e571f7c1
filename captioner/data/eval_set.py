"""``python -m captioner job prepare-eval-set``: one split of a Karpathy-format dataset as an evaluation set
(``evaluate.sets``): ``text/sets/<name>.json`` (per image: id, path, reference captions, under split ``<name>``, as
decoding and scoring read it) and the image manifest the feature stage extracts.

The references stay raw (pycocoevalcap tokenises them); nothing is encoded, since the models keep their own
vocabulary. Every image must be in ``--image-root``: a missing one fails the job, naming the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from captioner.data import karpathy
from captioner.data.specs import KarpathySplit
from pipeline.atomic import write_json
from pipeline.errors import InputError
from pipeline.manifest import ManifestImage, write_manifest

FORMAT = "evaluation set (Karpathy split)"


def prepare(karpathy_json: str | Path, name: str, split: str, captions_out: str | Path, manifest_out: str | Path,
            image_root: str | Path | None = None) -> int:
    """Write the set's captions and manifest; returns its image count."""
    dataset = karpathy.load(karpathy_json)
    images = dataset.split(split)
    if not images:
        found = sorted({image.split for image in dataset.images})
        raise InputError(f"{karpathy_json}: no {split} images (its splits: {', '.join(found)}); set "
                         f"evaluate.sets.{name}.split")
    empty = [image for image in images if not image.raw]
    if empty:
        raise InputError(f"{karpathy_json}: {split} image {empty[0].image_id} has no non-empty caption to score against")
    if image_root is not None:
        missing = [image for image in images if not (Path(image_root) / image.path).is_file()]
        if missing:
            raise InputError(f"{Path(image_root) / missing[0].path}: image {missing[0].image_id} of evaluation set "
                             f"{name} is missing ({len(missing)} of {len(images)} images are); check "
                             f"evaluate.sets.{name}.image_root")
    items = [{"image_id": image.image_id, "path": image.path, "refs": list(image.raw)} for image in images]
    # "test" in the manifest: an evaluation-only set (the feature stage never trains on it)
    write_manifest(manifest_out, (ManifestImage(image.image_id, image.path, "test") for image in images))
    write_json(captions_out, {"format": FORMAT, "source": str(karpathy_json), "source_split": split,
                              "splits": {name: items}}, indent=None)
    return len(images)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--karpathy-json", required=True)
    parser.add_argument("--name", required=True, help="the set's name (evaluate.sets): the split name decoding reads")
    parser.add_argument("--split", required=True, choices=get_args(KarpathySplit), help="the dataset's split to use")
    parser.add_argument("--captions", required=True, help="the evaluation set to write (text/sets/<name>.json)")
    parser.add_argument("--manifest", required=True, help="the image manifest to write (text/sets/<name>_images.json)")
    parser.add_argument("--image-root", help="check that every image is in this folder")


def run(args) -> None:
    count = prepare(args.karpathy_json, args.name, args.split, args.captions, args.manifest, args.image_root)
    print(f"evaluation set {args.name}: {count} {args.split} images of {args.karpathy_json} -> {args.captions}",
          file=sys.stderr)
