"""The one device choice of every command: ``auto`` is the first GPU when one is present, else the CPU."""

from __future__ import annotations


def pick_device(name: str = "auto"):
    """``auto``, ``cpu``, ``cuda``, ``cuda:1``, ... as a ``torch.device`` (torch imported here: this package's
    other modules run without it)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
