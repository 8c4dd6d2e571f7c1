"""Random batch reads from the feature store vs the M² reference layout, on the same synthetic data.

The reference layout is one HDF5 dataset per image (``<id>_features``) in one file that its loader opens
for every sample. Ours: one (N, L, D) array chunked per image, opened once per process. zarr is timed both
ways: the reader's direct chunk-file reads (what training uses) and zarr's own orthogonal selection, plus
layouts the writer does not produce (the sharding codec, more zarr concurrency), read by zarr.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import zarr

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


def disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())


def drop_cache(path: Path) -> None:
    """Evict a store's pages from the page cache (clean after the sync) for the cold pass."""
    os.sync()
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(read, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        read(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--shard", type=int, default=64, help="images per shard of the sharded zarr layout")
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
            stores[name] = (path, disk_size(path))
        # the sharding codec: one file per shard of images, one inner chunk per image (the writer does not make it)
        source = zarr.open_array(str(stores["zarr v3"][0] / "features"), mode="r")
        sharded_path = tmp / "sharded.zarr"
        sharded = zarr.create_array(str(sharded_path), shape=source.shape, dtype=source.dtype, fill_value=0,
                                    chunks=(1, *source.shape[1:]), shards=(args.shard, *source.shape[1:]),
                                    compressors=None)
        for start in range(0, len(ids), args.shard):
            sharded[start:start + args.shard] = source[start:start + args.shard]
        batches = [rng.choice(ids, size=args.batch, replace=False) for _ in range(args.batches)]
        cold_batches = [rng.choice(ids, size=args.batch, replace=False) for _ in range(args.batches)]
        timings = {}

        def time_layout(name, files, read, size):
            drop_cache(files)
            cold = timed(read, cold_batches)  # first reads after dropping the page cache (ids repeat across batches)
            timed(read, batches)  # warm-up pass: every layout is then read from a warm page cache
            timings[name] = (timed(read, batches), size, cold)

        time_layout("M² reference layout (file opened per sample)", reference,
                    lambda batch: reference_batch(reference, batch), reference.stat().st_size)
        for name, (path, size) in stores.items():
            direct = FeatureStore(path)  # opened once per process, as in a DataLoader worker
            time_layout(f"ours, {name}, fp16" + (" (direct chunk reads)" if direct._direct is not None else ""),
                        path, direct.gather, size)
            if path.suffix == ".zarr":
                through_zarr = FeatureStore(path, direct_reads=False)
                time_layout(f"ours, {name}, fp16, read by zarr (`oindex`)", path, through_zarr.gather, size)
                with zarr.config.set({"async.concurrency": 64}):
                    time_layout(f"ours, {name}, fp16, read by zarr, async.concurrency 64 (default 10)", path,
                                through_zarr.gather, size)
        sharded = zarr.open_array(str(sharded_path), mode="r")
        row_of = {int(i): r for r, i in enumerate(ids)}

        def sharded_batch(batch):  # the features array only (the store's other arrays are in RAM anyway)
            rows = np.array([row_of[int(i)] for i in batch])
            unique, inverse = np.unique(rows, return_inverse=True)
            return np.asarray(sharded.oindex[unique])[inverse]

        time_layout(f"zarr v3 sharding codec ({args.shard} images a shard), fp16, read by zarr", sharded_path,
                    sharded_batch, disk_size(sharded_path))
    base, base_cold = timings["M² reference layout (file opened per sample)"][0::2]
    lines = [f"{args.images} images x {args.boxes} x {args.dim} features, {args.batches} random batches of "
             f"{args.batch} ids, each layout timed after one untimed pass over the same batches (warm page cache). "
             "The reference returns float32 arrays; ours returns the stored float16 (converted on the device). "
             "Cold: another {0} batches right after dropping the layout's pages from the page cache "
             "(posix_fadvise DONTNEED; ids repeat across batches, so later reads may hit the cache). zarr's "
             "direct chunk reads are the reader's path for the layout the writer makes; the rows read by zarr are "
             "for comparison.".format(args.batches), "",
             "| layout | ms / batch | images/s | speed-up | cold ms / batch | cold speed-up | size on disk |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (seconds, size, cold) in timings.items():
        per_batch = 1000 * seconds / args.batches
        lines.append(f"| {name} | {per_batch:.1f} | {args.batch * args.batches / seconds:,.0f} | "
                     f"{base / seconds:.1f}x | {1000 * cold / args.batches:.1f} | {base_cold / cold:.1f}x | "
                     f"{size / 1e6:,.0f} MB |")
    append_results("Feature store: random batch reads", lines)


if __name__ == "__main__":
    main()
