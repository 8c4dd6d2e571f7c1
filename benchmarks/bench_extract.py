"""Feature-extraction throughput (images/s) on the demo images, with the image-decode share of the time."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_results  # noqa: E402
from captioner.data import karpathy  # noqa: E402
from captioner.data.demo import generate  # noqa: E402
from captioner.data.manifest import write_from_karpathy  # noqa: E402
from features.boxes import load_given_boxes  # noqa: E402
from features.config import ExtractorConfig  # noqa: E402
from features.extract import ImageDataset, RunOptions, build_extractor, extract  # noqa: E402
from pipeline.device import pick_device  # noqa: E402

CASES = {
    "grid-r101-448": dict(kind="grid", backbone="resnet101", image_size=448, grid_size=14),
    "grid-r18-256": dict(kind="grid", backbone="resnet18", image_size=256, grid_size=8),
    "regions-given-r101-600": dict(kind="regions", backbone="resnet101", min_size=600, max_size=1000, max_boxes=100),
    "regions-detector-r101-600": dict(kind="regions", boxes="detector", backbone="resnet101", min_size=600,
                                      max_size=1000, max_boxes=100),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    rows = ["| case | images | images/s | decode+resize share |", "|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        num_train = max(args.images - 2, 1)
        generate(tmp / "demo", seed=0, num_train=num_train, num_val=1, num_test=1)
        items = [(i.image_id, tmp / "demo" / i.path) for i in karpathy.load(tmp / "demo/dataset_coco.json").images]
        boxes = load_given_boxes(tmp / "demo/boxes.json")
        write_from_karpathy(tmp / "demo/dataset_coco.json", tmp / "demo/images.json")
        for case in args.cases:
            config = ExtractorConfig(**CASES[case])
            options = RunOptions(batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                                 dtype=args.dtype)
            # decode share: the same loading/resizing work done alone, in this process
            dataset = ImageDataset(items, build_extractor(config, pick_device(args.device), boxes))
            start = time.perf_counter()
            for start_index in range(0, len(items), args.batch_size):
                dataset.collate([dataset[i] for i in range(start_index, min(start_index + args.batch_size,
                                                                             len(items)))])
            decode_s = time.perf_counter() - start
            start = time.perf_counter()
            extract(tmp / "demo/images.json", tmp / "demo", tmp / f"{case}.h5", config, options,
                    boxes_json=tmp / "demo/boxes.json")
            total_s = time.perf_counter() - start
            rows.append(f"| {case} | {len(items)} | {len(items) / total_s:.2f} | {100 * decode_s / total_s:.0f}% |")
            print(rows[-1], flush=True)
    append_results("Feature extraction throughput (random-init weights, 256x256 demo JPEGs)", [
        f"batch {args.batch_size}, {args.num_workers} loader workers, device {args.device}, store {args.dtype}; "
        "images/s over the whole `extract()` call (model build and store writing included); decode share = time "
        "to load+convert+resize the same images in one process / total", "", *rows])


if __name__ == "__main__":
    main()
