"""The zarr direct-read path (ChunkFiles) against HDF5 and zarr's own reads, and the preload memory check."""

import numpy as np
import pytest

from features.store import reader
from features.store.format import StoreError
from features.store.reader import ChunkFiles, FeatureStore
from features.store.writer import StoreWriter
from pipeline.errors import InputError, run_cleanly


def _bits(array: np.ndarray) -> np.ndarray:
    """Raw bits: array_equal would call -0.0 equal to 0.0."""
    return array.view(f"u{array.dtype.itemsize}") if array.dtype.kind == "f" else array


def _write(path, ids, feats, compression=None, dtype="float16", drop=()):
    n = len(ids)
    rng = np.random.default_rng(3)
    with StoreWriter(path, "regions", ids, feats.shape[1], feats.shape[2], dtype=dtype, compression=compression,
                     resume=False) as writer:
        keep = [k for k, i in enumerate(ids) if i not in drop]
        writer.write([ids[k] for k in keep], feats[keep], num_boxes=rng.integers(1, feats.shape[1] + 1, n)[keep],
                     boxes=rng.uniform(0, 50, (n, feats.shape[1], 4))[keep], image_hw=np.full((len(keep), 2), 7))
        writer.drop_rows(drop)  # never written: zarr holds no chunk file for them


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_zarr_direct_reads_equal_hdf5_and_zarr_bit_for_bit(tmp_path, dtype, compression):
    rng = np.random.default_rng(0)
    ids = list(range(100, 160))
    feats = rng.normal(size=(len(ids), 6, 16)).astype(np.float32)
    feats[3] = 0.0  # an all-zero row: zarr skips writing a chunk equal to the fill value
    feats[4, 0, :4] = [-0.0, 6e-8, -6e-8, 65000.0]  # signed zero, float16 subnormals, near the float16 maximum
    drop = {ids[7], ids[20]}
    _write(tmp_path / "s.h5", ids, feats, "lzf" if compression else None, dtype, drop)
    _write(tmp_path / "s.zarr", ids, feats, compression, dtype, drop)
    hdf5, direct = FeatureStore(tmp_path / "s.h5"), FeatureStore(tmp_path / "s.zarr")
    through_zarr = FeatureStore(tmp_path / "s.zarr", direct_reads=False)
    assert direct._direct is not None and through_zarr._direct is None
    assert not (tmp_path / "s.zarr" / "features" / "c" / "7").exists()  # the dropped row really has no file
    for batch in ([ids[3], ids[4], ids[7], ids[20]], rng.choice(ids, 50).tolist(), ids[::-1], [ids[5]] * 3):
        want, got, zarr_got = hdf5.gather(batch), direct.gather(batch), through_zarr.gather(batch)
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == want[name].dtype == zarr_got[name].dtype, name
            np.testing.assert_array_equal(_bits(got[name]), _bits(want[name]), err_msg=name)
            np.testing.assert_array_equal(_bits(got[name]), _bits(zarr_got[name]), err_msg=name)


def test_direct_reads_only_for_the_layout_the_writer_writes(tmp_path):
    import zarr

    data = np.random.default_rng(1).normal(size=(8, 3, 4)).astype(np.float16)
    cases = {"plain": {"chunks": (1, 3, 4)}, "dot": {"chunks": (1, 3, 4), "chunk_key_encoding": {
        "name": "default", "separator": "."}}, "sharded": {"chunks": (1, 3, 4), "shards": (4, 3, 4)},
             "two_rows": {"chunks": (2, 3, 4)}, "gzip": {"chunks": (1, 3, 4), "compressors": [zarr.codecs.GzipCodec()]}}
    for name, kwargs in cases.items():
        kwargs.setdefault("compressors", None)
        array = zarr.create_array(str(tmp_path / f"{name}.zarr"), shape=data.shape, dtype="float16", fill_value=0,
                                  **kwargs)
        array[:] = data
        direct = ChunkFiles.for_array(tmp_path / f"{name}.zarr")
        assert (direct is not None) == (name in ("plain", "dot")), name
        if direct is not None:
            rows = np.array([5, 0, 5, 7])
            np.testing.assert_array_equal(_bits(direct.read(rows)), _bits(np.asarray(array.oindex[rows])))


def test_damaged_zarr_chunk_is_named(tmp_path):
    ids = list(range(10))
    _write(tmp_path / "s.zarr", ids, np.ones((10, 2, 8), np.float32))
    chunk = tmp_path / "s.zarr" / "features" / "c" / "4" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-2])
    store = FeatureStore(tmp_path / "s.zarr")
    store.gather([1, 2])
    with pytest.raises(StoreError, match=r"s\.zarr: cannot read features of image ids \[3, 4\]"):
        store.gather([3, 4])


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_preload_refused_when_the_store_does_not_fit_in_memory(tmp_path, monkeypatch, capsys, suffix):
    path = tmp_path / f"s{suffix}"
    _write(path, list(range(20)), np.ones((20, 4, 256), np.float32))  # 20 x 4 x 256 x 2 bytes = 40 KiB of features
    monkeypatch.setattr(reader, "available_memory_bytes", lambda: 45 * 1024)  # fits, but not with the margin
    with pytest.raises(InputError) as refused:
        FeatureStore(path, preload=True)
    message = str(refused.value)
    assert str(path) in message and "preload_features" in message and "preload_features: false" in message
    assert "needs 40.0 KiB" in message and "only 45.0 KiB are available" in message
    assert run_cleanly(lambda _: FeatureStore(path, preload=True), None) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    FeatureStore(path)  # reading from disk still works
    monkeypatch.setattr(reader, "available_memory_bytes", lambda: 10 * 2**20)
    assert "features" in FeatureStore(path, preload=True)._cache
    monkeypatch.setattr(reader, "available_memory_bytes", lambda: None)  # unknown (not Linux): no check
    assert "features" in FeatureStore(path, preload=True)._cache


def test_available_memory_is_read_on_linux():
    available = reader.available_memory_bytes()
    assert available is None or 0 < available
