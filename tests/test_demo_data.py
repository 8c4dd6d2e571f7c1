import hashlib
import json
from collections import Counter

import pytest
from PIL import Image

from captioner.data import karpathy
from captioner.data.demo import COLOURS, SHAPES, generate


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=7, num_train=60, num_val=10, num_test=10, num_restval=8)
    return out


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    generate(tmp_path / "again", seed=7, num_train=60, num_val=10, num_test=10, num_restval=8)
    assert digest(tmp_path / "again") == digest(demo)
    generate(tmp_path / "other", seed=8, num_train=60, num_val=10, num_test=10, num_restval=8)
    assert digest(tmp_path / "other") != digest(demo)


def test_karpathy_format(demo):
    data = json.loads((demo / "dataset_coco.json").read_text())
    assert data["dataset"] == "coco"
    splits = Counter(image["split"] for image in data["images"])
    assert splits == {"train": 52, "restval": 8, "val": 10, "test": 10}
    for image in data["images"]:
        assert {"filepath", "filename", "imgid", "cocoid", "split", "sentids", "sentences"} <= set(image)
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]]
        for sentence in image["sentences"]:
            assert {"tokens", "raw", "imgid", "sentid"} <= set(sentence)
            assert sentence["tokens"] == karpathy.tokenize(sentence["raw"])
        with Image.open(demo / image["filepath"] / image["filename"]) as picture:
            assert picture.format == "JPEG" and picture.size == (256, 256)
    loaded = karpathy.load(demo / "dataset_coco.json")  # the COCO code path reads it
    assert len(loaded.split("train")) == 60


def test_five_distinct_captions_with_relations(demo):
    data = json.loads((demo / "dataset_coco.json").read_text())
    all_raw = []
    for image in data["images"]:
        raws = [s["raw"] for s in image["sentences"]]
        assert len(raws) == 5 and len(set(raws)) == 5
        all_raw += raws
    text = " ".join(all_raw).lower()
    assert any(rel in text for rel in ("left of", "right of", "above", "below", "under"))
    assert sum(shape in text for shape in SHAPES) >= 4
    assert sum(colour in text for colour in COLOURS) >= 6
    assert "small" in text or "little" in text
    assert "large" in text or "big" in text


def test_boxes_inside_image_and_disjoint(demo):
    boxes = json.loads((demo / "boxes.json").read_text())
    data = json.loads((demo / "dataset_coco.json").read_text())
    assert set(boxes) == {str(image["cocoid"]) for image in data["images"]}
    counts = Counter()
    for entry in boxes.values():
        b = entry["boxes"]
        counts[len(b)] += 1
        assert len(entry["labels"]) == len(b)
        for x1, y1, x2, y2 in b:
            assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                a, c = b[i], b[j]
                assert a[2] <= c[0] or c[2] <= a[0] or a[3] <= c[1] or c[3] <= a[1]
    assert set(counts) == {1, 2, 3}
