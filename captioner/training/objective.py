"""The objective contract: what the trainer is given to train a model with, and the data it reads.

An objective is an ``nn.Module`` that holds the model; its module names the class ``OBJECTIVE``. It decides the
batches of an epoch (``batches``) and which images' features each one reads (``images_of``), computes
the loss of one batch in ``forward`` (so data parallelism wraps the objective itself: DDP all-reduces the gradients
of whatever ``forward`` ran, beam search included), names the hyper-parameters it trains with, and builds its
optimizer. Buffers it registers (a REINFORCE baseline) are saved in ``last.pt`` and restored on resume.

Objectives: ``xe`` (cross-entropy, :mod:`captioner.training.xe`), ``reinforce`` (hard attention,
:mod:`captioner.training.reinforce`), ``scst`` (self-critical, :mod:`captioner.training.scst`); the model registry
says which one each model trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from captioner.data.model_inputs import TrainData


@dataclass
class Step:
    loss: torch.Tensor  # a mean over ``count`` units of this process's share of the global batch
    count: float  # how many units the loss averages over (weights the data-parallel shards)
    sums: dict  # metrics to report, name -> (sum, count) over this process's share


class Objective(torch.nn.Module):
    epochs_key = "epochs"  # the hyper-parameters this objective trains with
    validate_start = False  # validate the initial weights as epoch 0: the bar training has to beat

    def __init__(self, model: torch.nn.Module, data: TrainData, hp: dict):
        super().__init__()
        self.model, self.data, self.hp = model, data, hp

    def batches(self, generator: torch.Generator) -> Iterator[list]:
        raise NotImplementedError

    def images_of(self, items: list) -> list[int]:
        """The training images (positions in ``data.images``) whose features ``forward(items)`` reads, in the order
        it reads them: what the loader prefetches."""
        raise NotImplementedError

    def forward(self, items: list) -> Step:
        raise NotImplementedError

    def optimizer(self) -> torch.optim.Optimizer:
        if self.hp.get("optimizer", "adam") == "rmsprop":
            # arctic-captions' RMSProp (Graves 2013: centred, momentum 0.9, decay 0.95). It adds 1e-4 under the square
            # root, torch adds eps after it: eps = sqrt(1e-4) keeps the step within a factor sqrt(2) of theirs
            return torch.optim.RMSprop(self.model.parameters(), lr=float(self.hp["lr"]), alpha=0.95, eps=1e-2,
                                       momentum=0.9, centered=True)
        return torch.optim.Adam(self.model.parameters(), lr=float(self.hp["lr"]),
                                betas=(0.9, float(self.hp["adam_beta2"])))

    def learning_rate(self, step: int) -> float | None:
        """The learning rate of optimizer step ``step`` (from 0), or None to keep the optimizer's."""
        return None
