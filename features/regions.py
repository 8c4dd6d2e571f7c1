"""Region features from given boxes (the demo's true boxes, or your own).

The trunk runs to res4 (stride 16) on the image resized to shorter side ``min_size`` (longer side <= ``max_size``).
Head ``res5`` (bottom-up-attention style C4): each box is RoI-pooled to 14x14 on res4, passed through res5 and
mean-pooled to one vector per box. Head ``pool``: the box's res4 features averaged (RoIAlign 7x7, then the mean),
for a trunk trained only up to res4; about 1/200 of res5's cost per box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from features.backbones import build_resnet, stage_channels, to_device, trunk
from features.boxes import check_covered, load_given_boxes
from features.config import ExtractorConfig
from features.images import check_resized, to_tensor
from features.store.format import region_rows
from pipeline.errors import InputError


class RegionExtractor(torch.nn.Module):
    """C4 region head (RoIPool 14x14 on res4, res5, mean pool), or res4 averaged over the box (head="pool")."""

    def __init__(self, resnet: torch.nn.Module, head: str = "res5"):
        super().__init__()
        self.trunk = trunk(resnet, "layer3")
        self.res5 = resnet.layer4 if head == "res5" else None

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor], trunk_bf16: bool = False) -> list[torch.Tensor]:
        """The trunk in bf16 when asked; box coordinates, RoI pooling and res5 in fp32 whatever the caller's
        autocast (bf16 boxes round by up to 2 px at COCO scales)."""
        device = images.device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=trunk_bf16):
            maps = self.trunk(images)
        with torch.autocast(device, enabled=False):
            boxes32 = [b.float() for b in boxes]
            if self.res5 is None:
                pooled = torchvision.ops.roi_align(maps.float(), boxes32, output_size=(7, 7), spatial_scale=1.0 / 16,
                                                   sampling_ratio=2, aligned=True)
                vectors = pooled.mean(dim=(2, 3))
            else:
                pooled = torchvision.ops.roi_pool(maps.float(), boxes32, output_size=(14, 14), spatial_scale=1.0 / 16)
                vectors = self.res5(pooled).mean(dim=(2, 3))
        return list(vectors.split([len(b) for b in boxes]))


class GivenBoxes:
    """The extractor contract of :mod:`features.extract` for regions pooled from given boxes."""

    def __init__(self, config: ExtractorConfig, device: torch.device, boxes: dict, source="--boxes"):
        resnet, self.weights_record = build_resnet(config.backbone, config.weights, config.seed)
        self.model = RegionExtractor(resnet, config.head).to(device).eval()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.config, self.device, self.boxes, self.source = config, device, boxes, source
        self.rows = config.max_boxes
        self.feature_dim = stage_channels(resnet, "layer4" if config.head == "res5" else "layer3")

    def check(self, keys) -> None:
        check_covered(self.boxes, keys, self.source)

    def load(self, image: Image.Image, key) -> dict:
        width, height = image.size
        scale = min(self.config.min_size / min(width, height), self.config.max_size / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        check_resized((width, height), size)
        resized = image.resize(size, resample=Image.BILINEAR)
        boxes = np.asarray(self.boxes[key], dtype=np.float32).reshape(-1, 4)[: self.config.max_boxes]
        return {"image": to_tensor(resized), "boxes": torch.from_numpy(boxes), "scale": scale, "hw": (height, width)}

    def collate(self, items: list[dict]) -> dict:
        height = max(item["image"].shape[1] for item in items)
        width = max(item["image"].shape[2] for item in items)
        images = torch.zeros(len(items), 3, height, width)
        for i, item in enumerate(items):  # zero (= mean colour) padding at the bottom/right
            images[i, :, : item["image"].shape[1], : item["image"].shape[2]] = item["image"]
        return {"images": images, "boxes": [item["boxes"] for item in items],
                "scales": [item["scale"] for item in items], "hw": [item["hw"] for item in items]}

    def __call__(self, batch: dict) -> dict:
        scaled = [(b * s).to(self.device) for b, s in zip(batch["boxes"], batch["scales"])]
        vectors = self.model(to_device(batch["images"], self.device), scaled,  # the whole batch pooled at once
                             trunk_bf16=self.config.precision == "bf16")
        pieces = [(v.float().cpu().numpy(), b.numpy(), None, None) for v, b in zip(vectors, batch["boxes"])]
        return region_rows(pieces, batch["hw"], self.rows, self.feature_dim)


def build(config: ExtractorConfig, device: torch.device, boxes: dict | str | Path | None = None) -> GivenBoxes:
    """``boxes``: ``{key: [[x1, y1, x2, y2], ...]}`` or the path of a given-boxes JSON."""
    if boxes is None:
        raise InputError("region extraction from given boxes needs a boxes JSON file (--boxes)")
    return GivenBoxes(config, device, boxes if isinstance(boxes, dict) else load_given_boxes(boxes), boxes)

