"""Reader for Karpathy's ``dataset_coco.json`` split file (also written by the demo generator).

Handling of odd input (documented in config/README.md):
- a missing required field raises ``KarpathyFormatError`` naming the image index and field;
- duplicate image ids raise ``KarpathyFormatError`` naming the ids;
- empty captions (no tokens after tokenisation) are dropped and counted;
- non-ASCII characters are kept (tokens are lower-cased Unicode words).
"""

from __future__ import annotations

import contextlib
import gc
import json
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InputError

SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class KarpathyFormatError(InputError):
    """The split file is not in Karpathy's format."""


@contextlib.contextmanager
def cyclic_gc_paused():
    """For loops that build millions of small lists or dicts: every few hundred new containers trigger the cyclic
    garbage collector, which keeps re-walking the whole heap (a loaded COCO caption file is millions of objects):
    2-4x the time of reading COCO's captions. Such loops create no reference cycles; refcounting frees their
    garbage anyway."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
    with cyclic_gc_paused():
        return _load(path)


def _image_path(filepath, filename, folders: dict) -> str:
    """``str(Path(filepath) / filename)``, with the folder normalised once per distinct ``filepath`` (COCO has two)
    instead of two ``Path`` objects per image."""
    if not isinstance(filename, str) or "/" in filename or filename in ("", "."):
        return str(Path(filepath) / filename)  # what pathlib makes of these (or its error)
    folder = folders.get(filepath)
    if folder is None:
        folder = folders[filepath] = str(Path(filepath))
    return filename if folder == "." else f"{folder}/{filename}"


def _intern_tokens(entry: dict) -> dict:
    """Each parsed sentence's tokens as interned strings: COCO's 6.5M tokens are ~25k distinct words, and
    separate string objects were 40% of the parsed file's memory (the peak of ``prepare-text``)."""
    tokens = entry.get("tokens")
    if type(tokens) is list:
        try:
            entry["tokens"] = list(map(sys.intern, tokens))
        except TypeError:  # not all strings: left for load() to name
            pass
    return entry


def _load(path: Path) -> KarpathyDataset:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle, object_hook=_intern_tokens)
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
    folders: dict = {}
    entries = data.pop("images")
    del data
    for index, entry in enumerate(entries):
        entries[index] = None  # free the parsed entry once read: the JSON tree and the dataset are not held at once
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
        relative = _image_path(entry.get("filepath", ""), entry["filename"], folders)
        image = KarpathyImage(image_id=image_id, path=relative, split=split)
        for sentence_index, sentence in enumerate(entry["sentences"]):
            if not isinstance(sentence, dict) or ("raw" not in sentence and "tokens" not in sentence):
                raise KarpathyFormatError(
                    f"{path}: images[{index}].sentences[{sentence_index}] needs 'raw' or 'tokens'"
                )
            raw = sentence.get("raw")
            tokens = sentence.get("tokens")
            try:
                # interned again after lower-casing (a new string each), so the dataset holds one object per word
                tokens = list(map(sys.intern, map(str.lower, tokens) if tokens else tokenize(raw or "")))
                tokens = [t for t in tokens if t.strip()]
                raw = " ".join(raw.split()) if raw else " ".join(tokens)
            except (TypeError, AttributeError):
                raise KarpathyFormatError(
                    f"{path}: images[{index}].sentences[{sentence_index}]: 'tokens' must be a list of strings and "
                    f"'raw' a string"
                ) from None
            if not tokens:
                dropped += 1
                continue
            image.raw.append(raw)
            image.tokens.append(tokens)
        images.append(image)
    if duplicates:
        shown = ", ".join(str(i) for i in sorted(duplicates)[:10])
        raise KarpathyFormatError(f"{path}: duplicate image ids: {shown}" + (" ..." if len(duplicates) > 10 else ""))
    return KarpathyDataset(images=images, dropped_empty_captions=dropped)
