"""Released weights a run can score instead of training: what each release is and where its files come from.

Torch-free, so the workflow reads it while planning. A model entry ``{release: <id>}`` under ``models`` gets its
checkpoint from download -> verify -> import (``python -m captioner job import-m2-weights``, the one importer: every
release so far is M²'s) rather than from a train job, and then goes through the same decode, score, tables and significance jobs as a trained model. A config's
``releases.<id>.<file>`` may point a file at a mirror (url, and the sha256/size that mirror serves).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from captioner.models.registry import FAMILIES, Family, base_models
from pipeline.errors import InputError


@dataclass(frozen=True)
class ReleasedFile:
    name: str  # the file name as released (what it is saved as)
    url: str
    size: int | None = None  # bytes, where known
    sha256: str | None = None  # None: nothing published; the first download's digest is pinned in the lock file
    about: str = ""


@dataclass(frozen=True)
class Release:
    family: str  # the model family whose code runs it (captioner.models.registry)
    label: str  # how its rows are labelled in the tables
    checkpoint: ReleasedFile
    vocab: ReleasedFile
    features: ReleasedFile  # the authors' own features of the dataset (models.<name>.features: release)
    features_dataset: str  # the dataset (dataset.name) those features cover
    features_kind: str  # the store kind it reads (grid | regions) from our extractors
    max_boxes: int  # rows per image the authors' test code reads (the store keeps the first ones)
    reported: dict  # the authors' own test log of these weights (Karpathy test split, 0-100 scale)
    reported_source: str
    reported_images: int  # the split those scores are on
    reported_beam: int  # the beam they decoded with


M2_REFERENCE = "https://github.com/aimagelab/meshed-memory-transformer"
M2_REFERENCE_COMMIT = "239100befa61d1e77ddf3b538810c83703d1e3a7"

RELEASES = {
    "m2_cornia2020": Release(
        family="m2",
        label="released weights (Cornia et al. 2020)",
        checkpoint=ReleasedFile(
            "meshed_memory_transformer.pth",
            "https://ailb-web.ing.unimore.it/publicfiles/drive/meshed-memory-transformer/meshed_memory_transformer.pth",
            about="the authors' final M² checkpoint (XE then SCST), linked from their README",
        ),
        vocab=ReleasedFile(
            "vocab.pkl",
            f"https://raw.githubusercontent.com/aimagelab/meshed-memory-transformer/{M2_REFERENCE_COMMIT}/vocab.pkl",
            size=649_714,
            sha256="5147ffb3199059507effa4bb00800c07bd704902c8dc1bd1529fcca432aa945a",
            about=f"the checkpoint's vocabulary, 10,201 words ({M2_REFERENCE} at {M2_REFERENCE_COMMIT[:7]})",
        ),
        features=ReleasedFile(
            "coco_detections.hdf5",
            "https://ailb-web.ing.unimore.it/publicfiles/drive/show-control-and-tell/coco_detections.hdf5",
            about="the authors' bottom-up region features of every COCO image (~53.5 GB; Anderson et al.'s detector)",
        ),
        features_dataset="coco",
        features_kind="regions",
        max_boxes=50,  # test.py: ImageDetectionsField(max_detections=50)
        reported={"BLEU-1": 80.76, "BLEU-2": 65.34, "BLEU-3": 50.93, "BLEU-4": 39.09, "METEOR": 29.19,
                  "ROUGE-L": 58.64, "CIDEr-D": 131.20},
        reported_source=f"Cornia et al., their test log of the released weights (output_logs/"
                        f"meshed_memory_transformer_test_o at {M2_REFERENCE_COMMIT[:7]})",
        reported_images=5000,
        reported_beam=5,  # test.py: beam_search(images, 20, eos, 5): max length 20, beam 5
    ),
}

FILES = ("checkpoint", "vocab", "features")


def release(name: str, overrides: dict | None = None) -> Release:
    """The release ``name`` with a config's ``releases.<name>`` overrides of its files (url, size, sha256)."""
    if name not in RELEASES:
        raise KeyError(f"unknown release {name!r}; known: {', '.join(RELEASES)}")
    found = RELEASES[name]
    for file, changes in (overrides or {}).items():
        found = replace(found, **{file: replace(getattr(found, file), **changes)})
    return found


@dataclass(frozen=True)
class ReleasedModel:
    """A model entry of released weights, with the parts of :class:`~captioner.models.registry.ModelName` the
    workflow reads (kept apart from the registry, whose edits would change every training job's code fingerprint)."""

    name: str
    release: str
    blind: bool = False
    init_from: None = None
    trained: bool = False

    @classmethod
    def parse(cls, name: str, release: str) -> ReleasedModel:
        if release not in RELEASES:
            raise InputError(f"model {name!r}: unknown release {release!r}; known: {', '.join(RELEASES)}")
        family = RELEASES[release].family
        if not name.startswith(f"{family}_"):
            raise InputError(f"model {name!r}: released {family} weights need a name starting {family}_")
        if name.removesuffix("_blind") in base_models():  # (m2_xe would also become m2_scst's start)
            raise InputError(f"model {name!r}: a trained model's name; give released weights their own "
                             f"(e.g. {family}_released)")
        return cls(name, release)

    @property
    def base(self) -> str:
        return self.name

    @property
    def family(self) -> str:
        return RELEASES[self.release].family

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def features(self) -> str:
        return RELEASES[self.release].features_kind

    @property
    def objective(self) -> str:
        raise InputError(f"{self.name} holds released weights ({self.release}): it is imported, not trained")
