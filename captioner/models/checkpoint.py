"""Checkpoint files, model construction from the registry, and what runs a trained model on store features."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from captioner.data.vocab import Vocabulary
from captioner.models.registry import FAMILIES
from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError

CHECKPOINT_FORMAT = "captioner-checkpoint-v1"


class CheckpointError(PipelineError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model code."""


def build_model(family: str, config_dict: dict):
    """The family's model and its config dataclass from ``config_dict`` (unknown keys ignored)."""
    spec = FAMILIES[family]
    module = importlib.import_module(spec.module)  # by name: see registry
    config_cls = getattr(module, spec.config_class)
    known = {f.name for f in fields(config_cls)}
    config = config_cls(**{k: v for k, v in config_dict.items() if k in known})
    return getattr(module, spec.model_class)(config), config


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated zip, wrong file type, pickle errors: all mean "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint written by this project (format {CHECKPOINT_FORMAT})")
    return checkpoint


@dataclass
class FeatureNorm:
    """Per-channel standardisation learnt on the training split (vital for random-init features)."""

    mean: torch.Tensor
    std: torch.Tensor

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean.to(features.device)) / self.std.to(features.device)


def compute_feature_norm(store, image_ids, max_images: int, seed: int) -> FeatureNorm:
    rng = np.random.default_rng(seed)
    ids = list(image_ids)
    if len(ids) > max_images:
        ids = rng.choice(ids, size=max_images, replace=False).tolist()
    total = None
    total_sq = None
    count = 0
    for start in range(0, len(ids), 256):
        data = store.gather(ids[start:start + 256])
        feats = data["features"].astype(np.float64)
        if "num_boxes" in data:
            valid = np.arange(feats.shape[1])[None, :] < data["num_boxes"][:, None]
            rows = feats[valid]
        else:
            rows = feats.reshape(-1, feats.shape[-1])
        total = rows.sum(0) if total is None else total + rows.sum(0)
        total_sq = (rows ** 2).sum(0) if total_sq is None else total_sq + (rows ** 2).sum(0)
        count += len(rows)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0)) + 1e-5
    return FeatureNorm(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))


def model_inputs(kind: str, data: dict, norm: FeatureNorm, blind: bool, device) -> dict:
    """Store arrays of a ``kind`` (grid | regions) store -> keyword arguments of the model's ``loss``/``decoder``."""
    features = norm.apply(torch.from_numpy(data["features"]).to(device, non_blocking=True).float())
    if "num_boxes" in data:  # zero the padded rows after standardisation
        valid = torch.arange(features.shape[1])[None, :] < torch.from_numpy(data["num_boxes"]).long()[:, None]
        features = features * valid[..., None].to(features.device)
    full = np.full(len(features), features.shape[1])
    num_boxes = np.asarray(data.get("num_boxes", full))
    if blind:  # nothing of the image may leak: neither features nor how many regions it has
        features = torch.zeros_like(features)
        num_boxes = full
    if kind == "regions":
        return {"features": features, "num_boxes": torch.from_numpy(num_boxes).long().to(device)}
    return {"features": features}


@dataclass
class InferenceBundle:
    name: str
    family: str
    model: torch.nn.Module
    vocab: Vocabulary
    norm: FeatureNorm
    blind: bool
    epoch: int
    collapse_repeats: bool
    device: torch.device
    checkpoint: dict

    def inputs(self, data: dict) -> dict:
        return model_inputs(FAMILIES[self.family].features, data, self.norm, self.blind, self.device)


def load_for_inference(path: str | Path, device) -> InferenceBundle:
    checkpoint = load_checkpoint(path, "cpu")
    model, _ = build_model(checkpoint["family"], checkpoint["model_config"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its weights do not fit this version's {checkpoint['family']} model "
                              f"(retrain it): {str(error).splitlines()[-1].strip()}") from None
    model.to(device).eval()
    norm = FeatureNorm(checkpoint["feature_norm"]["mean"], checkpoint["feature_norm"]["std"])
    return InferenceBundle(
        name=checkpoint["name"], family=checkpoint["family"], model=model, vocab=Vocabulary(checkpoint["vocab"]),
        norm=norm, blind=checkpoint["blind"], epoch=checkpoint["epoch"],
        collapse_repeats=bool(checkpoint["hparams"].get("collapse_repeats", False)), device=torch.device(device),
        checkpoint=checkpoint)


def save_torch(path: str | Path, obj) -> None:
    """``torch.save`` onto ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
