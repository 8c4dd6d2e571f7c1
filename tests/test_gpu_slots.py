"""Every GPU of a workstation (pipeline/gpu_slots.py): GPU jobs running side by side get GPU ids of their own, a DDP
job K of them, and a killed job's ids are free again at once. No GPU is needed: the machine's GPUs are faked with
CAPTIONER_GPUS, and each job reports the CUDA_VISIBLE_DEVICES it was given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.gpu_slots import gpu_ids
from tests.workflow_helpers import PROJECT, copy_workflow, snakemake

# a job: report its devices, then hold them until its release file appears
JOB = ("import os, pathlib, sys, time; out = pathlib.Path(sys.argv[1]); "
       "out.write_text(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')); release = pathlib.Path(sys.argv[2]); "
       "[time.sleep(0.05) for _ in iter(lambda: release.exists(), True)]")


def start(tmp_path: Path, name: str, gpus: str, count: int = 1) -> subprocess.Popen:
    env = {**os.environ, "CAPTIONER_GPUS": gpus, "CAPTIONER_GPU_LOCKS": str(tmp_path / "locks"),
           "PYTHONPATH": str(PROJECT)}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([sys.executable, "-m", "pipeline.gpu_slots", "--count", str(count), "--", sys.executable,
                             "-c", JOB, str(tmp_path / f"{name}.devices"), str(tmp_path / f"{name}.release")],
                            env=env, stderr=subprocess.PIPE, text=True)


def devices(tmp_path: Path, name: str, timeout: float = 30) -> str:
    path = tmp_path / f"{name}.devices"
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{name} got no GPU within {timeout} s"
        time.sleep(0.05)
    return path.read_text()


def release(tmp_path: Path, name: str, job: subprocess.Popen) -> None:
    (tmp_path / f"{name}.release").touch()
    assert job.wait(timeout=30) == 0


def test_jobs_side_by_side_never_share_a_gpu_and_a_killed_job_frees_its_own(tmp_path):
    jobs = {name: start(tmp_path, name, "0,1,2,3") for name in "abcd"}
    held = {name: devices(tmp_path, name) for name in jobs}
    assert sorted(held.values()) == ["0", "1", "2", "3"]  # four jobs, four cards
    waiting = start(tmp_path, "e", "0,1,2,3")
    time.sleep(1.5)
    assert not (tmp_path / "e.devices").exists()  # a fifth waits: every card is held
    jobs["c"].send_signal(signal.SIGKILL)  # killed: no clean-up code runs, the kernel drops its lock
    jobs["c"].wait(timeout=30)
    assert devices(tmp_path, "e") == held["c"]
    for name in "abd":
        release(tmp_path, name, jobs[name])
    release(tmp_path, "e", waiting)


def test_a_data_parallel_job_takes_k_cards_and_the_others_the_rest(tmp_path):
    ddp = start(tmp_path, "ddp", "0,1,2", count=2)
    assert len(devices(tmp_path, "ddp").split(",")) == 2
    single = start(tmp_path, "one", "0,1,2")
    assert devices(tmp_path, "one") not in devices(tmp_path, "ddp").split(",")
    release(tmp_path, "ddp", ddp)
    release(tmp_path, "one", single)


def test_more_gpus_than_the_machine_has_is_one_error_line(tmp_path):
    job = start(tmp_path, "big", "0,1", count=3)
    assert job.wait(timeout=30) != 0
    assert job.stderr.read().strip().splitlines() == [
        "error: this job needs 3 GPUs and the machine has 2 (0,1); lower train.gpus_per_job or --resources gpu"]


@pytest.mark.parametrize("environ, expected", [
    ({"CAPTIONER_GPUS": "0,1"}, ["0", "1"]),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, ["2", "3"]),  # a machine whose user already narrowed the cards
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
])
def test_which_gpus_a_job_may_take(environ, expected):
    assert gpu_ids(environ) == expected


def test_without_gpus_or_under_slurm_the_command_runs_unchanged(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "CAPTIONER_GPUS": "", "CUDA_VISIBLE_DEVICES": "7"}
    show = [sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))"]
    command = [sys.executable, "-m", "pipeline.gpu_slots", "--count", "1", "--", *show]
    assert subprocess.run(command, env=env, capture_output=True, text=True).stdout.strip() == "7"
    slurm = {**env, "CAPTIONER_GPUS": "0,1", "SLURM_JOB_ID": "42", "CAPTIONER_GPU_LOCKS": str(tmp_path / "l")}
    assert subprocess.run(command, env=slurm, capture_output=True, text=True).stdout.strip() == "7"
    assert not (tmp_path / "l").exists()


def test_every_gpu_rule_takes_its_slots(tmp_path):
    """The plan: extraction, training and decoding start through the allocator with their `gpu` resource as the
    count (train.gpus_per_job for training); CPU-only rules do not."""
    workdir = copy_workflow(tmp_path / "project")
    plan = snakemake(workdir, "-n", "-p").stdout
    for job in ("features job extract", "captioner job train", "captioner job decode"):
        lines = [line for line in plan.splitlines() if job in line]
        assert lines and all("python -m pipeline.gpu_slots --count 1 -- " in line for line in lines), job
    for job in ("captioner job score", "captioner job tables"):
        assert all("gpu_slots" not in line for line in plan.splitlines() if job in line)
