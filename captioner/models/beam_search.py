"""Batched beam search and greedy decoding shared by every model.

A model exposes ``decoder(features, ...) -> (state, step)`` where ``state`` is a dict of tensors
with batch-first rows and ``step(tokens, state) -> (log_probs (N, V), state, extra)``. Entries
under ``state["static"]`` are per-image data that never change between steps (encoder outputs,
key/value projections of the image): they are expanded to the beams once and never re-gathered,
since a beam's parent is always a beam of the same image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


def map_state(state, fn, skip_static: bool = True):
    if isinstance(state, dict):
        return {k: (v if skip_static and k == "static" else map_state(v, fn, skip_static)) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(v, fn, skip_static) for v in state)
    if isinstance(state, torch.Tensor):
        return fn(state)
    return state


@dataclass
class BeamResult:
    tokens: torch.Tensor  # (B, n, T) word ids, pad after <eos>
    scores: torch.Tensor  # (B, n) ranking score (length-normalised if asked)
    logprob: torch.Tensor  # (B, n) sum of token log-probs
    token_logprobs: torch.Tensor  # (B, n, T) log-prob of each chosen token, 0 after <eos>
    extras: torch.Tensor | None  # (B, n, T, ...) per-step extra output (attention) along each beam


def beam_search(state: dict, step, batch_size: int, beam_size: int, max_length: int, bos_id: int, eos_id: int,
                pad_id: int, n_best: int = 1, length_normalization: float = 0.0, keep_extras: bool = False,
                stop_when_done: bool = True) -> BeamResult:
    """Beam search over ``batch_size`` images x ``beam_size`` beams at once.

    At t=0 only one beam per image is alive, so the beams start with distinct words. A finished beam
    is carried forward unchanged (it can only emit <pad> at log-prob 0) and competes with alive beams on
    its summed log-prob. With ``length_normalization`` = a, beams are ranked by logprob / length**a at
    the end (a=0: plain sum, as the M² reference). Gradients flow through ``token_logprobs`` when
    enabled (SCST).
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be in [1, beam_size], got {n_best}")
    k = beam_size
    expand = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731
    state = map_state(state, expand, skip_static=False)
    any_tensor = next(iter(_tensors(state)))
    device = any_tensor.device
    rows = batch_size * k
    tokens = torch.full((rows,), bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    scores = scores.view(-1)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    history = torch.zeros(rows, 0, dtype=torch.long, device=device)
    token_logprobs = torch.zeros(rows, 0, device=device)
    extras = []
    image_offset = (torch.arange(batch_size, device=device) * k).repeat_interleave(k)
    for _ in range(max_length):
        log_probs, state, extra = step(tokens, state)
        vocab = log_probs.shape[-1]
        if finished.any():
            carry = torch.full_like(log_probs[0], float("-inf"))
            carry[pad_id] = 0.0
            log_probs = torch.where(finished[:, None], carry, log_probs)
        candidates = (scores[:, None] + log_probs).view(batch_size, k * vocab)
        top_scores, top_index = candidates.topk(k, dim=1)
        parent = (top_index // vocab).view(-1) + image_offset
        words = (top_index % vocab).view(-1)
        chosen_beam_logprob = log_probs[parent, words]
        state = map_state(state, lambda t: t.index_select(0, parent))
        history = torch.cat([history[parent], words[:, None]], dim=1)
        token_logprobs = torch.cat([token_logprobs[parent], chosen_beam_logprob[:, None]], dim=1)
        if keep_extras and extra is not None:
            extras = [e[parent] for e in extras] + [extra[parent]]
        finished = finished[parent] | (words == eos_id)
        scores = top_scores.view(-1)
        tokens = torch.where(finished & (words != eos_id), torch.full_like(words, pad_id), words)
        if stop_when_done and bool(finished.all()):
            break
    lengths = _lengths(history, eos_id).float()
    ranking = scores / lengths.clamp_min(1.0) ** length_normalization if length_normalization else scores
    ranking = ranking.view(batch_size, k)
    order = ranking.argsort(dim=1, descending=True)[:, :n_best]
    pick = (order + torch.arange(batch_size, device=device)[:, None] * k).view(-1)
    T = history.shape[1]
    out_tokens = history[pick].view(batch_size, n_best, T)
    out_tokens = _pad_after_eos(out_tokens, eos_id, pad_id)
    stacked = torch.stack(extras, 1)[pick].view(batch_size, n_best, T, *extras[0].shape[1:]) if extras else None
    return BeamResult(tokens=out_tokens, scores=ranking.gather(1, order),
                      logprob=scores.view(batch_size, k).gather(1, order),
                      token_logprobs=token_logprobs[pick].view(batch_size, n_best, T), extras=stacked)


def _tensors(state):
    if isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from _tensors(v)
    elif isinstance(state, torch.Tensor):
        yield state


def _lengths(history: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Tokens up to and including the first <eos> (all of them if none)."""
    is_eos = history == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(history[:, 0], history.shape[1] - 1))
    return first + 1


def _pad_after_eos(tokens: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    after = (tokens == eos_id).long().cumsum(-1) - (tokens == eos_id).long() > 0
    return tokens.masked_fill(after, pad_id)


def collapse_repeats(words: list[str]) -> list[str]:
    """Drop consecutive duplicate words ("a a dog" -> "a dog"), as the M² reference does before scoring."""
    return [w for w, _ in itertools.groupby(words)]
