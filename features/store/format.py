"""Store layout, the HDF5 and zarr backends, and the value checks shared by the writer and the reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError

FP16_MAX = float(np.finfo(np.float16).max)
HDF5_SUFFIXES = (".h5", ".hdf5")
ZARR_SUFFIXES = (".zarr",)


class StoreError(PipelineError, RuntimeError):
    """A store is missing, corrupt, incomplete or holds bad values."""


class StoreWriteError(StoreError):
    """Writing failed midway (disk full, quota, I/O error): the store handle is unusable from here on."""

    hard_exit = True  # h5py's finalisers crash on a store whose write failed


def backend_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    raise StoreError(f"{path}: unknown store suffix {suffix!r}; use .h5/.hdf5 (HDF5) or .zarr (zarr v3)")


# --------------------------------------------------------------------------------------------- backends
class _Hdf5:
    def __init__(self, path: Path, mode: str):
        import h5py

        try:
            self.file = h5py.File(path, mode)
        except OSError as error:
            raise StoreError(f"{path}: cannot open as HDF5 ({error})") from None

    def create(self, name, shape, dtype, chunks, compression):
        kwargs = {}
        if compression:
            kwargs = {"compression": "gzip" if compression == "gzip" else compression}
        return self.file.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, **kwargs)

    def __getitem__(self, name):
        return self.file[name]

    def __contains__(self, name):
        return name in self.file

    def get_meta(self) -> dict:
        return json.loads(self.file.attrs.get("meta", "{}"))

    def set_meta(self, meta: dict) -> None:
        self.file.attrs["meta"] = json.dumps(meta)

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()


class _Zarr:
    def __init__(self, path: Path, mode: str):
        import zarr

        try:
            self.group = zarr.open_group(str(path), mode=mode, zarr_format=3 if mode == "w" else None)
        except Exception as error:  # zarr raises several types for missing/corrupt groups
            raise StoreError(f"{path}: cannot open as a zarr group ({error})") from None

    def create(self, name, shape, dtype, chunks, compression):
        import zarr

        compressors = None
        if compression:
            compressors = [zarr.codecs.ZstdCodec(level=3)] if compression == "zstd" else "auto"
        return self.group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, compressors=compressors,
                                       fill_value=0)

    def __getitem__(self, name):
        return self.group[name]

    def __contains__(self, name):
        return name in self.group

    def get_meta(self) -> dict:
        return json.loads(self.group.attrs.get("meta", "{}"))

    def set_meta(self, meta: dict) -> None:
        self.group.attrs["meta"] = json.dumps(meta)

    def flush(self):
        pass

    def close(self):
        pass


def open_backend(path: Path, mode: str, backend: str):
    return _Hdf5(path, mode) if backend == "hdf5" else _Zarr(path, mode)



_EXPONENT_BITS = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}


def nonfinite_rows(features: np.ndarray) -> np.ndarray:
    """Which rows (first axis) hold a NaN or an Inf. For float16/float32 it tests the exponent bits (all ones
    means NaN/Inf): 4x faster than np.isfinite on float16, and it runs on every batch read."""
    flat = np.ascontiguousarray(features).reshape(len(features), -1)
    if flat.dtype in _EXPONENT_BITS:
        unsigned, exponent = _EXPONENT_BITS[flat.dtype]
        return ((flat.view(unsigned) & exponent) == exponent).any(axis=1)
    return ~np.isfinite(flat).all(axis=1)


def check_finite(features: np.ndarray, image_ids: Sequence[int], dtype: str) -> None:
    """Refuse NaN/Inf, and values that would overflow float16, naming the offending image."""
    flat = features.reshape(len(features), -1)
    bad = nonfinite_rows(flat)
    if bad.any():
        raise StoreError(f"non-finite feature values for image id(s) {[int(i) for i in np.asarray(image_ids)[bad]]}")
    if dtype == "float16":
        peak = np.abs(flat).max(axis=1)
        over = peak > FP16_MAX
        if over.any():
            first = int(np.argmax(over))
            raise StoreError(
                f"feature values up to {peak[first]:.3g} overflow float16 (max {FP16_MAX:.0f}) for image id(s) "
                f"{[int(i) for i in np.asarray(image_ids)[over]][:10]}; set features.dtype: float32 "
                "(random-init ResNet activations are large)"
            )


def region_rows(pieces: list[tuple], hw: list, rows: int, feature_dim: int) -> dict:
    """Per image (features, boxes, class ids or None, scores or None) -> the zero-padded arrays of a store row."""
    n = len(pieces)
    out = {"features": np.zeros((n, rows, feature_dim), dtype=np.float32),
           "num_boxes": np.zeros(n, dtype=np.int32), "boxes": np.zeros((n, rows, 4), dtype=np.float32),
           "image_hw": np.asarray(hw, dtype=np.int32).reshape(n, 2),
           "class_ids": np.full((n, rows), -1, dtype=np.int32), "box_scores": np.zeros((n, rows), dtype=np.float32)}
    for i, (feats, boxes, class_ids, scores) in enumerate(pieces):
        k = len(feats)
        out["features"][i, :k], out["boxes"][i, :k], out["num_boxes"][i] = feats, boxes, k
        if class_ids is not None:
            out["class_ids"][i, :k], out["box_scores"][i, :k] = class_ids, scores
    return out
