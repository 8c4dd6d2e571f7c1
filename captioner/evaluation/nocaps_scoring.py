"""``python -m captioner job score-nocaps``: a model's nocaps validation captions scored per domain.

In-domain, near-domain, out-domain and the entire set are four independent pycocoevalcap runs, each over its own
images only, so CIDEr-D's document frequencies (and its log of the reference count) come from the subset scored.
That is how the official EvalAI scorer most likely computes its four result blocks (it returns them separately, and
community re-implementations score each domain's file on its own), but the scorer is private: UNCONFIRMED. The
captions are PTB-tokenised once (the tokenizer works line by line, so a subset's tokens are the same) and one METEOR
process serves the four runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from captioner.data.nocaps import DOMAINS, SPLIT
from captioner.evaluation.scoring import MeteorProcess, check_metrics, score_tokenized, tokenize_for_scoring
from captioner.evaluation.specs import ScoreSpec
from pipeline.atomic import write_json
from pipeline.errors import InputError
from pipeline.spec import add_spec_argument, spec_from_args

SUBSETS = (*DOMAINS, "entire")
DOCUMENT_FREQUENCIES = ("per subset: each of in-domain, near-domain, out-domain and entire is scored on its own "
                        "(UNCONFIRMED that the official scorer does the same)")


def score_by_domain(predictions: dict[int, str], items: list[dict], metrics) -> dict:
    """``items``: the evaluation set's entries (image_id, domain, refs). Returns {subset: {"images", "corpus"}}
    and the per-image scores of the entire set."""
    check_metrics(metrics)
    references = {int(item["image_id"]): item["refs"] for item in items}
    gts, res = tokenize_for_scoring(predictions, references)
    members = {domain: [int(i["image_id"]) for i in items if i["domain"] == domain] for domain in DOMAINS}
    members["entire"] = list(references)
    results, per_image, spice = {}, {}, None
    with MeteorProcess() if "meteor" in metrics else contextlib.nullcontext() as meteor:
        for subset in SUBSETS:
            ids = members[subset]
            if not ids:
                results[subset] = {"images": 0, "corpus": {}}
                continue
            scores = score_tokenized({i: gts[i] for i in ids}, {i: res[i] for i in ids}, metrics, meteor)
            results[subset] = {"images": len(ids), "corpus": scores["corpus"]}
            if subset == "entire":
                per_image, spice = scores["per_image"], scores["spice"]
    return {"domains": results, "per_image": per_image, "spice": spice}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, ScoreSpec)
    parser.add_argument("--predictions", required=True, help="the model's captions of the nocaps images")
    parser.add_argument("--beams", help="the decode's beams JSON: model, epoch and beam size go into the scores")
    parser.add_argument("--nocaps", required=True, help="the evaluation set (text/nocaps.json, job prepare-nocaps)")
    parser.add_argument("--out", required=True)

def run(args) -> None:
    with open(args.predictions, encoding="utf-8") as handle:
        predictions = {int(p["image_id"]): p["caption"] for p in json.load(handle)}
    with open(args.nocaps, encoding="utf-8") as handle:
        nocaps = json.load(handle)
    if nocaps.get("nocaps_split") != "val":
        raise InputError(f"{args.nocaps}: the nocaps {nocaps.get('nocaps_split')} split has no captions to score "
                         "against; submit the predictions to the EvalAI server instead")
    metrics = spec_from_args(ScoreSpec, args).metrics
    scores = score_by_domain(predictions, nocaps["splits"][SPLIT], metrics)
    if args.beams:
        with open(args.beams, encoding="utf-8") as handle:
            beams = json.load(handle)
        scores.update({k: beams[k] for k in ("model", "epoch", "beam_size", "max_length") if k in beams})
    scores.update(split="nocaps val", document_frequencies=DOCUMENT_FREQUENCIES, domain_key=nocaps.get("domain_key"))
    if scores["spice"] is None:
        scores["spice"] = "SPICE not requested (add spice to evaluate.metrics)"
    write_json(args.out, scores)
    for subset in SUBSETS:
        corpus = scores["domains"][subset]["corpus"]
        print(f"{scores.get('model', args.predictions)} nocaps {subset} ({scores['domains'][subset]['images']} images): "
              + ", ".join(f"{k} {v:.1f}" for k, v in corpus.items()), file=sys.stderr)
