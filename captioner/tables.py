"""Results tables (CSV + Markdown) from the per-model score files."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from captioner.atomic import write_text

COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE")


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


def to_markdown(rows: list[dict], title: str = "") -> str:
    metric_columns = [c for c in COLUMNS if any(c in r for r in rows)]
    header = ["model", *metric_columns, "beam", "epoch"]
    lines = [f"# {title}".rstrip(), ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        cells = [f"`{row['model']}`"] + [f"{row[c]:.1f}" if c in row else "–" for c in metric_columns]
        cells += [str(row.get("beam_size", "")), str(row.get("epoch", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    split = rows[0]["split"] if rows else ""
    lines += ["", f"Scores on the {split} split ({rows[0]['images'] if rows else 0} images), 0–100 scale, "
              "pycocoevalcap (PTB-tokenised; CIDEr-D with document frequencies of the scored references). "
              "`*_blind` rows: the same model trained and decoded with the image features zeroed."]
    return "\n".join(lines) + "\n"


def tables_from_cli(args) -> None:
    rows = build_rows(args.scores)
    write_text(args.out_csv, to_csv(rows))
    write_text(args.out_md, to_markdown(rows, args.title))
    print(to_markdown(rows, args.title), file=sys.stderr)
