"""``python -m captioner job prepare-text``: the vocabulary of the training captions and every split encoded, into
``vocab.json`` and ``captions.json`` (what training, decoding and scoring read)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioner.data import karpathy
from captioner.data.specs import TextSpec
from captioner.data.vocab import Vocabulary
from pipeline.atomic import write_json
from pipeline.errors import InputError
from pipeline.spec import add_spec_argument, spec_from_args


def prepare(karpathy_json: str | Path, vocab_path: str | Path, captions_path: str | Path, min_word_count: int,
            max_caption_length: int) -> dict:
    """Build the vocabulary on the training captions and encode every split.

    Writes ``vocab.json`` and ``captions.json`` (per split: image id, image path, raw references
    for scoring, encoded training targets).
    """
    if min_word_count < 1 or max_caption_length < 1:
        raise InputError("min_word_count and max_caption_length must be >= 1")
    with karpathy.cyclic_gc_paused():  # 600k+ lists built below on top of the loaded dataset
        return _prepare(karpathy_json, vocab_path, captions_path, min_word_count, max_caption_length)


def _prepare(karpathy_json, vocab_path, captions_path, min_word_count: int, max_caption_length: int) -> dict:
    dataset = karpathy.load(karpathy_json)
    train = dataset.split("train")
    if not train:
        raise karpathy.KarpathyFormatError(f"{karpathy_json}: no training images")
    vocab = Vocabulary.build((t for image in train for t in image.tokens), min_word_count)
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    truncated = 0
    for image in dataset.images:
        if not image.tokens:
            if image.split == "train":
                continue  # nothing to learn from
            raise karpathy.KarpathyFormatError(
                f"{karpathy_json}: {image.split} image {image.image_id} has no non-empty caption to score against"
            )
        truncated += sum(len(t) > max_caption_length for t in image.tokens)
        splits[image.split].append(
            {
                "image_id": image.image_id,
                "path": image.path,
                "refs": image.raw,
                "captions": [vocab.encode(t, max_caption_length) for t in image.tokens],
            }
        )
    stats = {
        "vocab_size": len(vocab),
        "images": {name: len(items) for name, items in splits.items()},
        "captions": {name: sum(len(i["captions"]) for i in items) for name, items in splits.items()},
        "truncated_captions": truncated,
        "dropped_empty_captions": dataset.dropped_empty_captions,
    }
    write_json(vocab_path, vocab.to_json(min_word_count=min_word_count), indent=None)
    write_json(captions_path, {"max_caption_length": max_caption_length, "splits": splits, "stats": stats},
               indent=None)
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, TextSpec)
    parser.add_argument("--karpathy-json", required=True)
    parser.add_argument("--vocab", required=True, help="vocab.json to write")
    parser.add_argument("--captions", required=True, help="captions.json to write")


def run(args) -> None:
    spec = spec_from_args(TextSpec, args)
    stats = prepare(args.karpathy_json, args.vocab, args.captions, spec.min_word_count, spec.max_caption_length)
    print(json.dumps(stats), file=sys.stderr)
