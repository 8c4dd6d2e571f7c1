"""Training from a store on disk (``preload_features: false``, as the COCO configs run): the share of an epoch's
step time spent waiting for features ("loader %" of the epoch line), without and with batches read ahead in a
background thread (:class:`captioner.data.model_inputs.Prefetcher`), with torch on 1 of the cores (a core to spare,
as when a GPU computes the steps) and on all of them.

Writes a grid store of SAT's COCO shape (196 cells x 2048 fp16 per image) and a caption set for it, then trains one
epoch of Show, Attend and Tell (cross-entropy, batch 64) twice per setting, alternating, each time from a cold page
cache (posix_fadvise DONTNEED after a sync). Reading ahead trains bit-identical weights (checked per thread count).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_store_disk import cached_fraction, drop_cache  # noqa: E402
from benchmarks.common import append_results  # noqa: E402
from captioner.data.text import prepare  # noqa: E402
from captioner.training.trainer import Trainer  # noqa: E402
from features.store.writer import StoreWriter  # noqa: E402


def make_data(root: Path, images: int, val: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(300)]
    entries = []
    for i in range(images + val):
        sentences = [{"raw": " ".join(rng.choice(words, size=rng.integers(6, 14)))} for _ in range(5)]
        entries.append({"filepath": "", "filename": f"{i}.jpg", "cocoid": i, "split": "train" if i < images else "val",
                        "sentences": sentences})
    (root / "d.json").write_text(json.dumps({"images": entries}))
    prepare(root / "d.json", root / "vocab.json", root / "captions.json", 1, 16)
    ids = list(range(images + val))
    with StoreWriter(root / "grid.h5", "grid", ids, 196, 2048, dtype="float16") as writer:
        for start in range(0, len(ids), 256):
            chunk = ids[start:start + 256]
            writer.write(chunk, rng.standard_normal((len(chunk), 196, 2048), dtype=np.float32).astype(np.float16))


def train_once(root: Path, out: Path, hparams: dict, read_ahead: bool, threads: int) -> dict:
    drop_cache(root / "grid.h5")
    cached = cached_fraction(root / "grid.h5")
    original = Trainer._read_ahead
    Trainer._read_ahead = lambda self: read_ahead  # forced either way, whatever the trainer's rule would choose
    try:
        torch.set_num_threads(threads)
        shutil.rmtree(out, ignore_errors=True)
        Trainer("sat_soft", str(root / "grid.h5"), str(root / "captions.json"), str(root / "vocab.json"), hparams,
                str(out), device="cpu", hooks=[]).run()
    finally:
        Trainer._read_ahead = original
    row = next(csv.DictReader(open(out / "metrics.csv")))
    return {"loader": float(row["loader_share"]), "step_s": float(row["epoch_s"]), "cached": cached,
            "weights": torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1280, help="training images (one epoch reads each ~5 times)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (all cores: no core "
                                                                               "to spare for the read-ahead)")
    parser.add_argument("--hidden", type=int, default=512, help="SAT's LSTM size (COCO: 1800)")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    hparams = {"epochs": 1, "batch_size": 64, "preload_features": False, "feature_norm_images": 200,
               "val_max_length": 8,
               "model": {"embed_dim": 256, "hidden_dim": args.hidden, "attention_dim": 256, "dropout": 0.0}}
    with tempfile.TemporaryDirectory(dir=".") as folder:
        root = Path(folder)
        started = time.perf_counter()
        make_data(root, args.images, 32)
        print(f"store written in {time.perf_counter() - started:.0f} s "
              f"({(root / 'grid.h5').stat().st_size / 1e9:.2f} GB)", file=sys.stderr)
        settings = [(threads, ahead) for threads in args.threads for ahead in (False, True)]
        runs = {setting: [] for setting in settings}
        for repeat in range(args.repeats):
            for threads, ahead in settings:
                found = train_once(root, root / f"out{threads}{int(ahead)}", hparams, ahead, threads)
                runs[threads, ahead].append(found)
                print(f"{threads} threads, read ahead {ahead}: loader {100 * found['loader']:.1f}% of "
                      f"{found['step_s']:.1f} s of steps", file=sys.stderr)
        # the same thread count, read ahead or not: the same weights (1 and 2 threads sum in different orders)
        same = all(torch.equal(runs[threads, False][0]["weights"][k], found["weights"][k])
                   for (threads, _), founds in runs.items() for found in founds for k in found["weights"])
    cores = len(os.sched_getaffinity(0))
    rows = ["| torch threads | batches read | loader % of step time (each run) | step time s (each run) |"
            " pages cached before |", "|---:|---|---|---|---|"]
    for (threads, ahead), found in runs.items():
        label = "ahead, in a background thread (Prefetcher)" if ahead else "in the training thread, when asked for"
        rule = " (the trainer's choice)" if ahead == (threads < cores) else ""
        loader = " / ".join(f"{100 * r['loader']:.1f}" for r in found)
        steps = " / ".join(f"{r['step_s']:.1f}" for r in found)
        cached = " / ".join("n/a" if r["cached"] is None else f"{100 * r['cached']:.0f}%" for r in found)
        rows.append(f"| {threads} of {cores} | {label}{rule} | {loader} | {steps} | {cached} |")
    lines = [f"SAT soft attention, cross-entropy, batch 64, one epoch of {args.images} training images (~5 reads "
             f"each), LSTM {args.hidden}, grid store of 196 x 2048 fp16 per image on disk (`preload_features: "
             "false`), page cache dropped before each run; runs alternate.", "", *rows, "",
             f"Weights after the epoch identical with and without read-ahead (each thread count): {same}."]
    if args.no_results:
        print("\n".join(lines))
    else:
        append_results("Training from a store on disk: batches read ahead (issue 30)", lines)


if __name__ == "__main__":
    main()
