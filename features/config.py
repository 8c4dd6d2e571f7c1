"""What an extraction is asked to do (recorded in every store and checkpoint), and which module extracts it.

Torch-free, so the workflow can read it while planning: each kind of extractor lives in its own module, and a
rule's code fingerprint names only the module its job runs (editing the region detector leaves grids alone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Literal, get_args

from pipeline.config import defaults
from pipeline.errors import InputError
from pipeline.spec import Precision, check_choice, compact_json, from_config, parse, setting

STAGE_STRIDES = {"layer3": 16, "layer4": 32}  # where a trunk stops (res4 | res5) and its output stride
# every allowed value once: the specs' fields use these, tests/test_specs.py holds them against the schema's enums
Stage = Literal["layer3", "layer4"]  # in order: a later stage runs every earlier one
RegionHead = Literal["res5", "pool"]
Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
BoxSource = Literal["given", "detector"]
TrunkPrecision = Literal["fp32", "bf16"]  # regions: the trunk's arithmetic (the box path is fp32 always)
Kind = Literal["grid", "regions"]
STAGES, REGION_HEADS, BACKBONES = get_args(Stage), get_args(RegionHead), get_args(Backbone)
assert STAGES == tuple(STAGE_STRIDES)
GRID = defaults("features", "grid")  # the config schema holds every default
REGIONS = defaults("features", "regions")


# ------------------------------------------------------------------------------------------ the config sections
@dataclass
class StoreSettings:
    """``features`` keys an extraction job uses (``threads``, ``shards`` and ``format`` reach it as the job's own
    flags and output name: changing them alone reruns nothing)."""

    dtype: Literal["float16", "float32"] = setting("features", "dtype")
    compression: Literal["none", "gzip", "lzf", "zstd"] = setting("features", "compression")
    batch_size: int = setting("features", "batch_size")
    num_workers: int = setting("features", "num_workers")
    device: str = setting("features", "device")
    on_error: Literal["fail", "skip"] = setting("features", "on_error")


@dataclass
class GridSettings:
    """``features.grid``."""

    SECTION: ClassVar = ("features", "grid")
    # none | a torchvision weights name | a checkpoint path (the workflow resolves "pretrain" and fetched names)
    weights: str = setting("features", "grid", "weights", required=True)
    backbone: Backbone = setting("features", "grid", "backbone")
    image_size: int = setting("features", "grid", "image_size")
    grid_size: int = setting("features", "grid", "grid_size")
    stage: Stage = setting("features", "grid", "stage")
    seed: int = setting("features", "grid", "seed")


@dataclass
class RegionSettings:
    """``features.regions`` (but ``boxes_json`` and ``weights_url``: the workflow's, for its rules)."""

    SECTION: ClassVar = ("features", "regions")
    NOT_IN_SPEC: ClassVar = ("boxes_json", "weights_url")
    boxes: BoxSource = setting("features", "regions", "boxes", required=True)
    weights: str = setting("features", "regions", "weights", required=True)
    head: RegionHead = setting("features", "regions", "head")
    backend: Literal["torchvision", "detectron2"] = setting("features", "regions", "backend")
    precision: TrunkPrecision = setting("features", "regions", "precision")
    detectron2_config: str = setting("features", "regions", "detectron2_config")
    min_boxes: int = setting("features", "regions", "min_boxes")
    conf_thresh: float = setting("features", "regions", "conf_thresh")
    nms_thresh: float = setting("features", "regions", "nms_thresh")
    pre_nms_top_n: int = setting("features", "regions", "pre_nms_top_n")
    post_nms_top_n: int = setting("features", "regions", "post_nms_top_n")
    backbone: Backbone = setting("features", "regions", "backbone")
    min_size: int = setting("features", "regions", "min_size")
    max_size: int = setting("features", "regions", "max_size")
    max_boxes: int = setting("features", "regions", "max_boxes")
    seed: int = setting("features", "regions", "seed")


@dataclass
class TimmGridConfig:
    """``features.backbones.<name>`` (but ``weights_url``: the workflow's, for its download rule): a grid from a timm
    backbone (features/timm_grid.py). Also what its stores record, with ``kind`` and ``library``."""

    SECTION: ClassVar = ("features", "backbones", "*")
    NOT_IN_SPEC: ClassVar = ("weights_url",)
    kind: ClassVar = "grid"  # the store it writes
    library: ClassVar = "timm"
    model: str = setting("features", "backbones", "*", "model", required=True)  # a timm name with its tag
    weights: str = setting("features", "backbones", "*", "weights")  # none (random, seeded) | a weights file's path
    image_size: int = setting("features", "backbones", "*", "image_size")  # 0: the tag's own
    seed: int = setting("features", "backbones", "*", "seed")

    @property
    def module(self) -> str:
        return extractor_module("timm")

    def record(self) -> dict:
        return {"kind": self.kind, "library": self.library, **asdict(self)}


SpecKind = Literal["grid", "regions", "timm"]  # an extraction job's: the ResNet grid, regions, or a timm backbone's grid
SPEC_SECTIONS = {"grid": GridSettings, "regions": RegionSettings, "timm": TimmGridConfig}


@dataclass
class ExtractSpec:
    """What an extraction job is given: how it stores, and its kind's section (``features.grid``,
    ``features.regions`` or a ``features.backbones`` entry, with ``weights`` resolved by the workflow: the pretrained
    trunk's or a fetched file's path)."""

    kind: SpecKind
    store: StoreSettings
    extractor: GridSettings | RegionSettings | TimmGridConfig

    @classmethod
    def parse(cls, data, where: str = "--spec") -> ExtractSpec:
        if not isinstance(data, dict) or set(data) != {"kind", "store", "extractor"}:
            raise InputError(f"{where}: expected an object with kind, store and extractor")
        check_choice(data["kind"], SpecKind, f"{where}.kind")
        return cls(data["kind"], parse(StoreSettings, data["store"], f"{where}.store"),
                   parse(SPEC_SECTIONS[data["kind"]], data["extractor"], f"{where}.extractor"))

    @staticmethod
    def json_from_config(config: dict, kind: str, weights: str, backbone: str | None = None) -> str:
        """The spec of one kind's job, from the workflow's config (``weights`` resolved by the workflow); kind timm:
        the entry ``features.backbones.<backbone>``."""
        if kind == "timm":
            entry = config["features"]["backbones"][backbone]
            extractor = {f.name: entry[f.name] for f in fields(TimmGridConfig)} | {"weights": weights}
        else:
            extractor = from_config(SPEC_SECTIONS[kind], config, weights=weights)
        return compact_json({"kind": kind, "store": from_config(StoreSettings, config), "extractor": extractor})

    def extractor_config(self) -> ExtractorConfig | TimmGridConfig:
        """What the job extracts with, as its stores record it."""
        return self.extractor if self.kind == "timm" else ExtractorConfig.from_spec(self)


@dataclass
class PretrainSpec:
    """``features.pretrain`` and the device: what the trunk pre-training job is given."""

    SECTION: ClassVar = ("features", "pretrain")
    backbone: Backbone = setting("features", "pretrain", "backbone")
    stage: Stage = setting("features", "pretrain", "stage")  # the last stage trained
    image_size: int = setting("features", "pretrain", "image_size")
    epochs: int = setting("features", "pretrain", "epochs")
    batch_size: int = setting("features", "pretrain", "batch_size")
    lr: float = setting("features", "pretrain", "lr")
    seed: int = setting("features", "pretrain", "seed")
    precision: Precision = setting("features", "pretrain", "precision")
    device: str = setting("features", "device")


def pretrain_mismatch(features: dict, kind: str) -> str | None:
    """Why ``features.<kind>.weights: pretrain`` cannot use the trunk ``features.pretrain`` trains (another
    backbone; a stage past the last one trained, whose weights stay random), or None."""
    pretrain, section = features["pretrain"], features[kind]
    if section["backbone"] != pretrain["backbone"]:
        return (f"features.{kind}.weights is 'pretrain' but features.{kind}.backbone ({section['backbone']}) differs "
                f"from features.pretrain.backbone ({pretrain['backbone']})")
    uses = section["stage"] if kind == "grid" else "layer3" if section["head"] == "pool" else "layer4"
    if STAGES.index(uses) > STAGES.index(pretrain["stage"]):
        what = f"features.grid.stage {uses}" if kind == "grid" else "features.regions.head res5 (layer4)"
        return (f"features.{kind}.weights is 'pretrain' but {what} runs past features.pretrain.stage "
                f"({pretrain['stage']}), whose later stages are untrained")
    return None


# ------------------------------------------------------------------------------------------ what is recorded
@dataclass
class ExtractorConfig:
    kind: Kind  # grid | regions
    backbone: Backbone = GRID["backbone"]
    weights: str = "none"  # none (random init) | a torchvision weights name (e.g. IMAGENET1K_V2) | a checkpoint path
    image_size: int = GRID["image_size"]  # grid: square input side
    grid_size: int = GRID["grid_size"]
    stage: Stage = GRID["stage"]  # grid: the trunk's last stage
    head: RegionHead = REGIONS["head"]  # given boxes: res5 on 14x14 RoIs (C4), or pool: RoIAlign on res4, averaged
    min_size: int = REGIONS["min_size"]  # regions: shorter side
    max_size: int = REGIONS["max_size"]  # regions: longer side cap
    max_boxes: int = REGIONS["max_boxes"]
    boxes: BoxSource = "given"  # regions: given (boxes JSON) | detector (bottom-up Faster R-CNN)
    backend: str = REGIONS["backend"]  # detector: torchvision (built here) | detectron2 (optional install)
    precision: TrunkPrecision = REGIONS["precision"]  # regions: the trunk's arithmetic; the box path is fp32
    detectron2_config: str = REGIONS["detectron2_config"]  # detector + detectron2: the model's config file
    min_boxes: int = REGIONS["min_boxes"]  # detector: BUTD rule
    conf_thresh: float = REGIONS["conf_thresh"]
    nms_thresh: float = REGIONS["nms_thresh"]
    pre_nms_top_n: int = REGIONS["pre_nms_top_n"]
    post_nms_top_n: int = REGIONS["post_nms_top_n"]
    seed: int = GRID["seed"]  # for weights: none

    def __post_init__(self):
        check_choice(self.kind, Kind, "kind")
        check_choice(self.boxes, BoxSource, "boxes")
        check_choice(self.precision, TrunkPrecision, "precision")
        check_choice(self.stage, Stage, "stage")
        check_choice(self.head, RegionHead, "head")
        check_choice(self.backbone, Backbone, "backbone")

    @classmethod
    def from_spec(cls, spec: ExtractSpec) -> ExtractorConfig:
        """The recorded config of a job's spec (a grid job's region keys keep their defaults, and back)."""
        known = {f.name for f in fields(cls)}
        return cls(kind=spec.kind, **{k: v for k, v in vars(spec.extractor).items() if k in known})

    @property
    def module(self) -> str:
        return extractor_module(self.kind, self.boxes)

    def record(self) -> dict:
        return asdict(self)


def recorded_extractor(recorded: dict) -> ExtractorConfig | TimmGridConfig:
    """The extractor config a store (and a checkpoint trained on it) recorded: ``record()`` read back."""
    if recorded.get("library") == TimmGridConfig.library:
        return TimmGridConfig(**{k: v for k, v in recorded.items() if k not in ("kind", "library")})
    return ExtractorConfig(**recorded)


def extractor_module(kind: str, boxes: str = "given") -> str:
    """The module whose ``build(config, device, boxes)`` makes the extractor of this kind (timm: a timm backbone's
    grid)."""
    if kind == "grid":
        return "features.grid"
    if kind == "timm":
        return "features.timm_grid"
    return "features.regions" if boxes == "given" else "features.bottom_up"
