"""``python -m captioner unpack``: unpack one entry of a zip atomically, checking its file count
(:func:`pipeline.download.unpack_zip`): ``train2014/`` of COCO's ``train2014.zip``, ``dataset_coco.json`` of
Karpathy's ``caption_datasets.zip``."""

from __future__ import annotations

import argparse
import sys

from pipeline.download import unpack_zip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zip", required=True)
    parser.add_argument("--entry", required=True, help="the zip's top-level folder or file to unpack")
    parser.add_argument("--out", required=True, help="where the entry goes (renamed there once complete)")
    parser.add_argument("--expect-files", type=int, help="the number of files the entry must hold")


def run(args) -> None:
    expected = {args.entry: args.expect_files} if args.expect_files is not None else None
    counts = unpack_zip(args.zip, args.out, expected, top=args.entry)
    print(f"{args.out}: {counts[args.entry]:,} files", file=sys.stderr)
