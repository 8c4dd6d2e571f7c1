"""`time make demo` on a fresh clone, as a newcomer runs it: set-up and demo timed apart, then the run's per-stage
costs (tables/costs.md) and the demo's quality criteria, appended to benchmarks/RESULTS.md.

``--isa avx2`` runs it the way a plain AVX2 laptop or CI runner computes on a machine with wider units: torch's own
kernels, oneDNN and MKL are capped at AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), so
``precision: auto`` falls back to fp32 there as well. ``--venv`` reuses an installed virtual environment (its set-up
time is then that of a no-op); without it the clone builds its own .venv, which is the set-up time reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
SIGHTED = ("sat_soft", "sat_hard", "m2_xe", "m2_scst")


def timed(command: list[str], cwd: Path, env: dict, log: Path) -> float:
    started = time.monotonic()
    with open(log, "w") as out:
        result = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed with status {result.returncode}; see {log}")
    return time.monotonic() - started


def criteria(run: Path) -> list[str]:
    """The demo's bars: test CIDEr-D >= 100 and >= 3x its blind baseline (with the ratio's interval), m2_scst >=
    m2_xe, and the nocaps-like set's out-of-domain drop."""
    with open(run / "tables/scores.csv") as handle:
        scores = {row["model"]: row for row in csv.DictReader(handle)}
    pairs = {(p["a"], p["b"]): p["metrics"]["CIDEr-D"] for p in json.loads((run / "tables/significance.json")
                                                                          .read_text())["pairs"]}
    lines = ["| model | test CIDEr-D [95% CI] | blind | ratio [CI] | CIDEr-D >= 100 and ratio >= 3 |",
             "|---|---:|---:|---:|---|"]
    for model in SIGHTED:
        row, pair = scores[model], pairs[(model, f"{model}_blind")]
        cider = float(row["CIDEr-D"])
        low, high = pair["ratio_interval"]
        ok = cider >= 100 and pair["ratio"] >= 3
        lines.append(f"| `{model}` | {cider:.1f} [{float(row['CIDEr-D CI low']):.1f}, "
                     f"{float(row['CIDEr-D CI high']):.1f}] | {float(scores[model + '_blind']['CIDEr-D']):.1f} | "
                     f"{pair['ratio']:.2f} [{low:.2f}, {high:.2f}] | {'yes' if ok else 'NO'} |")
    scst, xe = float(scores["m2_scst"]["CIDEr-D"]), float(scores["m2_xe"]["CIDEr-D"])
    lines.append(f"\n`m2_scst` {scst:.1f} vs `m2_xe` {xe:.1f}: {'>=' if scst >= xe else 'BELOW'}")
    nocaps = run / "tables/nocaps.csv"
    if nocaps.exists():
        with open(nocaps) as handle:
            drops = [f"`{row['model']}` {float(row['in-domain CIDEr-D']):.1f} / {float(row['out-domain CIDEr-D']):.1f}"
                     for row in csv.DictReader(handle) if row["model"] in SIGHTED]
        lines.append("nocaps-like set, in-domain / out-of-domain CIDEr-D: " + ", ".join(drops))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--venv", help="reuse this virtual environment instead of building one in the clone")
    parser.add_argument("--workdir", help="where to clone (default: a new temporary folder)")
    parser.add_argument("--ref", default="HEAD", help="the commit to clone")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-demo-"))
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", args.ref], cwd=clone, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    if args.venv:
        (clone / ".venv").symlink_to(Path(args.venv).resolve())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if args.isa == "avx2":
        env.update(AVX2)
    setup_s = timed(["make", "setup"], clone, env, workdir / "setup.log")
    demo_s = timed(["make", "demo"], clone, env, workdir / "demo.log")
    run = clone / "results/demo"
    estimate = next((line for line in (workdir / "demo.log").read_text().splitlines()
                     if line.startswith("make demo: about")), "(no estimate printed)")
    # its own headings one level down, under this section's
    costs = (run / "tables/costs.md").read_text().split("\n", 2)[2].strip().replace("\n## ", "\n#### ")
    isa = "AVX2 only (" + ", ".join(f"{k}={v}" for k, v in AVX2.items()) + "), fp32" if args.isa == "avx2" \
        else "native"
    body = [
        f"fresh clone of {commit}; vector units: {isa}. `make setup` {setup_s:.0f} s"
        f"{' (reused venv)' if args.venv else ' (new .venv)'}; **`make demo` {demo_s / 60:.1f} min** "
        f"({demo_s:.0f} s, set-up excluded, report included). Printed at its start: \"{estimate}\"",
        "", "Demo criteria:", "", *criteria(run), "", "Costs (tables/costs.md of this run):", "", costs]
    append_results("make demo on a fresh clone", body)


if __name__ == "__main__":
    main()
