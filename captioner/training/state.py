"""Where a training stands: the counters, the running sums of a part-done epoch, the best epoch, the history, and
the random streams. One pair of functions writes it into a checkpoint and reads it back (``to_checkpoint`` /
``from_checkpoint``), so resuming restores exactly what was saved."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs finished
    batches_done: int = 0  # of the current epoch (a mid-epoch last.pt sets it)
    epoch_totals: dict | None = None  # the running sums of a resumed, part-done epoch
    best: dict = field(default_factory=lambda: {"val_cider": -math.inf, "epoch": 0})
    history: list = field(default_factory=list)  # one row per epoch (metrics.csv)

    def to_checkpoint(self, position: dict | None = None) -> dict:
        """The checkpoint keys of this state; ``position`` ({batches_done, totals}) for a mid-epoch save."""
        saved = {"epoch": self.epoch, "step": self.step, "best": self.best, "history": self.history}
        if position is not None:
            saved["position"] = position
        return saved

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> TrainState:
        position = checkpoint.get("position") or {}
        return cls(step=checkpoint["step"], epoch=checkpoint["epoch"], batches_done=position.get("batches_done", 0),
                   epoch_totals=position.get("totals"), best=checkpoint["best"], history=checkpoint["history"])


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states in types a ``weights_only`` load accepts (numpy's state as plain lists)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
