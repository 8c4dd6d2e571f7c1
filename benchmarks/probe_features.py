"""How much a feature store knows about the objects: a linear probe of each labelled box's class.

For every given box (the demo's ``boxes.json``: ``{"boxes": [...], "labels": ["red circle", ...]}``) the probe
reads one feature vector: the grid cell under the box centre (grid stores) or the box's own row (region
stores, rows in box order). A multinomial logistic regression is fitted on the train/restval images and scored
on val+test. ``--target shape`` uses a label's last word, ``colour`` its first, ``label`` all of it. Chance is
the share of the most frequent class among the scored boxes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_results  # noqa: E402
from features.store.reader import FeatureStore  # noqa: E402


def probe_samples(store: FeatureStore, boxes: dict, splits: dict, image_size: tuple[int, int], target: str):
    ids = [int(i) for i in store.image_ids]
    data = store.gather(ids)
    features = data["features"].astype(np.float32)
    grid = int(math.isqrt(store.rows_per_image)) if store.kind == "grid" else 0
    rows, classes, train = [], [], []
    for row, image_id in enumerate(ids):
        entry = boxes.get(str(image_id))
        if entry is None or image_id not in splits:
            continue
        for j, (box, label) in enumerate(zip(entry["boxes"], entry["labels"])):
            words = label.split()
            name = {"shape": words[-1], "colour": words[0], "label": label}[target]
            if grid:
                cx = int((box[0] + box[2]) / 2 / image_size[0] * grid)
                cy = int((box[1] + box[3]) / 2 / image_size[1] * grid)
                vector = features[row, min(cy, grid - 1) * grid + min(cx, grid - 1)]
            elif j < store.rows_per_image:
                vector = features[row, j]
            else:
                continue
            rows.append(vector)
            classes.append(name)
            train.append(splits[image_id] in ("train", "restval"))
    return np.stack(rows), classes, np.array(train)


def linear_probe(x: np.ndarray, names: list[str], train: np.ndarray, steps: int = 500) -> tuple[float, float]:
    """Held-out accuracy of a logistic regression, and the majority-class rate of the held-out boxes."""
    vocabulary = sorted(set(names))
    y = torch.tensor([vocabulary.index(n) for n in names])
    x = torch.from_numpy(x)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-5
    x = (x - mean) / std
    torch.manual_seed(0)
    weight = torch.zeros(x.shape[1], len(vocabulary), requires_grad=True)
    bias = torch.zeros(len(vocabulary), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    mask = torch.from_numpy(train)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(x[mask] @ weight + bias, y[mask]) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (x[~mask] @ weight + bias).argmax(1)
    held_out = y[~mask]
    accuracy = float((predicted == held_out).float().mean())
    chance = float(torch.bincount(held_out).max()) / len(held_out)
    return accuracy, chance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stores", nargs="+", help="feature stores (.h5/.zarr), grid or regions")
    parser.add_argument("--boxes", required=True, help="boxes.json with labels")
    parser.add_argument("--karpathy-json", required=True, help="for the splits")
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 256], help="width height of the images")
    parser.add_argument("--target", choices=["shape", "colour", "label"], default="shape")
    args = parser.parse_args()
    boxes = json.loads(Path(args.boxes).read_text())
    splits = {int(im["cocoid"]): im["split"] for im in json.loads(Path(args.karpathy_json).read_text())["images"]}
    table = [f"| store | kind | rows x dim | extractor | {args.target} accuracy (val+test boxes) | chance |",
             "|---|---|---|---|---:|---:|"]
    for path in args.stores:
        store = FeatureStore(path)
        x, names, train = probe_samples(store, boxes, splits, tuple(args.image_size), args.target)
        accuracy, chance = linear_probe(x, names, train)
        extractor = store.meta.get("extractor") or {}
        size = extractor.get("image_size" if store.kind == "grid" else "min_size", "?")
        table.append(f"| `{path}` | {store.kind} | {store.rows_per_image} x {store.feature_dim} | "
                     f"{extractor.get('backbone', '?')}, weights `{extractor.get('weights', '?')}`, {size} px | "
                     f"{accuracy:.3f} | {chance:.3f} |")
        print(table[-1], flush=True)
    append_results(f"Linear probe of the {args.target} class in feature stores", [
        f"one vector per labelled box ({len(train)} boxes in the last store): grid = the cell under the box centre, "
        "regions = the box's row; logistic regression fitted on train/restval boxes, scored on val+test", "",
        *table])


if __name__ == "__main__":
    main()
