"""The SLURM profile against a real single-node SLURM cluster (tests/slurm/start-slurm.sh): every rule is submitted
with sbatch by snakemake-executor-plugin-slurm, runs under SLURM and gives the same results as a local run."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml

from tests.workflow_helpers import (
    PROJECT,
    TINY_CONFIG,
    clone_run,
    copy_workflow,
    edit_config,
    environment,
    planned_jobs,
)

# one pytest-xdist worker runs them all, one after another (make test's --dist loadfile): they share one cluster,
# which the module's fixture starts and stops
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPTS = Path(__file__).parent
GPU_RULES = {"extract_features", "train", "decode"}
REPORT = os.environ.get("SLURM_TEST_REPORT")  # optional: a file to append the measured figures to


def report(line: str) -> None:
    print(line)
    if REPORT:
        with open(REPORT, "a") as handle:
            handle.write(line + "\n")


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root (it installs slurm-wlm/munge/mariadb and runs the daemons)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and apt-get is not available to install it")
    start = time.perf_counter()
    started = subprocess.run(["bash", str(SCRIPTS / "start-slurm.sh")], capture_output=True, text=True, timeout=600,
                             check=False)
    if started.returncode in (2, 3):  # not root / packages not installable here
        pytest.skip(f"no test cluster: {started.stderr.strip()}")
    assert started.returncode == 0, started.stderr
    report(f"test cluster up in {time.perf_counter() - start:.1f} s ({started.stderr.strip()})")
    yield
    if "already running" not in started.stderr:  # leave a cluster someone else started alone
        subprocess.run(["bash", str(SCRIPTS / "stop-slurm.sh")], check=False, capture_output=True)


def cluster_profile(workdir: Path, train: dict | None = None) -> str:
    """The real profiles/slurm with its placeholders filled for the test cluster, small memory requests and
    fast status polling (``train``: further resources of the training jobs); written as a workflow profile beside
    the copied workflow."""
    profile = yaml.safe_load((PROJECT / "profiles/slurm/config.yaml").read_text())
    fill = {"CHANGE_ME_cpu_partition": "main", "CHANGE_ME_gpu_partition": "main", "CHANGE_ME_account": "root"}
    for resources in [profile["default-resources"], *profile["set-resources"].values()]:
        for key, value in resources.items():
            resources[key] = fill.get(value, value)
        if "mem_mb" in resources:
            resources["mem_mb"] = 1500
        if "runtime" in resources:
            resources["runtime"] = 20
        if "cpus_per_gpu" in resources:
            resources["cpus_per_gpu"] = 1
    profile["set-resources"]["train"].update(train or {})
    assert not [v for r in profile["set-resources"].values() for v in r.values() if "CHANGE_ME" in str(v)]
    profile.update({"latency-wait": 5, "slurm-init-seconds-before-status-checks": 1,
                    "seconds-between-status-checks": 1, "slurm-logdir": "slurm_logs", "retries": 0})
    folder = workdir / "profiles/slurm-test"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return "profiles/slurm-test"


def submit(workdir: Path, *targets: str, train: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    command = [sys.executable, "-m", "snakemake", "--workflow-profile", cluster_profile(workdir, train),
               "--configfile", TINY_CONFIG, "--verbose", *targets]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, env=environment(slurm=True), capture_output=True, text=True,
                            timeout=1200, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result, time.perf_counter() - start


def sacct_jobs(workdir: Path) -> list[dict]:
    """SLURM's accounting records of the jobs that ran in ``workdir``."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-a", "-S", "now-2hours", "-o",
                          "JobID,Comment,State,ExitCode,ReqTRES,Start,End,WorkDir"],
                         capture_output=True, text=True, check=True).stdout
    fields = ["id", "comment", "state", "exit", "req_tres", "start", "end", "workdir"]
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    return [r for r in rows if Path(r["workdir"]).resolve() == workdir.resolve()]


def sbatch_calls(output: str) -> dict[str, str]:
    """The first ``sbatch`` command line the plugin logged for each rule."""
    calls = {}
    for match in re.finditer(r"sbatch call: (sbatch .*)", output):
        line = match.group(1)
        rule = re.search(r"--comment '?rule_([a-z_]+?)(?:_wildcards[^ ']*)?'? ", line)
        if rule:
            calls.setdefault(rule.group(1), line)
    return calls


# first: it needs no finished run (tests/conftest.py's), which another worker builds meanwhile
def test_feature_shards_run_as_concurrent_slurm_jobs(cluster, tmp_path):
    workdir = copy_workflow(tmp_path / "shards")
    edit_config(workdir, lambda c: c["features"].__setitem__("shards", 2))
    _, seconds = submit(workdir, "results/tiny/features/grid.h5", "results/tiny/features/regions.h5")
    jobs = sacct_jobs(workdir)
    shards = [j for j in jobs if j["comment"].startswith("rule_extract_features")]
    merges = [j for j in jobs if j["comment"].startswith("rule_merge_features")]
    assert len(shards) == 4 and len(merges) == 2 and all(j["state"] == "COMPLETED" for j in shards + merges)

    def interval(job):
        return datetime.fromisoformat(job["start"]), datetime.fromisoformat(job["end"])

    overlapping = [(a["id"], b["id"]) for i, a in enumerate(shards) for b in shards[i + 1:]
                   if interval(a)[0] < interval(b)[1] and interval(b)[0] < interval(a)[1]]
    assert overlapping, [(j["id"], j["start"], j["end"]) for j in shards]
    last_shard_end = max(interval(j)[1] for j in shards)
    first_merge_start = min(interval(j)[0] for j in merges)
    assert first_merge_start >= min(interval(j)[1] for j in shards)
    report(f"sharded extraction on SLURM: {len(shards)} shard jobs, overlapping pairs {overlapping}, "
           f"merges started {first_merge_start:%H:%M:%S} (last shard ended {last_shard_end:%H:%M:%S}), {seconds:.0f} s")


# every rule of the tiny DAG, with three of its five models: each job here starts Snakemake inside its SLURM job, and
# sat_soft and its blind twin would add seven jobs of the same rules
CLUSTER_MODELS = ("sat_hard", "m2_xe", "m2_scst")


def test_whole_dag_through_slurm_equals_a_local_run(cluster, finished_run, tmp_path):
    local = finished_run
    workdir = copy_workflow(tmp_path / "cluster")
    edit_config(workdir, lambda c: c.__setitem__("models", {m: c["models"][m] for m in CLUSTER_MODELS}))
    expected_jobs = planned_jobs(workdir)
    local_rules = {row["name"].split()[0] for row in csv_rows(local / "results/tiny/tables/costs.csv")
                   if row["table"] == "stage"}
    assert local_rules <= set(expected_jobs), local_rules - set(expected_jobs)  # every rule the local run ran
    result, seconds = submit(workdir)
    output = result.stdout + result.stderr
    report(f"tiny DAG through SLURM: {sum(expected_jobs.values())} jobs in {seconds:.0f} s")

    jobs = sacct_jobs(workdir)
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(re.sub(r"^rule_|_wildcards.*$", "", job["comment"]), []).append(job)
    submitted = {rule: n for rule, n in expected_jobs.items() if rule != "all"}  # `all` is a local target rule
    assert {rule: len(by_rule.get(rule, [])) for rule in submitted} == submitted, by_rule.keys()
    assert all(job["state"] == "COMPLETED" and job["exit"] == "0:0" for job in jobs), jobs
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            assert ("gres/gpu=1" in job["req_tres"]) == (rule in GPU_RULES), (rule, job["req_tres"])

    calls = sbatch_calls(output)
    assert "--gpus=1" in calls["train"] and "--gpus=1" in calls["extract_features"] and "-p main" in calls["train"]
    assert "--gpus" not in calls["score"] and "--cpus-per-task=1" in calls["score"]
    assert "--signal=USR1@300" in calls["train"]  # the trainer's warning before the time limit
    report(f"sbatch (GPU rule): {calls['train'][:400]}")
    report(f"sbatch (CPU rule): {calls['score'][:400]}")

    run = "results/tiny"
    local_rows = {row["model"]: row for row in csv_rows(local / run / "tables/scores.csv")}
    assert {row["model"]: row for row in csv_rows(workdir / run / "tables/scores.csv")} == {
        model: local_rows[model] for model in CLUSTER_MODELS}
    for model in CLUSTER_MODELS:
        for path in [f"eval/{model}/seed0/predictions_test.json", f"eval/{model}/seed0/scores_test.json"]:
            assert (workdir / run / path).read_text() == (local / run / path).read_text(), path

    again, _ = submit(workdir)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert len(sacct_jobs(workdir)) == len(jobs)  # nothing new was submitted


# ~110 s of training on one core against 2-minute jobs (start-up ~10-25 s, the warning 20 s before the limit): three
# jobs at least, the first stopped by hand. (Each resubmission also waits for the plugin's status check, whose
# interval grows by 10 s per check while a job runs.)
LONG_SAT = {"epochs": 36, "batch_size": 4, "patience": 36,
            "model": {"embed_dim": 64, "hidden_dim": 128, "attention_dim": 64, "init_layers": 1, "dropout": 0.0}}
TRAINED = "results/tiny/models/sat_soft/seed0"
STOP_SAVED = re.compile(r"^(\S+) sat_soft: saved \S+ at batch (\d+) of epoch (\d+) \(step (\d+)\)$", re.MULTILINE)
RESUMED = re.compile(r"^(\S+) resuming sat_soft from \S+ after epoch \d+, batch (\d+) of epoch (\d+) \(step (\d+)\)$",
                     re.MULTILINE)
RESUMED_AFTER_TRAINING = re.compile(r"^(\S+) resuming sat_soft from \S+ after epoch (\d+) \(step (\d+)\)$", re.MULTILINE)


# training in all, whatever the machine: the first job is stopped by hand after an epoch, each next one by SLURM's
# warning 20 s before its 2-minute limit. SLURM checks limits every 30 s and may send the warning up to a minute early
# (sbatch --signal), so 40-100 s into a job (seen here: 47 to more than 91), up to ~90 s of training after start-up;
# 110 s make at least 3 jobs. A 1-minute limit would put the warning 7-40 s into a job, often before the trainer has
# started (the job is then lost and resubmitted): that made this test take 6 to 14 minutes.
CHUNKED_TRAINING_SECONDS = 110


TIMED_EPOCHS = 4


def long_sat_epochs(finished_run: Path, tmp_path: Path) -> int:
    """LONG_SAT's epoch count for about CHUNKED_TRAINING_SECONDS of training on this machine (at least its 36):
    TIMED_EPOCHS epochs timed with one thread (a fast machine would otherwise finish in 2 jobs). The timed run is
    also the uninterrupted run the chunks' first epochs are compared with."""
    config = yaml.safe_load((finished_run / TINY_CONFIG).read_text())
    hparams = {**config["sat"], **{k: v for k, v in LONG_SAT.items() if k != "model"}, "epochs": TIMED_EPOCHS,
               "model": dict(config["sat"]["model"], **LONG_SAT["model"])}
    run = finished_run / "results/tiny"
    command = [sys.executable, "-m", "captioner", "job", "train", "--model", "sat_soft", "--features",
               str(run / "features/grid.h5"), "--captions", str(run / "text/captions.json"), "--vocab",
               str(run / "text/vocab.json"), "--hparams", json.dumps(hparams), "--out-dir", str(tmp_path / "timing"),
               "--threads", "1", "--device", "cpu"]
    cpu_before, wall_before = children_cpu_seconds(), time.perf_counter()
    subprocess.run(command, cwd=finished_run, env=environment(), capture_output=True, check=True, timeout=300)
    # the share of a core the timing run had: below 1 when other tests (pytest-xdist) competed for the cores; the
    # epochs then took longer than they will alone, so the count is sized for an idle core (more load, more jobs)
    share = min(1.0, (children_cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before))
    # the epochs' step time, and a fifth more for validation and the epoch's files
    timed = csv_rows(tmp_path / "timing/metrics.csv")
    per_epoch = share * 1.2 * sum(float(row["epoch_s"]) for row in timed) / len(timed)
    return max(LONG_SAT["epochs"], math.ceil(CHUNKED_TRAINING_SECONDS / max(per_epoch, 0.1)))


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_job_ids(workdir: Path) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k|%Z"], capture_output=True, text=True,
                         check=False).stdout
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
    return [job for job, comment, folder in rows
            if comment.startswith("rule_train") and Path(folder).resolve() == workdir.resolve()]


def test_training_longer_than_its_time_limit_finishes_in_chunks_like_a_local_run(cluster, finished_run, tmp_path):
    """The real profile with a 2-minute limit for training jobs against ~110 s of training: every job gets the
    profile's SIGUSR1 warning (20 s before the limit here), writes last.pt mid-epoch and exits 75; Snakemake
    resubmits it (preemptible-retries) and the next job resumes at that batch. The first job is also stopped by hand
    with `scancel --signal=USR1` during epoch 2, so the chunks' first epochs cross a resubmission: they equal the
    local, uninterrupted run of TIMED_EPOCHS epochs that sized the training. (A whole uninterrupted run to compare
    the last weights with would cost another ~110 CPU-s; tests/test_interruptions.py compares a stopped and resumed
    training with an uninterrupted one to the last weights.)"""

    epochs = long_sat_epochs(finished_run, tmp_path)
    report(f"chunked training: {epochs} epochs for ~{CHUNKED_TRAINING_SECONDS} s of training here")

    def longer(config):
        config["sat"].update({k: v for k, v in LONG_SAT.items() if k != "model"}, epochs=epochs, patience=epochs)
        config["sat"]["model"] = dict(config["sat"]["model"], **LONG_SAT["model"])

    chunked = clone_run(finished_run, tmp_path / "chunked")
    edit_config(chunked, longer)
    by_hand: dict = {}

    def stop_the_first_job():  # once it has trained an epoch: mid-epoch, well before its warning
        deadline = time.time() + 240
        history = chunked / TRAINED / "history.log"
        while time.time() < deadline:
            jobs = train_job_ids(chunked)
            text = history.read_text() if history.exists() else ""  # (the cloned run's history until the job starts)
            if jobs and f"SLURM job {jobs[0]} " in text and "sat_soft epoch 1/" in text.split(f"SLURM job {jobs[0]} ")[1]:
                subprocess.run(["scancel", "--signal=USR1", jobs[0]], check=True)
                by_hand.update(job=jobs[0], at=datetime.now())
                return
            time.sleep(0.5)

    stopper = threading.Thread(target=stop_the_first_job, daemon=True)
    stopper.start()
    _, seconds = submit(chunked, f"{TRAINED}/checkpoint.pt",
                             train={"runtime": 2, "slurm_extra": "'--signal=USR1@20'"})
    stopper.join(timeout=5)

    jobs = [j for j in sacct_jobs(chunked) if j["comment"].startswith("rule_train")]
    report(f"chunked training on SLURM: {len(jobs)} jobs of 2 minutes in {seconds:.0f} s, "
           f"states {[(j['state'], j['exit']) for j in jobs]}")
    assert len(jobs) >= 3 and jobs[-1]["state"] == "COMPLETED", jobs
    assert by_hand, "the first training job was not seen running"
    # (the job's own exit status is 1: Snakemake inside it reports the rule's 75 as a failure)
    assert by_hand["job"] == jobs[0]["id"] and jobs[0]["state"] == "FAILED", jobs[0]

    history = (chunked / TRAINED / "history.log").read_text()
    saves, resumes = STOP_SAVED.findall(history), RESUMED.findall(history)
    stops = [line for line in history.splitlines() if "stopping after this step" in line]
    # a job whose warning comes after the last step (its start-up was slow: a busy machine) is ended at its limit
    # while writing the final files; the next job resumes after the last epoch and only writes them
    finished = RESUMED_AFTER_TRAINING.findall(history)
    assert len(finished) <= 1 and all(int(epoch) == epochs for _, epoch, _ in finished), history
    # a job whose warning comes before the trainer starts (a start-up slowed by load) ends without touching
    # last.pt or the history; the next job resumes where the one before it saved
    trained = [job for job in jobs if f"SLURM job {job['id']} " in history]
    idle = [job for job in jobs if job not in trained]
    report(f"  jobs that never reached the trainer: {[(j['id'], j['state']) for j in idle]}")
    assert jobs[0] in trained and jobs[-1] in trained and all(j["state"] != "COMPLETED" for j in idle), jobs
    assert len(stops) == len(resumes) and len(resumes) + len(finished) == len(trained) - 1, history
    # each job continued at the batch the previous one saved, and the first saved right after the scancel
    assert [save[1:] for save in saves[-len(resumes):]] == [resume[1:] for resume in resumes], history
    first_save = datetime.fromisoformat(saves[0][0])
    assert 0 <= (first_save - by_hand["at"].replace(microsecond=0)).total_seconds() <= 10, (by_hand, history)
    for stop, save, resume in zip(stops, saves, resumes):
        stopped = datetime.fromisoformat(stop.split()[0])
        report(f"  stop at {stop.split()[0]}: saved batch {save[1]} of epoch {save[2]} "
               f"{(datetime.fromisoformat(save[0]) - stopped).total_seconds():.0f} s later (work lost: none, the "
               f"step finished); next job resumed {(datetime.fromisoformat(resume[0]) - stopped).total_seconds():.0f}"
               " s after the stop")

    # every epoch once, in order; the first ones (the first job's stop and its resubmission among them) as the
    # uninterrupted local run trained them, from the same recipe but for the epoch count
    rows = csv_rows(chunked / TRAINED / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    straight = csv_rows(tmp_path / "timing/metrics.csv")
    assert int(saves[0][2]) <= len(straight)  # the first stop fell inside the compared epochs
    for column in ("step", "train_loss", "val_cider"):
        assert [float(r[column]) for r in rows[:len(straight)]] == pytest.approx(
            [float(r[column]) for r in straight], rel=1e-6), column
    chunked_weights = torch.load(chunked / TRAINED / "checkpoint.pt", map_location="cpu", weights_only=False)
    timing_weights = torch.load(tmp_path / "timing/checkpoint.pt", map_location="cpu", weights_only=False)

    def recipe(checkpoint):
        return {k: v for k, v in checkpoint["hparams"].items() if k not in ("epochs", "patience")}

    assert recipe(chunked_weights) == recipe(timing_weights)


def csv_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))
