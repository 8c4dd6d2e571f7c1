"""Training stopped inside an epoch (SIGUSR1/SIGTERM, as SLURM sends before a time limit or a preemption, or killed
after a periodic mid-epoch checkpoint) resumes at the batch it stopped at and ends with the losses of an
uninterrupted run: cross-entropy and SCST, one process and two (torchrun)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from captioner.models.checkpoint import load_checkpoint
from captioner.training.preemption import EXIT_INTERRUPTED
from tests.faults.test_kills import wait_for
from tests.test_ddp import M2, ROOT, SAT, column, environment, regions, single_process, torchrun_command  # noqa: F401
from tests.training_helpers import train_command

pytestmark = pytest.mark.slow


def epoch_row_written(out: Path, epoch: int):
    return lambda: (out / "metrics.csv").exists() and f"\n{epoch}," in (out / "metrics.csv").read_text()


def position(out: Path) -> dict:
    return load_checkpoint(out / "last.pt").get("position") or {}


def setups(caption_set, regions, tmp_path):  # noqa: F811
    """(model, hparams, features, init) of a cross-entropy and an SCST run."""
    xe = single_process(caption_set, tmp_path / "xe", dict(M2, epochs=2), "m2_xe", regions)
    return {"sat_soft": (dict(SAT, epochs=5), caption_set / "grid.h5", None),
            "m2_scst": (dict(M2, scst_epochs=4), regions, xe / "checkpoint.pt")}


@pytest.mark.parametrize("model", ["sat_soft", "m2_scst"])
def test_a_stop_signal_mid_epoch_saves_the_position_and_the_resumed_run_matches(caption_set, regions, tmp_path,  # noqa: F811
                                                                                model):
    hparams, features, init = setups(caption_set, regions, tmp_path)[model]
    reference = single_process(caption_set, tmp_path / "straight", hparams, model, features, init)
    out = tmp_path / "stopped"
    command = train_command(caption_set, out, hparams, model, features) + (["--init", str(init)] if init else [])
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    wait_for(epoch_row_written(out, 1), process, 120, "the first epoch")
    process.send_signal(signal.SIGUSR1)  # as `scancel --signal=USR1` or SLURM's --signal warning
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED, stderr[-2000:]
    assert "SIGUSR1: stopping after this step" in stderr and "holds the position; rerun to continue" in stderr
    where = position(out)
    epoch = load_checkpoint(out / "last.pt")["epoch"]
    assert where["batches_done"] >= 1 and 1 <= epoch < 4, (where, epoch)

    (out / "checkpoint.pt").unlink()  # Snakemake deletes a failed job's outputs before its retry
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"batch {where['batches_done']} of epoch {epoch + 1}" in resumed.stderr
    np.testing.assert_allclose(column(out, "train_loss"), column(reference, "train_loss"), rtol=1e-6)
    # the best epoch's weights, not the last epoch's, even though checkpoint.pt was deleted mid-run
    best, expected = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(reference / "checkpoint.pt")
    assert best["epoch"] == expected["epoch"] and best["best"] == expected["best"]
    for key, value in expected["state_dict"].items():
        np.testing.assert_allclose(best["state_dict"][key].numpy(), value.numpy(), rtol=1e-5, atol=1e-7)
    if model == "m2_scst":
        np.testing.assert_allclose(column(out, "train_reward"), column(reference, "train_reward"), rtol=1e-6)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_retry_after_the_last_epoch_puts_back_every_output(caption_set, tmp_path):
    """A stop signal that lands as training ends kills the job's own Snakemake, so the job fails after its last
    save; Snakemake deletes the outputs and resubmits. The retry has no epoch left to train: it must still put
    back checkpoint.pt, metrics.csv and curve.png (else every retry fails on missing outputs)."""
    out = tmp_path / "done"
    command = train_command(caption_set, out, dict(SAT, epochs=2), "sat_soft", caption_set / "grid.h5")
    subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.csv")}
    for name in ("checkpoint.pt", "metrics.csv", "curve.png"):
        (out / name).unlink()
    retry = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert "after epoch 2" in retry.stderr and "epoch 1/2:" not in retry.stderr  # nothing trained again
    assert (out / "metrics.csv").read_bytes() == before["metrics.csv"]
    assert (out / "checkpoint.pt").read_bytes() == before["checkpoint.pt"]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_periodic_mid_epoch_checkpoint_survives_a_kill(caption_set, tmp_path):
    hparams = dict(SAT, epochs=4, batch_size=4)  # 24 batches an epoch
    reference = single_process(caption_set, tmp_path / "straight", hparams, "sat_soft", caption_set / "grid.h5")
    for attempt in range(3):  # the kill can land just after an epoch-end save (no position in it): try again
        out = tmp_path / f"killed{attempt}"
        command = train_command(caption_set, out, hparams) + ["--checkpoint-minutes", "0.00001"]  # every step
        process = subprocess.Popen(command, stderr=subprocess.DEVNULL)

        def mid_epoch_saved():
            try:
                return (out / "last.pt").exists() and position(out).get("batches_done", 0) >= 2 \
                    and load_checkpoint(out / "last.pt")["epoch"] >= 1
            except Exception:  # noqa: BLE001 - the rename may land between exists() and the read
                return False

        wait_for(mid_epoch_saved, process, 120, "a mid-epoch checkpoint")
        process.send_signal(signal.SIGKILL)  # a node failure: no chance to save
        process.wait()
        where = position(out)
        if where:
            break
    assert where, "every kill landed on an epoch end"
    epoch = load_checkpoint(out / "last.pt")["epoch"]
    resumed = subprocess.run(train_command(caption_set, out, hparams), capture_output=True, text=True, timeout=300,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"batch {where['batches_done']} of epoch {epoch + 1}" in resumed.stderr
    np.testing.assert_allclose(column(out, "train_loss"), column(reference, "train_loss"), rtol=1e-6)


def test_a_second_signal_exits_at_once(caption_set, tmp_path):
    out = tmp_path / "twice"
    process = subprocess.Popen(train_command(caption_set, out, dict(SAT, epochs=50)), stderr=subprocess.DEVNULL)
    wait_for(epoch_row_written(out, 1), process, 120, "the first epoch")
    before = (out / "last.pt").stat().st_mtime_ns
    process.send_signal(signal.SIGUSR1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert (out / "last.pt").stat().st_mtime_ns == before or load_checkpoint(out / "last.pt")


def launcher_command(*args) -> list[str]:
    """What the train rule runs with train.gpus_per_job: 2 (captioner.training.launch: torchrun, signal-safe)."""
    command = torchrun_command(*args)
    return [command[0], "-m", "captioner.training.launch", *command[3:]]


@pytest.mark.parametrize("model,target", [("sat_soft", "one worker"), ("m2_scst", "the whole job")])
def test_two_processes_stop_together_at_one_step_and_resume_like_one_process(caption_set, regions, tmp_path,  # noqa: F811
                                                                             model, target):
    """A stop signal to one worker only (SIGUSR1), or SIGTERM to every process of the job as SLURM sends at a time
    limit or a preemption (torchrun's agent included): every rank stops after the same step, one last.pt is
    written, the launcher exits 75, and the resumed 2-process run ends with the single-process losses."""
    hparams, features, init = setups(caption_set, regions, tmp_path)[model]
    if model == "sat_soft":
        hparams = dict(hparams, epochs=4)
    reference = single_process(caption_set, tmp_path / "single", hparams, model, features, init)
    out = tmp_path / "ddp"
    command = launcher_command(caption_set, out, hparams, model, features, init)
    process = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(epoch_row_written(out, 1), process, 240, "the first epoch")
    # the launcher runs torchrun's agent in-process; its children (each in a session of its own) are the workers
    workers = [int(pid) for task in Path(f"/proc/{process.pid}/task").iterdir()
               for pid in (task / "children").read_text().split()]
    assert len(workers) == 2
    if target == "one worker":
        os.kill(workers[-1], signal.SIGUSR1)
    else:  # as SLURM signals every process of a job step: the agent and both workers
        for pid in [process.pid, *workers]:
            os.kill(pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert stderr.count("holds the position; rerun to continue") == 2, stderr[-3000:]  # both ranks stopped
    assert stderr.count("saved ") == 1  # rank 0 wrote the one checkpoint
    where = position(out)
    assert where["batches_done"] >= 1
    resumed = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"batch {where['batches_done']} of epoch" in resumed.stderr
    np.testing.assert_allclose(column(out, "train_loss"), column(reference, "train_loss"), rtol=1e-4)
    if model == "m2_scst":
        np.testing.assert_allclose(column(out, "train_reward"), column(reference, "train_reward"), rtol=1e-4)
    history = (out / "history.log").read_text()  # both attempts, timestamped (the rule's log keeps only the last)
    assert "started on" in history and "holds the position" in history and "resumed on" in history
