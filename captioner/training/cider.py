"""CIDEr-D with document frequencies fixed in advance, vectorised per batch (SCST calls it every step).

Same definition as pycocoevalcap's ``Cider`` (which is CIDEr-D: tf-idf n-gram vectors for n=1..4, clipped
hypothesis weights, Gaussian length penalty with sigma 6, mean over n and references, x10), but the document
frequencies come from a corpus chosen by the caller: the training references for SCST rewards, or the
evaluated references themselves to reproduce pycocoevalcap's corpus score. Each document is one image's set
of references, as in pycocoevalcap.

How it is fast: words become integers and every n-gram one int64 code (base-B digits, B > #words, so codes
of different orders never collide); document frequencies are a sorted code array. A batch's sentences are
turned into (sentence, code, tf) triples with a few NumPy calls, reference sets are cached, and the clipped
dot products of all (hypothesis, reference) pairs come from one sorted join.
"""

from __future__ import annotations

import math
from itertools import chain, repeat
from typing import Iterable, Sequence

import numpy as np

from captioner.data.karpathy import cyclic_gc_paused

CODE_BASE = 55_000  # words get ids 1..CODE_BASE-1; CODE_BASE**4 still fits in int64


def _split(caption) -> list:
    return caption.split() if isinstance(caption, str) else list(caption)


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct key, in increasing key order: the index of one of its occurrences and its count
    (``np.unique(return_index=True, return_counts=True)`` without the stable sort it needs for *first* indices)."""
    order = np.argsort(keys)
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate((ordered[:1] == ordered[:1], ordered[1:] != ordered[:-1])))  # none if empty
    return order[starts], np.diff(np.append(starts, len(keys)))


def _run_starts(ordered: np.ndarray) -> np.ndarray:
    """True where a sorted array starts a run of equal values."""
    starts = np.empty(len(ordered), dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return starts


class CiderD:
    def __init__(self, reference_corpus: Iterable[Sequence], n: int = 4, sigma: float = 6.0,
                 cache_size: int = 200_000):
        """``reference_corpus``: per image, its references (strings of space-separated tokens or token lists)."""
        with cyclic_gc_paused():  # splitting ~600k reference sentences on top of the caller's heap: 40% of the build
            self._build(reference_corpus, n, sigma, cache_size)

    def _build(self, reference_corpus: Iterable[Sequence], n: int, sigma: float, cache_size: int) -> None:
        self.n, self.sigma = n, sigma
        self._word_id: dict[str, int] = {}
        documents = [list(refs) for refs in reference_corpus]
        if not documents:
            raise ValueError("CIDEr-D needs at least one reference document")
        self.ref_len = math.log(float(len(documents)))
        # document frequency: in how many reference *sets* each n-gram occurs
        ids, lengths = self._ids([sentence for refs in documents for sentence in refs])
        sizes = [len(refs) for refs in documents]
        self._df_codes, self._df_counts = self._document_frequencies(ids, lengths, sizes)
        self._cache: dict = {}
        self._cache_size = cache_size
        self._extra_slot: dict[int, int] = {}
        self._extra_limit = 4 * cache_size
        # the word ids of every corpus reference set, already computed above, serve its first scoring (SCST scores
        # against the corpus it was built from): (ids, sentence lengths) as positions in two shared arrays
        self._ids_array, self._lengths_array = ids, lengths
        self._set_words: dict[tuple, tuple[int, int, int, int]] = {}
        sentence_bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        word_bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        for d, refs in enumerate(documents):
            if all(isinstance(r, str) for r in refs):  # token lists are not hashable keys
                first, last = sentence_bounds[d], sentence_bounds[d + 1]
                self._set_words[tuple(refs)] = (word_bounds[first], word_bounds[last], first, last)

    @property
    def _slot_width(self) -> int:
        return len(self._df_codes) + len(self._extra_slot) + 1

    # ------------------------------------------------------------------------------------------- encoding
    def _new_id(self, word: str) -> int:
        if len(self._word_id) + 1 >= CODE_BASE:
            raise ValueError(f"more than {CODE_BASE - 1} distinct words: n-gram codes would overflow")
        index = self._word_id[word] = len(self._word_id) + 1  # 0 is never a word
        return index

    def _ids(self, sentences: Sequence, chunk: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
        """Word ids of several sentences, concatenated, and each sentence's length. ``chunk`` sentences at a time:
        the split words are Python strings (~55 bytes each), ~330 MB at once for COCO's training references."""
        if len(sentences) <= chunk:  # every scoring batch
            return self._chunk_ids(sentences)
        ids, lengths = [], []
        for first in range(0, len(sentences), chunk):
            chunk_ids, chunk_lengths = self._chunk_ids(sentences[first:first + chunk])
            ids.append(chunk_ids)
            lengths.append(chunk_lengths)
        return np.concatenate(ids), np.concatenate(lengths)

    def _chunk_ids(self, sentences: Sequence) -> tuple[np.ndarray, np.ndarray]:
        if all(type(s) is str for s in sentences):  # the usual case, without a call per sentence
            split = [s.split() for s in sentences]
        else:
            split = [_split(s) for s in sentences]
        lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
        words = list(chain.from_iterable(split))
        # C-speed lookups; a word seen for the first time reads 0 and gets its id below
        ids = np.fromiter(map(self._word_id.get, words, repeat(0, len(words))), dtype=np.int64, count=len(words))
        for index in np.flatnonzero(ids == 0):
            ids[index] = self._word_id.get(words[index]) or self._new_id(words[index])
        return ids, lengths

    def _codes(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every n-gram of several sentences (word ids concatenated): codes, owning sentence, order (0-based)."""
        owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        left = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(ids))  # words from each one to its sentence end
        start, code = np.arange(len(ids)), ids
        codes, owners, orders = [ids], [owner], [np.zeros(len(ids), dtype=np.int64)]
        for k in range(2, self.n + 1):  # a k-gram = the (k-1)-gram at the same start + one more word
            keep = left[start] >= k  # stays inside its sentence
            start, code = start[keep], code[keep]
            code = code + ids[start + k - 1] * (CODE_BASE ** (k - 1))
            codes.append(code)
            owners.append(owner[start])
            orders.append(np.full(len(start), k - 1, dtype=np.int64))
        return np.concatenate(codes), np.concatenate(owners), np.concatenate(orders)

    def _orders(self, ids: np.ndarray, lengths: np.ndarray):
        """Per order k = 1..n, the start (index into ``ids``) and code of every k-gram, as ``_codes`` makes them but
        one order at a time and with 32-bit indices where they fit (the memory of the COCO-size document-frequency
        pass; ``_codes`` stays separate for the per-batch path, where this version measured 60% slower)."""
        index = np.int32 if len(ids) < 2 ** 31 else np.int64
        start, code = np.arange(len(ids), dtype=index), ids
        left = (np.repeat(np.cumsum(lengths), lengths) - start).astype(index)  # words from each one to its sentence end
        yield start, code
        for k in range(2, self.n + 1):  # a k-gram = the (k-1)-gram at the same start + one more word
            keep = left[start] >= k  # stays inside its sentence
            start, code = start[keep], code[keep]
            code = code + ids[start + k - 1] * (CODE_BASE ** (k - 1))
            yield start, code

    def _document_frequencies(self, ids: np.ndarray, lengths: np.ndarray, sizes: list[int]):
        """Sorted distinct n-gram codes of a corpus and in how many documents (``sizes``: sentences per document)
        each occurs. One order at a time, each (n-gram, document) pair packed into one int64 key so that a plain
        sort finds the distinct pairs (a 2-D ``np.unique`` sorts 16-byte rows by a generic compare: 20x slower at
        COCO size, and all orders at once hold 4x the memory)."""
        documents = len(sizes)
        index = np.int32 if max(documents, len(ids)) < 2 ** 31 else np.int64
        word_document = np.repeat(np.repeat(np.arange(documents, dtype=index), sizes), lengths)
        fits = (2 ** 63 - 1) // documents - 1  # codes below this pack with a document number into one int64
        all_codes, all_counts = [], []
        for start, code in self._orders(ids, lengths):  # orders occupy disjoint code ranges, increasing with k
            if not len(code):
                continue
            # in-place arithmetic and sorts: this pass is the peak memory of the build
            ranked = int(code.max()) >= fits
            if ranked:  # pack the code's rank among the distinct codes instead (argsort: ranks go back to each one)
                order = np.argsort(code)
                ordered = code[order]
                new_run = _run_starts(ordered)
                key = np.empty(len(code), dtype=np.int64)
                key[order] = np.cumsum(new_run) - 1
                distinct = ordered[new_run]
                del order, ordered, new_run
                key *= documents
            else:
                key = code * documents
            key += word_document[start]
            key.sort()
            key = key[_run_starts(key)]  # each (n-gram, document) once
            key //= documents
            code = distinct[key] if ranked else key  # sorted
            starts = np.flatnonzero(_run_starts(code))
            all_codes.append(code[starts])
            all_counts.append(np.diff(np.append(starts, len(code))))
        if not all_codes:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate(all_codes), np.concatenate(all_counts).astype(np.float64)

    def _vectors(self, ids: np.ndarray, lengths: np.ndarray) -> dict:
        """tf-idf entries of several sentences (word ids concatenated, sentence lengths): flat arrays (sentence,
        slot, order, weight) + norms and lengths."""
        count = len(lengths)
        codes, owner, orders = self._codes(ids, lengths)
        # compact each code to a small integer (its slot in the df table, or a new slot for unseen n-grams) so that
        # (sentence, n-gram) fits one int64 key and term frequencies come from a single sort. The df table is
        # searched with the distinct codes in increasing order (a batch repeats most n-grams; sorted needles let
        # the binary search start where the previous one ended).
        order = np.argsort(codes)
        ordered = codes[order]
        new_run = np.ones(len(codes), dtype=bool)
        new_run[1:] = ordered[1:] != ordered[:-1]
        distinct = ordered[new_run]
        inverse = np.empty(len(codes), dtype=np.int64)
        inverse[order] = np.cumsum(new_run) - 1
        distinct_known = np.zeros(len(distinct), dtype=bool)
        distinct_slot = np.zeros(len(distinct), dtype=np.int64)
        if len(self._df_codes):
            distinct_slot = np.minimum(np.searchsorted(self._df_codes, distinct), len(self._df_codes) - 1)
            distinct_known = self._df_codes[distinct_slot] == distinct
        if not distinct_known.all():  # n-grams the df table lacks get stable slots after it (cached vectors use them)
            extra, first_free = self._extra_slot, len(self._df_codes)
            unseen = distinct[~distinct_known]
            distinct_slot[~distinct_known] = np.fromiter(
                (extra.setdefault(c, first_free + len(extra)) for c in unseen.tolist()), dtype=np.int64,
                count=len(unseen))
        df = np.zeros(len(distinct))
        if len(self._df_counts):
            df[distinct_known] = self._df_counts[distinct_slot[distinct_known]]
        idf = self.ref_len - np.log(np.maximum(1.0, df))  # per distinct n-gram
        first, tf = _runs(owner * self._slot_width + distinct_slot[inverse])
        entry = inverse[first]  # each (sentence, n-gram) entry's distinct n-gram
        owner, orders, slot = owner[first], orders[first], distinct_slot[entry]
        tf = tf.astype(np.float64)
        weight = tf * idf[entry]
        norms = np.bincount(owner * self.n + orders, weights=weight ** 2, minlength=count * self.n)
        norms = norms.reshape(count, self.n)
        bigram = orders == 1  # pycocoevalcap measures length in bigrams
        lengths = np.bincount(owner[bigram], weights=tf[bigram], minlength=count)
        return {"owner": owner, "slot": slot, "order": orders, "weight": weight, "norm": np.sqrt(norms),
                "length": lengths}

    def _split_vectors(self, vectors: dict, sizes: list[int]) -> list[dict]:
        """Cut the vectors of concatenated sentence groups back into one dict per group (views, owners renumbered
        from 0 within each group)."""
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        owner = vectors["owner"]
        cuts = np.searchsorted(owner, bounds)
        relative = owner - np.repeat(bounds[:-1], np.diff(cuts))
        bounds, cuts = bounds.tolist(), cuts.tolist()  # plain ints slice faster than NumPy scalars
        slot, order, weight, norm, length = (vectors[k] for k in ("slot", "order", "weight", "norm", "length"))
        groups = []
        for g in range(len(sizes)):
            lo, hi, first, last = cuts[g], cuts[g + 1], bounds[g], bounds[g + 1]
            groups.append({"owner": relative[lo:hi], "slot": slot[lo:hi], "order": order[lo:hi],
                           "weight": weight[lo:hi], "norm": norm[first:last], "length": length[first:last]})
        return groups

    def _hypotheses_and_references(self, hypotheses: Sequence, keys: list[tuple]):
        """Vectors of the hypotheses and of each distinct reference set, computed in one pass with the sets not
        cached yet."""
        missing = [k for k in keys if k not in self._cache]
        if missing and (len(self._cache) + len(missing) > self._cache_size
                        or len(self._extra_slot) > self._extra_limit):
            self.clear_cache()  # slots of unseen n-grams are only meaningful together with the cached vectors
            missing = keys
        # sets of the corpus reuse the word ids of the df pass; any other set is split here with the hypotheses
        new_sets = [key for key in missing if key not in self._set_words]
        corpus_sets = [key for key in missing if key in self._set_words]
        new_ids, new_lengths = self._ids(list(hypotheses) + [sentence for key in new_sets for sentence in key])
        ids, lengths = [new_ids], [new_lengths]
        for key in corpus_sets:
            word_lo, word_hi, sentence_lo, sentence_hi = self._set_words[key]
            ids.append(self._ids_array[word_lo:word_hi])
            lengths.append(self._lengths_array[sentence_lo:sentence_hi])
        group_keys = new_sets + corpus_sets  # the order of the sentences: hypotheses, new sets, corpus sets
        vectors = self._vectors(np.concatenate(ids), np.concatenate(lengths))
        groups = self._split_vectors(vectors, [len(hypotheses)] + [len(key) for key in group_keys])
        self._cache.update(zip(group_keys, groups[1:]))
        return groups[0], [self._cache[key] for key in keys]

    def clear_cache(self) -> None:
        """Forget cached reference vectors (and the slots of n-grams unseen in the document frequencies)."""
        self._cache.clear()
        self._extra_slot.clear()

    # ------------------------------------------------------------------------------------------- scoring
    def score(self, hypotheses: Sequence, references: Sequence[Sequence]) -> np.ndarray:
        """CIDEr-D of each hypothesis against its own references."""
        if len(hypotheses) != len(references):
            raise ValueError("one reference list per hypothesis")
        if not len(hypotheses):
            return np.zeros(0)
        # the k beams of an image share one reference set: join each hypothesis n-gram with its set's entries once
        reference_keys = list(map(tuple, references))
        keys = list(dict.fromkeys(reference_keys))
        set_of = dict(zip(keys, range(len(keys))))
        hyp_set = np.fromiter(map(set_of.__getitem__, reference_keys), dtype=np.int64, count=len(references))
        if any(len(key) == 0 for key in keys):
            raise ValueError("every hypothesis needs at least one reference")
        hyp, ref_sets = self._hypotheses_and_references(hypotheses, keys)
        set_sizes = np.array([len(key) for key in keys])
        set_start = np.concatenate([[0], np.cumsum(set_sizes)[:-1]])  # first reference sentence of each set
        ref_sentence = np.concatenate([r["owner"] + start for r, start in zip(ref_sets, set_start)])
        ref_set = np.repeat(np.arange(len(keys)), [len(r["owner"]) for r in ref_sets])
        ref_weight = np.concatenate([r["weight"] for r in ref_sets])
        ref_order = np.concatenate([r["order"] for r in ref_sets])
        ref_norm = np.concatenate([r["norm"] for r in ref_sets])
        ref_length = np.concatenate([r["length"] for r in ref_sets])
        # join on (set, n-gram slot): sort the reference keys once, binary-search the hypothesis keys
        width = self._slot_width
        ref_key = ref_set * width + np.concatenate([r["slot"] for r in ref_sets])
        by_key = np.argsort(ref_key)  # ties (one n-gram in several references of a set) may come in any order
        sorted_keys = ref_key[by_key]
        hyp_key = hyp_set[hyp["owner"]] * width + hyp["slot"]
        hyp_order = np.argsort(hyp_key)  # sorted needles search faster; the join does not care about their order
        hyp_key = hyp_key[hyp_order]
        lo = np.searchsorted(sorted_keys, hyp_key, side="left")
        matches = np.searchsorted(sorted_keys, hyp_key, side="right") - lo
        hyp_entry = np.repeat(hyp_order, matches)
        ref_entry = by_key[np.repeat(lo - np.cumsum(matches) + matches, matches) + np.arange(matches.sum())]
        # pairs (hypothesis, one of its references), numbered hypothesis by hypothesis
        refs_per_hyp = set_sizes[hyp_set]
        pair_start = np.concatenate([[0], np.cumsum(refs_per_hyp)[:-1]])
        pairs = int(refs_per_hyp.sum())
        pair_hyp = np.repeat(np.arange(len(hypotheses)), refs_per_hyp)
        pair_ref = np.repeat(set_start[hyp_set] - pair_start, refs_per_hyp) + np.arange(pairs)
        match_hyp = hyp["owner"][hyp_entry]
        match_pair = pair_start[match_hyp] + ref_sentence[ref_entry] - set_start[hyp_set[match_hyp]]
        wh, wr = hyp["weight"][hyp_entry], ref_weight[ref_entry]
        per_order = np.bincount(match_pair * self.n + ref_order[ref_entry], weights=np.minimum(wh, wr) * wr,
                                minlength=pairs * self.n).reshape(pairs, self.n)
        norm_product = hyp["norm"][pair_hyp] * ref_norm[pair_ref]
        per_order = np.where(norm_product != 0, per_order / np.where(norm_product != 0, norm_product, 1.0), per_order)
        delta = hyp["length"][pair_hyp] - ref_length[pair_ref]
        pair_score = per_order.sum(axis=1) * np.exp(-(delta ** 2) / (2 * self.sigma ** 2))
        return 10.0 * np.bincount(pair_hyp, weights=pair_score, minlength=len(hypotheses)) / self.n / refs_per_hyp
