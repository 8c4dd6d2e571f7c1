"""Typed training recipes: a family's config section (``sat``, ``m2``) as a dataclass whose fields declare each
key's type and allowed values once, with the schema's defaults (:mod:`pipeline.spec`). The trainer parses the
recipe it is given (``--hparams``) into one: a wrong type or value is one ``error:`` naming the key, before anything
is loaded. ``tests/test_specs.py`` holds both classes against the schema.
"""

from __future__ import annotations

from dataclasses import make_dataclass
from typing import Any, Literal

from captioner.models.registry import ENTRY_KEYS
from pipeline.spec import Precision, parse, setting

XeBatches = Literal["shuffled_pairs", "by_image"]  # cross-entropy batches: (image, caption) pairs, or whole images
Optimizer = Literal["adam", "rmsprop"]  # SAT: Adam (Flickr30k, COCO) or RMSProp (the paper's Flickr8k)

# every family's keys ($defs/training in the schema), then each family's own
TRAINING = {"epochs": int, "batch_size": int, "lr": float, "adam_beta2": float, "grad_clip": float, "patience": int,
            "seed": int, "feature_norm_images": int, "val_max_length": int, "collapse_repeats": bool,
            "preload_features": bool, "precision": Precision, "xe_batches": XeBatches}
FAMILY_KEYS = {
    "sat": {"entropy_weight": float, "reinforce_scale": float, "baseline_decay": float, "expected_context_p": float,
            "optimizer": Optimizer},
    "m2": {"warmup": int, "scst_lr": float, "scst_epochs": int, "scst_beam_size": int, "scst_max_length": int,
           "scst_batch_images": int},
}


def _recipe_class(family: str) -> type:
    keys = {**TRAINING, **FAMILY_KEYS[family]}
    fields = [(key, kind, setting(family, key)) for key, kind in keys.items()]
    fields.append(("model", dict[str, Any], setting(family, "model")))  # the model file's dataclass checks it
    # a setting of every model that the workflow adds to the recipe when it is on (train.ema_decay)
    fields.append(("ema_decay", float, setting("train", "ema_decay")))
    namespace = {"SECTION": (family,), "NOT_IN_SPEC": ENTRY_KEYS}  # a model entry's own keys (the registry's)
    return make_dataclass(f"{family.capitalize()}Recipe", fields, namespace=namespace)


RECIPES = {family: _recipe_class(family) for family in FAMILY_KEYS}
SatRecipe, M2Recipe = RECIPES["sat"], RECIPES["m2"]


def parse_recipe(family: str, hparams: dict):
    """The family's recipe from ``hparams`` (the family's defaults already merged in)."""
    return parse(RECIPES[family], hparams, "--hparams")
