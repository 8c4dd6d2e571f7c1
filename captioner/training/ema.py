"""An exponential moving average of the weights (``train.ema_decay``, off at 0): after every optimizer step
``average <- decay * average + (1 - decay) * weights``; validation, the best epoch's ``checkpoint.pt`` and so every
decode use the average, while training goes on from the raw weights. Its state is in ``last.pt``: a resumed run
continues the same average."""

from __future__ import annotations

import contextlib

import torch

from captioner.training.hooks import Hook


class WeightAverage(Hook):
    name = "ema"

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), not {decay}")
        self.decay = decay
        self.average: dict[str, torch.Tensor] | None = None

    def before_train(self, trainer) -> None:
        if self.average is None:  # a fresh run (a resumed one has its average from last.pt)
            self.average = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        else:
            self.average = {k: v.to(trainer.device) for k, v in self.average.items()}

    @torch.no_grad()
    def after_step(self, trainer, loss: float) -> None:
        for key, value in trainer.model.state_dict().items():
            if value.dtype.is_floating_point:
                self.average[key].lerp_(value.detach(), 1.0 - self.decay)
            else:  # counters and the like: the latest
                self.average[key].copy_(value)

    @contextlib.contextmanager
    def evaluation_weights(self, trainer):
        model = trainer.model
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}  # a copy of the weights (memory: 1x)
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(raw)

    def best_weights(self, trainer) -> dict:
        return self.average

    def state_dict(self) -> dict:
        return {"decay": self.decay, "average": {k: v.detach().cpu() for k, v in self.average.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.average = dict(state["average"])
