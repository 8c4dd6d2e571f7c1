"""A region store larger than RAM, read from disk through the training loader, against what an H100 needs.

1. Writes a regions store (default: COCO's 123,287 images x 50 x 2048 fp16, or more, so that it is at least
   ``--ram-factor`` x this machine's RAM) with the project's StoreWriter, timing the write path users run.
2. Drops the store's pages from the page cache (posix_fadvise DONTNEED, after a sync) before every run.
3. Reads random batches of ``--batch`` ids the way the trainer does (``TrainData.inputs_for_ids``, main process),
   and through a torch DataLoader with 0/2/4 workers calling the same ``TrainData.store.gather``.
4. Shows that ``preload_features`` refuses the store (it does not fit in RAM).
5. Estimates the batches/s an H100 needs for M² cross-entropy from its FLOPs.

The store is deleted at the end unless ``--keep``; ``--store`` reuses one already written (no write timing).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_results  # noqa: E402
from captioner.data.model_inputs import ModelInputs, TrainData, compute_feature_norm  # noqa: E402
from captioner.data.vocab import Vocabulary  # noqa: E402
from features.store.reader import FeatureStore  # noqa: E402
from features.store.writer import StoreWriter  # noqa: E402
from pipeline.errors import InputError  # noqa: E402

COCO_IMAGES = 123_287


# ------------------------------------------------------------------------------------------ FLOPs of a step
def m2_macs(regions=50, feature_dim=2048, d=512, d_ff=2048, enc_layers=3, dec_layers=3, memory=40, tokens=12,
            vocab=10_201) -> tuple[int, int]:
    """Multiply-accumulates of one M² forward: (per image, per caption), following captioner/models/m2.py.
    Per image: input projection, encoder layers (q/k/v/o projections, scores and weighted sum over regions +
    memory slots, feed-forward) and the cross-attention keys/values of every decoder layer x encoder level
    (projected once per image). Per caption: self-attention, the cross-attention queries/outputs and gates of every
    level, feed-forward, the vocabulary projection. Norms, softmax, masks and embeddings are left out (< 1%)."""
    L, T = regions, tokens
    encoder = 4 * L * d * d + 2 * L * (L + memory) * d + 2 * L * d * d_ff
    per_image = L * feature_dim * d + enc_layers * encoder + dec_layers * enc_layers * 2 * L * d * d
    cross = enc_layers * (2 * T * d * d + 2 * T * L * d + T * 2 * d * d)  # q, o, scores + sum, gate
    decoder = 4 * T * d * d + 2 * T * T * d + cross + 2 * T * d * d_ff
    per_caption = dec_layers * decoder + T * d * vocab
    return per_image, per_caption


def required_rates(batch: int, tflops: float) -> list[tuple[str, float, float]]:
    """(batching, images per step, steps/s an accelerator at ``tflops`` sustains); training = 3 x forward."""
    per_image, per_caption = m2_macs()
    rows = []
    for name, images, captions in ((f"{batch} images x 1 caption (the issue's batches)", batch, batch),
                                   (f"m2 default xe_batches: by_image ({batch} captions = {batch // 5} images x 5)",
                                    batch // 5, batch)):
        flops = 3 * 2 * (images * per_image + captions * per_caption)
        rows.append((name, images, tflops * 1e12 / flops))
    return rows


# ------------------------------------------------------------------------------------------ page cache
def store_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]


def drop_cache(path: Path) -> None:
    """Evict the store's pages (clean after a sync) so that every run starts from disk."""
    os.sync()
    for file in store_files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(path: Path) -> float | None:
    """Share of the store's pages resident in the page cache (mmap + mincore), None where unavailable."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                                  ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    resident = total = 0
    for file in store_files(path):
        size = file.stat().st_size
        if not size:
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: maps, reads nothing
            if address in (None, ctypes.c_void_p(-1).value):
                return None
            pages = (size + page - 1) // page
            vec = np.zeros(pages, np.uint8)
            ok = libc.mincore(address, size, vec.ctypes.data) == 0
            libc.munmap(address, size)
            if not ok:
                return None
            resident += int((vec & 1).sum())
            total += pages
        finally:
            os.close(fd)
    return resident / max(total, 1)


# ------------------------------------------------------------------------------------------ write
def write_store(path: Path, images: int, boxes: int, dim: int, seed: int) -> dict:
    """Random float32 rows (drawn from a pool: generating 12e9 normals would dominate) -> StoreWriter, 256 a call."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((1024, boxes, dim), dtype=np.float32)
    ids = np.arange(images, dtype=np.int64) + 1
    write_seconds = make_seconds = 0.0
    started = time.perf_counter()
    with StoreWriter(path, "regions", ids, boxes, dim, "float16", None, {"extractor": "bench_store_disk"},
                     resume=False) as writer:
        for start in range(0, images, 256):
            chunk = ids[start:start + 256]
            t0 = time.perf_counter()
            feats = pool[rng.integers(0, len(pool), len(chunk))]
            feats[:, -5:] = 0  # padded rows, as in a real store (num_boxes < boxes)
            num = np.full(len(chunk), boxes - 5, np.int32)
            t1 = time.perf_counter()
            writer.write(chunk, feats, num, np.zeros((len(chunk), boxes, 4), np.float32),
                         np.full((len(chunk), 2), 480, np.int32))
            make_seconds += t1 - t0
            write_seconds += time.perf_counter() - t1
            if start % (256 * 40) == 0:
                done = start + len(chunk)
                print(f"  wrote {done:,}/{images:,} images, {done * boxes * dim * 2 / 1e6 / write_seconds:,.0f} MB/s",
                      file=sys.stderr, flush=True)
        t0 = time.perf_counter()
    finalize = time.perf_counter() - t0  # finalize runs in __exit__: close + rename
    t0 = time.perf_counter()
    os.sync()  # the data is on disk, not only in the page cache
    sync = time.perf_counter() - t0
    return {"seconds": write_seconds + finalize + sync, "generate": make_seconds, "wall": time.perf_counter() - started,
            "bytes": sum(f.stat().st_size for f in store_files(path)), "feature_bytes": images * boxes * dim * 2}


# ------------------------------------------------------------------------------------------ read
class Batches(torch.utils.data.Dataset):
    """Batch k -> ``TrainData.store.gather`` of its ids, in a worker (the store reopens itself per process)."""

    def __init__(self, data: TrainData, batches: list):
        self.data, self.batches = data, batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        return self.data.store.gather(self.batches[k])


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None,
                        help=f"default: max({COCO_IMAGES:,}, what makes the store --ram-factor x RAM)")
    parser.add_argument("--ram-factor", type=float, default=1.3)
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--batches", type=int, default=200, help="timed random batches per run")
    parser.add_argument("--workers", default="0,2,4")
    parser.add_argument("--dir", default="/tmp", help="where the store is written")
    parser.add_argument("--format", choices=["hdf5", "zarr"], default="hdf5")
    parser.add_argument("--store", default=None, help="reuse this store (written by an earlier --keep run)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--tflops", type=float, default=400.0,
                        help="sustained bf16 dense TFLOP/s assumed for an H100 (989 peak)")
    args = parser.parse_args()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    image_bytes = args.boxes * (args.dim * 2 + 4 * 4 + 4 + 4)
    images = args.images or max(COCO_IMAGES, math.ceil(args.ram_factor * ram / image_bytes))
    lines, written = [], None
    path = Path(args.store or Path(args.dir) / ("bench_store_disk.h5" if args.format == "hdf5" else
                                                "bench_store_disk.zarr"))
    try:
        if not args.store:
            need = images * image_bytes
            print(f"writing {images:,} images ({need / 1e9:.1f} GB, {need / ram:.2f}x RAM) to {path}", file=sys.stderr)
            written = write_store(path, images, args.boxes, args.dim, 0)
        store = FeatureStore(path)
        backend = "HDF5" if store.backend == "hdf5" else ("zarr v3, direct chunk reads" if store._direct else "zarr v3")
        size = sum(f.stat().st_size for f in store_files(path))
        lines += [f"Store: {path.name}, {len(store):,} images x {store.rows_per_image} x {store.feature_dim} "
                  f"{store.meta['dtype']} ({backend}, uncompressed), {size / 1e9:.2f} GB on disk = {size / ram:.2f}x this "
                  f"machine's RAM ({ram / 2**30:.1f} GiB).", ""]
        if written:
            lines += [f"Write (StoreWriter.write of float32 batches of 256 + finalize + sync, random-row generation "
                      f"excluded): {written['seconds']:.0f} s, {written['feature_bytes'] / 1e6 / written['seconds']:,.0f}"
                      f" MB/s of features ({written['bytes'] / 1e6 / written['seconds']:,.0f} MB/s of file); wall "
                      f"{written['wall']:.0f} s with generation.", ""]
        try:
            FeatureStore(path, preload=True)
            lines += ["preload_features: accepted (the store fits in available memory).", ""]
        except InputError as error:
            lines += [f"preload_features: refused, `error: {error}`", ""]

        # as the trainer builds it (training/setup.py): norm from training images, then TrainData on the device
        vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>"])
        norm = compute_feature_norm(store, store.image_ids[:5000].tolist(), 500, 0)
        data = TrainData([{"image_id": int(i)} for i in store.image_ids], store,
                         ModelInputs("regions", norm, False, torch.device("cpu")), vocab)
        batch_bytes = args.batch * store.rows_per_image * store.feature_dim * np.dtype(store.meta["dtype"]).itemsize
        rows = ["| loader | workers | batches/s | images/s | MB/s of features | pages cached before |",
                "|---|---:|---:|---:|---:|---:|"]
        rng = np.random.default_rng(1)

        def new_batches():  # fresh ids per run: nothing read by an earlier run is re-read
            return [rng.choice(store.image_ids, size=args.batch, replace=False).tolist() for _ in range(args.batches)]

        def row(name, workers, seconds, cached):
            rate = args.batches / seconds
            cached = "n/a" if cached is None else f"{100 * cached:.1f}%"
            rows.append(f"| {name} | {workers} | {rate:.1f} | {rate * args.batch:,.0f} | "
                        f"{rate * batch_bytes / 1e6:,.0f} | {cached} |")
            print(rows[-1], file=sys.stderr, flush=True)
            return rate

        batches = new_batches()
        drop_cache(path)
        cached = cached_fraction(path)
        seconds = timed(lambda: [data.inputs_for_ids(b) for b in batches])
        row("trainer: `TrainData.inputs_for_ids` (gather + fp16->fp32 + norm on the CPU, main process)", 0,
            seconds, cached)
        rates = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            batches = new_batches()
            loader = torch.utils.data.DataLoader(Batches(data, batches), batch_size=None, shuffle=False,
                                                 num_workers=workers, prefetch_factor=4 if workers else None,
                                                 persistent_workers=False)
            drop_cache(path)
            cached = cached_fraction(path)
            # includes starting the workers, as every epoch does
            seconds = timed(lambda loader=loader: [None for _ in loader])
            rates[workers] = row("`TrainData.store.gather` in a torch DataLoader", workers, seconds, cached)

        need = required_rates(args.batch, args.tflops)
        per_image, per_caption = m2_macs()
        lines += [(f"Random batches of {args.batch} ids, {args.batches} per run, page cache dropped (sync + "
                   "posix_fadvise DONTNEED) before each run; device cpu. The trainer reads in its main process "
                   "today (no DataLoader); the DataLoader rows show what workers over the same FeatureStore deliver."),
                  "", *rows, "",
                  (f"What an H100 needs, M² cross-entropy (d 512, 3+3 layers, 40 memory slots, 50 regions, 12 "
                   f"tokens, vocabulary 10,201): forward {2 * per_image / 1e9:.2f} GFLOP per image (projection, "
                   f"encoder, cross-attention keys/values) + {2 * per_caption / 1e9:.2f} GFLOP per caption; training "
                   f"= 3 x forward; assumed {args.tflops:.0f} TFLOP/s sustained bf16 dense (about 40% of the 989 "
                   "peak). A FLOP bound: at batch 50 kernel launches, the optimizer and Python usually cap a step "
                   "lower, so this is the most the loader could ever be asked for."), "",
                  ("| batching | images / step | steps/s needed | images/s needed | best loader here (images/s) | "
                   "loader share of need |"), "|---|---:|---:|---:|---:|---:|"]
        best = max(rates.values()) if rates else 0.0
        for name, per_step, steps in need:
            have = best * args.batch
            lines.append(f"| {name} | {per_step} | {steps:,.0f} | {steps * per_step:,.0f} | {have:,.0f} | "
                         f"{have / (steps * per_step):.1%} |")
        append_results("Feature store from disk: a store larger than RAM through the training loader", lines)
    finally:
        if not args.keep and not args.store:
            for leftover in (path, path.with_name(f".{path.name}.partial")):  # the partial one if the write failed
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
