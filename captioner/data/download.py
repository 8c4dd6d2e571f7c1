"""``python -m captioner download``: fetch one file, resuming an interrupted transfer, and verify it
(:mod:`pipeline.download`). With ``--lock`` and no ``--sha256`` the file is pinned on first download.
torchvision's weights: ``python -m captioner torchvision-weights`` (it needs torch)."""

from __future__ import annotations

import argparse

from pipeline.download import fetch, fetch_pinned


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True, help="final path (the transfer goes to a hidden .NAME.part beside it)")
    parser.add_argument("--size", type=int, help="expected size in bytes")
    parser.add_argument("--sha256", help="expected SHA-256 (published)")
    parser.add_argument("--lock", help="no published checksum: pin the first download's SHA-256 in this JSON file")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--extra-space", type=int, default=0, help="bytes needed beside the file (its unpacked size)")


def run(args) -> None:
    options = dict(size=args.size, retries=args.retries, extra_space=args.extra_space)
    if args.lock and not args.sha256:
        fetch_pinned(args.url, args.out, args.lock, **options)
    else:
        fetch(args.url, args.out, sha256=args.sha256, **options)
