"""What every fault test needs: the extraction command line, and the check that a command failed cleanly."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import subprocess
import sys
from pathlib import Path


def manifest_for(karpathy_json: Path) -> Path:
    """The image manifest of a Karpathy JSON, written beside it (what the workflow's image_manifest rule makes)."""
    from captioner.data.manifest import write_from_karpathy

    out = karpathy_json.with_name(karpathy_json.stem + ".manifest.json")
    write_from_karpathy(karpathy_json, out)
    return out


def extract_command(karpathy_json: Path, image_root: Path, out: Path, image_size: int = 64, grid_size: int = 4,
                    on_error: str = "fail") -> list[str]:
    """``python -m features job extract`` of a small random-init ResNet-18 grid, float32, in the main process."""
    spec = {"kind": "grid",
            "store": {"batch_size": 4, "num_workers": 0, "device": "cpu", "dtype": "float32", "on_error": on_error},
            "extractor": {"backbone": "resnet18", "weights": "none", "image_size": image_size, "grid_size": grid_size}}
    return [sys.executable, "-m", "features", "job", "extract", "--spec", json.dumps(spec), "--manifest",
            str(manifest_for(karpathy_json)), "--image-root", str(image_root), "--out", str(out)]


def run_in_process(command: list[str]) -> subprocess.CompletedProcess:
    """``command`` (``python -m PACKAGE ...``) run by this test process: the package's ``main`` with stdout and
    stderr captured, and the exit status it returns. It saves the new process's Python and torch start (~2.5 CPU-s
    a command) where what is tested is what the command does and says; how a process ends (signals, ``os._exit``
    after a failed store write, native libraries' own output) needs the real process: ``subprocess.run``."""
    assert command[:2] == [sys.executable, "-m"], command
    main = importlib.import_module(f"{command[2]}.__main__").main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(command[3:])
        except SystemExit as exit:  # argparse's own errors
            status = exit.code if isinstance(exit.code, int) else 1
    return subprocess.CompletedProcess(command, status, out.getvalue(), err.getvalue())


def clean_error(result: subprocess.CompletedProcess, *names: str, native_noise_before: bool = False) -> str:
    """Exit status 1 and one ``error:`` message naming each of ``names``, without a Python traceback; returns the
    message with the list of items that may follow it. ``native_noise_before``: h5py's finalisers may print their
    own echo of an I/O failure before the message (disk full); only the message itself is checked then."""
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(starts) == 1, result.stderr[-2000:]
    message = "\n".join(lines[starts[0]:])
    assert "Traceback" not in (message if native_noise_before else result.stderr), result.stderr[-2000:]
    for name in names:
        assert name in message, message
    return message
