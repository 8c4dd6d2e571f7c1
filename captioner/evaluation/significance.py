"""``python -m captioner job significance``: paired tests between models scored on the same images.

For each pair (a, b) and metric: a's and b's corpus scores, the difference a - b with its paired-bootstrap interval
(both systems resampled with the same images), the ratio a / b with its interval (how many times its blind baseline a
model scores), and the p-value of a two-sided approximate randomisation test (each image's outputs swapped between
the systems with probability 1/2; Riezler & Maxwell 2005). All from the score files' per-image statistics
(:mod:`captioner.evaluation.statistics`): no Java runs here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from captioner.evaluation.specs import SignificanceSpec
from captioner.evaluation.statistics import paired_test, per_image_arrays
from captioner.evaluation.tables import COLUMNS, model_of, runs_by_model, seed_of
from pipeline.atomic import write_json, write_text
from pipeline.errors import InputError
from pipeline.spec import add_spec_argument, spec_from_args

# METEOR's corpus score is aggregated inside its Java code: the paired tests resample and swap per-image METEOR,
# so its row is the mean of per-image scores, a different number from the results table's METEOR (on the demo
# ~7 points higher); the row's name says so
PER_IMAGE_MEAN = ("METEOR",)
STATISTIC = {"corpus": "corpus score (as in the results table)", "per-image mean": "mean of per-image scores",
             "pooled seeds": "corpus score of every seed's captions pooled (the table shows the mean over seeds)"}

TEST_NAME = ("two-sided approximate randomisation (per-image outputs swapped with probability 1/2) for the p-value; "
             "paired percentile bootstrap over images for the intervals")


def default_pairs(models: list[str]) -> list[tuple[str, str]]:
    """Each model against its blind baseline, M²'s SCST against its XE start, hard against soft attention."""
    pairs = [(m, f"{m}_blind") for m in models if f"{m}_blind" in models]
    for a, b in (("m2_scst", "m2_xe"), ("sat_hard", "sat_soft")):
        if a in models and b in models:
            pairs.append((a, b))
    return pairs


def seed_averaged_arrays(runs: list[dict], ids: list[str]) -> dict[str, np.ndarray]:
    """Per-image statistics averaged over a model's training seeds (one seed: its own), so the test compares the
    systems on these images with the training seed averaged out. BLEU's counts average too: corpus BLEU of the mean
    counts is that of all seeds' captions pooled."""
    arrays = [per_image_arrays(scores, ids, corpus_meteor=False) for scores in runs]
    return {key: np.mean([a[key] for a in arrays], axis=0) for key in arrays[0]}


def compare(runs_a: list[dict], runs_b: list[dict], resamples: int, trials: int, seed: int, confidence: float) -> dict:
    ids = sorted(runs_a[0]["per_image"], key=int)
    for scores in runs_a + runs_b:
        if sorted(scores["per_image"], key=int) != ids:
            raise InputError(f"{runs_a[0].get('model')} and {scores.get('model')} were scored on different images: "
                             "a paired test needs the same ones")
    arrays_a, arrays_b = seed_averaged_arrays(runs_a, ids), seed_averaged_arrays(runs_b, ids)
    metrics = paired_test(arrays_a, arrays_b, resamples, trials, seed, confidence)
    several_seeds = len(runs_a) > 1 or len(runs_b) > 1
    for metric, result in metrics.items():
        # BLEU of the seeds' mean n-gram counts is that of their captions pooled, not the mean of their BLEUs
        pooled = several_seeds and metric.startswith("BLEU")
        result["statistic"] = "per-image mean" if metric in PER_IMAGE_MEAN else "pooled seeds" if pooled else "corpus"
    return metrics


def to_markdown(results: list[dict], confidence: float, trials: int, resamples: int) -> str:
    lines = ["# Significance of the differences between models", ""]
    for result in results:
        seeds = "" if result["seeds"] == [1, 1] else f", seeds {result['seeds'][0]} vs {result['seeds'][1]}, averaged"
        lines += [f"## `{result['a']}` vs `{result['b']}` ({result['images']} images{seeds})", "",
                  f"| metric | `{result['a']}` | `{result['b']}` | difference [{confidence:.0%} CI] | ratio [CI] | p |",
                  "|---|---:|---:|---:|---:|---:|"]
        for metric in [c for c in COLUMNS if c in result["metrics"]]:
            t = result["metrics"][metric]
            low, high = t["interval"]
            ratio = "–" if t["ratio"] is None else f"{t['ratio']:.2f}"
            if t["ratio_interval"]:
                ratio += f" [{t['ratio_interval'][0]:.2f}, {t['ratio_interval'][1]:.2f}]"
            label = {"per-image mean": f"{metric} (mean of per-image scores)",
                     "pooled seeds": f"{metric} (seeds' captions pooled)"}.get(t["statistic"], metric)
            lines.append(f"| {label} | {t['a']:.1f} | {t['b']:.1f} | {t['difference']:+.1f} [{low:+.1f}, {high:+.1f}]"
                         f" | {ratio} | {t['p_value']:.4f} |")
        lines.append("")
    lines += [f"Test: {TEST_NAME}; {trials:,} randomisation trials (the smallest p is 1/{trials + 1:,}), {resamples:,} "
              "bootstrap resamples. One test per metric and pair, not corrected for multiple comparisons. BLEU is "
              "recomputed from the resampled n-gram counts. METEOR's corpus score is aggregated inside its Java code, so "
              "its row tests the mean of per-image METEOR, named as such: not the results table's METEOR, which is "
              "the corpus score. With several seeds BLEU is that of all seeds' captions pooled (named so), close to but not "
              "the table's mean over seeds; the other rows' model columns are the results table's scores."]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, SignificanceSpec)
    parser.add_argument("--scores", nargs="+", required=True, help="score files (the model name is read from each)")
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--out-json", required=True)

def run_folder(path: str | Path) -> Path | None:
    """The run a score file belongs to (results/<run>/ of .../eval/<model>/seed<k>/scores_*.json), or None for a
    file outside that layout."""
    path = Path(path).resolve()
    return path.parents[3] if seed_of(path) and path.parents[2].name == "eval" else None


def check_one_run_per_model(score_files: list) -> None:
    """Two runs' score files of one model name are two different models: refused, not pooled as seeds of one."""
    folders: dict[str, set] = {}
    for path in score_files:
        folders.setdefault(model_of(path), set()).add(run_folder(path))
    for model, found in folders.items():
        if len(found) > 1:
            runs = ", ".join(sorted(str(f) for f in found))
            raise InputError(f"{model}: score files from {len(found)} runs ({runs}) would be pooled as seeds of one "
                             "model; compare two variants within one run instead (models.<name>: {base: ...})")


def run(args) -> None:
    check_one_run_per_model(args.scores)
    by_model = {model: [scores for _, scores in runs] for model, runs in runs_by_model(args.scores).items()}
    spec = spec_from_args(SignificanceSpec, args)
    pairs = [tuple(pair) for pair in spec.pairs] or default_pairs(list(by_model))
    results = []
    for a, b in pairs:
        missing = [m for m in (a, b) if m not in by_model]
        if missing:
            raise InputError(f"significance pair {a}:{b}: no score file for {missing[0]} (models: {sorted(by_model)})")
        metrics = compare(by_model[a], by_model[b], spec.resamples, spec.trials, spec.seed, spec.confidence)
        results.append({"a": a, "b": b, "images": len(by_model[a][0]["per_image"]),
                        "seeds": [len(by_model[a]), len(by_model[b])], "metrics": metrics})
    write_json(args.out_json, {"test": TEST_NAME, "statistics": STATISTIC, "trials": spec.trials, "resamples": spec.resamples,
                               "confidence": spec.confidence, "pairs": results})
    markdown = to_markdown(results, spec.confidence, spec.trials, spec.resamples)
    write_text(args.out_md, markdown)
    print(markdown, file=sys.stderr)
