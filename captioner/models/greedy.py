"""Greedy (arg-max) decoding: what training validates with every epoch."""

from __future__ import annotations

import torch


def greedy(state: dict, step, max_length: int, bos_id: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """Arg-max decoding with a model's ``decoder()`` state and step, stopping when every caption has emitted
    <eos>. Returns (B, T) ids, <pad> after <eos>."""
    rows, device = _first_tensor(state).shape[0], _first_tensor(state).device
    tokens = torch.full((rows,), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    out = []
    for _ in range(max_length):
        log_probs, state, _ = step(tokens, state)
        tokens = log_probs.argmax(-1).masked_fill(done, pad_id)
        out.append(tokens)
        done |= tokens == eos_id
        if bool(done.all()):  # a device -> host sync per step: cheap next to the step itself
            break
    return torch.stack(out, 1)


def _first_tensor(state):
    if isinstance(state, torch.Tensor):
        return state
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None
