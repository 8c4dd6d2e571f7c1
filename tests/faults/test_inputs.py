"""Bad input at the edges of the pipeline: images, the Karpathy JSON, the config, the Java runtime. Each fault
goes through the command the workflow runs and ends in a clear error or a documented, recorded handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.evaluation.scoring import spice_status
from features.store.reader import FeatureStore
from tests.faults.helpers import clean_error, extract_command, run_in_process
from tests.workflow_helpers import copy_workflow, edit_config, environment, snakemake

BAD_IMAGES = ("truncated", "empty", "missing", "bomb")


def odd_images(folder: Path) -> dict[str, Path]:
    """Valid images in unusual modes, plus a truncated, a zero-byte, a missing file and a decompression bomb."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.new("RGB", (40, 30), (200, 30, 30))
    files = {}
    files["cmyk"] = folder / "cmyk.jpg"
    rgb.convert("CMYK").save(files["cmyk"])
    files["rgba"] = folder / "rgba.png"
    Image.new("RGBA", (40, 30), (0, 0, 255, 100)).save(files["rgba"])
    files["grey"] = folder / "grey.png"
    rgb.convert("L").save(files["grey"])
    files["palette"] = folder / "palette.png"
    rgb.convert("P").save(files["palette"])
    files["sixteen"] = folder / "sixteen.png"
    Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)).save(files["sixteen"])
    files["tiny"] = folder / "tiny.jpg"
    Image.new("RGB", (1, 1), (9, 9, 9)).save(files["tiny"])
    files["rotated"] = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rgb.save(files["rotated"], exif=exif)
    files["animated"] = folder / "animated.gif"  # the first frame is the image
    frames = [rgb.convert("P")] + [Image.new("P", (40, 30), i) for i in range(2)]
    frames[0].save(files["animated"], save_all=True, append_images=frames[1:])
    files["lab"] = folder / "lab.tif"
    rgb.convert("LAB").save(files["lab"])
    files["float"] = folder / "float.tif"  # 32-bit float grey, values past 255
    Image.fromarray((np.arange(1200).reshape(30, 40) / 3.0).astype(np.float32)).save(files["float"])
    files["bilevel"] = folder / "bilevel.tif"
    rgb.convert("1").save(files["bilevel"])
    files["webp"] = folder / "photo.webp"
    rgb.save(files["webp"])
    files["bad_orientation"] = folder / "bad_orientation.jpg"  # an EXIF orientation outside 1..8 is ignored
    exif = Image.Exif()
    exif[0x0112] = 9
    rgb.save(files["bad_orientation"], exif=exif)
    good = folder / "good.jpg"
    rgb.save(good)
    files["truncated"] = folder / "truncated.jpg"
    files["truncated"].write_bytes(good.read_bytes()[:200])
    files["empty"] = folder / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["missing"] = folder / "missing.jpg"
    files["bomb"] = folder / "bomb.png"  # 13500 x 13500: past Pillow's decompression-bomb limit (a 22 kB file)
    Image.new("1", (13500, 13500)).save(files["bomb"])
    return files


def karpathy_json(path: Path, images: list[dict]) -> Path:
    path.write_text(json.dumps({"images": images}, ensure_ascii=False), encoding="utf-8")
    return path


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False, env=env)


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_bad_and_odd_images(tmp_path, on_error):
    files = odd_images(tmp_path / "images")
    names = list(files)
    source = karpathy_json(tmp_path / "d.json", [
        {"filepath": "images", "filename": path.name, "cocoid": i, "split": "train",
         "sentences": [{"raw": "a picture"}]} for i, path in enumerate(files.values())])
    out = tmp_path / "grid.h5"
    result = run_in_process(extract_command(source, tmp_path, out, 64, 2, on_error))
    if on_error == "fail":
        line = clean_error(result)
        for name in BAD_IMAGES:  # every bad file is named, not just the first
            assert files[name].name in line
        assert "larger than Pillow allows" in line
        assert not out.exists()
        return
    assert result.returncode == 0, result.stderr
    for name in BAD_IMAGES:  # the run log (the rule's log file) lists each skipped image
        assert files[name].name in result.stderr
    store = FeatureStore(out)
    recorded = {e["image_id"]: e["reason"] for e in store.meta["errors"]}
    assert sorted(recorded) == sorted(names.index(n) for n in BAD_IMAGES)
    assert "missing.jpg" in recorded[names.index("missing")]
    features = store.gather(store.image_ids)["features"]
    for i, name in enumerate(names):  # odd-but-valid modes are converted and extracted; skipped rows stay zero
        assert np.isfinite(features[i]).all()
        assert bool(features[i].any()) == (name not in BAD_IMAGES), name


def image(cocoid: int, split: str, captions: list[str], **extra) -> dict:
    return {"filepath": "", "filename": f"{cocoid}.jpg", "cocoid": cocoid, "split": split,
            "sentences": [{"raw": c} for c in captions], **extra}


def prepare_text(source: Path, out: Path) -> subprocess.CompletedProcess:
    return run("-m", "captioner", "job", "prepare-text", "--karpathy-json", str(source), "--vocab", str(out / "vocab.json"),
               "--captions", str(out / "captions.json"), "--spec", '{"min_word_count": 1}')


@pytest.mark.parametrize("fault", ["missing_sentences", "missing_split", "duplicate_id", "not_json", "no_images"])
def test_malformed_karpathy_json_is_named(tmp_path, fault):
    images = [image(1, "train", ["a dog"]), image(2, "val", ["a cat"]), image(3, "test", ["a cow"])]
    if fault == "missing_sentences":
        del images[1]["sentences"]
    elif fault == "missing_split":
        del images[2]["split"]
    elif fault == "duplicate_id":
        images[2]["cocoid"] = 1
    source = karpathy_json(tmp_path / "d.json", images)
    if fault == "not_json":
        source.write_text('{"images": [')
    elif fault == "no_images":
        source.write_text('{"annotations": []}')
    line = clean_error(prepare_text(source, tmp_path / "text"))
    assert str(source) in line
    expected = {"missing_sentences": "images[1] has no 'sentences'", "missing_split": "images[2] has no 'split'",
                "duplicate_id": "duplicate image ids: 1", "not_json": "not valid JSON", "no_images": "images"}[fault]
    assert expected in line
    assert not (tmp_path / "text").exists()


def test_empty_and_non_ascii_captions(tmp_path):
    source = karpathy_json(tmp_path / "d.json", [
        image(1, "train", ["A café on the Straße", "  ", "...", "un café noir"]),
        image(2, "val", ["a dog"]), image(3, "test", ["a café"])])
    result = prepare_text(source, tmp_path / "text")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stderr.strip().splitlines()[-1])
    assert stats["dropped_empty_captions"] == 2  # empty captions are dropped and counted in the log
    vocab = json.loads((tmp_path / "text/vocab.json").read_text(encoding="utf-8"))
    words = vocab["itos"]
    assert "café" in words and "straße" in words  # non-ASCII words are kept (lower-cased), not mangled

    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps([{"image_id": 3, "caption": "a café"}], ensure_ascii=False), encoding="utf-8")
    scored = run("-m", "captioner", "job", "score", "--predictions", str(predictions), "--captions",
                 str(tmp_path / "text/captions.json"), "--spec", '{"metrics": ["bleu", "meteor", "rouge", "cider"]}', "--out",
                 str(tmp_path / "scores.json"))
    assert scored.returncode == 0, scored.stderr
    corpus = json.loads((tmp_path / "scores.json").read_text())["corpus"]
    assert corpus["BLEU-1"] == pytest.approx(100.0, abs=1e-3) and corpus["METEOR"] > 50


@pytest.fixture
def one_test_image(tmp_path) -> tuple[Path, Path]:
    source = karpathy_json(tmp_path / "d.json", [image(1, "train", ["a red circle"]),
                                                 image(2, "test", ["a red circle", "a green star"])])
    assert prepare_text(source, tmp_path / "text").returncode == 0
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps([{"image_id": 2, "caption": "a red circle"}]))
    return predictions, tmp_path / "text/captions.json"


def test_java_missing_is_a_clear_error(one_test_image, tmp_path):
    predictions, captions = one_test_image
    env = environment()
    env["PATH"] = str(Path(sys.executable).parent)  # python, and no java
    result = run("-m", "captioner", "job", "score", "--spec", "{}", "--predictions", str(predictions), "--captions",
                 str(captions), "--out", str(tmp_path / "scores.json"), env=env)
    assert "java is not on PATH" in clean_error(result)
    assert not (tmp_path / "scores.json").exists()


def test_spice_without_its_jars_is_skipped_with_a_reason(one_test_image, tmp_path):
    available, _ = spice_status()
    if available:
        pytest.skip("the Stanford CoreNLP jars SPICE needs are installed here")
    predictions, captions = one_test_image
    # (no METEOR: its JVM start, ~10 CPU-s, adds nothing to what is tested; test_empty_and_non_ascii_captions has it)
    result = run("-m", "captioner", "job", "score", "--predictions", str(predictions), "--captions", str(captions),
                 "--spec", '{"metrics": ["bleu", "rouge", "cider", "spice"]}', "--out", str(tmp_path / "scores.json"))
    assert result.returncode == 0, result.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert "SPICE skipped" in scores["spice"] and "SPICE skipped" in result.stderr
    assert {"BLEU-4", "ROUGE-L", "CIDEr-D"} <= set(scores["corpus"]) and "SPICE" not in scores["corpus"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda c: c["evaluate"].__setitem__("beem_size", 5), "beem_size"),
        (lambda c: c["evaluate"].__setitem__("beam_size", -1), "beam_size"),
        (lambda c: c["text"].__setitem__("min_word_count", "five"), "min_word_count"),
        (lambda c: c["models"].__setitem__("lstm_plain", {}), "lstm_plain"),
        (lambda c: c["features"]["grid"].__setitem__("backbone", "vgg16"), "backbone"),
    ],
    ids=["unknown-key", "negative-beam", "wrong-type", "unknown-model", "bad-enum"],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, edit, named):
    workdir = copy_workflow(tmp_path / "project")
    edit_config(workdir, edit)
    result = snakemake(workdir, check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert not (workdir / "results").exists(), "no job may run with an invalid config"


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_images_too_thin_for_the_region_trunk_are_bad_images(tmp_path, on_error):
    """A 5000 x 1 panorama is 192 x 1 px at the detector's scale: no stride-16 cell, so the trunk cannot run.
    It is a bad image (named, or recorded and skipped), not a traceback from inside the network."""
    import torch

    from features.config import ExtractorConfig
    from features.detector import ours_to_detectron2
    from features.extract import RunOptions, extract
    from features.images import ImageError
    from tests.faults.helpers import manifest_for
    from tests.test_detector import SMALL, small_detector

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (160, 120), (90, 120, 30)).save(folder / "good.jpg")
    Image.new("RGB", (5000, 1), (90, 120, 30)).save(folder / "wide.png")
    Image.new("RGB", (3, 3000), (90, 120, 30)).save(folder / "tall.png")
    names = ["good.jpg", "wide.png", "tall.png"]
    source = karpathy_json(tmp_path / "d.json", [
        {"filepath": "images", "filename": name, "cocoid": i, "split": "train", "sentences": [{"raw": "a picture"}]}
        for i, name in enumerate(names)])
    torch.save({"model": ours_to_detectron2(small_detector(0, anchors_as_proposals=True).state_dict())},
               tmp_path / "butd.pth")
    config = ExtractorConfig(kind="regions", boxes="detector", weights=str(tmp_path / "butd.pth"), **SMALL)
    options = RunOptions(batch_size=2, num_workers=0, device="cpu", dtype="float32", on_error=on_error)
    out = tmp_path / "regions.h5"
    if on_error == "fail":
        with pytest.raises(ImageError) as raised:
            extract(manifest_for(source), tmp_path, out, config, options)
        message = str(raised.value)
        assert "wide.png" in message and "tall.png" in message and "good.jpg" not in message
        assert "resized to 192x1" in message and "thinner than the 16 px" in message
        assert not out.exists()
        return
    extract(manifest_for(source), tmp_path, out, config, options)
    store = FeatureStore(out)
    recorded = {e["image_id"]: e["reason"] for e in store.meta["errors"]}
    assert sorted(recorded) == [1, 2] and "wide.png" in recorded[1]
    assert store.gather([0])["num_boxes"][0] >= SMALL["min_boxes"]
