"""Grid features (Show, Attend and Tell): a torchvision ResNet trunk up to res5 (or res4) on a square resize,
adaptively pooled to a ``grid_size`` x ``grid_size`` grid (448 px -> 14x14 natively for ResNet-101 at res5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from features.backbones import build_resnet, stage_channels, to_device, trunk
from features.config import ExtractorConfig
from features.images import normalize, to_uint8_tensor


class GridExtractor(torch.nn.Module):
    def __init__(self, resnet: torch.nn.Module, image_size: int, grid_size: int, stage: str = "layer4"):
        super().__init__()
        self.trunk = trunk(resnet, stage)
        self.image_size, self.grid_size = image_size, grid_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.trunk(images)
        if maps.shape[-1] != self.grid_size or maps.shape[-2] != self.grid_size:
            maps = F.adaptive_avg_pool2d(maps, self.grid_size)
        return maps.flatten(2).transpose(1, 2)  # (B, grid*grid, C)


class Grid:
    """The extractor contract of :mod:`features.extract`: ``load`` (in loader workers), ``collate``, ``__call__``."""

    def __init__(self, config: ExtractorConfig, device: torch.device):
        resnet, self.weights_record = build_resnet(config.backbone, config.weights, config.seed)
        self.model = GridExtractor(resnet, config.image_size, config.grid_size, config.stage).to(device).eval()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.config, self.device = config, device
        self.rows, self.feature_dim = config.grid_size ** 2, stage_channels(resnet, config.stage)

    def load(self, image: Image.Image, key) -> dict:
        size = self.config.image_size
        return {"image": to_uint8_tensor(image.resize((size, size), resample=Image.BILINEAR))}

    def collate(self, items: list[dict]) -> dict:
        return {"images": torch.stack([item["image"] for item in items])}

    def __call__(self, batch: dict) -> dict:
        # bf16 on GPUs (as every grid extractor of the field runs): no boxes whose coordinates it could round
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            features = self.model(normalize(to_device(batch["images"], self.device)))  # uint8 over the bus
        return {"features": features.float().cpu().numpy()}  # device -> host copy (a GPU sync)


def build(config: ExtractorConfig, device: torch.device, boxes: dict | None = None) -> Grid:
    return Grid(config, device)
