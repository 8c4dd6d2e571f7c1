"""``python -m captioner job set-tables``: the evaluation sets' table (``evaluate.sets``), ``tables/sets.csv`` and
``tables/sets.md``: per set, one row per model (the mean over its seeds) with bootstrap intervals, built as the
results tables are (:mod:`captioner.evaluation.tables`). A set is named by its score files' names, as the workflow
writes them: ``scores_<set>.json``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.evaluation.specs import SetTablesSpec
from captioner.evaluation.tables import bootstrap_of, build_rows, to_csv, to_markdown
from pipeline.atomic import write_text
from pipeline.spec import add_spec_argument, spec_from_args


def files_by_set(score_files: list[str]) -> dict[str, list[str]]:
    """{set name: its score files (scores_<set>.json)}, in the order given."""
    found: dict[str, list[str]] = {}
    for path in score_files:
        found.setdefault(Path(path).stem.removeprefix("scores_"), []).append(path)
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, SetTablesSpec)
    parser.add_argument("--scores", nargs="+", required=True, help="every model's scores_<set>.json of every set")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--title", default="")


def run(args) -> None:
    spec = spec_from_args(SetTablesSpec, args)
    rows, sections = [], [f"# {args.title}".rstrip(), ""] if args.title else []
    for name, files in files_by_set(args.scores).items():
        found = build_rows(files, bootstrap_of(spec))
        rows += found
        sections.append(f"## {name}\n\n" + to_markdown(found, "", spec.confidence))
    write_text(args.out_csv, to_csv(rows))
    write_text(args.out_md, "\n".join(sections))
    print("\n".join(sections), file=sys.stderr)
