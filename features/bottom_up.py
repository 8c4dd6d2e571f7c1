"""Region features from the bottom-up-attention detector (``features.regions.boxes: detector``): the built-in
Caffe-style Faster R-CNN of :mod:`features.detector`, or a detectron2 model (:mod:`features.detectron2_backend`).
Images have different sizes, so the detector runs on them one at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from features.config import ExtractorConfig
from features.detector import caffe_preprocess
from features.images import check_resized
from features.store.format import region_rows
from pipeline.digest import sha256_of
from pipeline.errors import InputError


def build_detector(config: ExtractorConfig, device: torch.device):
    """The detector for ``config`` on ``device`` and a record of its weights."""
    if config.backend == "detectron2":
        from features.detectron2_backend import Detectron2Detector

        model = Detectron2Detector(config.detectron2_config, config.weights, config.min_size, config.max_size,
                                   config.nms_thresh, config.conf_thresh, config.min_boxes, config.max_boxes, device,
                                   config.pre_nms_top_n, config.post_nms_top_n, seed=config.seed)
        random_init = config.weights in ("none", "")
        record = {"weights": config.weights, "sha256": None if random_init else sha256_of(config.weights),
                  "detectron2_config": config.detectron2_config}
        if random_init:
            record["note"] = f"random init, torch seed {config.seed}"
        return model, record
    from features.detector import BottomUpDetector, DetectorConfig, load_detectron2_checkpoint

    detector_config = DetectorConfig(
        backbone=config.backbone, min_size=config.min_size, max_size=config.max_size,
        pre_nms_top_n=config.pre_nms_top_n, post_nms_top_n=config.post_nms_top_n, nms_thresh=config.nms_thresh,
        conf_thresh=config.conf_thresh, min_boxes=config.min_boxes, max_boxes=config.max_boxes,
        trunk_precision=config.precision)
    torch.manual_seed(config.seed)
    model = BottomUpDetector(detector_config)
    record = {"weights": config.weights, "sha256": None}
    if config.weights == "none":
        record["note"] = f"random init, torch seed {config.seed}"
    elif Path(config.weights).is_file():
        record.update(load_detectron2_checkpoint(model, config.weights))  # unused keys, where the anchors came from
        record["sha256"] = sha256_of(config.weights)
    else:
        raise InputError(f"detector weights {config.weights!r}: give 'none' or the path of a detectron2-format "
                         "bottom-up-attention checkpoint (e.g. bua-caffe-frcn-r101-k10-100.pth)")
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, record


class BottomUp:
    """The extractor contract of :mod:`features.extract` for detected regions."""

    def __init__(self, config: ExtractorConfig, device: torch.device):
        self.model, self.weights_record = build_detector(config, device)
        self.config, self.device = config, device
        self.rows, self.feature_dim = config.max_boxes, 2048

    def load(self, image: Image.Image, key) -> dict:
        width, height = image.size
        if self.config.backend == "detectron2":  # it preprocesses itself
            return {"image": np.asarray(image), "scale": 1.0, "hw": (height, width)}
        tensor, scale = caffe_preprocess(np.asarray(image), self.config.min_size, self.config.max_size)
        check_resized((width, height), (tensor.shape[2], tensor.shape[1]))
        return {"image": tensor, "scale": scale, "hw": (height, width)}

    def collate(self, items: list[dict]) -> dict:
        return {key: [item[key] for item in items] for key in ("image", "scale", "hw")}

    def __call__(self, batch: dict) -> dict:
        pieces = []
        for image, scale, hw in zip(batch["image"], batch["scale"], batch["hw"]):
            found = self.model.detect(image) if self.config.backend == "detectron2" else \
                self.model.detect(image.to(self.device), scale, hw)
            found = {k: v.float().cpu().numpy() if k != "class_id" else v.cpu().numpy() for k, v in found.items()}
            pieces.append((found["features"], found["boxes"], found["class_id"], found["score"]))
        return region_rows(pieces, batch["hw"], self.rows, self.feature_dim)


def build(config: ExtractorConfig, device: torch.device, boxes: dict | None = None) -> BottomUp:
    return BottomUp(config, device)
