"""Captions for many images, batch by batch: the one loop that training's validation (greedy) and the decode rule
(beam search) run. Searches: :func:`captioner.models.greedy.greedy`, :func:`captioner.models.beam_search.beam_search`."""

from __future__ import annotations

from typing import Callable, Iterator


def decode_batches(model, read_inputs: Callable[[list], dict], ids: list, batch_size: int,
                   search: Callable) -> Iterator[tuple[list, object]]:
    """(batch ids, ``search(state, step, batch size)``) for consecutive batches of ``ids``: the model inputs of each
    batch from ``read_inputs(batch ids)``, then the model's decoder state and step, then the search."""
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        state, step = model.decoder(**read_inputs(batch))
        yield batch, search(state, step, len(batch))
