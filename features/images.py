"""Image loading shared by the extractors: any PIL mode to RGB, EXIF orientation, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import PipelineError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# one cell of a stride-16 feature map: a thinner input has no res4 at all (the trunk's pooling fails)
MIN_RESIZED_SIDE = 16


class ImageError(PipelineError, RuntimeError):
    """An image file is missing or cannot be decoded, or cannot be used at all (too thin once resized)."""


def check_resized(original_wh: tuple[int, int], resized_wh: tuple[int, int]) -> None:
    """A bad image, not a crash in the trunk: a panorama of 5000 x 1 px is 192 x 1 at the detector's scale."""
    if min(resized_wh) < MIN_RESIZED_SIDE:
        raise ImageError(f"{original_wh[0]}x{original_wh[1]} px is resized to {resized_wh[0]}x{resized_wh[1]}, "
                         f"thinner than the {MIN_RESIZED_SIDE} px (one stride-16 cell) the region trunk needs")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode fully (so truncation is caught here), apply EXIF orientation, convert to 8-bit RGB."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bit
                array = np.asarray(image, dtype=np.float32)
                peak = array.max() if array.size else 1.0
                image = Image.fromarray((array * (255.0 / max(peak, 1.0))).astype(np.uint8), "L")
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            return image.convert("RGB")
    except Image.DecompressionBombError as error:  # Pillow's safety limit: a declared size of > 2 x MAX_IMAGE_PIXELS
        raise ImageError(f"{path}: larger than Pillow allows decoding ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: cannot decode image ({error})") from None


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 HWC -> uint8 CHW (a quarter of float's bytes through loader workers and host -> device copies)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float normalised with ImageNet statistics, on the images' device."""
    array = images.float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (array - mean) / std


def to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 HWC -> float CHW normalised with ImageNet statistics."""
    return normalize(to_uint8_tensor(image))
