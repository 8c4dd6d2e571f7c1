"""The feature store: one reader/writer interface over HDF5 (``.h5``/``.hdf5``) and zarr v3 (``.zarr``).

Layout (both backends), N images in row order given by ``image_ids``:

- ``image_ids``  (N,) int64
- ``features``   (N, L, D) float16/float32; grid: L = grid cells, regions: L = max_boxes (zero-padded)
- ``written``    (N,) bool, set once a row is complete (lets an interrupted run resume)
- regions only: ``num_boxes`` (N,) int32, ``boxes`` (N, L, 4) float32 xyxy in original pixels,
  ``image_hw`` (N, 2) int32, ``class_ids`` (N, L) int32 and ``box_scores`` (N, L) float32 (the detector's
  best class and its score per box; -1 and 0 for given boxes)

Metadata lives in the attribute ``meta`` (a JSON string): kind, extractor config, weights,
software versions, errors. Features are chunked one image per chunk so a random read touches one chunk.

A writer fills a temporary sibling (``.NAME.partial``) and renames it onto the final path only
when every row is written, so a store at its final path is always complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from captioner.atomic import partial_path

FP16_MAX = float(np.finfo(np.float16).max)
HDF5_SUFFIXES = (".h5", ".hdf5")
ZARR_SUFFIXES = (".zarr",)


class StoreError(RuntimeError):
    """A store is missing, corrupt, incomplete or holds bad values."""


class StoreWriteError(StoreError):
    """Writing failed midway (disk full, quota, I/O error): the store handle is unusable from here on."""


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


def _open(path: Path, mode: str, backend: str):
    return _Hdf5(path, mode) if backend == "hdf5" else _Zarr(path, mode)


def _read_rows(array, rows: np.ndarray) -> np.ndarray:
    """Rows in the requested order: zarr by orthogonal selection, HDF5 by one chunk-aligned read per row
    (HDF5's fancy list indexing was ~50x slower for 50 random rows, see benchmarks/RESULTS.md)."""
    if hasattr(array, "oindex"):  # zarr
        unique, inverse = np.unique(rows, return_inverse=True)
        return np.asarray(array.oindex[unique])[inverse]
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    for k, row in enumerate(rows):
        out[k] = array[int(row)]
    return out


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


# --------------------------------------------------------------------------------------------- writer
class StoreWriter:
    """Create a store for a fixed list of image ids and fill it row by row.

    Use as a context manager: on success the partial store is renamed onto ``path``; on an
    exception it is left in place so the same command can resume it (rows marked ``written``).
    """

    def __init__(self, path: str | Path, kind: str, image_ids: Sequence[int], rows_per_image: int,
                 feature_dim: int, dtype: str = "float16", compression: str | None = None,
                 meta: dict | None = None, resume: bool = True):
        if kind not in ("grid", "regions"):
            raise ValueError(f"kind must be 'grid' or 'regions', not {kind!r}")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, not {dtype!r}")
        self.path = Path(path)
        self.backend = backend_for(self.path)
        self.partial = partial_path(self.path)
        self.kind, self.dtype = kind, dtype
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        if len(np.unique(self.image_ids)) != len(self.image_ids):
            raise StoreError(f"{self.path}: duplicate image ids given to the writer")
        self.row_of = {int(i): r for r, i in enumerate(self.image_ids)}
        meta = dict(meta or {}, kind=kind, dtype=dtype, rows_per_image=rows_per_image, feature_dim=feature_dim)
        self.meta = meta
        self.failed = False
        if resume and self._can_resume(rows_per_image, feature_dim):
            self.store = _open(self.partial, "r+" if self.backend == "hdf5" else "a", self.backend)
            self.written = np.asarray(self.store["written"][:], dtype=bool)
            old_errors = self.store.get_meta().get("errors", [])
            self.meta["errors"] = old_errors
            if not compression:
                self._check_free_space(int((~self.written).sum()), rows_per_image, feature_dim)
            return
        if not compression:  # compressed size is unknown in advance
            self._check_free_space(len(self.image_ids), rows_per_image, feature_dim)
        if self.partial.exists():
            shutil.rmtree(self.partial) if self.partial.is_dir() else self.partial.unlink()
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        n = len(self.image_ids)
        self.store = _open(self.partial, "w", self.backend)
        self.store.create("image_ids", (n,), "int64", (max(1, min(n, 65536)),), None)[:] = self.image_ids
        self.store.create("features", (n, rows_per_image, feature_dim), dtype, (1, rows_per_image, feature_dim),
                          compression)
        self.store.create("written", (n,), "bool", (max(1, min(n, 65536)),), None)[:] = np.zeros(n, dtype=bool)
        if kind == "regions":
            self.store.create("num_boxes", (n,), "int32", (max(1, min(n, 65536)),), None)
            self.store.create("boxes", (n, rows_per_image, 4), "float32", (1, rows_per_image, 4), None)
            self.store.create("image_hw", (n, 2), "int32", (max(1, min(n, 65536)), 2), None)
            self.store.create("class_ids", (n, rows_per_image), "int32", (max(1, min(n, 4096)), rows_per_image), None)
            self.store.create("box_scores", (n, rows_per_image), "float32", (max(1, min(n, 4096)), rows_per_image),
                              None)
        self.meta.setdefault("errors", [])
        self.store.set_meta(self.meta)
        self.written = np.zeros(n, dtype=bool)

    def _check_free_space(self, images: int, rows_per_image: int, feature_dim: int) -> None:
        """Refuse to start when the disk cannot hold the rows still to write (rather than fail hours later)."""
        box_bytes = 4 * 4 + 4 + 4  # per region row: box (4 x float32), class id (int32), score (float32)
        row_bytes = feature_dim * np.dtype(self.dtype).itemsize + (box_bytes if self.kind == "regions" else 0)
        needed = images * rows_per_image * row_bytes
        folder = self.partial.parent.absolute()
        while not folder.exists():
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise StoreError(f"{self.path}: needs about {needed / 2**20:.1f} MiB for {images} images but only "
                             f"{free / 2**20:.1f} MiB are free on {folder}; free space or write the store elsewhere")

    def _can_resume(self, rows_per_image: int, feature_dim: int) -> bool:
        if not self.partial.exists():
            return False
        try:
            store = _open(self.partial, "r", self.backend)
            old = store.get_meta()
            same = (
                np.array_equal(np.asarray(store["image_ids"][:]), self.image_ids)
                and {k: old.get(k) for k in ("kind", "dtype", "rows_per_image", "feature_dim", "extractor")}
                == {k: self.meta.get(k) for k in ("kind", "dtype", "rows_per_image", "feature_dim", "extractor")}
                and "written" in store
            )
            store.close()
            return same
        except (StoreError, KeyError, OSError, ValueError):
            return False

    @property
    def missing_ids(self) -> list[int]:
        return [int(i) for i in self.image_ids[~self.written]]

    def write(self, image_ids: Sequence[int], features: np.ndarray, num_boxes=None, boxes=None, image_hw=None,
              class_ids=None, box_scores=None):
        image_ids = np.asarray(image_ids, dtype=np.int64)
        features = np.asarray(features, dtype=np.float32)
        check_finite(features, image_ids, self.dtype)
        try:
            self._write(image_ids, features, num_boxes, boxes, image_hw, class_ids, box_scores)
        except (OSError, RuntimeError) as error:  # disk full, quota, file size limit, I/O error
            self.failed = True
            raise StoreWriteError(f"{self.partial}: writing features failed ({error}). Is the disk full? Rows already "
                             f"marked written are kept; free space and rerun the same command to resume.") from None

    def _write(self, image_ids, features, num_boxes, boxes, image_hw, class_ids, box_scores):
        rows = np.array([self.row_of[int(i)] for i in image_ids])
        order = np.argsort(rows)
        rows = rows[order]
        # one contiguous run of rows is the common case (ids arrive in order); write it in one call
        runs = np.split(np.arange(len(rows)), np.nonzero(np.diff(rows) != 1)[0] + 1)
        for run in runs:
            lo, hi = rows[run[0]], rows[run[-1]] + 1
            sel = order[run]
            self.store["features"][lo:hi] = features[sel].astype(self.dtype)
            if self.kind == "regions":
                self.store["num_boxes"][lo:hi] = np.asarray(num_boxes)[sel]
                self.store["boxes"][lo:hi] = np.asarray(boxes, dtype=np.float32)[sel]
                self.store["image_hw"][lo:hi] = np.asarray(image_hw)[sel]
                n = len(image_ids)
                ids = np.full((n, features.shape[1]), -1, np.int32) if class_ids is None else np.asarray(class_ids)
                scores = np.zeros((n, features.shape[1]), np.float32) if box_scores is None else np.asarray(box_scores)
                self.store["class_ids"][lo:hi] = ids[sel]
                self.store["box_scores"][lo:hi] = scores[sel]
        self.store.flush()
        self.written[rows] = True
        self.store["written"][:] = self.written  # marked only after the data is on disk
        self.store.flush()

    def record_errors(self, errors: list[dict]) -> None:
        self.meta["errors"] = list(self.meta.get("errors", [])) + errors
        self.store.set_meta(self.meta)

    def drop_rows(self, image_ids: Iterable[int]) -> None:
        """Mark rows of skipped (unreadable) images as written: they stay zero and are listed in meta."""
        for image_id in image_ids:
            self.written[self.row_of[int(image_id)]] = True
        self.store["written"][:] = self.written

    def finalize(self) -> Path:
        if not self.written.all():
            raise StoreError(f"{self.path}: {int((~self.written).sum())} rows were never written")
        self.store.set_meta(self.meta)
        self.store.close()
        if self.path.exists():
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        try:
            self.store.close()
        except (OSError, RuntimeError):
            if not self.failed:  # after a failed write the file may not close cleanly; it stays partial
                raise

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.close()


# --------------------------------------------------------------------------------------------- reader
class FeatureStore:
    """Random access by image id. Opens lazily, once per process, so it is safe in DataLoader workers."""

    def __init__(self, path: str | Path, preload: bool = False):
        self.path = Path(path)
        self.backend = backend_for(self.path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: feature store not found")
        self._handle = None
        self._pid = None
        store = self._store()
        try:
            self.meta = store.get_meta()
            self.image_ids = np.asarray(store["image_ids"][:], dtype=np.int64)
            self.kind = self.meta["kind"]
            self.shape = tuple(store["features"].shape)
        except (KeyError, json.JSONDecodeError, OSError) as error:
            raise StoreError(f"{self.path}: not a feature store written by this project ({error})") from None
        self.row_of = {int(i): r for r, i in enumerate(self.image_ids)}
        # per-box metadata is small (COCO: ~150 MB): keep it in RAM so a batch costs one read per image
        self._cache = {name: np.asarray(store[name][:]) for name in self._array_names() if name != "features"}
        if preload:
            self._cache["features"] = np.asarray(store["features"][:])

    def _array_names(self) -> list[str]:
        if self.kind == "regions":
            return ["features", "num_boxes", "boxes", "image_hw", "class_ids", "box_scores"]
        return ["features"]

    def _store(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = _open(self.path, "r", self.backend)
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None  # reopened in the worker
        return state

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def feature_dim(self) -> int:
        return self.shape[2]

    @property
    def rows_per_image(self) -> int:
        return self.shape[1]

    def rows(self, image_ids: Sequence[int]) -> np.ndarray:
        missing = [int(i) for i in image_ids if int(i) not in self.row_of]
        if missing:
            raise KeyError(f"image id {missing[0]} is not in feature store {self.path}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return np.array([self.row_of[int(i)] for i in image_ids], dtype=np.int64)

    def gather(self, image_ids: Sequence[int], require_finite: bool = True) -> dict[str, np.ndarray]:
        """Arrays for a batch of ids: ``features`` (B, L, D) in the stored dtype (float16 by default: convert
        on the device, half the host-to-device bytes) and, for regions, ``num_boxes``, ``boxes``, ...
        """
        rows = self.rows(image_ids)
        out = {}
        for name in self._array_names():
            if name in self._cache:
                out[name] = self._cache[name][rows]
                continue
            try:
                out[name] = _read_rows(self._store()[name], rows)
            except (OSError, ValueError, RuntimeError) as error:  # a damaged chunk
                raise StoreError(f"{self.path}: cannot read {name} of image ids "
                                 f"{[int(i) for i in image_ids][:10]} ({error})") from None
        bad = nonfinite_rows(out["features"]) if require_finite else None
        if bad is not None and bad.any():  # a store edited or damaged after it was written (the writer refuses NaN/Inf)
            raise StoreError(f"{self.path}: non-finite feature values for image id(s) "
                             f"{[int(i) for i in np.asarray(image_ids)[bad]][:10]}")
        return out

    def check_ids(self, image_ids: Iterable[int]) -> None:
        """Raise ``KeyError`` naming the first id absent from the store (call before training starts)."""
        self.rows(list(image_ids))


def merge_stores(shard_paths: Sequence[str | Path], out: str | Path) -> Path:
    """Concatenate shard stores (disjoint ids, same extractor) into one store at ``out``, in shard order."""
    shards = [FeatureStore(p) for p in shard_paths]
    if not shards:
        raise StoreError("merge needs at least one shard")
    first = shards[0]
    for shard in shards[1:]:
        for key in ("kind", "dtype", "rows_per_image", "feature_dim", "extractor"):
            if shard.meta.get(key) != first.meta.get(key):
                raise StoreError(f"{shard.path}: {key} differs from {first.path} "
                                 f"({shard.meta.get(key)!r} vs {first.meta.get(key)!r}); cannot merge")
    ids = np.concatenate([shard.image_ids for shard in shards])
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise StoreError(f"image id {int(unique[counts > 1][0])} appears in more than one shard")
    meta = {k: v for k, v in first.meta.items() if k != "errors"}
    meta["merged_from"] = [Path(shard.path).name for shard in shards]
    writer = StoreWriter(out, first.kind, ids, first.rows_per_image, first.feature_dim, first.meta["dtype"],
                         first.meta.get("storage", {}).get("compression"), meta, resume=False)
    writer.meta["errors"] = [e for shard in shards for e in shard.meta.get("errors", [])]
    for shard in shards:
        for start in range(0, len(shard), 256):
            batch = shard.image_ids[start:start + 256]
            data = shard.gather(batch)
            writer.write(batch, data["features"], data.get("num_boxes"), data.get("boxes"), data.get("image_hw"),
                         data.get("class_ids"), data.get("box_scores"))
    return writer.finalize()
