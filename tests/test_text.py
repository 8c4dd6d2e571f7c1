import json

import pytest

from captioner.data import karpathy
from captioner.data.text import prepare
from captioner.data.vocab import SPECIALS, Vocabulary


def write_dataset(path, images):
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def image(cocoid, split, raws, **extra):
    return {"filepath": "val2014", "filename": f"{cocoid}.jpg", "imgid": cocoid, "cocoid": cocoid, "split": split,
            "sentences": [{"raw": r} for r in raws], **extra}


def test_tokenize_lowercases_and_strips_punctuation():
    assert karpathy.tokenize("A man's T-shirt, on a  bench.\n") == ["a", "mans", "tshirt", "on", "a", "bench"]
    assert karpathy.tokenize("Café au lait!") == ["café", "au", "lait"]


def test_prepare_splits_vocab_and_truncation(tmp_path):
    source = write_dataset(tmp_path / "d.json", [
        image(1, "train", ["a dog runs", "a dog sits"]),
        image(2, "restval", ["a cat runs fast and far away"]),
        image(3, "val", ["a zebra runs"]),
        image(4, "test", ["a dog"]),
    ])
    stats = prepare(source, tmp_path / "out/vocab.json", tmp_path / "out/captions.json", min_word_count=2,
                    max_caption_length=3)
    vocab = Vocabulary.load(tmp_path / "out/vocab.json")
    assert tuple(vocab.itos[:4]) == SPECIALS
    assert vocab.itos[4:] == ["a", "dog", "runs"]  # count >= 2 on train+restval only; frequency then alphabet
    data = json.loads((tmp_path / "out/captions.json").read_text())["splits"]
    assert [i["image_id"] for i in data["train"]] == [1, 2]  # restval folded into train
    cat = data["train"][1]["captions"][0]
    assert cat == [vocab.bos_id, vocab.stoi["a"], vocab.unk_id, vocab.stoi["runs"], vocab.eos_id]  # truncated to 3
    assert stats["truncated_captions"] == 1
    assert data["val"][0]["refs"] == ["a zebra runs"]
    assert vocab.decode(cat) == "a <unk> runs"


def test_empty_captions_dropped_and_counted(tmp_path):
    source = write_dataset(tmp_path / "d.json", [image(1, "train", ["a dog", "   ", "..."]), image(2, "val", ["x"]),
                                                 image(3, "test", ["y"])])
    stats = prepare(source, tmp_path / "out/vocab.json", tmp_path / "out/captions.json", 1, 16)
    assert stats["dropped_empty_captions"] == 2 and stats["captions"]["train"] == 1


def test_test_image_without_captions_is_an_error(tmp_path):
    source = write_dataset(tmp_path / "d.json", [image(1, "train", ["a dog"]), image(2, "test", [""])])
    with pytest.raises(karpathy.KarpathyFormatError, match="test image 2"):
        prepare(source, tmp_path / "out/vocab.json", tmp_path / "out/captions.json", 1, 16)


def test_duplicate_ids_and_missing_fields_are_named(tmp_path):
    dup = write_dataset(tmp_path / "dup.json", [image(5, "train", ["a"]), image(5, "val", ["b"])])
    with pytest.raises(karpathy.KarpathyFormatError, match="duplicate image ids: 5"):
        karpathy.load(dup)
    broken = image(6, "train", ["a"])
    del broken["sentences"]
    missing = write_dataset(tmp_path / "missing.json", [broken])
    with pytest.raises(karpathy.KarpathyFormatError, match=r"images\[0\] has no 'sentences'"):
        karpathy.load(missing)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(karpathy.KarpathyFormatError, match="not valid JSON"):
        karpathy.load(tmp_path / "bad.json")


def test_tokens_and_paths_read_as_before(tmp_path):
    """The fast paths of the reader (interned tokens, the image path without pathlib per image) give what
    ``[t.lower() for t in tokens]`` and ``str(Path(filepath) / filename)`` give, odd folder names included."""
    from pathlib import Path

    images = [{"filepath": folder, "filename": name, "cocoid": i, "split": "train",
               "sentences": [{"tokens": ["A", "Dog", " ", "RUNS"], "raw": "A  dog runs. "}, {"raw": "Two  Cats!"}]}
              for i, (folder, name) in enumerate([("val2014", "a.jpg"), ("val2014/", "b.jpg"), ("", "c.jpg"),
                                                  ("./x//y", "d.jpg"), (".", "e.jpg"), ("f", "sub/g.jpg"),
                                                  ("h", ""), ("i", "."), ("j", ".."), ("/abs", "k.jpg")])]
    loaded = karpathy.load(write_dataset(tmp_path / "d.json", images))
    assert [i.path for i in loaded.images] == [str(Path(i["filepath"]) / i["filename"]) for i in images]
    assert loaded.images[0].tokens == [["a", "dog", "runs"], ["two", "cats"]]
    assert loaded.images[0].raw == ["A dog runs.", "Two Cats!"]


def test_non_string_tokens_are_named(tmp_path):
    bad = write_dataset(tmp_path / "d.json", [image(1, "train", ["a dog"]),
                                              {**image(2, "train", []), "sentences": [{"tokens": ["a", 3]}]}])
    with pytest.raises(karpathy.KarpathyFormatError, match=r"images\[1\]\.sentences\[0\]: 'tokens' must be"):
        karpathy.load(bad)
