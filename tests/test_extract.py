"""Feature extraction on small random-init models: shapes, shards, resume after SIGKILL, odd and bad images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from captioner.demo_data import generate
from features.extract import ExtractorConfig, RunOptions, extract
from features.images import ImageError, load_rgb
from features.import_m2 import import_reference
from features.store import FeatureStore, merge_stores

GRID = dict(kind="grid", backbone="resnet18", image_size=64, grid_size=2)
REGIONS = dict(kind="regions", backbone="resnet18", min_size=96, max_size=96, max_boxes=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=2, num_train=12, num_val=2, num_test=2)
    return out


def run(demo, out, config, shard=0, num_shards=1, **options):
    options = {"batch_size": 4, "num_workers": 0, "device": "cpu", "dtype": "float32", **options}
    return extract(demo / "dataset_coco.json", demo, out, ExtractorConfig(**config), RunOptions(**options),
                   boxes_json=demo / "boxes.json", shard=shard, num_shards=num_shards)


def test_grid_and_given_box_shapes(demo, tmp_path):
    run(demo, tmp_path / "grid.h5", GRID)
    grid = FeatureStore(tmp_path / "grid.h5")
    assert grid.shape == (16, 4, 512) and grid.kind == "grid"
    assert grid.meta["weights_record"]["weights"] == "none"
    run(demo, tmp_path / "regions.zarr", REGIONS)
    regions = FeatureStore(tmp_path / "regions.zarr")
    boxes = json.loads((demo / "boxes.json").read_text())
    data = regions.gather(regions.image_ids)
    assert data["features"].shape == (16, 2, 512)
    for row, image_id in enumerate(regions.image_ids):
        given = np.asarray(boxes[str(image_id)]["boxes"], dtype=np.float32)[:2]
        assert data["num_boxes"][row] == len(given)
        np.testing.assert_array_equal(data["boxes"][row, : len(given)], given)  # original pixels
        assert not data["features"][row, len(given):].any()  # padding rows stay zero
        assert data["features"][row, : len(given)].any()
    assert (data["image_hw"] == 256).all()


def test_shards_merged_equal_single_job(demo, tmp_path):
    run(demo, tmp_path / "single.h5", REGIONS, batch_size=1)
    shards = []
    for shard in range(3):
        shards.append(tmp_path / f"part{shard}.h5")
        run(demo, shards[-1], REGIONS, shard=shard, num_shards=3, batch_size=1)
    assert sum(len(FeatureStore(p)) for p in shards) == 16
    merge_stores(shards, tmp_path / "merged.h5")
    single, merged = FeatureStore(tmp_path / "single.h5"), FeatureStore(tmp_path / "merged.h5")
    np.testing.assert_array_equal(single.image_ids, merged.image_ids)
    a, b = single.gather(single.image_ids), merged.gather(merged.image_ids)
    for key in ("features", "num_boxes", "boxes", "image_hw"):
        np.testing.assert_array_equal(a[key], b[key])


def test_resume_after_sigkill_extracts_only_missing(tmp_path):
    demo = tmp_path / "demo"
    generate(demo, seed=5, num_train=80, num_val=2, num_test=2)
    out = tmp_path / "grid.h5"
    command = [sys.executable, "-m", "features", "extract", "--kind", "grid", "--karpathy-json",
               str(demo / "dataset_coco.json"), "--image-root", str(demo), "--out", str(out), "--backbone",
               "resnet18", "--image-size", "160", "--grid-size", "2", "--batch-size", "4", "--num-workers", "0",
               "--device", "cpu", "--dtype", "float32"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    partial = tmp_path / ".grid.h5.partial"
    batch_bytes = 4 * 4 * 512 * 4
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:  # wait until a few batches are on disk
        if partial.exists() and partial.stat().st_size > 40_000 + 3 * batch_bytes:
            break
        time.sleep(0.05)
    assert process.poll() is None, "extraction finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists() and partial.exists()
    os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
    with h5py.File(partial, "r") as handle:
        written_before = int(handle["written"][:].sum())
    assert 0 < written_before < 84

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{84 - written_before} done, {written_before} already written" in resumed.stderr
    store = FeatureStore(out)
    assert len(store) == len(set(store.image_ids.tolist())) == 84

    uninterrupted = tmp_path / "fresh.h5"
    subprocess.run(command[:command.index("--out") + 1] + [str(uninterrupted)] + command[command.index("--out") + 2:],
                   check=True, capture_output=True, timeout=600)
    np.testing.assert_array_equal(store.gather(store.image_ids)["features"],
                                  FeatureStore(uninterrupted).gather(store.image_ids)["features"])
    verify = subprocess.run([sys.executable, "-m", "features", "verify", str(out), "--split-file",
                             str(demo / "dataset_coco.json")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout


def odd_images(folder: Path) -> dict[str, Path]:
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
    good = (folder / "good.jpg")
    rgb.save(good)
    files["truncated"] = folder / "truncated.jpg"
    files["truncated"].write_bytes(good.read_bytes()[:200])
    files["empty"] = folder / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["missing"] = folder / "missing.jpg"
    return files


def test_odd_modes_convert_and_bad_files_are_named(tmp_path):
    files = odd_images(tmp_path / "images")
    for name in ("cmyk", "rgba", "grey", "palette", "sixteen", "tiny"):
        image = load_rgb(files[name])
        assert image.mode == "RGB", name
    assert load_rgb(files["rotated"]).size == (30, 40)  # EXIF orientation applied
    assert np.asarray(load_rgb(files["sixteen"])).max() == 255
    for name in ("truncated", "empty", "missing"):
        with pytest.raises(ImageError, match=name):
            load_rgb(files[name])

    images = [{"filepath": "images", "filename": path.name, "cocoid": i, "split": "train",
               "sentences": [{"raw": "a picture"}]} for i, path in enumerate(files.values())]
    (tmp_path / "d.json").write_text(json.dumps({"images": images}))
    config = ExtractorConfig(**GRID)
    options = {"batch_size": 3, "num_workers": 0, "device": "cpu", "dtype": "float32"}
    with pytest.raises(ImageError) as failure:
        extract(tmp_path / "d.json", tmp_path, tmp_path / "fail.h5", config, RunOptions(on_error="fail", **options))
    for name in ("truncated", "empty", "missing"):
        assert f"{name}.jpg" in str(failure.value)
    assert not (tmp_path / "fail.h5").exists()

    extract(tmp_path / "d.json", tmp_path, tmp_path / "skip.h5", config, RunOptions(on_error="skip", **options))
    store = FeatureStore(tmp_path / "skip.h5")
    assert len(store) == len(files)
    errors = {e["image_id"]: e["reason"] for e in store.meta["errors"]}
    assert sorted(errors) == [7, 8, 9]
    assert "missing.jpg" in errors[9]


def test_verify_catches_nan_and_missing_id(demo, tmp_path):
    out = tmp_path / "grid.h5"
    run(demo, out, GRID)
    with h5py.File(out, "r+") as handle:
        handle["features"][3, 0, 0] = np.nan
    result = subprocess.run([sys.executable, "-m", "features", "verify", str(out)], capture_output=True, text=True)
    assert result.returncode == 1 and "non-finite" in result.stdout
    data = json.loads((demo / "dataset_coco.json").read_text())
    data["images"].append(dict(data["images"][0], cocoid=999999, imgid=999999))
    (tmp_path / "more.json").write_text(json.dumps(data))
    run(demo, tmp_path / "ok.h5", GRID)
    result = subprocess.run([sys.executable, "-m", "features", "verify", str(tmp_path / "ok.h5"), "--split-file",
                             str(tmp_path / "more.json")], capture_output=True, text=True)
    assert result.returncode == 1 and "999999" in result.stdout


def test_import_reference_layout(demo, tmp_path):
    ids = [image["cocoid"] for image in json.loads((demo / "dataset_coco.json").read_text())["images"]]
    rng = np.random.default_rng(0)
    source = tmp_path / "coco_detections.hdf5"
    expected = {}
    with h5py.File(source, "w") as handle:
        for i in ids:
            n = int(rng.integers(3, 8))
            expected[i] = rng.normal(size=(n, 16)).astype(np.float32)
            handle[f"{i}_features"] = expected[i]
            handle[f"{i}_boxes"] = rng.uniform(0, 50, size=(n, 4)).astype(np.float32)
    import_reference(source, tmp_path / "regions.h5", demo / "dataset_coco.json", max_boxes=5, dtype="float32")
    store = FeatureStore(tmp_path / "regions.h5")
    for i in ids[:5]:
        data = store.gather([i])
        n = min(len(expected[i]), 5)
        assert data["num_boxes"][0] == n
        np.testing.assert_array_equal(data["features"][0, :n], expected[i][:n])
    with h5py.File(source, "a") as handle:
        del handle[f"{ids[4]}_features"]
    with pytest.raises(KeyError, match=str(ids[4])):
        import_reference(source, tmp_path / "again.h5", demo / "dataset_coco.json")
