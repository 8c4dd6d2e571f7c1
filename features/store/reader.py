"""Reading a feature store by image id (training, decoding, attention maps, verification)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from features.store.format import StoreError, backend_for, nonfinite_rows, open_backend
from pipeline.errors import MissingKeyError


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
            self._handle = open_backend(self.path, "r", self.backend)
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
            raise MissingKeyError(f"image id {missing[0]} is not in feature store {self.path}"
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
        """Raise ``MissingKeyError`` naming the first id absent from the store (call before training starts)."""
        self.rows(list(image_ids))
