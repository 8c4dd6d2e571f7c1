"""``python -m captioner job decode``: beam-search one split with a trained model into COCO-format predictions and a
per-image beams file (caption, beam log-probability)."""

from __future__ import annotations

import argparse
import sys

import torch
from tqdm import tqdm

from captioner.data.vocab import load_captions
from captioner.evaluation.specs import DecodeSpec
from captioner.models.beam_search import beam_search, collapse_repeats
from captioner.models.checkpoint import epochs_label, load_for_inference
from captioner.models.decoding import decode_batches
from features.store.reader import FeatureStore
from pipeline.atomic import write_json
from pipeline.config import defaults
from pipeline.device import pick_device
from pipeline.errors import InputError
from pipeline.spec import add_spec_argument, spec_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, DecodeSpec)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--captions", required=True)
    parser.add_argument("--split", default=defaults("evaluate")["split"], help="the captions file's split to decode")
    parser.add_argument("--out", required=True, help="predictions JSON (COCO results format)")
    parser.add_argument("--beams-out", help="also write the beams JSON here: per image the caption, its log-probability "
                                            "and ranking score, with the model, epoch and beam size")
    parser.add_argument("--threads", type=int, default=defaults("train")["threads"])

def run(args) -> None:
    spec = spec_from_args(DecodeSpec, args)
    torch.set_num_threads(args.threads)
    if spec.beam_size < 1 or spec.max_length < 1:
        raise InputError("beam size and max length must be >= 1")
    bundle = load_for_inference(args.checkpoint, pick_device(spec.device))
    store = FeatureStore(args.features)  # the split is read once, batch by batch: no need to hold the store in RAM
    images = load_captions(args.captions)["splits"][args.split]
    ids = [item["image_id"] for item in images]
    store.check_ids(ids)
    def search(state, step, count):
        return beam_search(state, step, count, spec.beam_size, spec.max_length, bundle.vocab.bos_id,
                           bundle.vocab.eos_id, bundle.vocab.pad_id, length_normalization=spec.length_normalization)

    predictions, beams = [], []
    with torch.inference_mode(), tqdm(total=len(ids), unit="img", desc=f"{bundle.name} {args.split} beam search",
                                      file=sys.stderr, mininterval=10) as progress:
        for batch_ids, result in decode_batches(bundle.model, lambda batch: bundle.inputs(store.gather(batch)), ids,
                                                spec.batch_size, search):
            for i, image_id in enumerate(batch_ids):
                words = bundle.vocab.decode(result.tokens[i, 0].tolist()).split()
                if bundle.collapse_repeats:
                    words = collapse_repeats(words)
                caption = " ".join(words)
                predictions.append({"image_id": int(image_id), "caption": caption})
                beams.append({"image_id": int(image_id), "caption": caption,
                              "logprob": float(result.logprob[i, 0]), "score": float(result.scores[i, 0])})
            progress.update(len(batch_ids))
    write_json(args.out, predictions)
    if args.beams_out:
        write_json(args.beams_out, {"model": bundle.name, "epoch": epochs_label(bundle.checkpoint),
                                    "beam_size": spec.beam_size,
                                    "max_length": spec.max_length, "split": args.split, "images": beams})
    print(f"decoded {len(predictions)} {args.split} images with {bundle.name} (beam {spec.beam_size}) -> {args.out}",
          file=sys.stderr)
