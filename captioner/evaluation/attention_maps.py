"""Show, Attend and Tell attention figures: each generated word with its attention upsampled over the image
(the style of the paper's Figures 2 and 3)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from captioner.data.vocab import load_captions
from captioner.evaluation.specs import AttentionSpec
from captioner.models.beam_search import beam_search
from captioner.models.checkpoint import load_for_inference
from features.store.reader import FeatureStore
from pipeline.atomic import atomic_path
from pipeline.config import defaults
from pipeline.errors import InputError
from pipeline.spec import add_spec_argument, spec_from_args


def attention_figure(image: Image.Image, words: list[str], alphas: np.ndarray, out: Path, title: str) -> None:
    """``alphas``: (len(words), side*side) attention of each word over the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = int(math.isqrt(alphas.shape[1]))
    size = 224
    picture = np.asarray(image.convert("RGB").resize((size, size)))
    panels = len(words) + 1
    columns = min(panels, 5)
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("image", fontsize=9)
    for axis, word, alpha in zip(axes.flat[1:], words, alphas):
        grid = torch.tensor(alpha, dtype=torch.float32).view(1, 1, side, side)
        heat = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        axis.imshow(picture)
        axis.imshow(heat / max(heat.max(), 1e-12), cmap="gray", alpha=0.6, extent=(0, size, size, 0))
        axis.set_title(word, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def render(checkpoint: str, features: str, captions: str, image_root: str, split: str, count: int,
           beam_size: int, max_length: int, out_paths: list[str]) -> None:
    bundle = load_for_inference(checkpoint, torch.device("cpu"))
    if bundle.family != "sat":
        raise InputError(f"{checkpoint}: attention maps need a Show-Attend-Tell model, not {bundle.family}")
    store = FeatureStore(features)
    images = load_captions(captions)["splits"][split][:count]
    if len(out_paths) != len(images):
        raise InputError(f"{len(out_paths)} output paths for {len(images)} images")
    side = int(math.isqrt(store.rows_per_image))
    if side * side != store.rows_per_image:
        raise InputError(f"{features}: {store.rows_per_image} locations do not form a square grid")
    ids = [image["image_id"] for image in images]
    with torch.inference_mode():
        state, step = bundle.model.decoder(**bundle.inputs(store.gather(ids)))
        result = beam_search(state, step, len(ids), beam_size, max_length, bundle.vocab.bos_id, bundle.vocab.eos_id,
                             bundle.vocab.pad_id, keep_extras=True)
    for i, (image, out) in enumerate(zip(images, out_paths)):
        tokens = result.tokens[i, 0].tolist()
        words = bundle.vocab.decode(tokens).split()
        alphas = result.extras[i, 0, : len(words)].numpy()
        with Image.open(Path(image_root) / image["path"]) as picture:
            attention_figure(picture, words, alphas, Path(out),
                             f"{bundle.name}, image {image['image_id']}: {' '.join(words)}")
    print(f"{len(out_paths)} attention figures from {bundle.name}", file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, AttentionSpec)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--captions", required=True)
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--threads", type=int, default=defaults("train")["threads"])
    parser.add_argument("--out", nargs="+", required=True, help="one PNG per image: the first len(out) images")

def run(args) -> None:
    spec = spec_from_args(AttentionSpec, args)
    torch.set_num_threads(args.threads)
    render(args.checkpoint, args.features, args.captions, args.image_root, spec.split, len(args.out), spec.beam_size,
           spec.max_length, args.out)
