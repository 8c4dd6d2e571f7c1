"""The score that picks the best epoch and stops training early: greedy captions of the val split (real decodes,
not teacher forcing), CIDEr-D against the val references with their own document frequencies (as pycocoevalcap)."""

from __future__ import annotations

import torch

from captioner.data.karpathy import tokenize
from captioner.models.decoding import decode_batches
from captioner.models.greedy import greedy
from captioner.training.cider import CiderD

VAL_BATCH = 100  # images decoded at once


class Validator:
    def __init__(self, images: list[dict], vocab, max_length: int):
        self.ids = [image["image_id"] for image in images]
        self.refs = [[" ".join(tokenize(r)) for r in image["refs"]] for image in images]
        self.cider = CiderD(self.refs)
        self.vocab, self.max_length = vocab, max_length

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, read_inputs) -> dict:
        """{"val_cider": mean CIDEr-D, "val_sample": the first image's caption}; ``read_inputs(ids)``: model inputs."""
        model.eval()
        vocab = self.vocab

        def search(state, step, _count):
            return greedy(state, step, self.max_length, vocab.bos_id, vocab.eos_id, vocab.pad_id)

        hyps = []
        for _, tokens in decode_batches(model, read_inputs, self.ids, VAL_BATCH, search):
            hyps += [vocab.decode(row) for row in tokens.tolist()]
        return {"val_cider": float(self.cider.score(hyps, self.refs).mean()), "val_sample": hyps[0]}
