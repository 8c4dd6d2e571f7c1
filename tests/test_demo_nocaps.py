"""The demo's nocaps-like evaluation set: official format, domains by novel objects, a training set free of them."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from captioner.data import demo, nocaps
from captioner.data.demo_nocaps import CAPTIONS_FILE, _draw, generate_nocaps, held_out_words, is_novel
from captioner.data.karpathy import tokenize
from tests.workflow_helpers import PROJECT

SMALL = {"seed": 3, "num_images": 30, "image_size": 128}


@pytest.fixture(scope="module")
def nocaps_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("nocaps")
    generate_nocaps(out, **SMALL)
    return out


def objects_by_image(out) -> dict[int, list[tuple[str, str]]]:
    boxes = json.loads((out / "boxes.json").read_text())
    return {int(image_id): [tuple(label.split()) for label in entry["labels"]] for image_id, entry in boxes.items()}


def test_official_format_ten_distinct_captions_all_domains(nocaps_set):
    data = json.loads((nocaps_set / CAPTIONS_FILE).read_text())
    assert set(data) == {"licenses", "info", "images", "annotations"}
    assert data["info"]["description"] == "demo nocaps-like validation set"
    for entry in data["images"]:
        assert len(entry["open_images_id"]) == 16 and int(entry["open_images_id"], 16) >= 0
        assert entry["file_name"] == f"{entry['open_images_id']}.jpg"
        assert (entry["height"], entry["width"], entry["license"]) == (128, 128, 0)
        assert (nocaps_set / "images" / entry["file_name"]).is_file()
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"]) == 300
    images = nocaps.load(nocaps_set / CAPTIONS_FILE)
    assert len(images) == 30 and {image.domain for image in images} == set(nocaps.DOMAINS)
    for image in images:
        assert len(image.captions) == len(set(image.captions)) == 10
        assert all(caption[0].isupper() and caption.endswith(".") for caption in image.captions)


def test_domains_follow_the_novel_objects_and_so_do_the_captions(nocaps_set):
    held_out = held_out_words()
    objects = objects_by_image(nocaps_set)
    for image in nocaps.load(nocaps_set / CAPTIONS_FILE):
        novel = [is_novel(colour, kind) for colour, kind in objects[image.image_id]]
        mentions = [bool(set(tokenize(caption)) & held_out) for caption in image.captions]
        if image.domain == "in-domain":
            assert 1 <= len(novel) <= 3 and not any(novel) and not any(mentions)
        elif image.domain == "out-domain":
            assert 1 <= len(novel) <= 3 and all(novel) and all(mentions)
        else:
            assert 2 <= len(novel) <= 3 and any(novel) and not all(novel) and any(mentions)


def test_the_domain_mix_is_about_30_45_25(tmp_path):
    stats = generate_nocaps(tmp_path, seed=0, num_images=20, image_size=128)
    assert stats["domains"] == {"in-domain": 6, "near-domain": 9, "out-domain": 5}


def test_seen_objects_are_drawn_exactly_as_in_training():
    shapes = [demo.Shape(kind, colour, "large", (8 + 48 * i, 100, 52 + 48 * i, 144))
              for i, (kind, colour) in enumerate(zip(demo.SHAPES, demo.COLOURS))]
    ours, training = random.Random(5), random.Random(5)
    assert np.array_equal(np.asarray(_draw(shapes, ours, 256)), np.asarray(demo._draw(shapes, training, 256)))
    assert ours.getstate() == training.getstate()


def test_the_training_set_never_names_a_held_out_word(tmp_path):
    held_out = held_out_words()
    assert held_out and not held_out & set(demo.SHAPES) and not held_out & set(demo.COLOURS)
    demo.generate(tmp_path, seed=0, num_train=60, num_val=5, num_test=5, num_restval=5)
    data = json.loads((tmp_path / "dataset_coco.json").read_text())
    assert {image["split"] for image in data["images"]} == {"train", "restval", "val", "test"}
    tokens = {token for image in data["images"] for sentence in image["sentences"] for token in sentence["tokens"]}
    assert not tokens & held_out


def test_same_seed_same_bytes_other_seed_differs(nocaps_set, tmp_path):
    generate_nocaps(tmp_path / "again", **SMALL)
    generate_nocaps(tmp_path / "other", **{**SMALL, "seed": SMALL["seed"] + 1})
    assert (tmp_path / "again" / CAPTIONS_FILE).read_bytes() == (nocaps_set / CAPTIONS_FILE).read_bytes()
    assert (tmp_path / "again" / "boxes.json").read_bytes() == (nocaps_set / "boxes.json").read_bytes()
    first = json.loads((nocaps_set / CAPTIONS_FILE).read_text())["images"][0]["file_name"]
    assert (tmp_path / "again/images" / first).read_bytes() == (nocaps_set / "images" / first).read_bytes()
    assert (tmp_path / "other" / CAPTIONS_FILE).read_bytes() != (nocaps_set / CAPTIONS_FILE).read_bytes()


def test_the_command_line_writes_the_set(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "captioner", "job", "demo-nocaps", "--out", str(out), "--spec",
                             '{"seed": 1, "num_images": 6, "image_size": 128}'],
                            cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert len(nocaps.load(out / CAPTIONS_FILE)) == 6 and len(list((out / "images").glob("*.jpg"))) == 6
    assert "6 images" in result.stderr
