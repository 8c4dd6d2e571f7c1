"""Import region features stored in the M² reference layout (``coco_detections.hdf5``) into a feature store.

The reference file holds, per COCO image id, ``<id>_features`` (N, 2048) and ``<id>_boxes`` (N, 4)
(optionally ``<id>_cls_prob``). Rows beyond ``max_boxes`` are dropped in stored order, as the reference
loader does. Unlike that loader, a missing id is an error naming the id, never random features.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from features.store.format import StoreError
from features.store.writer import StoreWriter
from pipeline.config import defaults
from pipeline.errors import MissingKeyError
from pipeline.manifest import read_manifest


def import_reference(source: str | Path, out: str | Path, manifest: str | Path, max_boxes: int = 50,
                     dtype: str = defaults("features")["dtype"], batch: int = 256) -> dict:
    image_ids = [image.image_id for image in read_manifest(manifest)]
    try:
        handle = h5py.File(source, "r")
    except OSError as error:
        raise StoreError(f"{source}: cannot open as HDF5 ({error})") from None
    with handle:
        missing = [i for i in image_ids if f"{i}_features" not in handle]
        if missing:
            raise MissingKeyError(f"image id {missing[0]} has no '{missing[0]}_features' in {source} "
                           f"({len(missing)} of {len(image_ids)} ids missing)")
        dim = handle[f"{image_ids[0]}_features"].shape[1]
        meta = {"extractor": {"kind": "regions", "imported_from": str(source), "layout": "m2-reference",
                              "max_boxes": max_boxes},
                "storage": {"dtype": dtype, "compression": None}}
        writer = StoreWriter(out, "regions", image_ids, max_boxes, dim, dtype, None, meta, resume=False)
        for start in tqdm(range(0, len(image_ids), batch), desc="import", unit="batch", file=sys.stderr,
                          mininterval=5):
            ids = image_ids[start:start + batch]
            feats = np.zeros((len(ids), max_boxes, dim), dtype=np.float32)
            boxes = np.zeros((len(ids), max_boxes, 4), dtype=np.float32)
            counts = np.zeros(len(ids), dtype=np.int32)
            for row, image_id in enumerate(ids):
                f = np.asarray(handle[f"{image_id}_features"][:max_boxes], dtype=np.float32)
                feats[row, : len(f)] = f
                counts[row] = len(f)
                if f"{image_id}_boxes" in handle:
                    b = np.asarray(handle[f"{image_id}_boxes"][:max_boxes], dtype=np.float32)
                    boxes[row, : len(b)] = b
            writer.write(ids, feats, counts, boxes, np.zeros((len(ids), 2), dtype=np.int32))
        writer.finalize()
    return {"images": len(image_ids), "feature_dim": dim}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="coco_detections.hdf5 in the M² reference layout")
    parser.add_argument("--out", required=True)
    parser.add_argument("--manifest", required=True, help="the images to import (every one must be present); "
                                                          "python -m captioner job image-manifest makes it")
    parser.add_argument("--max-boxes", type=int, default=50, help="the M² reference reads at most 50 regions")
    parser.add_argument("--dtype", choices=["float16", "float32"], default=defaults("features")["dtype"])


def run(args) -> None:
    stats = import_reference(args.source, args.out, args.manifest, args.max_boxes, args.dtype)
    print(f"imported {stats['images']} images -> {args.out}", file=sys.stderr)
