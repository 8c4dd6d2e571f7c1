"""The files of a training and when they may be trusted.

``last.pt`` (model, optimizer, objective buffers, random streams, position in the epoch: enough to resume) is written
at every epoch end and mid-epoch when asked; the best epoch's weights go to the rule's ``checkpoint.pt`` and to a
copy beside ``last.pt`` (``best.pt``: Snakemake deletes a failed job's outputs, the copy survives its retry). A
``last.pt`` is resumed only when it was written with the same settings from the same input files (their size and
modification time, stamped in it); a damaged one is never loaded nor overwritten.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from captioner.models.checkpoint import CheckpointError, load_checkpoint, save_torch
from pipeline import atomic

BEST_COPY = "best.pt"  # the best epoch's weights again, beside last.pt (what checkpoint.pt is restored from)
LAST = "last.pt"
OUTPUT_NAMES = {"checkpoint": "checkpoint.pt", "metrics": "metrics.csv", "curve": "curve.png"}


def file_stamp(path: str) -> list:
    """Size and modification time of a file, or of a directory store and its entries: cheap, and new whenever
    an upstream rule rewrites the file (outputs are written to a temporary path and renamed)."""
    path = Path(path)
    entries = [path] + (sorted(path.iterdir()) if path.is_dir() else [])
    return [[entry.name, entry.stat().st_size if entry.is_file() else 0, entry.stat().st_mtime_ns] for entry in entries]


class Checkpoints:
    """Where a training's files go: ``out_dir`` holds last.pt and best.pt and, unless ``outputs`` names them
    elsewhere (keys checkpoint, metrics, curve), checkpoint.pt, metrics.csv and curve.png."""

    def __init__(self, out_dir: str | Path, outputs: dict | None = None):
        self.out_dir = Path(out_dir)
        self.outputs = {key: Path((outputs or {}).get(key) or self.out_dir / name) for key, name in
                        OUTPUT_NAMES.items()}
        self.last, self.best_copy = self.out_dir / LAST, self.out_dir / BEST_COPY

    def read_last(self, name: str, hparams: dict, input_stamps: dict, log) -> dict | None:
        """``last.pt`` if it continues this training (same model, settings and input files), else None (said in
        the log). A damaged one stops the run: it may be weeks of work, so it is neither loaded nor overwritten."""
        if not self.last.exists():
            return None
        try:
            checkpoint = load_checkpoint(self.last)
        except CheckpointError as error:
            raise CheckpointError(f"{error}. Refusing to resume from it or overwrite it; move it away to "
                                  f"train {name} from scratch") from None
        if checkpoint.get("hparams") != hparams or checkpoint.get("name") != name:
            log(f"warning: {self.last} was written with other settings; starting afresh")
            return None
        if checkpoint.get("input_stamps") != input_stamps:
            changed = sorted(role for role in {**input_stamps, **checkpoint.get("input_stamps", {})}
                             if input_stamps.get(role) != checkpoint.get("input_stamps", {}).get(role))
            log(f"warning: {self.last} was trained on other input files ({', '.join(changed)} changed since); "
                "starting afresh")
            return None
        return checkpoint

    def forget_best(self) -> None:
        """A fresh run: another run's best weights must never be handed on."""
        self.best_copy.unlink(missing_ok=True)

    def write(self, last: dict, best: dict | None = None) -> None:
        """last.pt, and with ``best`` (the weights-only checkpoint of a new best epoch) best.pt and checkpoint.pt."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_torch(self.last, last)
        if best is not None:
            save_torch(self.best_copy, best)  # not a Snakemake output: survives a retry
            save_torch(self.outputs["checkpoint"], best)

    def missing_outputs(self) -> list[str]:
        return [key for key, path in self.outputs.items() if not path.exists()]

    def restore_checkpoint_output(self) -> None:
        """checkpoint.pt from the best epoch's copy beside last.pt."""
        with atomic.atomic_path(self.outputs["checkpoint"]) as tmp:
            shutil.copyfile(self.best_copy, tmp)
