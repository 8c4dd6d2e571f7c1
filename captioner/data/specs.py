"""The data jobs' specs: the ``dataset``, ``text`` and ``evaluate.nocaps`` keys each job reads, typed once (see
:mod:`pipeline.spec`). The workflow passes each as ``--spec JSON``; paths stay flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pipeline.spec import setting

OnError = Literal["fail", "skip"]  # images that could not be fetched or are missing: fail naming them, or go without
KarpathySplit = Literal["train", "val", "test"]


@dataclass
class DemoDataSpec:
    """The demo dataset's size and seed (rule demo_data)."""

    SECTION: ClassVar = ("dataset", "demo")
    seed: int = setting("dataset", "demo", "seed")
    num_train: int = setting("dataset", "demo", "num_train")
    num_val: int = setting("dataset", "demo", "num_val")
    num_test: int = setting("dataset", "demo", "num_test")
    num_restval: int = setting("dataset", "demo", "num_restval")
    image_size: int = setting("dataset", "demo", "image_size")


@dataclass
class DemoNocapsSpec:
    """The demo's nocaps-like set (rule demo_nocaps): drawn like the demo dataset's images, at their size."""

    SECTION: ClassVar = ("evaluate", "nocaps", "demo")
    seed: int = setting("evaluate", "nocaps", "demo", "seed")
    num_images: int = setting("evaluate", "nocaps", "demo", "num_images")
    image_size: int = setting("dataset", "demo", "image_size")


@dataclass
class TextSpec:
    """The vocabulary and caption encoding (rule prepare_text)."""

    SECTION: ClassVar = ("text",)
    min_word_count: int = setting("text", "min_word_count")
    max_caption_length: int = setting("text", "max_caption_length")


@dataclass
class NocapsImagesSpec:
    """Fetching nocaps' images (rule nocaps_images)."""

    workers: int = setting("evaluate", "nocaps", "workers")
    on_error: OnError = setting("evaluate", "nocaps", "on_error")


@dataclass
class NocapsSpec:
    """nocaps' annotations into an evaluation set (rule prepare_nocaps)."""

    split: Literal["val", "test"] = setting("evaluate", "nocaps", "split")
    on_error: OnError = setting("evaluate", "nocaps", "on_error")
