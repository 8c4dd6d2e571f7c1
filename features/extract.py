"""``python -m features job extract``: features of every image of the manifest (or of one shard of it) into a store.

The kind of extractor comes from :func:`features.config.extractor_module` (grid: :mod:`features.grid`; regions from
given boxes: :mod:`features.regions`; detected regions: :mod:`features.bottom_up`; a timm backbone's grid:
:mod:`features.timm_grid`). Each implements the same small
contract: ``rows`` and ``feature_dim`` of a store row, ``weights_record``, ``load(image, key)`` (CPU work, in loader
workers), ``collate(items)``, ``__call__(batch) -> arrays of store rows``, and optionally ``check(keys)`` (raise
when an input it needs for one of them is missing: given boxes). This module is the run loop around it:
image decoding with clear errors, batching, resumable atomic writing, progress.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from features.config import ExtractorConfig, ExtractSpec, TimmGridConfig
from features.images import ImageError, load_rgb
from features.store.writer import StoreWriter
from pipeline.config import defaults
from pipeline.device import pick_device
from pipeline.errors import InputError
from pipeline.manifest import read_manifest
from pipeline.spec import load as load_spec

STAGE = defaults("features")  # the config schema holds every default


@dataclass
class RunOptions:
    batch_size: int = STAGE["batch_size"]
    num_workers: int = STAGE["num_workers"]
    device: str = STAGE["device"]
    dtype: str = STAGE["dtype"]
    compression: str | None = None  # none | gzip | lzf | zstd (the config's "none" is None here)
    on_error: str = STAGE["on_error"]  # fail | skip
    limit: int | None = None


def build_extractor(config: ExtractorConfig | TimmGridConfig, device: torch.device, boxes=None):
    """The extractor of ``config``'s kind, from its own module (imported by name: see features.config)."""
    return importlib.import_module(config.module).build(config, device, boxes)


class ImageDataset(Dataset):
    """(key, path) items -> decoded, extractor-prepared images; a bad file becomes an error entry, not a crash."""

    def __init__(self, items: list[tuple[int, Path]], extractor):
        self.items, self.extractor = items, extractor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        key, path = self.items[index]
        try:
            image = load_rgb(path)
        except ImageError as error:
            return {"key": key, "error": str(error)}
        try:
            return {"key": key, **self.extractor.load(image, key)}
        except ImageError as error:  # decodable, but unusable by this extractor
            return {"key": key, "error": f"{path}: {error}"}

    def collate(self, items: list[dict]) -> dict:
        good = [item for item in items if "error" not in item]
        batch = {"errors": [{"image_id": item["key"], "reason": item["error"]} for item in items if "error" in item],
                 "keys": [item["key"] for item in good]}
        if good:
            batch.update(self.extractor.collate(good))
        return batch

    def __getstate__(self):  # loader workers started by pickling (spawn) need no copy of the network
        state = dict(self.__dict__)
        state["extractor"] = copy.copy(self.extractor)
        vars(state["extractor"]).pop("model", None)
        return state


def library_version(config) -> dict:
    """The version of the library an extractor's model comes from, where it is not torchvision (timm)."""
    library = getattr(config, "library", None)
    return {library: importlib.import_module(library).__version__} if library else {}


def shard_slice(count: int, shard: int, num_shards: int) -> slice:
    """Contiguous slice ``shard`` of ``num_shards`` near-equal slices of ``count`` items."""
    if not 0 <= shard < num_shards:
        raise InputError(f"shard {shard} is not in [0, {num_shards})")
    size = -(-count // num_shards)
    return slice(shard * size, min((shard + 1) * size, count))


def extract(manifest: str | Path, image_root: str | Path, out: str | Path, config: ExtractorConfig | TimmGridConfig,
            options: RunOptions, boxes_json: str | Path | None = None, shard: int = 0, num_shards: int = 1) -> dict:
    """Extract features for every image of the manifest (or of one shard of it) into the store at ``out``.

    An interrupted run leaves a partial store beside ``out``; running the same command again extracts
    only the images not yet written.
    """
    started = time.time()
    image_root = Path(image_root)
    items = [(image.image_id, image_root / image.path) for image in read_manifest(manifest)]
    if options.limit:
        items = items[: options.limit]
    items = items[shard_slice(len(items), shard, num_shards)]
    device = pick_device(options.device)
    extractor = build_extractor(config, device, boxes_json)
    if hasattr(extractor, "check"):  # inputs it needs per image (given boxes): all present before the first one
        extractor.check([i for i, _ in items])
    meta = {
        "extractor": config.record(),
        "weights_record": extractor.weights_record,
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__, **library_version(config)},
        "source": {"manifest": str(manifest), "image_root": str(image_root)},
        "storage": {"dtype": options.dtype, "compression": options.compression},
        "shard": {"index": shard, "count": num_shards},
    }
    writer = StoreWriter(out, config.kind, [i for i, _ in items], extractor.rows, extractor.feature_dim,
                         options.dtype, options.compression, meta)
    todo_ids = set(writer.missing_ids)
    todo = [item for item in items if item[0] in todo_ids]
    dataset = ImageDataset(todo, extractor)
    loader = DataLoader(dataset, batch_size=options.batch_size, num_workers=options.num_workers,
                        collate_fn=dataset.collate,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    errors: list[dict] = []
    done = 0
    with torch.inference_mode(), tqdm(total=len(todo), unit="img", desc=f"{config.kind} features",
                                                file=sys.stderr, mininterval=5) as progress:
        for batch in loader:
            errors += batch["errors"]
            failing = errors and options.on_error == "fail"  # keep decoding only to name every bad file
            if batch["keys"] and not failing:
                writer.write(batch["keys"], **extractor(batch))
                done += len(batch["keys"])
            progress.update(len(batch["keys"]) + len(batch["errors"]))
    if errors and options.on_error == "fail":
        writer.close()
        listed = "\n  ".join(f"{e['image_id']}: {e['reason']}" for e in errors)
        raise ImageError(f"{len(errors)} image(s) could not be read (features.on_error: fail):\n  {listed}")
    if errors:
        writer.record_errors(errors)
        writer.drop_rows(e["image_id"] for e in errors)
        for error in errors:
            print(f"skipped image {error['image_id']}: {error['reason']}", file=sys.stderr)
    writer.finalize()
    summary = {"done": done, "skipped_already_written": len(items) - len(todo), "failed": len(errors),
               "wall_s": round(time.time() - started, 1)}
    print(f"{config.kind} features -> {out}: {summary['done']} done, {summary['skipped_already_written']} "
          f"already written, {summary['failed']} failed, {summary['wall_s']} s", file=sys.stderr)
    return summary


# ------------------------------------------------------------------------------------------------ command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="the settings: JSON {kind, store, extractor} (inline or a file; "
                                                      "see features.config.ExtractSpec)")
    parser.add_argument("--manifest", required=True, help="image manifest JSON (python -m captioner job image-manifest)")
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--boxes", help="given-boxes JSON ({image_id: {boxes: [[x1,y1,x2,y2],...]}})")
    parser.add_argument("--threads", type=int, default=STAGE["threads"], help="torch CPU threads")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (smoke runs)")
    parser.add_argument("--shard", type=int, default=0, help="which contiguous slice of the images to extract")
    parser.add_argument("--num-shards", type=int, default=1)


def run(args) -> None:
    spec = ExtractSpec.parse(load_spec(args.spec))
    torch.set_num_threads(args.threads)
    store = spec.store
    options = RunOptions(batch_size=store.batch_size, num_workers=store.num_workers, device=store.device,
                         dtype=store.dtype, compression=None if store.compression == "none" else store.compression,
                         on_error=store.on_error, limit=args.limit)
    extract(args.manifest, args.image_root, args.out, spec.extractor_config(), options,
            boxes_json=args.boxes, shard=args.shard, num_shards=args.num_shards)
