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
        return subprocess.run([sys.executable, "-m", "captioner", "costs", "--benchmarks", str(folder),
                               "--gpus", '{"decode": 1}', "--out-md", str(tmp_path / "costs.md"),
                               "--out-csv", str(tmp_path / "costs.csv")], capture_output=True, text=True)

    assert command(benchmarks).returncode == 0
    assert "## By model" in (tmp_path / "costs.md").read_text()
    (tmp_path / "empty").mkdir()
    failed = command(tmp_path / "empty")
    assert failed.returncode != 0 and failed.stderr.strip().startswith("error:") and "empty" in failed.stderr
