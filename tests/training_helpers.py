"""A tiny captioning set on a grid store, and the training command line, shared by training and fault tests."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from captioner.data.text import prepare
from features.store.writer import StoreWriter

HPARAMS = {"epochs": 4, "batch_size": 16, "lr": 0.003, "patience": 10, "feature_norm_images": 50,
           "model": {"embed_dim": 16, "hidden_dim": 32, "attention_dim": 16, "init_layers": 1}}


def make_caption_set(root: Path) -> Path:
    """60 images whose captions depend on their (random) grid features; ``grid.h5`` + ``text/``."""
    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue", "white"]
    images, feats = [], []
    for i in range(60):
        colour = colours[i % 4]
        split = "train" if i < 48 else ("val" if i < 54 else "test")
        images.append({"filepath": "", "filename": f"{i}.jpg", "cocoid": i, "split": split,
                       "sentences": [{"raw": f"a {colour} shape"}, {"raw": f"one {colour} thing here"}]})
        f = rng.normal(size=(4, 8)).astype(np.float32)
        f[:, i % 4] += 3.0
        feats.append(f)
    (root / "d.json").write_text(json.dumps({"images": images}))
    prepare(root / "d.json", root / "text/vocab.json", root / "text/captions.json", 1, 10)
    with StoreWriter(root / "grid.h5", "grid", list(range(60)), 4, 8, dtype="float32") as writer:
        writer.write(list(range(60)), np.stack(feats))
    return root


def train_command(data: Path, out_dir: Path, hparams: dict, model: str = "sat_soft",
                  features: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "captioner", "job", "train", "--model", model, "--features",
            str(features or data / "grid.h5"), "--captions", str(data / "text/captions.json"), "--vocab",
            str(data / "text/vocab.json"), "--hparams", json.dumps(hparams), "--out-dir", str(out_dir),
            "--device", "cpu"]


def losses(out_dir: Path) -> list[float]:
    with open(out_dir / "metrics.csv") as handle:
        return [float(row["train_loss"]) for row in csv.DictReader(handle)]
