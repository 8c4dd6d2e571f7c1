"""``python -m captioner job nocaps-images``: fetch the nocaps images from their per-image URLs (``coco_url``).

At most ``--workers`` transfers at once, each retried with back-off (:func:`pipeline.download.fetch_many`). Images
go to a hidden staging folder beside ``--out`` and the folder is renamed to ``--out`` once complete, so a killed or
failed run keeps what it fetched and the rerun fetches only the rest. Every URL that could not be fetched is listed
in ``--failures`` (JSON); any failure fails the command, naming them, unless ``--on-error skip``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from captioner.data.nocaps import load
from captioner.data.specs import NocapsImagesSpec
from pipeline.atomic import write_json
from pipeline.download import DownloadError, fetch_many
from pipeline.spec import add_spec_argument, spec_from_args


def fetch_images(nocaps_json: str | Path, out: str | Path, failures_path: str | Path, workers: int,
                 on_error: str, retries: int = 3, backoff: float = 2.0) -> tuple[int, list[tuple[str, str]]]:
    """Fetch every image of ``nocaps_json`` into ``out``; returns (images there, failures)."""
    images = load(nocaps_json, with_captions=False)
    without_url = [image.image_id for image in images if not image.url]
    if without_url:
        raise DownloadError(f"{nocaps_json}: image {without_url[0]} has no coco_url to fetch it from "
                            f"({len(without_url)} images without)")
    out = Path(out)
    staging = out.with_name(f".{out.name}.downloading")
    staging.mkdir(parents=True, exist_ok=True)
    failures = fetch_many([(image.url, staging / image.file_name) for image in images], workers=workers,
                          retries=retries, backoff=backoff)
    write_json(failures_path, [{"url": url, "reason": reason} for url, reason in failures])
    if failures and on_error != "skip":
        listed = "; ".join(url for url, _ in failures[:3])
        raise DownloadError(f"{len(failures)} of {len(images)} nocaps images could not be fetched ({listed}"
                            f"{' ...' if len(failures) > 3 else ''}; every one with its reason in {failures_path}); "
                            "rerun to retry them, or set evaluate.nocaps.on_error: skip to score without them")
    os.replace(staging, out)
    return len(images) - len(failures), failures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, NocapsImagesSpec)
    parser.add_argument("--nocaps-json", required=True)
    parser.add_argument("--out", required=True, help="folder of the images (renamed into place once complete)")
    parser.add_argument("--failures", required=True, help="JSON list of the URLs that could not be fetched")
    parser.add_argument("--retries", type=int, default=3)


def run(args) -> None:
    spec = spec_from_args(NocapsImagesSpec, args)
    fetched, failures = fetch_images(args.nocaps_json, args.out, args.failures, spec.workers, spec.on_error,
                                     args.retries)
    print(f"nocaps images -> {args.out}: {fetched} images"
          + (f"; {len(failures)} skipped (listed in {args.failures})" if failures else ""), file=sys.stderr)
