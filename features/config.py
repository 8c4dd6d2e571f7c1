"""What an extraction is asked to do (recorded in every store and checkpoint), and which module extracts it.

Torch-free, so the workflow can read it while planning: each kind of extractor lives in its own module, and a
rule's code fingerprint names only the module its job runs (editing the region detector leaves grids alone).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import defaults
from pipeline.errors import InputError

STAGE_STRIDES = {"layer3": 16, "layer4": 32}  # where a trunk stops (res4 | res5) and its output stride
STAGES = tuple(STAGE_STRIDES)  # in order: a later stage runs every earlier one
REGION_HEADS = ("res5", "pool")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
GRID = defaults("features", "grid")  # the config schema holds every default
REGIONS = defaults("features", "regions")


@dataclass
class ExtractorConfig:
    kind: str  # grid | regions
    backbone: str = GRID["backbone"]
    weights: str = "none"  # none (random init) | a torchvision weights name (e.g. IMAGENET1K_V2) | a checkpoint path
    image_size: int = GRID["image_size"]  # grid: square input side
    grid_size: int = GRID["grid_size"]
    stage: str = GRID["stage"]  # grid: the trunk's last stage
    head: str = REGIONS["head"]  # given boxes: res5 on 14x14 RoIs (C4), or pool: RoIAlign on res4, averaged
    min_size: int = REGIONS["min_size"]  # regions: shorter side
    max_size: int = REGIONS["max_size"]  # regions: longer side cap
    max_boxes: int = REGIONS["max_boxes"]
    boxes: str = "given"  # regions: given (boxes JSON) | detector (bottom-up Faster R-CNN)
    backend: str = REGIONS["backend"]  # detector: torchvision (built here) | detectron2 (optional install)
    precision: str = REGIONS["precision"]  # regions: the trunk's arithmetic (fp32 | bf16); the box path is fp32
    detectron2_config: str = REGIONS["detectron2_config"]  # detector + detectron2: the model's config file
    min_boxes: int = REGIONS["min_boxes"]  # detector: BUTD rule
    conf_thresh: float = REGIONS["conf_thresh"]
    nms_thresh: float = REGIONS["nms_thresh"]
    pre_nms_top_n: int = REGIONS["pre_nms_top_n"]
    post_nms_top_n: int = REGIONS["post_nms_top_n"]
    seed: int = GRID["seed"]  # for weights: none

    def __post_init__(self):
        if self.kind not in ("grid", "regions"):
            raise InputError(f"kind must be grid or regions, not {self.kind!r}")
        if self.boxes not in ("given", "detector"):
            raise InputError(f"boxes must be given or detector, not {self.boxes!r}")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"precision must be fp32 or bf16, not {self.precision!r}")
        if self.stage not in STAGES:
            raise InputError(f"stage must be one of {STAGES}, not {self.stage!r}")
        if self.head not in REGION_HEADS:
            raise InputError(f"head must be one of {REGION_HEADS}, not {self.head!r}")
        if self.backbone not in BACKBONES:
            raise InputError(f"backbone must be one of {BACKBONES}, not {self.backbone!r}")


def extractor_module(kind: str, boxes: str = "given") -> str:
    """The module whose ``build(config, device, boxes)`` makes the extractor of this kind."""
    if kind == "grid":
        return "features.grid"
    return "features.regions" if boxes == "given" else "features.bottom_up"
