"""Data-parallel training under the real torchrun CLI (2 CPU processes, gloo) against one process: the same
global batches give the same per-epoch losses (dropout 0); one rank writes the files and logs; checkpoints hold
the plain model; a killed 2-process run resumes exactly; a non-finite loss on one rank stops every rank."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.models.checkpoint import load_checkpoint
from captioner.training import distributed
from captioner.training.trainer import Trainer, TrainingError
from features.store.reader import FeatureStore
from features.store.writer import StoreWriter
from tests.training_helpers import HPARAMS, losses, train_command

ROOT = Path(__file__).resolve().parents[1]
SAT = dict(HPARAMS, epochs=3, model=dict(HPARAMS["model"], dropout=0.0))
M2 = {"epochs": 3, "batch_size": 16, "warmup": 10, "feature_norm_images": 50, "patience": 10,
      "scst_epochs": 3, "scst_beam_size": 2, "scst_max_length": 8, "scst_batch_images": 10,
      "model": {"d_model": 16, "heads": 2, "d_ff": 32, "encoder_layers": 1, "decoder_layers": 1, "memory_slots": 2,
                "dropout": 0.0}}
OUTPUTS = ["best.pt", "checkpoint.pt", "curve.png", "history.log", "last.pt", "metrics.csv", "tensorboard"]


@pytest.fixture(scope="module")
def regions(caption_set, tmp_path_factory) -> Path:
    """The caption set's grid features as a regions store, every other image with a padded row (M2 input)."""
    grid = FeatureStore(caption_set / "grid.h5")
    ids = [int(i) for i in grid.image_ids]
    num_boxes = np.array([4 - i % 2 for i in ids])
    features = grid.gather(ids)["features"] * (np.arange(4)[None, :, None] < num_boxes[:, None, None])
    path = tmp_path_factory.mktemp("regions") / "regions.h5"
    with StoreWriter(path, "regions", ids, 4, 8, dtype="float32") as writer:
        writer.write(ids, features, num_boxes=num_boxes, boxes=np.zeros((len(ids), 4, 4), np.float32),
                     image_hw=np.full((len(ids), 2), 64))
    return path


def single_process(data: Path, out_dir: Path, hparams: dict, model: str, features: Path, init: Path | None = None):
    """The reference run, in this process (no process group: WORLD_SIZE is unset)."""
    assert "WORLD_SIZE" not in os.environ
    Trainer(model, str(features), str(data / "text/captions.json"), str(data / "text/vocab.json"), hparams,
            str(out_dir), init=str(init) if init else None, device="cpu").run()
    return out_dir


def torchrun_command(data: Path, out_dir: Path, hparams: dict, model: str, features: Path, init: Path | None = None):
    command = train_command(data, out_dir, hparams, model, features)  # [python, -m, captioner, job, train, ...]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            *command[1:], "--threads", "1"] + (["--init", str(init)] if init else [])


def environment() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1")  # also silences torchrun's banner about it


def metric_rows(out_dir: Path) -> list[dict]:
    with open(out_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def column(out_dir: Path, key: str) -> list[float]:
    return [float(row[key]) for row in metric_rows(out_dir) if row.get(key)]


@pytest.mark.parametrize("model", ["sat_soft", "m2_xe"])
def test_two_processes_train_like_one_on_the_same_global_batches(caption_set, regions, tmp_path, model):
    hparams, features = (SAT, caption_set / "grid.h5") if model == "sat_soft" else (M2, regions)
    reference = single_process(caption_set, tmp_path / "single", hparams, model, features)
    out = tmp_path / "ddp"
    result = subprocess.run(torchrun_command(caption_set, out, hparams, model, features), cwd=ROOT,
                            env=environment(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    # M2 averages its loss per token and the ranks' shards hold different numbers of tokens: only the weighting
    # by token counts makes these equal
    np.testing.assert_allclose(losses(out), losses(reference), rtol=1e-4)
    np.testing.assert_allclose(column(out, "train_nll_per_token"), column(reference, "train_nll_per_token"),
                               rtol=1e-4)
    assert column(out, "val_cider") == pytest.approx(column(reference, "val_cider"), rel=1e-4)

    # one writer: one row per epoch, one set of files, each epoch logged once
    assert [row["epoch"] for row in metric_rows(out)] == ["1", "2", "3"]
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    for epoch in (1, 2, 3):
        assert result.stderr.count(f"{model} epoch {epoch}/3:") == 1, result.stderr[-3000:]

    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert not [key for key in checkpoint["state_dict"] if key.startswith("module.")]
    assert checkpoint["state_dict"].keys() == load_checkpoint(reference / "checkpoint.pt")["state_dict"].keys()
    last = load_checkpoint(out / "last.pt")
    assert len(last["rng_ranks"]) == 2  # every rank's random streams, to resume them


def test_two_process_scst_killed_after_an_epoch_resumes_and_matches_one_process(caption_set, regions, tmp_path):
    """SCST shards each batch's images over the ranks; a SIGKILL of the whole torchrun group after the first
    epoch, then the same command: the run continues from last.pt and ends where one process ends."""
    xe = single_process(caption_set, tmp_path / "xe", dict(M2, epochs=2), "m2_xe", regions)
    init = xe / "checkpoint.pt"
    reference = single_process(caption_set, tmp_path / "single", M2, "m2_scst", regions, init)

    out = tmp_path / "ddp"
    command = torchrun_command(caption_set, out, M2, "m2_scst", regions, init)
    process = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        # metrics.csv is written after last.pt: a row for epoch 1 means last.pt holds epoch 1 (or later)
        wait_for_epoch(out, process, 1)
    finally:
        # torchrun and both workers, as a node failure would (the workers run in sessions of their own)
        workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        for pid in [process.pid, *map(int, workers)]:
            os.kill(pid, signal.SIGKILL)
        process.wait()
    done_before = load_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= done_before < M2["scst_epochs"], "the kill did not land between the first and the last epoch"

    resumed = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count(f"from {out / 'last.pt'} after epoch {done_before}") == 1
    assert [row["epoch"] for row in metric_rows(out)] == ["0", "1", "2", "3"]
    # (the epoch 0 row is the XE starting point, without a training loss)
    np.testing.assert_allclose(column(out, "train_loss"), column(reference, "train_loss"), rtol=1e-4)
    np.testing.assert_allclose(column(out, "train_reward"), column(reference, "train_reward"), rtol=1e-4)
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS  # no temporaries left by the killed run


def wait_for_epoch(out: Path, process: subprocess.Popen, epoch: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not ((out / "metrics.csv").exists() and f"\n{epoch}," in (out / "metrics.csv").read_text()):
        assert process.poll() is None, "torchrun ended before the first epoch was saved"
        assert time.time() < deadline, "timed out waiting for the first epoch"
        time.sleep(0.02)


def test_a_non_finite_loss_on_one_rank_stops_every_rank(caption_set, tmp_path):
    """Rank 1's weights turn NaN after DDP's start-up broadcast, rank 0's stay finite: the all-reduced loss is
    NaN on both, so both stop with the error instead of one waiting for the other in a collective."""
    script = tmp_path / "diverge.py"
    script.write_text(f"""
import sys, torch
from captioner.training.trainer import Trainer, TrainingError
trainer = Trainer("sat_soft", {str(caption_set / "grid.h5")!r}, {str(caption_set / "text/captions.json")!r},
                  {str(caption_set / "text/vocab.json")!r}, {SAT!r}, {str(tmp_path / "out")!r}, device="cpu")
if trainer.ranks.rank == 1:
    with torch.no_grad():
        trainer.model.init_h[0].weight.fill_(float("nan"))
try:
    trainer.run()
except TrainingError as error:
    print(f"rank {{trainer.ranks.rank}}: {{error}}", file=sys.stderr)
    sys.exit(3)
""")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    result = subprocess.run(command, cwd=ROOT, env=dict(environment(), PYTHONPATH=str(ROOT)), capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: non-finite loss (nan) at epoch 1, step 1" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "out/last.pt").exists()


def test_global_batch_must_divide_among_the_processes(caption_set, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TrainingError, match="batch_size 15 is the global batch and must be divisible by the "
                                            r"number of processes \(2\)"):
        Trainer("sat_soft", str(caption_set / "grid.h5"), str(caption_set / "text/captions.json"),
                str(caption_set / "text/vocab.json"), dict(SAT, batch_size=15), "unused", device="cpu")


@pytest.mark.parametrize("size", [0, 1, 7, 10, 16])
def test_shards_split_a_batch_in_rank_order(size):
    batch = list(range(size))
    shards = [distributed.shard(batch, distributed.Ranks(3, rank, rank)) for rank in range(3)]
    assert [item for part in shards for item in part] == batch
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


# runs `python -m captioner job train ...` in a torchrun worker, then writes the threads the worker has left to
# THREADS_LEFT_FILE.rank<k> (a file each: two processes' stderr lines can interleave)
THREADS_LEFT = """
import os, sys
from captioner.__main__ import main
status = main(sys.argv[1:])
names = sorted(open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task"))
with open(f"{os.environ['THREADS_LEFT_FILE']}.rank{os.environ['RANK']}", "w") as report:
    report.write(f"exit {status} threads left: {' '.join(names)}")
sys.exit(status)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to list a process's threads")
def test_two_process_training_ends_cleanly_every_time(caption_set, tmp_path):
    """The end of a DDP training, many times over. Each worker must tear its process group down inside the
    training command, after a barrier with the other rank: when the group outlived it (torch.distributed.nn, first
    imported by DDP, kept the group as a default argument value; the stop-signal handler kept the trainer), gloo's
    threads were torn down while the interpreter exited, racing with the other rank's, and about one run in a
    hundred aborted ("terminate called without an active exception", exit -6): a finished training reported as a
    failed job. So every run checks that no gloo thread is left once the command returns, and that it exited 0.
    A group left alive shows in the first run (its gloo threads are listed); the exit race itself is rare, so a
    pair of runs started at once (CPU contention, when such races show) is the default and CAPTIONER_DDP_REPEATS
    sets more (each pair costs ~25 CPU-s: a stress run sets hundreds)."""
    repeats = int(os.environ.get("CAPTIONER_DDP_REPEATS", "2"))
    script = tmp_path / "threads_left.py"
    script.write_text(THREADS_LEFT)
    hparams = dict(SAT, epochs=1)
    failures = []
    for start in range(0, repeats, 2):
        runs = []
        for i in range(start, min(start + 2, repeats)):
            command = torchrun_command(caption_set, tmp_path / f"run{i}", hparams, "sat_soft", caption_set / "grid.h5")
            command[command.index("-m", 2):command.index("job")] = [str(script)]  # the script, then job train ...
            report = tmp_path / f"threads{i}"
            runs.append((tmp_path / f"run{i}", report, subprocess.Popen(
                command, cwd=ROOT, env=dict(environment(), PYTHONPATH=str(ROOT), THREADS_LEFT_FILE=str(report)),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        for out, report, process in runs:
            _, stderr = process.communicate(timeout=300)
            left = [Path(f"{report}.rank{rank}").read_text() if Path(f"{report}.rank{rank}").exists() else "none"
                    for rank in (0, 1)]
            if (process.returncode != 0 or "terminate called" in stderr or not (out / "checkpoint.pt").exists()
                    or any("gloo" in line or not line.startswith("exit 0 ") for line in left)):
                failures.append((out.name, process.returncode, left, stderr[-1500:]))
    assert not failures, failures


def test_a_cuda_rank_joins_with_nccl_on_its_local_gpu(monkeypatch):
    """The CUDA branch of joining the group, without a GPU: the calls into torch are recorded (an import inside the
    function once made ``torch`` a local name there, so this branch raised UnboundLocalError on every GPU)."""
    ddp = distributed
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(ddp.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw["rank"])))
    device = ddp.init_process_group(ddp.Ranks(4, 3, 1), torch.device("cuda"))
    assert device == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)), ("nccl", 3)]
