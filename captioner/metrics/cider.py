"""CIDEr-D with document frequencies fixed in advance.

Same definition as pycocoevalcap's ``Cider`` (which is CIDEr-D: tf-idf n-gram vectors for n=1..4,
clipped hypothesis weights, Gaussian length penalty with sigma 6, mean over n and references, x10),
but the document frequencies come from a corpus chosen by the caller: the training references for
SCST rewards, or the evaluated references themselves to reproduce pycocoevalcap's corpus score.
Each document is one image's set of references, as in pycocoevalcap.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

Tokens = Sequence[str]


def ngram_counts(tokens: Tokens, n: int = 4) -> Counter:
    return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def _split(caption) -> list:
    return caption.split() if isinstance(caption, str) else list(caption)


class CiderD:
    def __init__(self, reference_corpus: Iterable[Sequence], n: int = 4, sigma: float = 6.0):
        """``reference_corpus``: per image, its references (strings of space-separated tokens or token lists)."""
        self.n, self.sigma = n, sigma
        self.document_frequency: Counter = Counter()
        documents = 0
        for refs in reference_corpus:
            documents += 1
            seen = set()
            for ref in refs:
                seen.update(ngram_counts(_split(ref), n))
            self.document_frequency.update(seen)
        if documents == 0:
            raise ValueError("CIDEr-D needs at least one reference document")
        self.ref_len = math.log(float(documents))

    def _vector(self, counts: Counter):
        vec = [dict() for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for ngram, tf in counts.items():
            k = len(ngram) - 1
            weight = float(tf) * (self.ref_len - math.log(max(1.0, self.document_frequency.get(ngram, 0.0))))
            vec[k][ngram] = weight
            norm[k] += weight * weight
            if k == 1:  # pycocoevalcap measures length in bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _similarity(self, hyp, ref) -> float:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        penalty = math.exp(-((lh - lr) ** 2) / (2 * self.sigma ** 2))
        total = 0.0
        for k in range(self.n):
            value = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
            if nh[k] != 0 and nr[k] != 0:
                value /= nh[k] * nr[k]
            total += value * penalty
        return total

    def score(self, hypotheses: Sequence, references: Sequence[Sequence]) -> np.ndarray:
        """CIDEr-D of each hypothesis against its own references."""
        if len(hypotheses) != len(references):
            raise ValueError("one reference list per hypothesis")
        scores = np.zeros(len(hypotheses))
        ref_cache: dict[int, list] = {}
        for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
            key = id(refs)
            if key not in ref_cache:  # SCST repeats each image's references for every beam
                ref_cache[key] = [self._vector(ngram_counts(_split(r), self.n)) for r in refs]
            hyp_vec = self._vector(ngram_counts(_split(hyp), self.n))
            sims = [self._similarity(hyp_vec, r) for r in ref_cache[key]]
            scores[i] = 10.0 * sum(sims) / self.n / len(sims)
        return scores
