import numpy as np
import pytest

from features.store.format import StoreError
from features.store.reader import FeatureStore
from features.store.writer import StoreWriter


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_round_trip_exact(tmp_path, suffix):
    rng = np.random.default_rng(0)
    ids = [11, 5, 42, 7]
    feats = rng.normal(size=(4, 3, 8)).astype(np.float32)
    boxes = rng.uniform(0, 100, size=(4, 3, 4)).astype(np.float32)
    path = tmp_path / f"regions{suffix}"
    with StoreWriter(path, "regions", ids, 3, 8, dtype="float32", meta={"extractor": {"x": 1}}) as writer:
        writer.write(ids[2:], feats[2:], num_boxes=[3, 1], boxes=boxes[2:], image_hw=[[10, 20], [30, 40]])
        writer.write(ids[:2], feats[:2], num_boxes=[2, 3], boxes=boxes[:2], image_hw=[[1, 2], [3, 4]])
    store = FeatureStore(path)
    got = store.gather([7, 11, 7])
    np.testing.assert_array_equal(got["features"], feats[[3, 0, 3]])
    np.testing.assert_array_equal(got["boxes"], boxes[[3, 0, 3]])
    np.testing.assert_array_equal(got["num_boxes"], [1, 2, 1])
    assert store.meta["extractor"] == {"x": 1} and store.kind == "regions"
    with pytest.raises(KeyError, match="image id 99"):
        store.gather([5, 99])


def test_float16_overflow_and_nan_are_refused(tmp_path):
    writer = StoreWriter(tmp_path / "g.h5", "grid", [1, 2], 2, 4, dtype="float16")
    with pytest.raises(StoreError, match="overflow float16.*image id\\(s\\) \\[2\\]"):
        writer.write([1, 2], np.stack([np.ones((2, 4)), np.full((2, 4), 1e6)]))
    bad = np.ones((2, 2, 4))
    bad[0, 1, 2] = np.nan
    with pytest.raises(StoreError, match="non-finite.*\\[1\\]"):
        writer.write([1, 2], bad)
    writer.close()


def test_interrupted_writer_leaves_no_final_store_and_resumes(tmp_path):
    path = tmp_path / "g.h5"
    writer = StoreWriter(path, "grid", [1, 2, 3], 2, 4, dtype="float32")
    writer.write([1], np.ones((1, 2, 4)))
    writer.close()  # as if the process died here
    assert not path.exists()
    resumed = StoreWriter(path, "grid", [1, 2, 3], 2, 4, dtype="float32")
    assert resumed.missing_ids == [2, 3]
    resumed.write([2, 3], np.full((2, 2, 4), 2.0))
    resumed.finalize()
    np.testing.assert_array_equal(FeatureStore(path).gather([1, 3])["features"][:, 0, 0], [1.0, 2.0])


def test_corrupt_store_is_named(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"this is not hdf5")
    with pytest.raises(StoreError, match="broken.h5"):
        FeatureStore(path)


class _StoreItems:
    """A map-style dataset over a store, as a training DataLoader would use it."""

    def __init__(self, store, ids):
        self.store, self.ids = store, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return self.store.gather([self.ids[index]])["features"][0]


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_reader_is_safe_in_dataloader_workers(tmp_path, suffix):
    import torch

    ids = list(range(40))
    feats = np.random.default_rng(1).normal(size=(40, 2, 3)).astype(np.float32)
    path = tmp_path / f"g{suffix}"
    with StoreWriter(path, "grid", ids, 2, 3, dtype="float32") as writer:
        writer.write(ids, feats)
    store = FeatureStore(path)
    store.gather([0])  # opened in the parent first: workers must reopen, not share the handle
    loader = torch.utils.data.DataLoader(_StoreItems(store, ids), batch_size=8, num_workers=2,
                                         multiprocessing_context="fork")
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, feats)
