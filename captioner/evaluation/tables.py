"""Results tables (CSV + Markdown) from the per-model score files."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from captioner.evaluation.specs import TablesSpec
from pipeline.atomic import write_text
from pipeline.spec import add_spec_argument, spec_from_args

COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")

# Published single-model results on each dataset's Karpathy test split (0-100 scale), shown for comparison on runs
# of that dataset (dataset.name): Show, Attend and Tell's Table 1 (Xu et al. 2015, VGG encoder, no CIDEr reported)
# and the M² paper's COCO row (Cornia et al. 2020, which reports COCO only).
PUBLISHED = {
    "coco": [
        ("published: Xu et al. 2015, soft attention (VGG)",
         {"BLEU-1": 70.7, "BLEU-2": 49.2, "BLEU-3": 34.4, "BLEU-4": 24.3, "METEOR": 23.9}),
        ("published: Xu et al. 2015, hard attention (VGG)",
         {"BLEU-1": 71.8, "BLEU-2": 50.4, "BLEU-3": 35.7, "BLEU-4": 25.0, "METEOR": 23.04}),
        ("published: Cornia et al. 2020, M² Transformer",
         {"BLEU-1": 80.8, "BLEU-4": 39.1, "METEOR": 29.2, "ROUGE-L": 58.6, "CIDEr-D": 131.2, "SPICE": 22.6}),
    ],
    "flickr8k": [
        ("published: Xu et al. 2015, soft attention (VGG)",
         {"BLEU-1": 67.0, "BLEU-2": 44.8, "BLEU-3": 29.9, "BLEU-4": 19.5, "METEOR": 18.93}),
        ("published: Xu et al. 2015, hard attention (VGG)",
         {"BLEU-1": 67.0, "BLEU-2": 45.7, "BLEU-3": 31.4, "BLEU-4": 21.3, "METEOR": 20.30}),
    ],
    "flickr30k": [
        ("published: Xu et al. 2015, soft attention (VGG)",
         {"BLEU-1": 66.7, "BLEU-2": 43.4, "BLEU-3": 28.8, "BLEU-4": 19.1, "METEOR": 18.49}),
        ("published: Xu et al. 2015, hard attention (VGG)",
         {"BLEU-1": 66.9, "BLEU-2": 43.9, "BLEU-3": 29.6, "BLEU-4": 19.9, "METEOR": 18.46}),
    ],
}
# The same vanilla Transformer captioner and settings on different features of the COCO images, XE then SCST (X-modaler,
# Li et al. 2021, with the grids of jianjieluo/OpenAI-CLIP-Feature, README §2.1-2.2; CIDEr only), shown on COCO runs
# whose models read features.backbones grids: what a backbone is worth, measured by others.
FEATURE_COMPARISON = {
    "coco": [
        (f"published: X-modaler Transformer, {features}, {stage}", {"CIDEr-D": cider})
        for features, scores in (("bottom-up regions", (116.6, 130.0)), ("CLIP RN101 grids", (120.6, 134.2)),
                                 ("CLIP ViT-B/16 grids", (122.3, 136.6)), ("CLIP RN101 grids at 448 px", (123.6, 136.2)))
        for stage, cider in zip(("XE", "SCST"), scores)
    ],
}
DATASET_LABELS = {"coco": "COCO", "flickr8k": "Flickr8k", "flickr30k": "Flickr30k"}
TEST_IMAGES = {"coco": 5000, "flickr8k": 1000, "flickr30k": 1000}  # the Karpathy test splits' sizes


def seed_of(path: str | Path) -> str:
    """The training seed of a score or prediction file under eval/<model>/seed<k>/ ("" elsewhere)."""
    folder = Path(path).parent.name
    return folder.removeprefix("seed") if folder.startswith("seed") else ""


def model_of(path: str | Path, scores: dict | None = None) -> str:
    if scores and "model" in scores:
        return scores["model"]
    parent = Path(path).parent
    return parent.parent.name if seed_of(path) else parent.name


def runs_by_model(score_files: list[str | Path]) -> dict[str, list[tuple[str, dict]]]:
    """{model: [(seed, scores), ...]} in file order: a model with several training seeds has several score files."""
    runs: dict[str, list[tuple[str, dict]]] = {}
    for path in score_files:
        with open(path, encoding="utf-8") as handle:
            scores = json.load(handle)
        runs.setdefault(model_of(path, scores), []).append((seed_of(path), scores))
    return runs


def build_rows(score_files: list[str | Path], bootstrap: dict | None = None) -> list[dict]:
    """One row per model. With ``bootstrap`` ({resamples, confidence, seed}) each metric gets an interval
    (``<metric> CI``: [low, high]) over the split's images from the files' per-image statistics; a model trained with
    several seeds gets the mean over seeds, their standard deviation (``<metric> std``) and an interval over images
    and seeds together (each resample draws a seed and resamples its images)."""
    from captioner.evaluation.statistics import intervals, per_image_arrays, pooled_intervals

    rows = []
    for model, runs in runs_by_model(score_files).items():
        first = runs[0][1]
        epochs = [str(scores.get("epoch", "")) for _, scores in runs]
        row = {"model": model, "split": first.get("split", ""), "images": first.get("images", ""),
               "beam_size": first.get("beam_size", ""), "epoch": epochs[0] if len(runs) == 1 else "/".join(epochs),
               "seeds": ",".join(seed for seed, _ in runs)}
        for column in COLUMNS:
            values = [scores["corpus"][column] for _, scores in runs if column in scores["corpus"]]
            if len(values) == len(runs):
                row[column] = round(float(np.mean(values)), 2)
                if len(runs) > 1:
                    row[f"{column} std"] = round(float(np.std(values, ddof=1)), 2)
        if bootstrap and all(scores.get("per_image") for _, scores in runs):
            ids = sorted(first["per_image"], key=int)
            arrays = [per_image_arrays(scores, ids) for _, scores in runs]
            found = (intervals(arrays[0], bootstrap["resamples"], bootstrap["seed"], bootstrap["confidence"])
                     if len(runs) == 1 else
                     pooled_intervals(arrays, bootstrap["resamples"], bootstrap["seed"], bootstrap["confidence"]))
            for metric, (low, high) in found.items():
                row[f"{metric} CI"] = [round(low, 2), round(high, 2)]
        rows.append(row)
    return rows


def bootstrap_of(spec) -> dict | None:
    """The interval settings of a tables spec (TablesSpec, SetTablesSpec) as ``build_rows`` takes them; None: no
    intervals (0 resamples)."""
    return {"resamples": spec.resamples, "confidence": spec.confidence, "seed": spec.seed} if spec.resamples else None


def to_csv(rows: list[dict]) -> str:
    metric_columns = [c for c in COLUMNS if any(c in r for r in rows)]
    fields = ["model", *(["label"] if any("label" in r for r in rows) else []), "split", "images", "beam_size", "epoch",
              "seeds"]
    for column in metric_columns:
        fields.append(column)
        if any(f"{column} std" in r for r in rows):
            fields.append(f"{column} std")
        if any(f"{column} CI" in r for r in rows):
            fields += [f"{column} CI low", f"{column} CI high"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = dict(row)
        for column in metric_columns:
            if f"{column} CI" in row:
                flat[f"{column} CI low"], flat[f"{column} CI high"] = row[f"{column} CI"]
        writer.writerow(flat)
    return buffer.getvalue()


def published_rows(dataset: str) -> list[dict]:
    """The papers' rows for ``dataset``, labelled with it."""
    return [{"model": f"{name}, {DATASET_LABELS[dataset]}", "split": "test", "images": TEST_IMAGES[dataset],
             "beam_size": "", "epoch": "", **scores} for name, scores in PUBLISHED[dataset]]


def feature_comparison_rows(dataset: str) -> list[dict]:
    """Others' rows of one captioner on several features of ``dataset`` (FEATURE_COMPARISON; none for most)."""
    return [{"model": f"{name}, {DATASET_LABELS[dataset]}", "split": "test", "images": TEST_IMAGES[dataset],
             "beam_size": "", "epoch": "", **scores} for name, scores in FEATURE_COMPARISON.get(dataset, [])]


def label_rows(rows: list[dict], labels: dict) -> list[dict]:
    """Rows of named experiments (and models on other features than their family's) labelled with what they are."""
    return [dict(row, label=labels[row["model"]]) if row["model"] in labels else row for row in rows]


def label_released(rows: list[dict], released: dict) -> list[dict]:
    """Released weights' rows labelled as such, and the authors' own log of each release as a row of its own.
    ``released``: ``{"labels": {model: label}, "reported": [[name, images, beam, {metric: score}], ...]}`` (the
    workflow's, from captioner/models/releases.py)."""
    labels = released.get("labels", {})
    rows = [dict(row, label=labels[row["model"]]) if row["model"] in labels else row for row in rows]
    for name, images, beam, scores in released.get("reported", []):
        rows.append({"model": f"reported: {name}", "split": "test", "images": images, "beam_size": beam, "epoch": "",
                     **scores})
    return rows


def quoted(row: dict) -> bool:
    """Rows this pipeline did not produce: the papers' and the authors' logs (shown in italics)."""
    return row["model"].startswith(("published:", "reported:"))


def cell(row: dict, column: str) -> str:
    if column not in row:
        return "–"
    text = f"{row[column]:.1f}"
    if f"{column} std" in row:
        text += f" ± {row[f'{column} std']:.1f}"
    if f"{column} CI" in row:
        low, high = row[f"{column} CI"]
        text += f" [{low:.1f}, {high:.1f}]"
    return text


def to_markdown(rows: list[dict], title: str = "", confidence: float | None = None) -> str:
    metric_columns = [c for c in COLUMNS if any(c in r for r in rows)]
    header = ["model", *metric_columns, "beam", "epoch"]
    lines = [f"# {title}".rstrip(), ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        name = f"*{row['model']}*" if quoted(row) else f"`{row['model']}`"
        if "label" in row:
            name += f" ({row['label']})"
        cells = [name] + [cell(row, c) for c in metric_columns]
        cells += [str(row.get("beam_size", "")), str(row.get("epoch", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    split = rows[0]["split"] if rows else ""
    lines += ["", f"Scores on the {split} split ({rows[0]['images'] if rows else 0} images), 0–100 scale, "
              "pycocoevalcap (PTB-tokenised; CIDEr-D with document frequencies of the scored references). "
              "`*_blind` rows: the same model trained and decoded with the image features zeroed."]
    if any("+" in str(row.get("epoch", "")) for row in rows):
        lines.append("epoch `a+b`: the best epoch of the model it started from (M²'s cross-entropy stage) + its own "
                     "(SCST).")
    if any(key.endswith(" std") for row in rows for key in row):
        lines.append("± : the standard deviation over training seeds (a row's score is the mean over its seeds, listed "
                     "in scores.csv); its interval then resamples seeds and images together.")
    if confidence and any(key.endswith(" CI") for row in rows for key in row):
        lines.append(f"[low, high]: the {confidence:.0%} percentile-bootstrap interval over the split's images "
                     "(BLEU recomputed from resampled n-gram counts; CIDEr-D, ROUGE-L: means of per-image scores, "
                     "CIDEr-D's document frequencies fixed from the full reference set; METEOR: mean of per-image "
                     "scores shifted onto the corpus score, an approximation of its corpus aggregate).")
    published = [r for r in rows if quoted(r)]
    if published:
        lines.append(f"*Italic rows* are the papers' published numbers (and the authors' own logs of released "
                     f"weights) on the Karpathy test split of their dataset ({published[0]['images']:,} images), for "
                     "comparison; they were not produced by this pipeline.")
    return "\n".join(lines) + "\n"


def samples_markdown(prediction_files: list[str | Path], captions: dict, split: str, count: int) -> str:
    """A few images of the split with a reference caption and every model's caption."""
    by_model = {}
    for path in prediction_files:
        with open(path, encoding="utf-8") as handle:
            by_model[model_of(path)] = {int(p["image_id"]): p["caption"] for p in json.load(handle)}
    lines = [f"# Sample captions ({split} split)", ""]
    if any(model.endswith("_blind") for model in by_model):
        lines += ["`*_blind` models were trained and decoded with the image features zeroed: they see no image, so they "
                  "write one caption for every image (the most likely caption of the training set's language alone); "
                  "a sighted model's lead over its blind twin is what it takes from the image.", ""]
    for image in captions["splits"][split][:count]:
        image_id = int(image["image_id"])
        lines += [f"## image {image_id} (`{image['path']}`)", "", f"- *reference*: {image['refs'][0]}"]
        lines += [f"- `{model}`: {predictions.get(image_id, '(missing)')}" for model, predictions in by_model.items()]
        lines.append("")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, TablesSpec)
    parser.add_argument("--scores", nargs="+", required=True)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--predictions", nargs="*", default=[], help="prediction files for samples.md")
    parser.add_argument("--captions", help="captions.json (references for samples.md)")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--out-samples", help="samples.md: a few images with every model's caption")
    parser.add_argument("--released", help="JSON: the labels of released weights' rows and their authors' logs "
                                           "(label_released)")
    parser.add_argument("--labels", help="JSON {model: label}: what named experiments are (label_rows)")
    parser.add_argument("--feature-comparison", action="store_true",
                        help="with published rows: others' rows of one captioner on several features of the dataset "
                             "(FEATURE_COMPARISON), for runs on backbone grids")

def run(args) -> None:
    spec = spec_from_args(TablesSpec, args)
    rows = build_rows(args.scores, bootstrap_of(spec))
    if spec.published_rows:
        rows += published_rows(spec.dataset)
        if args.feature_comparison:
            rows += feature_comparison_rows(spec.dataset)
    if args.labels:
        rows = label_rows(rows, json.loads(args.labels))
    if args.released:
        rows = label_released(rows, json.loads(args.released))
    write_text(args.out_csv, to_csv(rows))
    write_text(args.out_md, to_markdown(rows, args.title, spec.confidence))
    if args.out_samples:
        from captioner.data.vocab import load_captions

        write_text(args.out_samples, samples_markdown(args.predictions, load_captions(args.captions), spec.split,
                                                      args.samples))
    print(to_markdown(rows, args.title, spec.confidence), file=sys.stderr)
