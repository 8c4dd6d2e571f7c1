"""A job's peak memory and CPU time, measured by the kernel from inside the job.

Snakemake's ``benchmark:`` samples a job's processes (every 0.5 s at first, then every 30 s), so a job of a few
seconds may be sampled while only its shell runs (a "max RSS" of 3 MB), and a peak between two samples is missed.
``getrusage`` has no such gap: the kernel keeps each process's high-water mark of resident memory and its CPU
seconds, and those of the children it has waited for (Java for the scorer, DataLoader workers, ``unzip``). With
``CAPTIONER_USAGE=1`` in the environment (the workflow sets it for every job) each ``python -m captioner|features``
command prints one ``usage: {json}`` line to stderr as it exits, into the rule's log; ``tables/costs.md`` reads it
from there.

Linux counts in a process's peak the pages of its parent at the moment it was started (the copy that ``fork`` made
and ``exec`` replaced): a job started by a shell (Snakemake's jobs are) is measured as itself, and a child started by
a large parent (Java by the scorer, a loader worker) reports at least that parent's size. So a job's figure is its
largest process's, not a sum (see :func:`job_usage`).
"""

from __future__ import annotations

import json
import os
import resource
import sys

ENVIRONMENT = "CAPTIONER_USAGE"
PREFIX = "usage: "
# ru_maxrss is in KiB on Linux, in bytes on macOS
RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def measure() -> dict:
    """This process's peak RSS, its largest waited-for child's, their CPU seconds, its rank under torchrun, and whether
    it used a GPU (CUDA initialised)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    torch = sys.modules.get("torch")  # (never imported here: a command that did not import it used no GPU)
    return {"cuda": bool(torch is not None and torch.cuda.is_initialized()),
            "rss_mb": round(own.ru_maxrss * RSS_UNIT / 2 ** 20, 1),
            "children_rss_mb": round(children.ru_maxrss * RSS_UNIT / 2 ** 20, 1),
            "cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 2),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")), "rank": int(os.environ.get("RANK", "0"))}


def report() -> None:
    """Print the ``usage:`` line when the environment asks for it (the workflow's jobs); else nothing."""
    if os.environ.get(ENVIRONMENT):
        print(PREFIX + json.dumps(measure(), sort_keys=True), file=sys.stderr, flush=True)


def parse(text: str) -> list[dict]:
    """The usage records of a log, in order (lines that do not parse are not ours: skipped)."""
    records = []
    for line in text.splitlines():
        if line.startswith(PREFIX):
            try:
                record = json.loads(line[len(PREFIX):])
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and {"rss_mb", "children_rss_mb", "cpu_s"} <= record.keys():
                records.append(record)
    return records


def used_gpu(records: list[dict]) -> bool | None:
    """Whether a job's commands used a GPU; None when no record says (older logs, jobs that record nothing)."""
    known = [bool(r["cuda"]) for r in records if "cuda" in r]
    return any(known) if known else None


def job_usage(records: list[dict]) -> tuple[float, float] | None:
    """(peak RSS MB, CPU s) of a job from its commands' records, None without any.

    A command's peak is that of its largest process, itself or a child: adding them would count twice what a forked
    child shares with its parent (the kernel's count for a child includes its parent's pages from before ``exec``).
    The commands of a job run one after another (download, then unpack): the job's peak is the largest of theirs;
    the workers of one torchrun run at once: their peaks add up. CPU seconds add up in both cases.
    """
    if not records:
        return None
    sequential = [max(r["rss_mb"], r["children_rss_mb"]) for r in records if int(r.get("world_size", 1)) <= 1]
    parallel = sum(max(r["rss_mb"], r["children_rss_mb"]) for r in records if int(r.get("world_size", 1)) > 1)
    return max(sequential + [parallel]), sum(float(r["cpu_s"]) for r in records)
