"""The SLURM profile against a real single-node SLURM cluster (tests/slurm/start-slurm.sh): every rule is submitted
with sbatch by snakemake-executor-plugin-slurm, runs under SLURM and gives the same results as a local run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.workflow_helpers import PROJECT, TINY_CONFIG, copy_workflow, edit_config, environment, planned_jobs

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


def cluster_profile(workdir: Path) -> str:
    """The real profiles/slurm with its placeholders filled for the test cluster, small memory requests and
    fast status polling; written as a workflow profile beside the copied workflow."""
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
    assert not [v for r in profile["set-resources"].values() for v in r.values() if "CHANGE_ME" in str(v)]
    profile.update({"latency-wait": 5, "slurm-init-seconds-before-status-checks": 1,
                    "seconds-between-status-checks": 1, "slurm-logdir": "slurm_logs", "retries": 0})
    folder = workdir / "profiles/slurm-test"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return "profiles/slurm-test"


def submit(workdir: Path, *targets: str) -> tuple[subprocess.CompletedProcess, float]:
    command = [sys.executable, "-m", "snakemake", "--workflow-profile", cluster_profile(workdir), "--configfile",
               TINY_CONFIG, "--verbose", *targets]
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


def test_whole_dag_through_slurm_equals_a_local_run(cluster, finished_run, tmp_path):
    local = finished_run
    workdir = copy_workflow(tmp_path / "cluster")
    expected_jobs = planned_jobs(workdir)
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
    for path in ["tables/scores.csv", "eval/m2_scst/seed0/predictions_test.json",
                 "eval/sat_hard/seed0/predictions_test.json"]:
        assert (workdir / run / path).read_text() == (local / run / path).read_text(), path

    again, _ = submit(workdir)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert len(sacct_jobs(workdir)) == len(jobs)  # nothing new was submitted


def test_feature_shards_run_as_concurrent_slurm_jobs(cluster, tmp_path):
    workdir = copy_workflow(tmp_path / "shards")
    edit_config(workdir, lambda c: c["features"].__setitem__("shards", 2))
    result, seconds = submit(workdir, "results/tiny/features/grid.h5", "results/tiny/features/regions.h5")
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
