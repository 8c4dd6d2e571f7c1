"""The evaluation jobs' specs: the ``evaluate`` keys each job reads, typed once (see :mod:`pipeline.spec`). The
workflow passes each as ``--spec JSON``; paths stay flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.spec import setting

Metric = Literal["bleu", "meteor", "rouge", "cider", "spice"]
Split = Literal["val", "test"]


@dataclass
class DecodeSpec:
    """Beam search of one split (rule decode)."""

    beam_size: int = setting("evaluate", "beam_size")
    max_length: int = setting("evaluate", "max_length")
    batch_size: int = setting("evaluate", "batch_size")
    length_normalization: float = setting("evaluate", "length_normalization")  # logprob / length**a; 0: plain sum
    device: str = setting("train", "device")


@dataclass
class AttentionSpec:
    """Show-Attend-Tell's attention over the first images of the results split (rule attention_maps)."""

    split: Split = setting("evaluate", "split")
    beam_size: int = setting("evaluate", "beam_size")
    max_length: int = setting("evaluate", "max_length")


@dataclass
class ScoreSpec:
    """pycocoevalcap's metrics (rules score, score_nocaps)."""

    metrics: list[Metric] = setting("evaluate", "metrics")


@dataclass
class TablesSpec:
    """The results tables (rule tables): which split, the papers' rows, bootstrap intervals."""

    split: Split = setting("evaluate", "split")
    published_rows: bool = setting("evaluate", "published_rows")
    dataset: Literal["coco", "flickr8k", "flickr30k"] = setting("dataset", "name")  # whose published rows
    resamples: int = setting("evaluate", "bootstrap", "resamples")  # 0: no intervals
    confidence: float = setting("evaluate", "bootstrap", "confidence")
    seed: int = setting("evaluate", "bootstrap", "seed")


@dataclass
class SetTablesSpec:
    """The evaluation sets' table (rule set_tables): bootstrap intervals as in the results tables."""

    resamples: int = setting("evaluate", "bootstrap", "resamples")  # 0: no intervals
    confidence: float = setting("evaluate", "bootstrap", "confidence")
    seed: int = setting("evaluate", "bootstrap", "seed")


@dataclass
class SignificanceSpec:
    """Paired tests between models (rule significance); the pairs come from the workflow (its models)."""

    trials: int = setting("evaluate", "significance", "trials")
    resamples: int = setting("evaluate", "bootstrap", "resamples")
    confidence: float = setting("evaluate", "bootstrap", "confidence")
    seed: int = setting("evaluate", "bootstrap", "seed")
    pairs: list[list[str]] = setting("evaluate", "significance", "pairs")  # empty: default_pairs of the models
