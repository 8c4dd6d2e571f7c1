"""What each stage and each model cost: Snakemake's per-job benchmark files summed into tables/costs.{md,csv}.

Every rule writes ``benchmarks/<rule>/<job>.tsv`` (or ``benchmarks/<rule>.tsv`` when it runs once): wall seconds,
and CPU seconds and resident memory of the job's processes as Snakemake sampled them. Sampling misses short jobs and
peaks between samples, so each job's commands also log their own peak memory and CPU time as the kernel counted
them (:mod:`pipeline.usage`, in the rule's log at ``logs/<rule>/<job>.log``, mirroring the benchmark's path); those
are used where present. A job with neither an own record nor a benchmark that ran long enough to be sampled
(``SAMPLED_SECONDS``) shows "not sampled" rather than a figure. Jobs that hold GPUs (their ``gpu`` resource) are also
counted in GPU-hours, wall time x GPUs held: what a GPU allocation of a cluster is charged for that job.
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

from pipeline import usage
from pipeline.atomic import write_text
from pipeline.errors import InputError

# <model>.seed<k>[.<split>]: the job names of the per-model rules (train, decode, score, attention maps)
MODEL_JOB = re.compile(r"^(?P<model>[A-Za-z0-9_]+)\.seed(?P<seed>\d+)(?:\.(?P<split>[A-Za-z0-9_]+))?$")
CSV_COLUMNS = ("table", "name", "jobs", "wall_s", "cpu_s", "max_rss_mb", "gpu_hours")
# Snakemake samples a job every 0.5 s for its first 15 s, then every 30 s: a job this long was sampled many times
# while it ran, a shorter one may have been seen only as its shell
SAMPLED_SECONDS = 30.0
NOT_SAMPLED = "not sampled"


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


def log_of(relative: Path, logs: Path | None, download_logs: list[Path]) -> Path | None:
    """The rule log of the job whose benchmark is ``relative`` (``train/m2_xe.seed0.tsv``): the same path under the
    logs folder; downloads keep their logs beside the data they fetch (``download/<name>.tsv``)."""
    candidates = [logs / relative.with_suffix(".log")] if logs is not None else []
    if relative.parts[0] == "download":
        candidates += [folder / f"{relative.stem}.log" for folder in download_logs]
    return next((path for path in candidates if path.is_file()), None)


def own_figures(wall: float, cpu: float, rss: float | None, log: Path | None) -> tuple[float, float | None, bool]:
    """(CPU s, peak RSS MB, used a GPU) of a job: its commands' own records where its log has them (the peak never
    below what Snakemake sampled), else the benchmark's, whose RSS counts only when the job ran long enough to be
    sampled. A job is taken to have used its GPUs unless its records say it ran without one."""
    records = usage.parse(log.read_text(errors="replace")) if log is not None else []
    measured = usage.job_usage(records)
    gpu = usage.used_gpu(records) is not False
    if measured is not None:
        peak, own_cpu = measured
        return own_cpu, max(peak, rss or 0.0), gpu
    return cpu, rss if wall >= SAMPLED_SECONDS else None, gpu


def collect(root: Path, models: set[str] | None, gpus: dict, logs: Path | None = None,
            download_logs: list[Path] | None = None) -> list[Job]:
    """The jobs under ``root``; model jobs of models no longer configured are left out (their files stay)."""
    jobs = []
    for path in sorted(root.rglob("*.tsv")):
        relative = path.relative_to(root)
        rule, name = (relative.parts[0], str(Path(*relative.parts[1:]).with_suffix(""))) if len(relative.parts) > 1 \
            else (path.stem, "")
        wall, cpu, rss = read_benchmark(path)
        cpu, rss, used_gpu = own_figures(wall, cpu, rss, log_of(relative, logs, download_logs or []))
        job = Job(rule, name, wall, cpu, rss, 0)
        if models is not None and job.model is not None and job.model not in models:
            continue
        job.gpus = gpus_of(rule, job.model, gpus) if used_gpu else 0  # a GPU job run on the CPU held none
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
        lines = [f"| {first} | jobs | wall min | CPU min | peak RSS MB | GPU-h |", "|---|---:|---:|---:|---:|---:|"]
        for name, s in rows:
            rss = NOT_SAMPLED if s["max_rss_mb"] is None else f"{s['max_rss_mb']:.0f}"
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
            "Wall time from Snakemake's `benchmark:` file of each job (benchmarks/). CPU time and peak RSS as the kernel "
            "counted them inside each job (getrusage, the `usage:` line of its log): a command's peak is that of its "
            "largest process (itself or a child: Java, a loader worker), a job's the largest of its commands' (the "
            "sum over torchrun's workers), never below the sum over its processes that Snakemake sampled; "
            "what Snakemake sampled; a row's peak is its largest job's. Where a log has no such line, Snakemake's "
            f"samples are shown for jobs of {SAMPLED_SECONDS:.0f} s or more and \"{NOT_SAMPLED}\" for shorter ones "
            "(it samples every 0.5 s, then every 30 s, and may see only the job's shell). GPU-h: "
            "wall time x the GPUs a job holds (its `gpu` resource), as a cluster charges it, for the jobs that ran "
            "on a GPU (their `usage:` line says whether CUDA was used; a run without a GPU shows 0). A job rerun "
            "keeps its last run's figures only (a training run resumed over several SLURM jobs: the last one).\n")


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
    parser.add_argument("--logs", help="the run's logs/ folder (the jobs' usage lines; its paths mirror benchmarks/)")
    parser.add_argument("--download-logs", nargs="*", default=[],
                        help="folders of the download rules' logs (beside the data they fetch)")


def run(args) -> None:
    root = Path(args.benchmarks)
    if not root.is_dir():
        raise InputError(f"{root}: no benchmarks folder")
    try:
        gpus = json.loads(args.gpus)
    except json.JSONDecodeError as error:
        raise InputError(f"--gpus: not JSON ({error})") from None
    models = set(args.models.split(",")) if args.models else None
    jobs = collect(root, models, gpus, Path(args.logs) if args.logs else None,
                   [Path(folder) for folder in args.download_logs])
    if not jobs:
        raise InputError(f"{root}: no benchmark files")
    tables = summarise(jobs)
    write_text(args.out_csv, to_csv(tables))
    write_text(args.out_md, to_markdown(tables, args.title))
    total = tables["total"][0][1]
    print(f"costs -> {args.out_md}: {total['jobs']} jobs, {_minutes(total['wall_s'])} job-min, "
          f"{total['gpu_hours']:.3f} GPU-h", file=sys.stderr)
