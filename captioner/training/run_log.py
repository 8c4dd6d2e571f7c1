"""What a training says: to stderr (the rule's log) and, timestamped, to ``history.log`` beside ``last.pt``, which
keeps every attempt's lines (Snakemake empties the rule's log before each retry of a chunked SLURM training)."""

from __future__ import annotations

import os
import socket
import sys
from datetime import datetime
from pathlib import Path

HISTORY = "history.log"


class RunLog:
    def __init__(self, out_dir: Path, is_main: bool):
        self.out_dir, self.is_main = Path(out_dir), is_main

    def __call__(self, message: str, every_rank: bool = False) -> None:
        """Rank 0's lines (``every_rank``: this rank's too) to stderr; rank 0's to history.log."""
        if self.is_main or every_rank:
            print(message, file=sys.stderr, flush=True)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / HISTORY, "a") as handle:
                handle.write(f"{datetime.now().isoformat(timespec='seconds')} {message}\n")

    def start(self, name: str, resumed: bool, world_size: int) -> None:
        """The first line of an attempt; a fresh (not resumed) run first drops another run's history."""
        if not resumed and self.is_main:
            (self.out_dir / HISTORY).unlink(missing_ok=True)
        job = os.environ.get("SLURM_JOB_ID")
        where = socket.gethostname() + (f", SLURM job {job}" if job else "")
        self(f"{name}: {'resumed' if resumed else 'started'} on {where} "
             f"({world_size} process{'es' if world_size > 1 else ''})")
