"""``python -m features verify STORE``: counts, shapes, NaN/Inf, box counts and missing ids of a feature store."""

from __future__ import annotations

import argparse

from features.store.format import StoreError, nonfinite_rows
from features.store.reader import FeatureStore
from pipeline.manifest import read_manifest


def problems_of(store: FeatureStore, manifest: str | None = None) -> list[str]:
    problems = []
    bad_ids, out_of_range = [], []
    for start in range(0, len(store), 512):  # in slices: a COCO store does not fit in memory
        ids = store.image_ids[start:start + 512]
        data = store.gather(ids, require_finite=False)  # count them all instead of stopping at the first
        bad_ids += ids[nonfinite_rows(data["features"])].tolist()
        if store.kind == "regions":
            nb = data["num_boxes"]
            out_of_range += ids[(nb < 0) | (nb > store.rows_per_image)].tolist()
    if bad_ids:
        problems.append(f"non-finite values for {len(bad_ids)} image(s), ids {bad_ids[:10]}")
    if out_of_range:
        problems.append(f"num_boxes out of range for ids {out_of_range[:10]}")
    if manifest:
        wanted = {image.image_id for image in read_manifest(manifest)}
        missing = sorted(wanted - set(store.image_ids.tolist()))
        if missing:
            problems.append(f"{len(missing)} ids of {manifest} missing from the store, e.g. {missing[:10]}")
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store")
    parser.add_argument("--manifest", help="image manifest whose ids must all be present")


def run(args) -> int:
    try:
        store = FeatureStore(args.store)
    except StoreError as error:
        print(f"FAIL {error}")
        return 1
    problems = problems_of(store, args.manifest)
    print(f"{args.store}: {store.kind}, {len(store)} images, rows {store.rows_per_image} x dim {store.feature_dim}, "
          f"dtype {store.meta.get('dtype')}, {len(store.meta.get('errors', []))} recorded errors")
    for problem in problems:
        print(f"FAIL {problem}")
    return 1 if problems else 0
