"""Shared helpers: describe the machine and append a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()} CPU cores ({cpu})"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
        text += f", torch {torch.__version__}"
    except ImportError:
        pass
    return text


def append_results(title: str, lines: list[str], results: Path = RESULTS) -> None:
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = [f"## {title}", "", f"- date: {stamp}", f"- machine: {machine()}", f"- command: `{command}`", "",
             *lines, ""]
    text = "\n".join(block) + "\n"
    print(text)
    if not results.exists():
        results.write_text("# Benchmark results\n\nEach section is appended by a script in this folder.\n\n")
    with open(results, "a", encoding="utf-8") as handle:
        handle.write(text)


def timed(function, repeats: int) -> float:
    """Median seconds of a call (after a warm-up): one slow call of a noisy machine does not move it."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def under_bf16(step, device_type: str = "cpu"):
    """``step`` wrapped in bf16 autocast: what ``train.precision: bf16`` does around a training step."""
    import torch

    def wrapped():
        with torch.autocast(device_type, dtype=torch.bfloat16):
            step()
    return wrapped
