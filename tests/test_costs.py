"""tables/costs.{md,csv}: Snakemake benchmark files summed per stage and per model, GPU jobs in GPU-hours."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest

from captioner.evaluation.costs import collect, read_benchmark, summarise, to_csv, to_markdown
from pipeline.errors import InputError

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(root, relative, wall, cpu, rss="512.5"):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:00\t{rss}\t900\t400\t450\t1\t2\t90\t{cpu}\n")
    return path


@pytest.fixture
def benchmarks(tmp_path):
    root = tmp_path / "benchmarks"
    bench(root, "prepare_text.tsv", 2.0, 1.5, rss="NA")  # a job too short for a memory sample
    bench(root, "extract_features/grid.tsv", 360.0, 700.0, rss="2048")
    bench(root, "extract_features/regions.tsv", 180.0, 350.0)
    bench(root, "train/sat_soft.seed0.tsv", 7200.0, 7000.0)
    bench(root, "train/sat_soft.seed1.tsv", 3600.0, 3500.0)
    bench(root, "train/m2_xe.seed0.tsv", 1800.0, 1700.0)
    bench(root, "decode/sat_soft.seed0.test.tsv", 60.0, 55.0)
    bench(root, "score/sat_soft.seed0.test.tsv", 30.0, 40.0)
    bench(root, "train/old_model.seed0.tsv", 99.0, 99.0)  # no longer configured
    return root


GPUS = {"extract_features": 1, "decode": 1, "train": {"sat_soft": 2, "m2_xe": 1}}


def test_stages_and_models_sum_their_jobs_and_gpu_jobs_count_gpu_hours(benchmarks):
    jobs = collect(benchmarks, {"sat_soft", "m2_xe"}, GPUS)
    assert "old_model" not in {job.model for job in jobs}
    tables = summarise(jobs)
    stages = dict(tables["stage"])
    assert stages["train"]["jobs"] == 3 and stages["train"]["wall_s"] == 12600.0
    assert stages["train"]["gpu_hours"] == pytest.approx((7200 + 3600) * 2 / 3600 + 1800 / 3600)
    assert stages["extract_features grid"]["max_rss_mb"] == 2048.0
    assert stages["extract_features grid"]["gpu_hours"] == pytest.approx(0.1)
    assert stages["score"]["gpu_hours"] == 0.0 and stages["prepare_text"]["max_rss_mb"] is None
    models = dict(tables["model"])
    assert set(models) == {"sat_soft", "m2_xe"}
    assert models["sat_soft"]["jobs"] == 4 and models["sat_soft"]["wall_s"] == 7200 + 3600 + 60 + 30
    assert models["sat_soft"]["cpu_s"] == 7000 + 3500 + 55 + 40
    total = tables["total"][0][1]
    assert total["jobs"] == 8 and total["wall_s"] == sum(s["wall_s"] for s in stages.values())
    rows = list(csv.DictReader(io.StringIO(to_csv(tables))))
    assert {(r["table"], r["name"]) for r in rows} >= {("stage", "train"), ("model", "m2_xe"), ("total", "all jobs")}
    markdown = to_markdown(tables, "Costs: demo")
    assert "| train | 3 | 210.0 | 203.3 |" in markdown and "| m2_xe | 1 | 30.0 |" in markdown


def test_every_model_kept_without_a_model_list_and_repeats_averaged(benchmarks):
    repeat = benchmarks / "decode/m2_xe.seed0.test.tsv"
    repeat.write_text(HEADER + "10\t0\t100\t0\t0\t0\t0\t0\t0\t8\n" + "20\t0\t300\t0\t0\t0\t0\t0\t0\t12\n")
    assert read_benchmark(repeat) == (15.0, 10.0, 300.0)
    assert "old_model" in {job.model for job in collect(benchmarks, None, GPUS)}


def test_a_broken_benchmark_file_is_named(benchmarks):
    bad = benchmarks / "decode/m2_xe.seed0.test.tsv"
    bad.write_text("not\ta benchmark\n1\t2\n")
    with pytest.raises(InputError, match="m2_xe.seed0.test.tsv: not a Snakemake benchmark file"):
        collect(benchmarks, None, GPUS)


def test_command_writes_both_tables_and_refuses_an_empty_folder(benchmarks, tmp_path):
    def command(folder):
        return subprocess.run([sys.executable, "-m", "captioner", "job", "costs", "--benchmarks", str(folder),
                               "--gpus", '{"decode": 1}', "--out-md", str(tmp_path / "costs.md"),
                               "--out-csv", str(tmp_path / "costs.csv")], capture_output=True, text=True)

    assert command(benchmarks).returncode == 0
    assert "## By model" in (tmp_path / "costs.md").read_text()
    (tmp_path / "empty").mkdir()
    failed = command(tmp_path / "empty")
    assert failed.returncode != 0 and failed.stderr.strip().startswith("error:") and "empty" in failed.stderr


def usage_line(rss_mb, children_rss_mb=0.0, cpu_s=1.0, world_size=1, rank=0):
    import json

    return "usage: " + json.dumps({"rss_mb": rss_mb, "children_rss_mb": children_rss_mb, "cpu_s": cpu_s,
                                   "world_size": world_size, "rank": rank})


def test_the_jobs_own_usage_lines_replace_what_snakemake_sampled(benchmarks, tmp_path):
    """prepare_text ran 2 s (Snakemake saw no memory); a short score job's sample saw only its shell (3 MB); the
    jobs' logs say what the kernel counted. torchrun's workers add up, a download and its unpack do not."""
    logs = tmp_path / "logs"
    bench(benchmarks, "score/m2_xe.seed0.test.tsv", 12.0, 0.1, rss="3.1")
    bench(benchmarks, "download/val2014.tsv", 40.0, 5.0, rss="3.0")
    for relative, lines in {
        "prepare_text.log": ["note: 5 empty captions dropped", usage_line(700.0, cpu_s=9.5)],
        "score/m2_xe.seed0.test.log": [usage_line(310.0, children_rss_mb=1200.0, cpu_s=25.0)],
        "train/sat_soft.seed0.log": [usage_line(900.0, cpu_s=3000.0, world_size=2, rank=r) for r in (0, 1)],
    }.items():
        (logs / relative).parent.mkdir(parents=True, exist_ok=True)
        (logs / relative).write_text("\n".join(lines) + "\n")
    data_logs = tmp_path / "data/logs"
    data_logs.mkdir(parents=True)
    (data_logs / "val2014.log").write_text(usage_line(80.0, cpu_s=4.0) + "\nunpacked\n" +
                                           usage_line(60.0, children_rss_mb=70.0, cpu_s=30.0) + "\n")
    jobs = {(job.rule, job.name): job for job in collect(benchmarks, None, GPUS, logs, [tmp_path / "nowhere",
                                                                                          data_logs])}
    assert jobs["prepare_text", ""].max_rss_mb == 700.0 and jobs["prepare_text", ""].cpu_s == 9.5
    assert jobs["score", "m2_xe.seed0.test"].max_rss_mb == 1200.0  # its largest process: the scorer's Java
    assert jobs["train", "sat_soft.seed0"].max_rss_mb == 1800.0 and jobs["train", "sat_soft.seed0"].cpu_s == 6000.0
    assert jobs["download", "val2014"].max_rss_mb == 80.0 and jobs["download", "val2014"].cpu_s == 34.0
    # no log: Snakemake's sample where the job ran long enough to be sampled, else nothing
    assert jobs["extract_features", "grid"].max_rss_mb == 2048.0
    bench(benchmarks, "tables.tsv", 3.0, 0.5, rss="3.2")
    tables = summarise(collect(benchmarks, None, GPUS, logs, []))
    assert dict(tables["stage"])["tables"]["max_rss_mb"] is None
    assert "| tables | 1 | 0.1 | 0.0 | not sampled |" in to_markdown(tables, "Costs")


def test_a_command_reports_its_own_and_its_childrens_peak_memory(tmp_path):
    """The usage line is the kernel's count: a child that held 400 MB, then the process itself 300 MB."""
    import os

    from pipeline import usage

    script = ("import subprocess, sys\n"
              "subprocess.run([sys.executable, '-c', 'x = bytearray(400 * 2 ** 20)'], check=True)\n"
              "held = bytearray(300 * 2 ** 20)\n"
              "from pipeline import usage\n"
              "usage.report()\n")
    # started by a shell, as Snakemake starts a job: Linux counts a process's parent's pages from before its exec in
    # the process's own peak, and pytest's are a gigabyte; the shell's are a few MB
    command = ["sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, script]
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ,
                                                                                         CAPTIONER_USAGE="1"))
    (record,) = usage.parse(result.stderr)
    assert 300 <= record["rss_mb"] < 380 and 400 <= record["children_rss_mb"] < 480, record
    silent = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={k: v for k, v in os.environ.items() if k != "CAPTIONER_USAGE"})
    assert usage.parse(silent.stderr) == []


def test_every_cli_command_logs_its_usage_line_when_the_workflow_asks(tmp_path):
    import os

    from pipeline import usage

    env = dict(os.environ, CAPTIONER_USAGE="1")
    ok = subprocess.run([sys.executable, "-m", "captioner", "job", "costs", "--benchmarks", str(tmp_path / "none"),
                         "--out-md", str(tmp_path / "c.md"), "--out-csv", str(tmp_path / "c.csv")],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 1 and ok.stderr.startswith("error:")  # a failed command reports too
    (record,) = usage.parse(ok.stderr)
    assert record["rss_mb"] > 10 and record["world_size"] == 1


def test_gpu_hours_count_only_jobs_that_ran_on_a_gpu(benchmarks, tmp_path):
    """A GPU rule's job that ran on the CPU (the demo, a laptop: its usage line says CUDA was never initialised)
    held no GPU; one that used CUDA, and one whose log says nothing, are counted as before."""
    import json

    logs = tmp_path / "logs"
    (logs / "train").mkdir(parents=True)
    (logs / "extract_features").mkdir(parents=True)
    line = {"rss_mb": 900.0, "children_rss_mb": 0.0, "cpu_s": 10.0}
    (logs / "train/sat_soft.seed0.log").write_text("usage: " + json.dumps({**line, "cuda": False}) + "\n")
    (logs / "train/m2_xe.seed0.log").write_text("usage: " + json.dumps({**line, "cuda": True}) + "\n")
    jobs = {(job.rule, job.name): job for job in collect(benchmarks, None, GPUS, logs, [])}
    assert jobs["train", "sat_soft.seed0"].gpu_hours == 0.0
    assert jobs["train", "m2_xe.seed0"].gpu_hours == pytest.approx(0.5)
    assert jobs["train", "sat_soft.seed1"].gpu_hours == pytest.approx(2.0)  # no log: its `gpu` resource
    assert jobs["extract_features", "grid"].gpu_hours == pytest.approx(0.1)


def test_a_command_says_whether_it_used_cuda():
    from pipeline import usage

    assert usage.measure()["cuda"] is False  # torch imported here, CUDA never initialised (no GPU in tests)
    assert usage.used_gpu([{"cuda": False}, {"cuda": True}]) is True
    assert usage.used_gpu([{"rss_mb": 1}]) is None
