"""Grid-feature cost per backbone beside the papers' extractors: images/s of the extractor itself (the image
loading and preprocessing of its ``load``, then the forward of a batch), random-init weights, on the demo's JPEGs.
The papers' grid (torchvision ResNet-101 at 448 px) and bottom-up detector (R101, 600/1000 px) run through the same
contract in the same process, so the ratios hold on this machine whatever its speed."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_results  # noqa: E402
from captioner.data import karpathy  # noqa: E402
from captioner.data.demo import generate  # noqa: E402
from features.config import ExtractorConfig  # noqa: E402
from features.extract import build_extractor  # noqa: E402
from features.images import load_rgb  # noqa: E402
from features.config import TimmGridConfig  # noqa: E402
from features.timm_grid import build  # noqa: E402

PAPERS = {  # the extractors of the two papers, as config/coco.yaml runs them
    "torchvision resnet101 @448 (SAT's grid)": dict(kind="grid", backbone="resnet101", image_size=448, grid_size=14),
    "bottom-up detector r101 600/1000 (M²'s regions)": dict(kind="regions", boxes="detector", backbone="resnet101",
                                                           min_size=600, max_size=1000, max_boxes=100),
}
TIMM = {  # timm backbones: the CLIP towers of X-modaler's table, and newer ImageNet nets
    "timm vit_base_patch16_clip_224.openai @224": ("vit_base_patch16_clip_224.openai", 224),
    "timm vit_base_patch16_clip_224.openai @448": ("vit_base_patch16_clip_224.openai", 448),
    "timm resnet101_clip.openai @448": ("resnet101_clip.openai", 448),
    "timm resnet50_clip.openai @224": ("resnet50_clip.openai", 224),
    "timm convnext_tiny.fb_in22k_ft_in1k @224": ("convnext_tiny.fb_in22k_ft_in1k", 224),
}


def throughput(extractor, paths: list[Path], batch_size: int) -> float:
    """Images/s of load (decode + the extractor's preprocessing) + collate + forward over ``paths``."""
    with torch.inference_mode():
        extractor(extractor.collate([extractor.load(load_rgb(paths[0]), 0)]))  # warm-up (first-call allocations)
        start = time.perf_counter()
        for first in range(0, len(paths), batch_size):
            items = [{"key": i, **extractor.load(load_rgb(p), i)} for i, p in enumerate(paths[first:first + batch_size])]
            extractor(extractor.collate(items))
        return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=[*PAPERS, *TIMM])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = ["| extractor | grid (rows x dim) | images/s | vs the bottom-up detector |", "|---|---|---:|---:|"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "demo", seed=0, num_train=max(args.images - 2, 1), num_val=1, num_test=1)
        data = karpathy.load(Path(tmp) / "demo/dataset_coco.json")
        paths = [Path(tmp) / "demo" / image.path for image in data.images][: args.images]
        for case in args.cases:
            if case in PAPERS:
                extractor = build_extractor(ExtractorConfig(**PAPERS[case]), device)
            else:
                name, size = TIMM[case]
                extractor = build(TimmGridConfig(model=name, weights="none", image_size=size), device)
            speed = throughput(extractor, paths, args.batch_size)
            results[case] = (f"{extractor.rows} x {extractor.feature_dim}", speed)
            print(f"{case}: {speed:.2f} img/s", flush=True)
    detector = results.get("bottom-up detector r101 600/1000 (M²'s regions)", (None, None))[1]
    for case, (shape, speed) in results.items():
        ratio = f"{speed / detector:.1f}x" if detector else "–"
        rows.append(f"| {case} | {shape} | {speed:.2f} | {ratio} |")
    append_results("Grid features per backbone beside the papers' extractors (CPU, random-init weights)", [
        f"{args.images} demo JPEGs (256 px), batch {args.batch_size}, {args.threads} threads, one process; images/s "
        "of decode + the extractor's own preprocessing + forward (no store writing)", "", *rows])


if __name__ == "__main__":
    main()
