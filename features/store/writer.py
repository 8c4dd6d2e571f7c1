"""Writing a feature store row by row, resumable, under a temporary name until complete (extraction, merge)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from features.store.format import StoreError, StoreWriteError, backend_for, check_finite, open_backend
from pipeline.atomic import partial_path
from pipeline.errors import InputError


class StoreWriter:
    """Create a store for a fixed list of image ids and fill it row by row.

    Use as a context manager: on success the partial store is renamed onto ``path``; on an
    exception it is left in place so the same command can resume it (rows marked ``written``).
    """

    def __init__(self, path: str | Path, kind: str, image_ids: Sequence[int], rows_per_image: int,
                 feature_dim: int, dtype: str = "float16", compression: str | None = None,
                 meta: dict | None = None, resume: bool = True):
        if kind not in ("grid", "regions"):
            raise InputError(f"kind must be 'grid' or 'regions', not {kind!r}")
        if dtype not in ("float16", "float32"):
            raise InputError(f"dtype must be float16 or float32, not {dtype!r}")
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
            self.store = open_backend(self.partial, "r+" if self.backend == "hdf5" else "a", self.backend)
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
        self.store = open_backend(self.partial, "w", self.backend)
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
            store = open_backend(self.partial, "r", self.backend)
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
