"""``python -m captioner job image-manifest``: the image list of a Karpathy JSON (id, path, split) for the feature stage.

A separate job from text preparation: editing the caption code re-prepares the text, never the features.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.data import karpathy
from pipeline.manifest import ManifestImage, write_manifest


def write_from_karpathy(karpathy_json: str | Path, out: str | Path) -> int:
    """Write the manifest of a Karpathy JSON; returns the number of images."""
    images = karpathy.load(karpathy_json).images
    write_manifest(out, (ManifestImage(image.image_id, image.path, image.split) for image in images))
    return len(images)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--karpathy-json", required=True)
    parser.add_argument("--out", required=True, help="manifest JSON to write")


def run(args) -> None:
    count = write_from_karpathy(args.karpathy_json, args.out)
    print(f"image manifest -> {args.out}: {count} images", file=sys.stderr)
