"""nocaps (Agrawal et al. 2019): the official annotation files, read into the evaluation set the DAG decodes and scores.

``python -m captioner job prepare-nocaps`` turns ``nocaps_val_4500_captions.json`` (or the test split's image info) into
``text/nocaps.json`` (per image: id, path, domain, reference captions) and an image manifest for the feature stage.

The official format is COCO-API style: ``images[]`` with ``id``, ``open_images_id``, ``file_name``, ``coco_url``,
``height``, ``width``; ``annotations[]`` with ``image_id`` and ``caption`` (10 per validation image; the test file has
none). UNCONFIRMED: the official sample on nocaps.org shows no domain field. Third-party loaders of the validation file
read ``images[i]["domain"]`` with the values ``in-domain``, ``near-domain`` and ``out-domain``; that is the key this
reader expects (``DOMAIN_KEY``), and a file without it is an error that says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from captioner.data.specs import NocapsSpec
from pipeline.atomic import write_json
from pipeline.errors import InputError
from pipeline.manifest import ManifestImage, write_manifest
from pipeline.spec import add_spec_argument, spec_from_args

DOMAIN_KEY = "domain"  # UNCONFIRMED from an official source (see the module docstring)
DOMAINS = ("in-domain", "near-domain", "out-domain")
SPLIT = "nocaps"  # the split name of the evaluation set in text/nocaps.json
FORMAT = "nocaps-eval-v1"


class NocapsFormatError(InputError):
    """The nocaps file is not in the official format (names the file, image or key)."""


@dataclass(frozen=True)
class NocapsImage:
    image_id: int
    file_name: str
    domain: str
    url: str | None  # coco_url: where the image can be fetched from (per-image download)
    captions: tuple[str, ...]


def load(path: str | Path, with_captions: bool = True) -> list[NocapsImage]:
    """The images of a nocaps file, in file order. ``with_captions``: every image must have at least one caption
    (the validation split); False for the test split's image info, which has none."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NocapsFormatError(f"{path}: nocaps file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NocapsFormatError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise NocapsFormatError(f"{path}: not a nocaps file (no 'images' list)")
    images: dict[int, dict] = {}
    for index, entry in enumerate(data["images"]):
        try:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
        except (KeyError, TypeError, ValueError):
            raise NocapsFormatError(f"{path}: images[{index}] needs an integer 'id' and a 'file_name'") from None
        if image_id in images:
            raise NocapsFormatError(f"{path}: duplicate image id {image_id} (images[{index}])")
        if DOMAIN_KEY not in entry:
            raise NocapsFormatError(
                f"{path}: image {image_id} has no {DOMAIN_KEY!r} key; this reader expects images[].{DOMAIN_KEY} with "
                f"one of {', '.join(DOMAINS)} (the key third-party loaders of nocaps_val_4500_captions.json read; "
                "UNCONFIRMED from an official source)")
        if entry[DOMAIN_KEY] not in DOMAINS:
            raise NocapsFormatError(f"{path}: image {image_id} has {DOMAIN_KEY} {entry[DOMAIN_KEY]!r}; expected one of "
                                    f"{', '.join(DOMAINS)}")
        images[image_id] = entry
    captions: dict[int, list[str]] = {image_id: [] for image_id in images}
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise NocapsFormatError(f"{path}: 'annotations' is not a list")
    for index, annotation in enumerate(annotations):
        try:
            image_id, caption = int(annotation["image_id"]), annotation["caption"]
        except (KeyError, TypeError, ValueError):
            raise NocapsFormatError(f"{path}: annotations[{index}] needs an integer 'image_id' and a 'caption'") from None
        if image_id not in captions:
            raise NocapsFormatError(f"{path}: annotations[{index}] is for image id {image_id}, which is not in images")
        if not isinstance(caption, str) or not caption.strip():
            raise NocapsFormatError(f"{path}: annotations[{index}] (image {image_id}) has an empty caption")
        captions[image_id].append(caption)
    if with_captions:
        bare = [image_id for image_id, refs in captions.items() if not refs]
        if bare:
            raise NocapsFormatError(f"{path}: image {bare[0]} has no caption to score against ({len(bare)} images "
                                    "without); a test-split file has none: use split: test")
    return [NocapsImage(image_id, entry["file_name"], entry[DOMAIN_KEY], entry.get("coco_url"),
                        tuple(captions[image_id])) for image_id, entry in images.items()]


def prepare(nocaps_json: str | Path, captions_out: str | Path, manifest_out: str | Path, split: str,
            image_root: str | Path | None = None, on_missing: str = "fail") -> Counter:
    """Write the evaluation set (``text/nocaps.json``) and its image manifest; returns the image count per domain.

    With ``image_root``, an image whose file is not there fails the run, naming it, or with ``on_missing="skip"`` is
    left out of the set (and counted in it): the images a download could not fetch.
    """
    images = load(nocaps_json, with_captions=split == "val")
    missing = [image for image in images if image_root is not None and not (Path(image_root) / image.file_name).is_file()]
    if missing and on_missing != "skip":
        raise InputError(f"{Path(image_root) / missing[0].file_name}: nocaps image {missing[0].image_id} is missing "
                         f"({len(missing)} of {len(images)} images are); set evaluate.nocaps.on_error: skip to score "
                         "without them")
    images = [image for image in images if image not in missing]
    items = [{"image_id": image.image_id, "path": image.file_name, "domain": image.domain,
              "refs": list(image.captions)} for image in images]
    counts = Counter(image.domain for image in images)
    # "test" in the manifest: an evaluation-only set (the feature stage never trains on it)
    write_manifest(manifest_out, (ManifestImage(image.image_id, image.file_name, "test") for image in images))
    write_json(captions_out, {"format": FORMAT, "nocaps_split": split, "domain_key": DOMAIN_KEY,
                              "domains": {domain: counts.get(domain, 0) for domain in DOMAINS},
                              "missing_images": [image.image_id for image in missing],
                              "splits": {SPLIT: items}}, indent=None)
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, NocapsSpec)
    parser.add_argument("--nocaps-json", required=True, help="nocaps_val_4500_captions.json (or the test image info)")
    parser.add_argument("--captions", required=True, help="the evaluation set to write (text/nocaps.json)")
    parser.add_argument("--manifest", required=True, help="the image manifest to write (text/nocaps_images.json)")
    parser.add_argument("--image-root", help="check that every image is in this folder")


def run(args) -> None:
    spec = spec_from_args(NocapsSpec, args)
    counts = prepare(args.nocaps_json, args.captions, args.manifest, spec.split, args.image_root, spec.on_error)
    print(f"nocaps {spec.split}: {sum(counts.values())} images ("
          + ", ".join(f"{domain} {counts.get(domain, 0)}" for domain in DOMAINS) + f") -> {args.captions}",
          file=sys.stderr)
