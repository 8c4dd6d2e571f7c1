"""Results tables (CSV + Markdown) from the per-model score files."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.config import defaults

COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")

# Published single-model results on the Karpathy COCO test split (0-100 scale), shown on COCO runs for comparison.
PUBLISHED = [
    ("published: Xu et al. 2015, soft attention (VGG)",
     {"BLEU-1": 70.7, "BLEU-2": 49.2, "BLEU-3": 34.4, "BLEU-4": 24.3, "METEOR": 23.9}),
    ("published: Xu et al. 2015, hard attention (VGG)",
     {"BLEU-1": 71.8, "BLEU-2": 50.4, "BLEU-3": 35.7, "BLEU-4": 25.0, "METEOR": 23.04}),
    ("published: Cornia et al. 2020, M² Transformer",
     {"BLEU-1": 80.8, "BLEU-4": 39.1, "METEOR": 29.2, "ROUGE-L": 58.6, "CIDEr-D": 131.2, "SPICE": 22.6}),
]


def build_rows(score_files: list[str | Path]) -> list[dict]:
    rows = []
    for path in score_files:
        with open(path, encoding="utf-8") as handle:
            scores = json.load(handle)
        row = {"model": scores.get("model", Path(path).parent.name), "split": scores.get("split", ""),
               "images": scores.get("images", ""), "beam_size": scores.get("beam_size", ""),
               "epoch": scores.get("epoch", "")}
        for column in COLUMNS:
            if column in scores["corpus"]:
                row[column] = round(scores["corpus"][column], 2)
        rows.append(row)
    return rows


def to_csv(rows: list[dict]) -> str:
    metric_columns = [c for c in COLUMNS if any(c in r for r in rows)]
    fields = ["model", "split", "images", "beam_size", "epoch", *metric_columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def published_rows() -> list[dict]:
    return [{"model": name, "split": "test", "images": 5000, "beam_size": "", "epoch": "", **scores}
            for name, scores in PUBLISHED]


def to_markdown(rows: list[dict], title: str = "") -> str:
    metric_columns = [c for c in COLUMNS if any(c in r for r in rows)]
    header = ["model", *metric_columns, "beam", "epoch"]
    lines = [f"# {title}".rstrip(), ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        name = f"*{row['model']}*" if row["model"].startswith("published:") else f"`{row['model']}`"
        cells = [name] + [f"{row[c]:.1f}" if c in row else "–" for c in metric_columns]
        cells += [str(row.get("beam_size", "")), str(row.get("epoch", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    split = rows[0]["split"] if rows else ""
    lines += ["", f"Scores on the {split} split ({rows[0]['images'] if rows else 0} images), 0–100 scale, "
              "pycocoevalcap (PTB-tokenised; CIDEr-D with document frequencies of the scored references). "
              "`*_blind` rows: the same model trained and decoded with the image features zeroed."]
    if any(r["model"].startswith("published:") for r in rows):
        lines.append("*Italic rows* are the papers' published numbers on the Karpathy test split (5,000 images), for "
                     "comparison; they were not produced by this pipeline.")
    return "\n".join(lines) + "\n"


def samples_markdown(prediction_files: list[str | Path], captions: dict, split: str, count: int) -> str:
    """A few images of the split with a reference caption and every model's caption."""
    by_model = {}
    for path in prediction_files:
        with open(path, encoding="utf-8") as handle:
            by_model[Path(path).parent.name] = {int(p["image_id"]): p["caption"] for p in json.load(handle)}
    lines = [f"# Sample captions ({split} split)", ""]
    for image in captions["splits"][split][:count]:
        image_id = int(image["image_id"])
        lines += [f"## image {image_id} (`{image['path']}`)", "", f"- *reference*: {image['refs'][0]}"]
        lines += [f"- `{model}`: {predictions.get(image_id, '(missing)')}" for model, predictions in by_model.items()]
        lines.append("")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", nargs="+", required=True)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--published", action="store_true", help="add the papers' published COCO rows")
    parser.add_argument("--predictions", nargs="*", default=[], help="prediction files for samples.md")
    parser.add_argument("--captions", help="captions.json (references for samples.md)")
    parser.add_argument("--split", default=defaults("evaluate")["split"])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--out-samples", help="samples.md: a few images with every model's caption")


def run(args) -> None:
    rows = build_rows(args.scores)
    if args.published:
        rows += published_rows()
    write_text(args.out_csv, to_csv(rows))
    write_text(args.out_md, to_markdown(rows, args.title))
    if args.out_samples:
        from captioner.data.vocab import load_captions

        write_text(args.out_samples, samples_markdown(args.predictions, load_captions(args.captions), args.split,
                                                      args.samples))
    print(to_markdown(rows, args.title), file=sys.stderr)
