"""``python -m captioner job split-manifest``: the part of the image manifest whose images are in some splits.

An evaluation-only run (released weights, nothing trained) extracts features for the scored splits alone: 5,000
test images of COCO's 123,287. When a later run trains, the rest of the images are extracted on their own and joined
with the scored part (rule complete_features), so no image is extracted twice.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import InputError
from pipeline.manifest import SPLITS, read_manifest, write_manifest


def split_manifest(manifest: str, out: str, splits: list[str], exclude: bool = False) -> int:
    """Write the images of ``manifest`` in ``splits`` (with ``exclude``: in none of them) to ``out``; their count."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise InputError(f"--splits: {unknown[0]!r} is not one of {', '.join(SPLITS)}")
    images = [image for image in read_manifest(manifest) if (image.split in splits) != exclude]
    if not images:
        raise InputError(f"{manifest}: no images {'outside' if exclude else 'in'} the splits {', '.join(splits)}")
    write_manifest(out, images)
    return len(images)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="the run's image manifest (job image-manifest)")
    parser.add_argument("--splits", nargs="+", required=True, choices=SPLITS)
    parser.add_argument("--exclude", action="store_true", help="keep the images in none of --splits instead")
    parser.add_argument("--out", required=True)


def run(args) -> None:
    count = split_manifest(args.manifest, args.out, args.splits, args.exclude)
    which = "outside" if args.exclude else "in"
    print(f"image manifest -> {args.out}: {count} images {which} {', '.join(args.splits)}", file=sys.stderr)
