"""What the repository holds: sources, configs and docs, never build artefacts or downloaded packages (they bloat
every clone and what travels to a GPU machine, and go stale)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = (".whl", ".tar.gz", ".pyc", ".egg", ".so", ".pth", ".pt", ".h5", ".zip")
LARGEST_BYTES = 1_000_000  # the largest source file is ~60 kB: a megabyte is data or a binary


def tracked_files() -> list[str]:
    result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"not a git checkout ({result.stderr.strip()})")
    return [name for name in result.stdout.split("\0") if name]


def test_no_build_artefact_or_large_file_is_tracked():
    files = tracked_files()
    assert not [name for name in files if name.endswith(ARTEFACTS) or "__pycache__/" in name or ".egg-info/" in name]
    assert not [name for name in files if (ROOT / name).is_file() and (ROOT / name).stat().st_size > LARGEST_BYTES]


def test_gitignore_keeps_the_artefacts_out():
    probes = ["ruff-0.1-py3-none-any.whl", "dist/pkg-1.0.tar.gz", "captioner/__pycache__/x.cpython-311.pyc",
              "captioner.egg-info/PKG-INFO", ".venv/bin/python", "results/demo/tables/scores.md"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *probes], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert sorted(result.stdout.split()) == sorted(probes)
