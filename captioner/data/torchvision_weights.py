"""``python -m captioner torchvision-weights``: torchvision's weights of a backbone, with torch.hub's own hash check
(:mod:`pipeline.hub_download`)."""

from __future__ import annotations

import argparse

from pipeline.hub_download import fetch_torchvision_weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, metavar="BACKBONE:WEIGHTS", help="e.g. resnet101:IMAGENET1K_V1")
    parser.add_argument("--out", required=True)
    parser.add_argument("--retries", type=int, default=5)


def run(args) -> None:
    backbone, _, name = args.weights.partition(":")
    fetch_torchvision_weights(backbone, name, args.out, retries=args.retries)
