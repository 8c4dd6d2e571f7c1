"""Random batch reads from the feature store vs the M² reference layout, on the same synthetic data.

The reference layout is one HDF5 dataset per image (``<id>_features``) in one file that its loader opens
for every sample. Ours: one (N, L, D) array chunked per image, opened once per process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_results  # noqa: E402
from features.store.reader import FeatureStore
from features.store.writer import StoreWriter  # noqa: E402


def reference_batch(path: Path, ids) -> np.ndarray:
    out = []
    for image_id in ids:  # the reference opens the file for every sample
        with h5py.File(path, "r") as handle:
            out.append(handle[f"{image_id}_features"][()])
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ids = np.arange(args.images) + 1000
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        tmp = Path(tmp)
        reference = tmp / "coco_detections.hdf5"
        with h5py.File(reference, "w") as handle:
            for image_id in ids:
                handle[f"{image_id}_features"] = rng.standard_normal((args.boxes, args.dim), dtype=np.float32)
        stores = {}
        for name, suffix, compression in (("HDF5", ".h5", None), ("HDF5 + lzf", ".h5", "lzf"),
                                          ("zarr v3", ".zarr", None), ("zarr v3 + zstd", ".zarr", "zstd")):
            path = tmp / f"store_{len(stores)}{suffix}"
            with StoreWriter(path, "regions", ids, args.boxes, args.dim, "float16", compression) as writer:
                for start in range(0, len(ids), 100):
                    chunk = ids[start:start + 100]
                    with h5py.File(reference, "r") as handle:
                        feats = np.stack([handle[f"{i}_features"][()] for i in chunk])
                    writer.write(chunk, feats, np.full(len(chunk), args.boxes), np.zeros((len(chunk), args.boxes, 4)),
                                 np.zeros((len(chunk), 2)))
            size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
            stores[name] = (path, size)
        batches = [rng.choice(ids, size=args.batch, replace=False) for _ in range(args.batches)]
        timings = {}
        for batch in batches:  # warm-up pass: every layout is then read from a warm page cache
            reference_batch(reference, batch)
        start = time.perf_counter()
        for batch in batches:
            reference_batch(reference, batch)
        timings["M² reference layout (file opened per sample)"] = (time.perf_counter() - start,
                                                                   reference.stat().st_size)
        for name, (path, size) in stores.items():
            store = FeatureStore(path)
            for batch in batches:  # opened once per process, as in a DataLoader worker; warm-up pass
                store.gather(batch)
            start = time.perf_counter()
            for batch in batches:
                store.gather(batch)
            timings[f"ours, {name}, fp16"] = (time.perf_counter() - start, size)
    base = timings["M² reference layout (file opened per sample)"][0]
    lines = [f"{args.images} images x {args.boxes} x {args.dim} features, {args.batches} random batches of "
             f"{args.batch} ids, each layout timed after one untimed pass over the same batches (warm page cache). "
             "The reference returns float32 arrays; ours returns the stored float16 (converted on the device).", "",
             "| layout | ms / batch | images/s | speed-up | size on disk |", "|---|---:|---:|---:|---:|"]
    for name, (seconds, size) in timings.items():
        per_batch = 1000 * seconds / args.batches
        lines.append(f"| {name} | {per_batch:.1f} | {args.batch * args.batches / seconds:,.0f} | "
                     f"{base / seconds:.1f}x | {size / 1e6:,.0f} MB |")
    append_results("Feature store: random batch reads", lines)


if __name__ == "__main__":
    main()
