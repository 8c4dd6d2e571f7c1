"""torchvision ResNet trunks with a record of where their weights came from, and device choice."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from pipeline.digest import sha256_of
from pipeline.errors import InputError


def build_resnet(backbone: str, weights: str, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A torchvision ResNet with the requested weights, and a record of where they came from."""
    builder = getattr(torchvision.models, backbone)
    record = {"weights": weights}
    if weights == "none":
        torch.manual_seed(seed)
        model = builder(weights=None)
        record["sha256"] = None
        record["note"] = f"random init, torch seed {seed}"
    elif Path(weights).exists():
        model = builder(weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise InputError(f"{weights}: not a torchvision {backbone} state_dict "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        record["sha256"] = sha256_of(weights)
    else:
        enum = torchvision.models.get_model_weights(backbone)
        try:
            weight_enum = enum[weights]
        except KeyError:
            raise InputError(f"weights {weights!r}: neither 'none', an existing file, nor one of "
                             f"{[w.name for w in enum]}") from None
        model = builder(weights=weight_enum)  # downloads into the torch hub cache when online
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weight_enum.url).name
        record["url"] = weight_enum.url
        record["sha256"] = sha256_of(cached) if cached.exists() else None
    return model.eval(), record


def trunk(resnet: torchvision.models.ResNet, last_stage: str = "layer4") -> torch.nn.Sequential:
    """The convolutional trunk of a torchvision ResNet, from the stem up to ``last_stage`` (layer3: stride 16)."""
    stages = ["layer1", "layer2", "layer3", "layer4"]
    return torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                               *(getattr(resnet, s) for s in stages[: stages.index(last_stage) + 1]))


def stage_channels(resnet: torchvision.models.ResNet, last_stage: str) -> int:
    """Channels of the trunk's output: the last stage's, halved per stage left off (256/512 for ResNet-18)."""
    return resnet.fc.in_features >> (4 - int(last_stage.removeprefix("layer")))


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch -> device; channels-last on GPUs (faster convolutions)."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images
