"""The model registry: every model name the pipeline trains, and where its code lives.

Torch-free, so the workflow reads it while planning. Names are ``<family>_<variant>`` with an optional ``_blind``
suffix (the same recipe with the image features zeroed). Each family's module is imported only when a model of it
is built, so a rule's code fingerprint names the one model file its job runs.

Each variant names the objective it trains with (a module of ``captioner.training``: ``xe``, ``reinforce`` for hard
attention, ``scst``) and, for a second stage, the variant whose best weights it starts from.

Adding a model family: write its model file (a dataclass config + an ``nn.Module`` with the contract described in
``captioner/models/__init__.py``; see ``sat.py``), add one entry to ``FAMILIES`` below, and a section of its
hyper-parameters to ``workflow/schemas/config.schema.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import InputError


@dataclass(frozen=True)
class Variant:
    config: dict = field(default_factory=dict)  # model-config fields this variant sets
    objective: str = "xe"  # what it trains with: captioner.training.<objective> (xe | reinforce | scst)
    init_from: str | None = None  # the variant whose best weights it starts from


# each objective's global batch (split across data-parallel processes): the recipe key the trainer divides among
# ranks and the workflow checks against train.gpus_per_job
GLOBAL_BATCH_KEY = {"xe": "batch_size", "reinforce": "batch_size", "scst": "scst_batch_images"}


@dataclass(frozen=True)
class Family:
    module: str
    config_class: str
    model_class: str
    features: str  # the feature store kind it reads: grid | regions
    variants: dict
    attention_maps: bool = False  # its decoder's per-step extra output is attention over the grid cells


FAMILIES = {
    "sat": Family("captioner.models.sat", "SATConfig", "ShowAttendTell", "grid",
                  {"soft": Variant({"attention": "soft"}), "hard": Variant({"attention": "hard"}, "reinforce")},
                  attention_maps=True),
    "m2": Family("captioner.models.m2", "M2Config", "MeshedMemoryTransformer", "regions",
                 {"xe": Variant(), "scst": Variant(objective="scst", init_from="xe")}),
}


@dataclass(frozen=True)
class ModelName:
    name: str
    base: str  # without _blind
    family: str
    variant: str
    blind: bool

    @classmethod
    def parse(cls, name: str) -> "ModelName":
        base = name.removesuffix("_blind")
        family, _, variant = base.partition("_")
        if family not in FAMILIES or variant not in FAMILIES[family].variants:
            raise InputError(f"unknown model {name!r}; expected one of {', '.join(base_models())} optionally "
                             "followed by _blind")
        return cls(name=name, base=base, family=family, variant=variant, blind=name != base)

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def objective(self) -> str:
        return self.spec.variants[self.variant].objective

    @property
    def batch_key(self) -> str:
        """The recipe key of this model's global batch (GLOBAL_BATCH_KEY)."""
        return GLOBAL_BATCH_KEY[self.objective]

    @property
    def features(self) -> str:
        return self.spec.features

    @property
    def init_from(self) -> str | None:
        """The model whose best checkpoint this one starts from (m2_scst_blind: m2_xe_blind), or None."""
        parent = self.spec.variants[self.variant].init_from
        return None if parent is None else f"{self.family}_{parent}" + ("_blind" if self.blind else "")


def base_models() -> list[str]:
    return [f"{family}_{variant}" for family, spec in FAMILIES.items() for variant in spec.variants]


def model_module(name: str) -> str:
    """The module that defines the model ``name`` (its rules' code fingerprints name it)."""
    return ModelName.parse(name).spec.module


def objective_module(name: str) -> str:
    """The module of the objective the model ``name`` trains with (imported by name by the trainer)."""
    return f"captioner.training.{ModelName.parse(name).objective}"
