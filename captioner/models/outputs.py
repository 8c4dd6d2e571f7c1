"""The structured output every model's ``loss`` returns (the trainer and the objectives read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class CaptionLoss:
    loss: torch.Tensor  # scalar to back-propagate: a mean over the model's ``loss_normalisation`` units
    tokens: torch.Tensor  # number of target tokens (padding excluded), a 0-dim tensor
    nll_per_token: torch.Tensor  # detached mean negative log-likelihood per target token
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # model-specific terms (SAT: attention ones)
