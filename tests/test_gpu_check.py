"""The GPU check script runs end to end (on the CPU at toy sizes), so it works the day a GPU is lent."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_run_writes_every_row(tmp_path):
    results = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--device", "cpu", "--workers", "0",
                           "--results", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = results.read_text()
    assert "## GPU check (smoke run on the CPU)" in text
    for row in ("| grid resnet18@64", "| grid timm test_vit@64 (16 x 64)", "| grid input alone", "| regions: bottom-up detector resnet50, 96/128 px, "
                "trunk fp32", "trunk bf16", "| fp32 | 2 | 100.0% | 0.00 | 0.0e+00 |", "| bf16 trunk | 2 |",
                "| M² XE training, batch 50", "| M² XE training, batch 100", "| M² SCST step",
                "| M² beam search", "| SAT soft beam search"):
        assert row in text, row
