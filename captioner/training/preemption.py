"""Stopping a training early without losing it: SIGTERM / SIGUSR1 (what SLURM sends before a time limit or a
preemption, or ``scancel --signal``) ask for a stop after the current step; every rank takes the same decision at the
same step; ``last.pt`` is then written with the position in the epoch and the process exits ``EXIT_INTERRUPTED``.
A second signal exits at once."""

from __future__ import annotations

import os
import signal
import time
import weakref

import torch

from captioner.training import distributed

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: not done, try again (Snakemake's retry or SLURM's requeue resumes)
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class TrainingInterrupted(Exception):
    """A stop signal arrived; ``last.pt`` holds the position to continue from."""


class StopRequests:
    """The stop signals of this process, and whether last.pt has been written since the first of them."""

    def __init__(self, log):
        self.log = log
        self.signal: str | None = None
        self.saved = False  # last.pt holds the stop position: a second signal may exit 75 at once

    def install(self) -> None:
        # the handlers stay installed after the run: they hold this object weakly, so the trainer that owns it (and
        # its DDP wrapper, which holds the process group) can be freed before the process exits
        requests = weakref.ref(self)

        def handler(signum, _frame):
            self = requests()
            if self is None:  # the training is over and torn down: the process is about to exit 0
                return
            if self.signal is not None:  # the second signal: at once (75 if last.pt is already written)
                os._exit(EXIT_INTERRUPTED if self.saved else 128 + signum)
            self.signal = signal.Signals(signum).name
            self.log(f"note: {self.signal}: stopping after this step", every_rank=True)

        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), handler)


class SaveClock:
    """Whether a mid-epoch ``last.pt`` is due (every ``minutes``; 0: never, epoch ends only)."""

    def __init__(self, minutes: float):
        self.seconds = 60.0 * minutes
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = time.monotonic()


def agree(ranks: distributed.Ranks, device: torch.device, stop: bool, due: bool) -> tuple[bool, bool]:
    """Whether any rank was signalled, and whether rank 0's clock says a checkpoint is due: every rank takes the
    same decision at the same step (one tiny all-reduce per step under torchrun; a GPU sync there)."""
    if not ranks.enabled:
        return stop, due
    flags = torch.tensor([float(stop), float(due and ranks.is_main)], dtype=torch.float64)
    total = distributed.all_reduce_sum(flags.to(device)).tolist()
    return total[0] > 0, total[1] > 0
