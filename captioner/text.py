"""Text preparation: vocabulary, caption encoding, and the ``captions.json`` the training stage reads."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from captioner import karpathy
from captioner.atomic import write_json

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


@dataclass
class Vocabulary:
    itos: list[str]

    def __post_init__(self) -> None:
        self.stoi = {word: index for index, word in enumerate(self.itos)}

    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str], max_length: int) -> list[int]:
        """``<bos> w1 .. wn <eos>`` with words beyond ``max_length`` cut off."""
        ids = [self.stoi.get(token, self.unk_id) for token in tokens[:max_length]]
        return [self.bos_id, *ids, self.eos_id]

    def decode(self, ids) -> str:
        """Words up to the first ``<eos>``; specials dropped."""
        words = []
        for index in ids:
            index = int(index)
            if index == self.eos_id:
                break
            if index in (self.pad_id, self.bos_id):
                continue
            words.append(self.itos[index])
        return " ".join(words)

    @classmethod
    def build(cls, token_lists, min_count: int) -> "Vocabulary":
        counts = Counter(token for tokens in token_lists for token in tokens)
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        itos = data["itos"]
        if tuple(itos[:4]) != SPECIALS:
            raise ValueError(f"{path}: vocabulary must start with {SPECIALS}")
        return cls(itos)

    def to_json(self, **extra) -> dict:
        return {"itos": self.itos, "specials": list(SPECIALS), **extra}


def prepare(karpathy_json: str | Path, out_dir: str | Path, min_word_count: int, max_caption_length: int) -> dict:
    """Build the vocabulary on the training captions and encode every split.

    Writes ``vocab.json`` and ``captions.json`` (per split: image id, image path, raw references
    for scoring, encoded training targets).
    """
    if min_word_count < 1 or max_caption_length < 1:
        raise ValueError("min_word_count and max_caption_length must be >= 1")
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
    out_dir = Path(out_dir)
    write_json(out_dir / "vocab.json", vocab.to_json(min_word_count=min_word_count), indent=None)
    write_json(out_dir / "captions.json", {"max_caption_length": max_caption_length, "splits": splits, "stats": stats},
               indent=None)
    return stats


def load_captions(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
