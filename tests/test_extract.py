"""Feature extraction on small random-init models: shapes, shards, verify, the reference layout importer.
(Kills, odd and bad images and full disks are in tests/faults/.)"""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from captioner.data.demo import generate
from features.config import ExtractorConfig
from features.extract import RunOptions, extract
from features.import_m2_features import import_reference
from features.store.merge import merge_stores
from features.store.reader import FeatureStore
from tests.faults.helpers import manifest_for

GRID = dict(kind="grid", backbone="resnet18", image_size=64, grid_size=2)
REGIONS = dict(kind="regions", backbone="resnet18", min_size=96, max_size=96, max_boxes=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=2, num_train=12, num_val=2, num_test=2)
    return out


def run(demo, out, config, shard=0, num_shards=1, **options):
    options = {"batch_size": 4, "num_workers": 0, "device": "cpu", "dtype": "float32", **options}
    return extract(manifest_for(demo / "dataset_coco.json"), demo, out, ExtractorConfig(**config), RunOptions(**options),
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


def test_res4_grids_and_pooled_regions_have_res4_width(demo, tmp_path):
    run(demo, tmp_path / "grid.h5", {**GRID, "stage": "layer3"})
    assert FeatureStore(tmp_path / "grid.h5").shape == (16, 4, 256)
    run(demo, tmp_path / "regions.h5", {**REGIONS, "head": "pool"})
    regions = FeatureStore(tmp_path / "regions.h5")
    assert regions.gather(regions.image_ids[:1])["features"].shape == (1, 2, 256)


def test_the_pooled_head_averages_res4_over_the_box():
    import torch
    import torchvision

    from features.regions import RegionExtractor

    head = RegionExtractor(torchvision.models.resnet18(weights=None), head="pool")
    # stand-in trunk: a stride-16 map whose channels are the x and y of each cell centre in image pixels, linear in
    # both, so the mean of bilinear samples over a box is the value at the box's centre
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    field = torch.stack([(xs + 0.5) * 16, (ys + 0.5) * 16])[None]
    head.trunk = torch.nn.Sequential(torch.nn.Identity())
    boxes = torch.tensor([[16.0, 32.0, 48.0, 96.0], [40.0, 8.0, 104.0, 40.0]])
    vectors = head(field, [boxes])[0]
    centres = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)
    torch.testing.assert_close(vectors, centres)


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
    result = subprocess.run([sys.executable, "-m", "features", "verify", str(tmp_path / "ok.h5"), "--manifest",
                             str(manifest_for(tmp_path / "more.json"))], capture_output=True, text=True)
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
    import_reference(source, tmp_path / "regions.h5", manifest_for(demo / "dataset_coco.json"), max_boxes=5, dtype="float32")
    store = FeatureStore(tmp_path / "regions.h5")
    for i in ids[:5]:
        data = store.gather([i])
        n = min(len(expected[i]), 5)
        assert data["num_boxes"][0] == n
        np.testing.assert_array_equal(data["features"][0, :n], expected[i][:n])
    with h5py.File(source, "a") as handle:
        del handle[f"{ids[4]}_features"]
    with pytest.raises(KeyError, match=str(ids[4])):
        import_reference(source, tmp_path / "again.h5", manifest_for(demo / "dataset_coco.json"))
