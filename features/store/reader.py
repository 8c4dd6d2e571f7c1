"""Reading a feature store by image id (training, decoding, attention maps, verification)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from features.store.format import StoreError, backend_for, nonfinite_rows, open_backend
from pipeline.errors import InputError, MissingKeyError

# preload may take this share of the available memory: the model, the optimiser, CUDA's host buffers and the
# batches in flight need the rest
PRELOAD_MEMORY_SHARE = 0.8


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


class ChunkFiles:
    """Rows of a zarr v3 array stored one row per chunk file (the layout StoreWriter writes), read straight from
    the files by a thread pool. zarr's own orthogonal selection spends ~0.5 ms of Python and asyncio per chunk,
    more than the read itself (0.5x the M² reference layout, see benchmarks/RESULTS.md); this reads the same bytes.

    ``for_array`` returns None for any other layout (sharded, other chunks, codecs or key encoding), which then
    goes through zarr. A row without a chunk file holds the fill value, as zarr reads it (zarr skips writing
    chunks that equal the fill value)."""

    THREADS = 8  # reads release the GIL; 8 in flight: 2.5x HDF5's serial reads from a cold cache, as fast warm

    def __init__(self, folder: Path, shape: tuple, dtype: np.dtype, separator: str, compressed: bool, fill):
        self.folder, self.shape, self.dtype, self.separator = folder, shape, dtype, separator
        self.compressed, self.fill = compressed, fill
        self.row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        self._pool, self._pid = None, None

    @classmethod
    def for_array(cls, folder: Path) -> ChunkFiles | None:
        try:
            meta = json.loads((folder / "zarr.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        shape = tuple(meta.get("shape", ()))
        codecs = meta.get("codecs", [])
        names = [codec.get("name") for codec in codecs]
        endian = (codecs[0].get("configuration") or {}).get("endian", "little") if codecs else None
        grid, keys = meta.get("chunk_grid", {}), meta.get("chunk_key_encoding", {})
        try:
            dtype = np.dtype(meta.get("data_type")).newbyteorder("<")
        except TypeError:
            return None
        if (meta.get("zarr_format") != 3 or len(shape) < 2 or meta.get("storage_transformers")
                or grid.get("name") != "regular"
                or list(grid.get("configuration", {}).get("chunk_shape", [])) != [1, *shape[1:]]
                or keys.get("name") != "default" or names not in (["bytes"], ["bytes", "zstd"]) or endian != "little"
                or not isinstance(meta.get("fill_value"), (int, float))):
            return None
        separator = keys.get("configuration", {}).get("separator", "/")
        return cls(folder, shape, dtype, separator, names == ["bytes", "zstd"], meta["fill_value"])

    def _chunk_path(self, row: int) -> Path:
        return self.folder / self.separator.join(["c", str(row), *["0"] * (len(self.shape) - 1)])

    def _read_one(self, row: int, out: np.ndarray) -> None:
        try:
            fd = os.open(self._chunk_path(row), os.O_RDONLY)
        except FileNotFoundError:
            out[...] = self.fill
            return
        try:
            size = os.fstat(fd).st_size
            if not self.compressed:
                if size != self.row_bytes or os.preadv(fd, [memoryview(out).cast("B")], 0) != size:
                    raise ValueError(f"chunk of row {row} holds {size} bytes, not {self.row_bytes}")
                return
            data = os.pread(fd, size, 0)
        finally:
            os.close(fd)
        from numcodecs.zstd import Zstd  # zarr's ZstdCodec decodes with it too

        decoded = Zstd().decode(data)
        if len(decoded) != self.row_bytes:
            raise ValueError(f"chunk of row {row} decodes to {len(decoded)} bytes, not {self.row_bytes}")
        memoryview(out).cast("B")[:] = memoryview(decoded).cast("B")

    def _read_group(self, rows: np.ndarray, out: np.ndarray, positions: range) -> None:
        for k in positions:
            self._read_one(int(rows[k]), out[k])

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the requested order (repeats allowed), as zarr's ``oindex`` returns them, bit for bit."""
        rows = np.asarray(rows, dtype=np.int64)
        unique, inverse = np.unique(rows, return_inverse=True)
        if len(unique) and (unique[0] < 0 or unique[-1] >= self.shape[0]):
            raise ValueError(f"row {int(unique[-1])} is outside an array of {self.shape[0]} rows")
        if len(unique) == len(rows):  # no repeats (training batches): read straight into the requested order
            unique, inverse = rows, None
        out = np.empty((len(unique), *self.shape[1:]), dtype=self.dtype)
        if self._pool is None or self._pid != os.getpid():  # threads do not survive a fork into a worker
            from concurrent.futures import ThreadPoolExecutor

            self._pool, self._pid = ThreadPoolExecutor(self.THREADS, thread_name_prefix="chunk-read"), os.getpid()
        # one task per thread, not per row: per-row tasks cost more than a cached read (2 cores, warm cache)
        groups = min(self.THREADS, len(unique))
        tasks = [self._pool.submit(self._read_group, unique, out, range(g, len(unique), groups)) for g in range(groups)]
        for task in tasks:
            task.result()  # re-raises the first failed read
        return out if inverse is None else out[inverse]

    def __getstate__(self):
        return {**self.__dict__, "_pool": None, "_pid": None}


def available_memory_bytes() -> int | None:
    """Memory this process can still take without swapping: /proc/meminfo MemAvailable, capped by the cgroup
    limit (SLURM jobs, containers) where one is set; None where neither can be read (not Linux)."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_memory_left()
    if limit is not None:
        available = limit if available is None else min(available, limit)
    return available


def _cgroup_memory_left() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 memory.max, v1 memory.limit_in_bytes), or None.
    Only anonymous memory counts as used: the group's page cache is given back under pressure."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "0::/path" (v2) or "4:memory:/path" (v1)
        _, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            folder, limit_file, used_key = Path("/sys/fs/cgroup") / group.lstrip("/"), "memory.max", "anon"
        elif "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / group.lstrip("/")
            limit_file, used_key = "memory.limit_in_bytes", "total_rss"
        else:
            continue
        try:
            limit = (folder / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 2**60:  # v1 writes "no limit" as ~2**63
                continue
            stat = dict(row.split() for row in (folder / "memory.stat").read_text().splitlines())
            return int(limit) - int(stat.get(used_key, 0))
        except (OSError, ValueError):
            continue
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024


def _check_preload_fits(path: Path, array) -> None:
    """Refuse ``preload_features`` for a store that cannot sit in RAM (rather than swap or be OOM-killed)."""
    needed = int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize
    available = available_memory_bytes()
    if available is not None and needed > PRELOAD_MEMORY_SHARE * available:
        raise InputError(f"{path}: preload_features needs {_size(needed)} of RAM for the features but only "
                         f"{_size(available)} are available ({PRELOAD_MEMORY_SHARE:.0%} of it may be used); "
                         "set preload_features: false to read batches from disk")


class FeatureStore:
    """Random access by image id. Opens lazily, once per process, so it is safe in DataLoader workers."""

    def __init__(self, path: str | Path, preload: bool = False, direct_reads: bool = True):
        """``direct_reads``: read zarr features by :class:`ChunkFiles` where the layout allows (False: through
        zarr, for comparisons)."""
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
            _check_preload_fits(self.path, store["features"])
            self._cache["features"] = np.asarray(store["features"][:])
        self._direct = None
        if direct_reads and self.backend == "zarr" and "features" not in self._cache:
            self._direct = ChunkFiles.for_array(self.path / "features")

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
                if name == "features" and self._direct is not None:
                    out[name] = self._direct.read(rows)
                else:
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
