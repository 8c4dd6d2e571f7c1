"""``python -m captioner job nocaps-tables``: the nocaps table, one row per model and a column group per domain.

``nocaps.csv`` holds every metric of every subset (columns ``<subset> <metric>``); ``nocaps.md`` leads with CIDEr-D
and SPICE per domain, the figures nocaps papers report, then one full table per subset.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from captioner.evaluation.nocaps_scoring import SUBSETS
from captioner.evaluation.tables import COLUMNS, runs_by_model
from pipeline.atomic import write_text

HEADLINE = ("CIDEr-D", "SPICE")

# Published nocaps validation results (EvalAI), labelled as such; only rows with a citable source.
PUBLISHED = [
    ("published: UpDown (Anderson et al. 2018) on nocaps val, from nocaps-org/updown-baseline's README",
     {"in-domain": {"CIDEr-D": 78.1, "SPICE": 11.6}, "near-domain": {"CIDEr-D": 57.7, "SPICE": 10.3},
      "out-domain": {"CIDEr-D": 31.3, "SPICE": 8.3},
      "entire": {"CIDEr-D": 55.3, "SPICE": 10.1, "BLEU-1": 73.7, "BLEU-4": 18.3, "METEOR": 22.7, "ROUGE-L": 50.4}}),
]


def build_rows(score_files: list[str | Path]) -> list[dict]:
    """One row per model; a model trained with several seeds gets each score's mean over its seeds."""
    rows = []
    for model, runs in runs_by_model(score_files).items():
        first = runs[0][1]
        scores = {}
        for subset in SUBSETS:
            metrics = [m for m in first["domains"][subset]["corpus"]
                       if all(m in run["domains"][subset]["corpus"] for _, run in runs)]
            scores[subset] = {m: sum(run["domains"][subset]["corpus"][m] for _, run in runs) / len(runs)
                              for m in metrics}
        rows.append({"model": model, "epoch": "/".join(str(run.get("epoch", "")) for _, run in runs),
                     "beam_size": first.get("beam_size", ""), "seeds": ",".join(seed for seed, _ in runs),
                     "images": {s: first["domains"][s]["images"] for s in SUBSETS}, "scores": scores})
    return rows


def published_rows() -> list[dict]:
    return [{"model": name, "epoch": "", "beam_size": "", "seeds": "", "images": {}, "scores": scores}
            for name, scores in PUBLISHED]


def metric_columns(rows: list[dict]) -> list[str]:
    return [c for c in COLUMNS if any(c in row["scores"].get(s, {}) for row in rows for s in SUBSETS)]


def to_csv(rows: list[dict]) -> str:
    metrics = metric_columns(rows)
    fields = ["model", "beam_size", "epoch", "seeds", *(f"{s} images" for s in SUBSETS),
              *(f"{s} {m}" for s in SUBSETS for m in metrics)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record = {"model": row["model"], "beam_size": row["beam_size"], "epoch": row["epoch"],
                  "seeds": row.get("seeds", "")}
        record.update({f"{s} images": row["images"].get(s, "") for s in SUBSETS})
        record.update({f"{s} {m}": round(row["scores"][s][m], 2) for s in SUBSETS for m in metrics
                       if m in row["scores"].get(s, {})})
        writer.writerow(record)
    return buffer.getvalue()


def cell(row: dict, subset: str, metric: str) -> str:
    value = row["scores"].get(subset, {}).get(metric)
    return "–" if value is None else f"{value:.1f}"


def name(row: dict) -> str:
    return f"*{row['model']}*" if row["model"].startswith("published:") else f"`{row['model']}`"


def to_markdown(rows: list[dict], title: str = "") -> str:
    metrics = metric_columns(rows)
    headline = [m for m in HEADLINE if m in metrics]
    lines = [f"# {title}".rstrip(), ""] if title else []
    ours = next((row for row in rows if not row["model"].startswith("published:")), None)
    counts = ", ".join(f"{s} {ours['images'][s]}" for s in SUBSETS) if ours else ""
    lines += [f"## {' and '.join(headline)} per domain", ""]
    header = ["model", *(f"{s} {m}" for s in SUBSETS for m in headline)]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join([name(row), *(cell(row, s, m) for s in SUBSETS for m in headline)]) + " |"
              for row in rows]
    for subset in SUBSETS:
        lines += ["", f"## {subset}", "", "| " + " | ".join(["model", *metrics]) + " |",
                  "|" + "|".join(["---"] + ["---:"] * len(metrics)) + "|"]
        lines += ["| " + " | ".join([name(row), *(cell(row, subset, m) for m in metrics)]) + " |" for row in rows]
    lines += ["", f"nocaps validation images per subset: {counts}. 0–100 scale, pycocoevalcap (PTB-tokenised). "
              "Each subset is an independent scoring run, so CIDEr-D's document frequencies come from the subset's "
              "own references (likely the official EvalAI scorer's choice, UNCONFIRMED). Models are trained on the "
              "run's own training set only: out-of-domain images show objects its captions never name."]
    if any(row["model"].startswith("published:") for row in rows):
        lines.append("*Italic rows* are published numbers from the EvalAI server on the real nocaps validation set, "
                     "for comparison on COCO runs; they were not produced by this pipeline.")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", nargs="+", required=True, help="each model's scores_nocaps.json")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--published", action="store_true", help="add the published nocaps rows")


def run(args) -> None:
    rows = build_rows(args.scores)
    if args.published:
        rows += published_rows()
    write_text(args.out_csv, to_csv(rows))
    markdown = to_markdown(rows, args.title)
    write_text(args.out_md, markdown)
    print(markdown, file=sys.stderr)
