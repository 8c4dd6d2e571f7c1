"""The image manifest: which images a run has (id, path relative to the image root, split).

The data stage writes it from the Karpathy JSON (``python -m captioner job image-manifest``); the feature stage reads
it, so it never parses captions, and an edit of the caption code never touches the extracted features.

Format (JSON): ``{"format": "image-manifest-v1", "images": [{"image_id": 9, "path": "val2014/x.jpg",
"split": "train"}, ...]}``; splits are ``train`` (Karpathy's restval folded in), ``val`` and ``test``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from pipeline.atomic import write_json
from pipeline.errors import InputError

MANIFEST_FORMAT = "image-manifest-v1"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestImage:
    image_id: int
    path: str
    split: str


def write_manifest(path: str | Path, images: Iterable[ManifestImage]) -> None:
    write_json(path, {"format": MANIFEST_FORMAT, "images": [asdict(image) for image in images]}, indent=None)


def read_manifest(path: str | Path) -> list[ManifestImage]:
    """The manifest's images in order; a malformed file raises one ``InputError`` naming the file and entry."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: image manifest not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("images"), list):
        raise InputError(f"{path}: not an image manifest ({MANIFEST_FORMAT}); make it with "
                         "`python -m captioner job image-manifest`")
    images, seen = [], set()
    for index, entry in enumerate(data["images"]):
        try:
            image = ManifestImage(int(entry["image_id"]), str(entry["path"]), str(entry["split"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: images[{index}] needs an integer image_id, a path and a split") from None
        if image.split not in SPLITS:
            raise InputError(f"{path}: images[{index}] has split {image.split!r}; expected one of {SPLITS}")
        if image.image_id in seen:
            raise InputError(f"{path}: duplicate image id {image.image_id}")
        seen.add(image.image_id)
        images.append(image)
    return images
