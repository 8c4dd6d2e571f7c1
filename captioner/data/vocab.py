"""The vocabulary (word <-> id) and the prepared captions file, as every later stage reads them."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path

from pipeline.errors import InputError

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
        return [self.bos_id, *map(self.stoi.get, tokens[:max_length], repeat(self.unk_id)), self.eos_id]

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
        counts = Counter(chain.from_iterable(token_lists))
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        itos = data["itos"]
        if tuple(itos[:4]) != SPECIALS:
            raise InputError(f"{path}: vocabulary must start with {SPECIALS}")
        return cls(itos)

    def to_json(self, **extra) -> dict:
        return {"itos": self.itos, "specials": list(SPECIALS), **extra}


def load_captions(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
