"""What a training is made of, built once before the first step: the captions and vocabulary, the feature store (all
its ids checked up front), the feature normalisation, the model (fresh, or the weights it continues from) and the
batches the objective reads (:class:`captioner.data.model_inputs.TrainData`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioner.data.model_inputs import FeatureNorm, ModelInputs, TrainData, compute_feature_norm
from captioner.data.vocab import Vocabulary, load_captions
from captioner.models.checkpoint import build_model, epochs_label, feature_norm_of, load_checkpoint
from captioner.models.registry import ModelName
from features.store.reader import FeatureStore
from pipeline.errors import PipelineError


class TrainingError(PipelineError, RuntimeError):
    """Training cannot start or go on (bad settings, inputs that do not fit, a non-finite loss)."""


@dataclass
class Components:
    vocab: Vocabulary
    train_images: list[dict]
    val_images: list[dict]
    store: FeatureStore
    norm: FeatureNorm
    model: torch.nn.Module
    model_config: object  # the family's config dataclass
    data: TrainData
    started_from: dict | None  # {model, epochs}: the checkpoint it continues (SCST from XE), recorded for the tables


def build(name: ModelName, hp: dict, features: str, captions: str, vocab: str, init: str | None,
          device: torch.device) -> Components:
    """The data, the model and its inputs for training ``name`` with ``hp``; the caller has seeded the random
    streams (the model's initial weights come from them)."""
    vocabulary = Vocabulary.load(vocab)
    splits = load_captions(captions)["splits"]
    train_images, val_images = splits["train"], splits["val"]
    if not train_images or not val_images:
        raise TrainingError(f"{captions}: the train and val splits must not be empty")
    store = FeatureStore(features, preload=bool(hp["preload_features"]))
    if store.kind not in name.spec.readable_stores:
        raise TrainingError(f"{features}: {name.family} reads a {' or '.join(name.spec.readable_stores)} store, "
                            f"got {store.kind}")
    # every id must be present before the first step, not discovered hours later
    store.check_ids([i["image_id"] for i in train_images + val_images])

    init_checkpoint = load_checkpoint(init) if init else None
    if name.init_from and init_checkpoint is None:
        raise TrainingError(f"{name.name} starts from the best weights of {name.init_from}: pass --init")
    if init_checkpoint is not None:
        norm = feature_norm_of(init_checkpoint)
        model_config = init_checkpoint["model_config"]
    else:
        norm = compute_feature_norm(store, [i["image_id"] for i in train_images], int(hp["feature_norm_images"]),
                                    int(hp["seed"]))
        model_config = {**hp.get("model", {}), "vocab_size": len(vocabulary), "feature_dim": store.feature_dim,
                        "pad_id": vocabulary.pad_id, "bos_id": vocabulary.bos_id, "eos_id": vocabulary.eos_id}
        model_config.update(name.spec.variants[name.variant].config)  # e.g. SAT's attention: hard
    try:
        model, config = build_model(name.family, model_config)
    except ValueError as error:  # the model config's own checks (e.g. d_model not divisible by heads)
        raise TrainingError(f"{name.family}.model: {error}") from None
    if init_checkpoint is not None:
        model.load_state_dict(init_checkpoint["state_dict"])
    model.to(device)
    data = TrainData(train_images, store, ModelInputs(name.features, norm, name.blind, device), vocabulary)
    started_from = None if init_checkpoint is None else {"model": init_checkpoint["name"],
                                                         "epochs": epochs_label(init_checkpoint)}
    return Components(vocabulary, train_images, val_images, store, norm, model, config, data, started_from)
