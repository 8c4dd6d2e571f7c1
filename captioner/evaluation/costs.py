"""What each stage and each model cost: Snakemake's per-job benchmark files summed into tables/costs.{md,csv}.

Every rule writes ``benchmarks/<rule>/<job>.tsv`` (or ``benchmarks/<rule>.tsv`` when it runs once): wall seconds,
CPU seconds and the peak resident memory of the job's processes. Jobs that hold GPUs (their ``gpu`` resource) are
also counted in GPU-hours, wall time x GPUs held: what a GPU allocation of a cluster is charged for that job.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.errors import InputError

# <model>.seed<k>[.<split>]: the job names of the per-model rules (train, decode, score, attention maps)
MODEL_JOB = re.compile(r"^(?P<model>[A-Za-z0-9_]+)\.seed(?P<seed>\d+)(?:\.(?P<split>[A-Za-z0-9_]+))?$")
CSV_COLUMNS = ("table", "name", "jobs", "wall_s", "cpu_s", "max_rss_mb", "gpu_hours")


@dataclass
class Job:
    rule: str
    name: str  # the wildcard part of the file name ("" for a rule that runs once)
    wall_s: float
    cpu_s: float
    max_rss_mb: float | None
    gpus: int

    @property
    def model(self) -> str | None:
        match = MODEL_JOB.match(self.name)
        return match["model"] if match else None

    @property
    def gpu_hours(self) -> float:
        return self.wall_s * self.gpus / 3600


def _number(value: str) -> float | None:
    return None if value in ("", "NA", "-") else float(value)


def read_benchmark(path: Path) -> tuple[float, float, float | None]:
    """(wall s, CPU s, max RSS MB) of one benchmark file; the mean over its rows (``repeat(...)`` benchmarks)."""
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"))
        if not rows:
            raise ValueError("no rows")
        wall = sum(float(row["s"]) for row in rows) / len(rows)
        cpu = [_number(row.get("cpu_time", "NA")) for row in rows]
        rss = [_number(row.get("max_rss", "NA")) for row in rows]
    except (KeyError, ValueError, TypeError) as error:
        raise InputError(f"{path}: not a Snakemake benchmark file ({error})") from None
    cpu_s = sum(c for c in cpu if c is not None) / len(rows)
    rss_mb = max((r for r in rss if r is not None), default=None)
    return wall, cpu_s, rss_mb


def gpus_of(rule: str, model: str | None, gpus: dict) -> int:
    held = gpus.get(rule, 0)
    if isinstance(held, dict):
        return int(held.get(model, 0)) if model else 0
    return int(held)


def collect(root: Path, models: set[str] | None, gpus: dict) -> list[Job]:
    """The jobs under ``root``; model jobs of models no longer configured are left out (their files stay)."""
    jobs = []
    for path in sorted(root.rglob("*.tsv")):
        relative = path.relative_to(root)
        rule, name = (relative.parts[0], str(Path(*relative.parts[1:]).with_suffix(""))) if len(relative.parts) > 1 \
            else (path.stem, "")
        wall, cpu, rss = read_benchmark(path)
        job = Job(rule, name, wall, cpu, rss, 0)
        if models is not None and job.model is not None and job.model not in models:
            continue
        job.gpus = gpus_of(rule, job.model, gpus)
        jobs.append(job)
    return jobs


def _summary(jobs: list[Job]) -> dict:
    rss = [j.max_rss_mb for j in jobs if j.max_rss_mb is not None]
    return {"jobs": len(jobs), "wall_s": sum(j.wall_s for j in jobs), "cpu_s": sum(j.cpu_s for j in jobs),
            "max_rss_mb": max(rss) if rss else None, "gpu_hours": sum(j.gpu_hours for j in jobs)}


def stage_of(job: Job) -> str:
    """The by-stage row of a job: its rule, with the store kind for extraction jobs (grid and regions differ)."""
    if job.model is None and job.name:
        return f"{job.rule} {job.name}"
    return job.rule


def summarise(jobs: list[Job]) -> dict[str, list[tuple[str, dict]]]:
    """{"stage": [(row name, summary)], "model": [...], "total": [...]}, in order of first appearance."""
    by_stage: dict[str, list[Job]] = {}
    by_model: dict[str, list[Job]] = {}
    for job in jobs:
        by_stage.setdefault(stage_of(job), []).append(job)
        if job.model is not None:
            by_model.setdefault(job.model, []).append(job)
    return {"stage": [(name, _summary(group)) for name, group in by_stage.items()],
            "model": [(name, _summary(group)) for name, group in by_model.items()],
            "total": [("all jobs", _summary(jobs))]}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def to_markdown(tables: dict, title: str) -> str:
    def table(rows, first):
        lines = [f"| {first} | jobs | wall min | CPU min | max RSS MB | GPU-h |", "|---|---:|---:|---:|---:|---:|"]
        for name, s in rows:
            rss = "" if s["max_rss_mb"] is None else f"{s['max_rss_mb']:.0f}"
            lines.append(f"| {name} | {s['jobs']} | {_minutes(s['wall_s'])} | {_minutes(s['cpu_s'])} | {rss} | "
                         f"{s['gpu_hours']:.3f} |")
        return "\n".join(lines)

    total = tables["total"][0][1]
    return (f"# {title}\n\n"
            f"{total['jobs']} jobs, {_minutes(total['wall_s'])} min of job wall time in all (jobs that ran side by "
            f"side overlap), {_minutes(total['cpu_s'])} CPU min, {total['gpu_hours']:.3f} GPU-h.\n\n"
            "## By stage\n\n" + table(tables["stage"] + tables["total"], "stage") + "\n\n"
            "## By model (training, decoding, scoring, attention maps; all seeds)\n\n"
            + table(tables["model"], "model") + "\n\n"
            "Wall and CPU time and peak RSS from Snakemake's `benchmark:` file of each job (benchmarks/). GPU-h: "
            "wall time x the GPUs a job holds (its `gpu` resource), as a cluster charges it; on a run without a GPU "
            "the same jobs ran on the CPU. A job rerun keeps its last run's figures only (a training run resumed "
            "over several SLURM jobs: the last one).\n")


def to_csv(tables: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for kind, rows in tables.items():
        for name, s in rows:
            writer.writerow([kind, name, s["jobs"], f"{s['wall_s']:.1f}", f"{s['cpu_s']:.1f}",
                             "" if s["max_rss_mb"] is None else f"{s['max_rss_mb']:.1f}", f"{s['gpu_hours']:.4f}"])
    return out.getvalue()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmarks", required=True, help="the run's benchmarks/ folder")
    parser.add_argument("--models", default=None, help="comma-separated configured models (others are left out)")
    parser.add_argument("--gpus", default="{}", help='JSON {rule: GPUs held, or {model: GPUs}} (e.g. {"decode": 1})')
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--title", default="Costs")


def run(args) -> None:
    root = Path(args.benchmarks)
    if not root.is_dir():
        raise InputError(f"{root}: no benchmarks folder")
    try:
        gpus = json.loads(args.gpus)
    except json.JSONDecodeError as error:
        raise InputError(f"--gpus: not JSON ({error})") from None
    models = set(args.models.split(",")) if args.models else None
    jobs = collect(root, models, gpus)
    if not jobs:
        raise InputError(f"{root}: no benchmark files")
    tables = summarise(jobs)
    write_text(args.out_csv, to_csv(tables))
    write_text(args.out_md, to_markdown(tables, args.title))
    total = tables["total"][0][1]
    print(f"costs -> {args.out_md}: {total['jobs']} jobs, {_minutes(total['wall_s'])} job-min, "
          f"{total['gpu_hours']:.3f} GPU-h", file=sys.stderr)
