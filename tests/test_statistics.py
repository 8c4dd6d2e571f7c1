"""Intervals and significance from per-image statistics: exact corpus scores when nothing is resampled, nominal
coverage on synthetic problems with a known true value, calibrated p-values for identical and different systems."""

from __future__ import annotations

import random

import numpy as np
import pytest

from captioner.evaluation.statistics import (
    bootstrap_weights,
    corpus_bleu,
    corpus_from_arrays,
    intervals,
    paired_test,
    per_image_arrays,
    pooled_intervals,
)

WORDS = "a man dog on the beach red blue plate with two people riding horse".split()


def synthetic_captions(seed, images=40):
    rng = random.Random(seed)
    references = {i: [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10))) for _ in range(5)]
                  for i in range(images)}
    predictions = {i: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 11))) for i in range(images)}
    return predictions, references


def test_the_statistics_reproduce_pycocoevalcaps_corpus_scores_when_nothing_is_resampled():
    from captioner.evaluation.scoring import score_captions

    predictions, references = synthetic_captions(0)
    scores = score_captions(predictions, references, ["bleu", "meteor", "rouge", "cider"])
    ids = [str(i) for i in references]
    rebuilt = corpus_from_arrays(per_image_arrays(scores, ids), np.ones((1, len(ids))))
    for metric in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"):
        assert rebuilt[metric][0] == pytest.approx(scores["corpus"][metric], abs=1e-9), metric
    # METEOR's corpus score aggregates inside Java: resamples average per-image METEOR, shifted by the recorded gap
    assert rebuilt["METEOR"][0] == pytest.approx(scores["corpus"]["METEOR"], abs=1e-9)
    plain = corpus_from_arrays(per_image_arrays(scores, ids, corpus_meteor=False), np.ones((1, len(ids))))
    gap = plain["METEOR"][0] - scores["corpus"]["METEOR"]
    assert gap == pytest.approx(scores["meteor_mean_minus_corpus"], abs=1e-9) and gap != 0


def test_mean_metric_intervals_cover_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    covered = 0
    for repetition in range(500):
        per_image = rng.normal(50.0, 20.0, size=100)  # true corpus score: 50
        low, high = intervals({"CIDEr-D": per_image}, 1000, repetition, 0.95)["CIDEr-D"]
        covered += low <= 50.0 <= high
    # nominal 0.95; the percentile bootstrap of a mean of 100 undercovers a little (0.937 over 1,000 repetitions);
    # the binomial sd of 500 repetitions is 0.011
    assert 0.91 <= covered / 500 <= 0.98


def test_bleu_intervals_cover_the_population_bleu_at_about_the_nominal_rate():
    """A ratio statistic: the true value is the corpus BLEU of a large population of images' counts."""
    rng = np.random.default_rng(1)
    population = 50_000
    testlen = rng.integers(6, 14, size=population)
    reflen = testlen + rng.integers(-2, 3, size=population)
    guess = np.stack([np.maximum(testlen - k, 0) for k in range(4)], axis=1)
    rates = np.array([0.7, 0.45, 0.3, 0.2])
    correct = rng.binomial(guess, rates * rng.uniform(0.5, 1.5, size=(population, 1)).clip(0, 1 / rates.max()))
    stats = np.column_stack([testlen, reflen, guess, correct]).astype(np.float64)
    truth = corpus_bleu(stats.sum(axis=0))[3]
    covered = 0
    for repetition in range(200):
        sample = stats[rng.integers(0, population, size=300)]
        low, high = intervals({"bleu_stats": sample}, 1000, repetition, 0.95)["BLEU-4"]
        covered += low <= truth <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_identical_systems_get_p_1_and_a_planted_difference_a_small_p():
    rng = np.random.default_rng(2)
    a = {"CIDEr-D": rng.normal(60, 25, size=200)}
    same = paired_test(a, a, 1000, 2000, 0, 0.95)["CIDEr-D"]
    assert same["p_value"] == 1.0 and same["difference"] == 0.0 and same["interval"] == [0.0, 0.0]
    better = {"CIDEr-D": a["CIDEr-D"] + rng.normal(6, 10, size=200)}  # planted: +6 per image on average
    test = paired_test(better, a, 1000, 2000, 0, 0.95)["CIDEr-D"]
    assert test["p_value"] < 0.01 and test["interval"][0] > 0 and test["difference"] > 0


def test_p_values_of_exchangeable_systems_are_not_too_small_too_often():
    """Two systems whose per-image scores come from the same distribution: p < 0.05 about 5% of the time."""
    rng = np.random.default_rng(3)
    small = 0
    for repetition in range(100):
        base = rng.normal(60, 20, size=150)
        a = {"CIDEr-D": base + rng.normal(0, 8, size=150)}
        b = {"CIDEr-D": base + rng.normal(0, 8, size=150)}
        small += paired_test(a, b, 200, 1000, repetition, 0.95)["CIDEr-D"]["p_value"] < 0.05
    assert small <= 12  # expected 5 of 100; P(>12) under the null is about 0.002


def test_bootstrap_weights_and_the_pooled_interval():
    weights = bootstrap_weights(50, 300, 0)
    assert weights.shape == (300, 50) and np.all(weights.sum(axis=1) == 50)
    rng = np.random.default_rng(4)
    seeds = [{"CIDEr-D": rng.normal(mean, 10, size=80)} for mean in (50, 54, 58)]  # the training seed matters
    pooled = pooled_intervals(seeds, 2000, 0, 0.95)["CIDEr-D"]
    single = intervals(seeds[1], 2000, 0, 0.95)["CIDEr-D"]
    assert pooled[1] - pooled[0] > single[1] - single[0]  # wider: test-set and seed variance together
