"""Checkpoint files, model construction from the registry, and a trained model loaded for inference (with the
inputs it reads: :mod:`captioner.data.model_inputs`)."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from captioner.data.model_inputs import FeatureNorm, ModelInputs
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
class InferenceBundle:
    name: str
    family: str
    model: torch.nn.Module
    vocab: Vocabulary
    inputs: ModelInputs  # store arrays -> this model's inputs (``bundle.inputs(store.gather(ids))``)
    epoch: int
    collapse_repeats: bool
    device: torch.device
    checkpoint: dict


def epochs_label(checkpoint: dict) -> int | str:
    """The epochs behind a checkpoint's weights: its own, after those of the checkpoint it started from
    (``13+20``: an SCST run of 20 epochs from an XE model of 13)."""
    started = checkpoint.get("started_from")
    return f"{started['epochs']}+{checkpoint['epoch']}" if started else checkpoint["epoch"]


def feature_norm_of(checkpoint: dict) -> FeatureNorm:
    return FeatureNorm(checkpoint["feature_norm"]["mean"], checkpoint["feature_norm"]["std"])


def load_for_inference(path: str | Path, device) -> InferenceBundle:
    checkpoint = load_checkpoint(path, "cpu")
    model, _ = build_model(checkpoint["family"], checkpoint["model_config"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its weights do not fit this version's {checkpoint['family']} model "
                              f"(retrain it): {str(error).splitlines()[-1].strip()}") from None
    model.to(device).eval()
    inputs = ModelInputs(FAMILIES[checkpoint["family"]].features, feature_norm_of(checkpoint), checkpoint["blind"],
                         torch.device(device))
    return InferenceBundle(
        name=checkpoint["name"], family=checkpoint["family"], model=model, vocab=Vocabulary(checkpoint["vocab"]),
        inputs=inputs, epoch=checkpoint["epoch"],
        collapse_repeats=bool(checkpoint["hparams"].get("collapse_repeats", False)), device=torch.device(device),
        checkpoint=checkpoint)


def save_torch(path: str | Path, obj) -> None:
    """``torch.save`` onto ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
