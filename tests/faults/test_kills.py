"""SIGKILL in the middle of extraction, training and the Snakemake main process; the same command then
finishes the work without redoing what was complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from captioner.data.demo import generate
from captioner.models.checkpoint import load_checkpoint
from features.store.reader import FeatureStore
from tests.faults.helpers import extract_command, manifest_for
from tests.training_helpers import HPARAMS, losses, train_command
from tests.workflow_helpers import TINY_CONFIG, copy_workflow, environment, planned_jobs, snakemake


def wait_for(condition, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_extraction_killed_resumes_and_equals_an_uninterrupted_run(tmp_path):
    demo = tmp_path / "demo"
    generate(demo, seed=5, num_train=80, num_val=2, num_test=2)
    out = tmp_path / "grid.h5"
    command = extract_command(demo / "dataset_coco.json", demo, out, 160, 2)
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    partial = tmp_path / ".grid.h5.partial"
    batch_bytes = 4 * 4 * 512 * 4
    wait_for(lambda: partial.exists() and partial.stat().st_size > 40_000 + 3 * batch_bytes, process, 240,
             "a few batches were on disk")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists() and partial.exists()  # nothing that looks complete
    os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
    with h5py.File(partial, "r") as handle:
        written_before = int(handle["written"][:].sum())
    assert 0 < written_before < 84

    resumed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{84 - written_before} done, {written_before} already written" in resumed.stderr
    store = FeatureStore(out)
    assert len(store) == len(set(store.image_ids.tolist())) == 84

    uninterrupted = tmp_path / "fresh.h5"
    subprocess.run(extract_command(demo / "dataset_coco.json", demo, uninterrupted, 160, 2), check=True,
                   capture_output=True, timeout=600)
    np.testing.assert_array_equal(store.gather(store.image_ids)["features"],
                                  FeatureStore(uninterrupted).gather(store.image_ids)["features"])
    verify = subprocess.run([sys.executable, "-m", "features", "verify", str(out), "--manifest",
                             str(manifest_for(demo / "dataset_coco.json"))], check=False, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout


@pytest.mark.parametrize("model", ["sat_soft", "sat_hard"])
def test_training_killed_resumes_exactly_from_the_last_complete_checkpoint(caption_set, tmp_path, model):
    hparams = dict(HPARAMS, epochs=6)
    subprocess.run(train_command(caption_set, tmp_path / "straight", hparams, model), check=True,
                   capture_output=True)
    expected = losses(tmp_path / "straight")

    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(caption_set, killed, hparams, model), stderr=subprocess.DEVNULL)
    wait_for(lambda: (killed / "last.pt").exists(), process, 120, "the first checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait()
    # every file that carries a checkpoint name is complete: temporaries have other names
    for path in killed.glob("*.pt"):
        load_checkpoint(path)
    done_before = load_checkpoint(killed / "last.pt")["epoch"]
    assert 1 <= done_before < 6, "the kill did not land between the first and the last epoch"
    resumed = subprocess.run(train_command(caption_set, killed, hparams, model), check=False, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from {killed / 'last.pt'} after epoch {done_before}" in resumed.stderr
    np.testing.assert_allclose(losses(killed), expected, rtol=1e-6)
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".")]  # no temporaries left behind


@pytest.mark.slow
def test_snakemake_killed_then_rerun_incomplete_redoes_only_unfinished_jobs(tmp_path):
    workdir = copy_workflow(tmp_path / "project")
    run = workdir / "results/tiny"
    # up to the trained models: decoding and scoring after them would add minutes and nothing to what is tested
    models = [f"results/tiny/models/{model}/seed0/checkpoint.pt"
              for model in ("sat_soft", "sat_hard", "m2_xe", "m2_scst", "sat_soft_blind")]
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=1", "--configfile",
               TINY_CONFIG, "--", *models]
    process = subprocess.Popen(command, cwd=workdir, env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    # both extraction jobs are finished once a SAT and an M2 training job have started
    started = [run / "logs/train/sat_soft.seed0.log", run / "logs/train/m2_xe.seed0.log"]
    try:
        wait_for(lambda: all(p.exists() for p in started), process, 600, "training started")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the main process and every job it started
        process.wait()
    assert not all((workdir / model).exists() for model in models)
    finished = [run / "dataset/dataset_coco.json", run / "text/captions.json", run / "features/grid.h5",
                run / "features/regions.h5"]
    mtimes = {path: path.stat().st_mtime_ns for path in finished}

    plan = planned_jobs(workdir, "--rerun-incomplete", "--", *models)
    assert not {"demo_data", "prepare_text", "extract_features"} & set(plan), plan
    assert plan["train"] >= 2  # the killed training jobs are redone
    locked = snakemake(workdir, "--rerun-incomplete", "--", *models, check=False)  # the killed process's lock ...
    output = locked.stdout + locked.stderr
    assert locked.returncode != 0 and "cannot be locked" in output and "--unlock" in output, output[-3000:]
    assert {path: path.stat().st_mtime_ns for path in finished} == mtimes
    snakemake(workdir, "--unlock")  # ... which the message says how to clear
    snakemake(workdir, "--rerun-incomplete", "--", *models)
    assert all((workdir / model).exists() for model in models)
    assert {path: path.stat().st_mtime_ns for path in finished} == mtimes
    again = snakemake(workdir, "-n", "--", *models)
    assert "Nothing to be done" in again.stdout + again.stderr
