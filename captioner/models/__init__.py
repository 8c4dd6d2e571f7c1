"""The models: ``registry`` (names -> code), one self-contained file per family (``sat.py``, ``m2.py``: a dataclass
config and an ``nn.Module``), ``beam_search`` shared by all, ``checkpoint`` (files, building, inference inputs).

The model contract the trainer and decoders rely on:

- ``loss(features, captions, image_index=None, [num_boxes]) -> {"loss", "tokens", "nll_per_token", ...}``;
  ``loss_normalisation`` says what the loss averages over ("caption" or "token");
- ``decoder(features, [num_boxes]) -> (state, step)`` for :func:`captioner.models.beam_search.beam_search`;
- ``data_parallel_hooks``: the ``loss`` arguments a data-parallel trainer supplies (shared draws, global means).

Adding a model family = its model file + one entry in ``registry.FAMILIES`` + its hyper-parameter section in
``workflow/schemas/config.schema.yaml``.
"""
