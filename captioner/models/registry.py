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


# the keys of a models.<name> entry that say what the model is and what it reads, not how it trains: never part of its
# recipe (the workflow makes each seed its own job, and the features its input file)
ENTRY_KEYS = ("seeds", "base", "features", "init_from")

# each objective's global batch (split across data-parallel processes): the recipe key the trainer divides among
# ranks and the workflow checks against train.gpus_per_job
GLOBAL_BATCH_KEY = {"xe": "batch_size", "reinforce": "batch_size", "scst": "scst_batch_images"}


@dataclass(frozen=True)
class Family:
    module: str
    config_class: str
    model_class: str
    features: str  # the form its inputs take: grid (cells) | regions (rows and how many are real)
    variants: dict
    attention_maps: bool = False  # its decoder's per-step extra output is attention over the grid cells
    stores: tuple = ()  # the store kinds it can read (default: its own ``features``)

    @property
    def readable_stores(self) -> tuple:
        return self.stores or (self.features,)


FAMILIES = {
    "sat": Family("captioner.models.sat", "SATConfig", "ShowAttendTell", "grid",
                  {"soft": Variant({"attention": "soft"}), "hard": Variant({"attention": "hard"}, "reinforce")},
                  attention_maps=True),
    # M²'s encoder reads a set of vectors: regions, or a grid's cells as rows (all real), without positions
    "m2": Family("captioner.models.m2", "M2Config", "MeshedMemoryTransformer", "regions",
                 {"xe": Variant(), "scst": Variant(objective="scst", init_from="xe")}, stores=("regions", "grid")),
}


@dataclass(frozen=True)
class ModelName:
    name: str
    base: str  # without _blind
    family: str
    variant: str
    blind: bool

    @classmethod
    def parse(cls, name: str, recipe: str | None = None) -> "ModelName":
        """A registered name (``m2_xe``, ``sat_soft_blind``), or any ``name`` for a named experiment whose
        ``recipe`` is a registered one (``m2_xe_clip`` of ``m2_xe``): the recipe gives family, variant and blind."""
        registered = recipe or name
        base = registered.removesuffix("_blind")
        family, _, variant = base.partition("_")
        if family not in FAMILIES or variant not in FAMILIES[family].variants:
            raise InputError(f"unknown model {registered!r}; expected one of {', '.join(base_models())} optionally "
                             "followed by _blind")
        return cls(name=name, base=base, family=family, variant=variant, blind=registered != base)

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def objective(self) -> str:
        return self.spec.variants[self.variant].objective

    @property
    def objective_module(self) -> str:
        """The module of the objective it trains with (imported by name by the trainer)."""
        return f"captioner.training.{self.objective}"

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
    """The module of the objective the registered model ``name`` trains with (imported by name by the trainer)."""
    return ModelName.parse(name).objective_module
