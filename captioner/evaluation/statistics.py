"""Corpus metrics from per-image sufficient statistics: bootstrap confidence intervals and paired significance
tests without re-running Java.

What a score file keeps per image, and how the corpus score is rebuilt from it:
- BLEU-1..4: pycocoevalcap's own per-image counts (test length, closest reference length, n-gram guesses and clipped
  matches, from its ``BleuScorer``); corpus BLEU is recomputed from their sums with pycocoevalcap's formula, so a
  resampled corpus BLEU is exact, not a mean of per-image BLEU.
- CIDEr-D, ROUGE-L: the corpus score is the mean of the per-image scores. CIDEr-D's document frequencies stay those
  of the full reference set the corpus score was computed with (a resample does not recompute them).
- METEOR: the corpus score aggregates per-segment statistics inside METEOR's Java code; a resample uses the mean of
  the per-image METEOR scores instead, shifted by the gap between the two on the full set (the score file records
  it), which approximates the corpus score of the resample. Paired tests compare the plain means of per-image METEOR
  (a shift that would change under swapping cannot be carried into the null distribution).
- SPICE: the corpus score is the mean of the per-image F-scores.

Everything is vectorised over resamples: ``resamples`` x ``images`` index (or swap) matrices, one gather per metric.
"""

from __future__ import annotations

import numpy as np

BLEU_N = 4
# pycocoevalcap's guards against empty counts (bleu_scorer.py): they change scores only in the 1e-9 range
TINY, SMALL = 1e-15, 1e-9
MEAN_METRICS = ("METEOR", "ROUGE-L", "CIDEr-D", "SPICE")


def bleu_statistics(gts: dict, res: dict) -> dict[str, list[int]]:
    """Per image: [test length, closest reference length, guesses 1..4, clipped matches 1..4], from pycocoevalcap's
    BleuScorer (the counts its Bleu(4) sums into the corpus score)."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=BLEU_N)
    ids = list(gts)
    for i in ids:
        scorer += (res[i][0], gts[i])
    stats = {}
    for i, comps in zip(ids, scorer.ctest):
        reflen = scorer._single_reflen(comps["reflen"], "closest", comps["testlen"])  # as Bleu.compute_score does
        stats[str(i)] = [comps["testlen"], reflen, *comps["guess"], *comps["correct"]]
    return stats


def corpus_bleu(sums: np.ndarray) -> np.ndarray:
    """BLEU-1..4 (0-100) from summed statistics ``sums[..., 10]`` (any leading shape, e.g. resamples)."""
    sums = np.asarray(sums, dtype=np.float64)
    testlen, reflen = sums[..., 0], sums[..., 1]
    guess, correct = sums[..., 2:2 + BLEU_N], sums[..., 2 + BLEU_N:2 + 2 * BLEU_N]
    products = np.cumprod((correct + TINY) / (guess + SMALL), axis=-1)
    bleus = products ** (1.0 / np.arange(1, BLEU_N + 1))
    ratio = (testlen + TINY) / (reflen + SMALL)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
    return 100.0 * bleus * penalty[..., None]


def per_image_arrays(scores: dict, ids: list[str], corpus_meteor: bool = True) -> dict[str, np.ndarray]:
    """The score file's per-image values as arrays in ``ids`` order: "bleu_stats" (images x 10) and each mean metric;
    with ``corpus_meteor``, the shift that puts the full set's mean of per-image METEOR onto its corpus score."""
    per_image = scores["per_image"]
    arrays = {}
    if corpus_meteor and "METEOR" in scores["corpus"] and "meteor_mean_minus_corpus" in scores:
        arrays["METEOR shift"] = np.array(-float(scores["meteor_mean_minus_corpus"]))
    if "bleu_stats" in scores:
        arrays["bleu_stats"] = np.array([scores["bleu_stats"][i] for i in ids], dtype=np.float64)
    for metric in MEAN_METRICS:
        if metric in scores["corpus"]:
            arrays[metric] = np.array([per_image[i][metric] for i in ids], dtype=np.float64)
    return arrays


def corpus_from_arrays(arrays: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Corpus scores of resampled image sets: ``weights[r, i]`` counts image i in resample r (a bootstrap's
    multiplicities, or 1s). Returns {metric: scores of shape (resamples,)}."""
    out = {}
    if "bleu_stats" in arrays:
        bleus = corpus_bleu(weights @ arrays["bleu_stats"])
        for n in range(BLEU_N):
            out[f"BLEU-{n + 1}"] = bleus[:, n]
    total = weights.sum(axis=1)
    for metric in MEAN_METRICS:
        if metric in arrays:
            out[metric] = weights @ arrays[metric] / total
    if "METEOR shift" in arrays and "METEOR" in out:
        out["METEOR"] = out["METEOR"] + arrays["METEOR shift"]
    return out


def image_count(arrays: dict[str, np.ndarray]) -> int:
    return len(arrays[next(key for key in arrays if key != "METEOR shift")])


def bootstrap_weights(images: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` x ``images`` multiplicities of a bootstrap over images (each row sums to ``images``)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, images, size=(resamples, images))
    weights = np.zeros((resamples, images), dtype=np.float64)
    np.add.at(weights, (np.arange(resamples)[:, None], picks), 1.0)
    return weights


def intervals(arrays: dict[str, np.ndarray], resamples: int, seed: int, confidence: float) -> dict[str, list[float]]:
    """Percentile bootstrap intervals over images: {metric: [low, high]}."""
    images = image_count(arrays)
    resampled = corpus_from_arrays(arrays, bootstrap_weights(images, resamples, seed))
    tail = 100 * (1 - confidence) / 2
    return {metric: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
            for metric, v in resampled.items()}


def pooled_intervals(per_seed: list[dict[str, np.ndarray]], resamples: int, seed: int,
                     confidence: float) -> dict[str, list[float]]:
    """An interval over images and seeds: each resample draws a seed at random and resamples that seed's images
    (the same image draw for every seed), so the spread holds both the test-set and the training-seed variance."""
    images = image_count(per_seed[0])
    weights = bootstrap_weights(images, resamples, seed)
    which = np.random.default_rng(seed + 1).integers(0, len(per_seed), size=resamples)
    by_seed = [corpus_from_arrays(arrays, weights) for arrays in per_seed]
    tail = 100 * (1 - confidence) / 2
    out = {}
    for metric in by_seed[0]:
        stacked = np.stack([scores[metric] for scores in by_seed])  # seeds x resamples
        values = stacked[which, np.arange(resamples)]
        out[metric] = [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
    return out


def paired_test(a: dict[str, np.ndarray], b: dict[str, np.ndarray], resamples: int, trials: int, seed: int,
                confidence: float) -> dict[str, dict]:
    """System a minus system b on the same images, per metric: the difference and the ratio a / b with their
    paired-bootstrap intervals (the same resamples for both systems), and the p-value of an approximate randomisation
    test (two-sided: per trial each image's outputs are swapped between the systems with probability 1/2;
    p = (1 + #trials with |difference| >= observed) / (1 + trials))."""
    images = image_count(a)
    ones = np.ones((1, images))
    observed_a, observed_b = corpus_from_arrays(a, ones), corpus_from_arrays(b, ones)
    weights = bootstrap_weights(images, resamples, seed)
    boot_a, boot_b = corpus_from_arrays(a, weights), corpus_from_arrays(b, weights)
    swap = (np.random.default_rng(seed + 2).random((trials, images)) < 0.5).astype(np.float64)
    tail = 100 * (1 - confidence) / 2
    out = {}
    shuffled_a, shuffled_b = _swapped_corpus(a, b, swap)
    for metric in observed_a:
        difference = float(observed_a[metric][0] - observed_b[metric][0])
        spread = boot_a[metric] - boot_b[metric]
        null = shuffled_a[metric] - shuffled_b[metric]
        exceed = int(np.sum(np.abs(null) >= abs(difference) - 1e-12))
        score_a, score_b = float(observed_a[metric][0]), float(observed_b[metric][0])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = boot_a[metric] / boot_b[metric]
        out[metric] = {"a": score_a, "b": score_b, "difference": difference,
                       "interval": [float(np.percentile(spread, tail)), float(np.percentile(spread, 100 - tail))],
                       "p_value": (1 + exceed) / (1 + trials), "ratio": score_a / score_b if score_b else None,
                       "ratio_interval": ([float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))]
                                          if np.all(np.isfinite(ratios)) else None)}
    return out


def _swapped_corpus(a: dict[str, np.ndarray], b: dict[str, np.ndarray], swap: np.ndarray):
    """Corpus scores of both systems when the images marked in ``swap[t, i]`` trade outputs (trials x metrics)."""
    out_a, out_b = {}, {}
    if "bleu_stats" in a:
        # sums over images of the swapped statistics: a's sum plus, where swapped, (b - a)
        delta = b["bleu_stats"] - a["bleu_stats"]
        sum_a = a["bleu_stats"].sum(axis=0) + swap @ delta
        sum_b = b["bleu_stats"].sum(axis=0) - swap @ delta
        bleu_a, bleu_b = corpus_bleu(sum_a), corpus_bleu(sum_b)
        for n in range(BLEU_N):
            out_a[f"BLEU-{n + 1}"], out_b[f"BLEU-{n + 1}"] = bleu_a[:, n], bleu_b[:, n]
    images = swap.shape[1]
    for metric in MEAN_METRICS:
        if metric in a:
            delta = b[metric] - a[metric]
            out_a[metric] = (a[metric].sum() + swap @ delta) / images
            out_b[metric] = (b[metric].sum() - swap @ delta) / images
    return out_a, out_b
