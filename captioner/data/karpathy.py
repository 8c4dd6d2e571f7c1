"""Reader for Karpathy's ``dataset_coco.json`` split file (also written by the demo generator).

Handling of odd input (documented in config/README.md):
- a missing required field raises ``KarpathyFormatError`` naming the image index and field;
- duplicate image ids raise ``KarpathyFormatError`` naming the ids;
- empty captions (no tokens after tokenisation) are dropped and counted;
- non-ASCII characters are kept (tokens are lower-cased Unicode words).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InputError

SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class KarpathyFormatError(InputError):
    """The split file is not in Karpathy's format."""


def tokenize(text: str) -> list[str]:
    """Lower-case and strip ASCII punctuation, as Karpathy's preprocessing does ("t-shirt" -> "tshirt")."""
    return text.lower().translate(_PUNCTUATION).split()


@dataclass
class KarpathyImage:
    image_id: int
    path: str  # relative to the image root: filepath/filename
    split: str  # train, val or test (restval folded into train)
    raw: list[str] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)


@dataclass
class KarpathyDataset:
    images: list[KarpathyImage]
    dropped_empty_captions: int = 0

    def split(self, name: str) -> list[KarpathyImage]:
        return [image for image in self.images if image.split == name]


def load(path: str | Path) -> KarpathyDataset:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise KarpathyFormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise KarpathyFormatError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise KarpathyFormatError(f"{path}: expected an object with an 'images' list")

    images: list[KarpathyImage] = []
    seen: dict[int, int] = {}
    duplicates: set[int] = set()
    dropped = 0
    for index, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise KarpathyFormatError(f"{path}: images[{index}] is not an object")
        for key in ("filename", "split", "sentences"):
            if key not in entry:
                raise KarpathyFormatError(f"{path}: images[{index}] has no '{key}' field")
        image_id = entry.get("cocoid", entry.get("imgid"))
        if image_id is None:
            raise KarpathyFormatError(f"{path}: images[{index}] has neither 'cocoid' nor 'imgid'")
        image_id = int(image_id)
        if image_id in seen:
            duplicates.add(image_id)
        seen[image_id] = index
        split = SPLIT_ALIASES.get(entry["split"])
        if split is None:
            raise KarpathyFormatError(
                f"{path}: images[{index}] has split {entry['split']!r}; expected one of {sorted(SPLIT_ALIASES)}"
            )
        relative = str(Path(entry.get("filepath", "")) / entry["filename"])
        image = KarpathyImage(image_id=image_id, path=relative, split=split)
        for sentence_index, sentence in enumerate(entry["sentences"]):
            if not isinstance(sentence, dict) or ("raw" not in sentence and "tokens" not in sentence):
                raise KarpathyFormatError(
                    f"{path}: images[{index}].sentences[{sentence_index}] needs 'raw' or 'tokens'"
                )
            raw = sentence.get("raw")
            tokens = sentence.get("tokens")
            tokens = [t.lower() for t in tokens] if tokens else tokenize(raw or "")
            tokens = [t for t in tokens if t.strip()]
            if not tokens:
                dropped += 1
                continue
            image.raw.append(" ".join(raw.split()) if raw else " ".join(tokens))
            image.tokens.append(tokens)
        images.append(image)
    if duplicates:
        shown = ", ".join(str(i) for i in sorted(duplicates)[:10])
        raise KarpathyFormatError(f"{path}: duplicate image ids: {shown}" + (" ..." if len(duplicates) > 10 else ""))
    return KarpathyDataset(images=images, dropped_empty_captions=dropped)
