"""Grid features from a timm backbone: CLIP image towers (``vit_base_patch16_clip_224.openai``,
``resnet101_clip.openai``), ConvNeXt, ViTs, newer ResNets. timm rather than open_clip: it ships the CLIP towers as
plain image models with the same ``forward_features`` as every other backbone, their preprocessing in each
pretrained config, and its own position-embedding resampling when weights are loaded at another input size.

- **Preprocessing** is the library's: ``resolve_data_config`` + ``create_transform`` (resize policy, centre crop,
  interpolation, mean/std of the weights), with the input size the config asks for.
- **The grid** is the last stage's map of a convolutional net, or a ViT's patch tokens without its prefix (class,
  register) tokens, reshaped to the patch grid, as (cells, channels) store rows.
- **Another input size** than pre-training: the model is built at that size and its weights loaded through timm's
  checkpoint filter, which resamples the absolute position embedding (``resample_abs_pos_embed``). A ViT whose
  table were left unfitted would see no positions at all.
- **Weights**: ``none`` (random, seeded: tests and the demo) or a file the download rules fetched; nothing is
  fetched here.
"""

from __future__ import annotations

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from features.config import TimmGridConfig
from pipeline.errors import InputError


def create(config: TimmGridConfig) -> torch.nn.Module:
    """The timm model with its weights, at the config's input size: a ViT's patch grid and position table are
    resized by timm's own ``set_input_size`` (``resample_abs_pos_embed``); a conv net takes any size as it is."""
    if config.weights == "hub":  # the workflow's rule timm_weights fetches it and passes the file's path
        raise InputError(f"{config.model}: weights 'hub' is a file the workflow fetches; give its path (or none)")
    if config.weights == "none":
        torch.manual_seed(config.seed)
        model = timm.create_model(config.model, pretrained=False, num_classes=0)
    else:
        model = timm.create_model(config.model, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": config.weights})
    resized = config.image_size and config.image_size != model.pretrained_cfg["input_size"][-1]
    if resized and hasattr(model, "set_input_size"):
        model.set_input_size(img_size=(config.image_size, config.image_size))
    return model.eval()


def data_config(model: torch.nn.Module, image_size: int) -> dict:
    """The model's own preprocessing settings (timm's data config: resize, crop, interpolation, mean/std), at
    ``image_size`` (0: the pretrained one)."""
    data = resolve_data_config({}, model=model)
    if image_size:
        data["input_size"] = (3, image_size, image_size)
    return data


def preprocessing(model: torch.nn.Module, image_size: int):
    """The model's own inference transform at ``image_size`` (0: the pretrained one)."""
    return create_transform(**data_config(model, image_size), is_training=False)


def grid_of(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, cells, C) from ``forward_features``: a conv map flattened, or a ViT's patch tokens (prefix tokens off)."""
    out = model.forward_features(images)
    if out.dim() == 4:  # (B, C, H, W)
        return out.flatten(2).transpose(1, 2)
    return out[:, getattr(model, "num_prefix_tokens", 0):]  # (B, H*W, C), row-major over the patch grid


class TimmGrid:
    """The extractor contract of :mod:`features.extract`: ``load`` (in loader workers), ``collate``, ``__call__``."""

    def __init__(self, config: TimmGridConfig, device: torch.device):
        self.config, self.device = config, device
        self.model = create(config).to(device)
        self.transform = preprocessing(self.model, config.image_size)
        size = config.image_size or self.model.pretrained_cfg["input_size"][-1]
        with torch.no_grad():  # the store row's shape, from one forward of a blank image
            probe = grid_of(self.model, torch.zeros(1, 3, size, size, device=device))
        self.rows, self.feature_dim = probe.shape[1], probe.shape[2]
        self.weights_record = {"model": config.model, "weights": config.weights, "image_size": size,
                               "input": data_config(self.model, config.image_size)}

    def load(self, image: Image.Image, key) -> dict:
        return {"image": self.transform(image.convert("RGB"))}

    def collate(self, items: list[dict]) -> dict:
        return {"images": torch.stack([item["image"] for item in items])}

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            features = grid_of(self.model, batch["images"].to(self.device, non_blocking=True))
        return {"features": features.float().cpu().numpy()}  # device -> host copy (a GPU sync)


def build(config: TimmGridConfig, device: torch.device, boxes: dict | None = None) -> TimmGrid:
    return TimmGrid(config, device)
