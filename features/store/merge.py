"""Merging shard stores (``features.shards`` > 1) into the one store training reads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from features.store.format import StoreError
from features.store.reader import FeatureStore
from features.store.writer import StoreWriter


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True)
    parser.add_argument("shards", nargs="+")


def run(args) -> None:
    merge_stores(args.shards, args.out)
    print(f"merged {len(args.shards)} shards -> {args.out}", file=sys.stderr)
