"""The embedded demo dataset: coloured shapes with spatial-relation captions, in Karpathy format.

Everything is derived from one seed, so two runs with the same arguments write byte-identical
files. Images are 256x256 JPEGs holding 1-3 non-overlapping shapes; each image gets five distinct
reference captions with varied wording, and its ground-truth boxes go to a separate JSON file
(used by the region extractor's given-boxes mode).
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from captioner.data.karpathy import tokenize
from captioner.data.specs import DemoDataSpec
from pipeline.atomic import atomic_path, write_json
from pipeline.config import defaults
from pipeline.errors import InputError
from pipeline.spec import add_spec_argument, spec_from_args

DEMO = defaults("dataset", "demo")  # the config schema holds every default
SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 170),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
SIZE_PIXELS = {"small": (28, 44), "large": (64, 96)}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def phrase(self, rng: random.Random, with_size: bool) -> str:
        words = [rng.choice(SIZE_WORDS[self.size])] if with_size else []
        words += [self.colour, self.kind]
        return " ".join(["an" if words[0][0] in "aeiou" else "a", *words])


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 6) -> bool:
    return not (
        a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]
    )


def _place_shapes(rng: random.Random, count: int, image_size: int) -> list[Shape]:
    """Rejection-sample ``count`` shapes with distinct (colour, kind) and no overlap."""
    while True:
        shapes: list[Shape] = []
        used: set[tuple[str, str]] = set()
        for _ in range(count):
            for _attempt in range(200):
                kind, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
                if (colour, kind) in used:
                    continue
                size = rng.choice(("small", "large"))
                side = rng.randint(*SIZE_PIXELS[size])
                x1 = rng.randint(4, image_size - side - 4)
                y1 = rng.randint(4, image_size - side - 4)
                box = (x1, y1, x1 + side, y1 + side)
                if any(_overlaps(box, other.box) for other in shapes):
                    continue
                shapes.append(Shape(kind, colour, size, box))
                used.add((colour, kind))
                break
        if len(shapes) == count:
            return shapes


def _star_points(box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    outer = (box[2] - box[0]) / 2
    points = []
    for i in range(10):
        radius = outer if i % 2 == 0 else outer * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw(shapes: list[Shape], rng: random.Random, image_size: int) -> Image.Image:
    base = np.array([rng.randint(70, 150) for _ in range(3)], dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, rng.uniform(4, 12), (image_size, image_size, 1))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        fill = COLOURS[shape.colour]
        x1, y1, x2, y2 = shape.box
        if shape.kind == "circle":
            draw.ellipse(shape.box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(shape.box, fill=fill)
        elif shape.kind == "triangle":
            draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
        elif shape.kind == "diamond":
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill)
        elif shape.kind == "star":
            draw.polygon(_star_points(shape.box), fill=fill)
    return image.filter(ImageFilter.GaussianBlur(0.6))


def _relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b``, by the dominant axis of their centre offset."""
    dx = a.centre[0] - b.centre[0]
    dy = a.centre[1] - b.centre[1]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


_RELATION_PHRASES = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}


def _region(shape: Shape, image_size: int) -> str:
    cx, cy = shape.centre
    third = image_size / 3
    horizontal = "left" if cx < third else "right" if cx > 2 * third else ""
    vertical = "top" if cy < third else "bottom" if cy > 2 * third else ""
    if horizontal and vertical:
        return f"in the {vertical} {horizontal} corner"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the middle"


def _captions(shapes: list[Shape], rng: random.Random, image_size: int) -> list[str]:
    """Five distinct captions mixing plain listings, counts, positions and pairwise relations."""
    pool: list[str] = []
    phrases = [s.phrase(rng, with_size=True) for s in shapes]
    plain = [s.phrase(rng, with_size=False) for s in shapes]
    n = len(shapes)
    if n == 1:
        s = shapes[0]
        size = rng.choice(SIZE_WORDS[s.size])
        pool += [
            f"{phrases[0]} {_region(s, image_size)}",
            f"there is {phrases[0]} in the picture",
            f"a single {s.colour} {s.kind} {_region(s, image_size)}",
            f"an image with one {size} {s.colour} {s.kind}",
            f"{plain[0]} on a plain background",
            f"only {plain[0]} is shown {_region(s, image_size)}",
            f"the picture shows {phrases[0]}",
        ]
    else:
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                a, b = shapes[i], shapes[j]
                rel = _relation(a, b)
                words = rng.choice(_RELATION_PHRASES[rel])
                pool.append(f"{phrases[i]} {words} {plain[j]}")
                pool.append(f"there is {plain[i]} {words} {phrases[j]}")
        listing = ", ".join(phrases[:-1]) + f" and {phrases[-1]}"
        pool += [
            listing,
            f"{NUMBER_WORDS[n]} shapes {listing}",
            f"{listing} on a plain background",
        ]
        for shape, phrase in zip(shapes, phrases):
            pool.append(f"{phrase} {_region(shape, image_size)} and {NUMBER_WORDS[n - 1]} other shape"
                        + ("s" if n > 2 else ""))
    rng.shuffle(pool)
    distinct: list[str] = []
    for caption in pool:
        if caption not in distinct:
            distinct.append(caption)
    if len(distinct) < 5:  # cannot happen with the templates above; guard the invariant anyway
        raise RuntimeError(f"only {len(distinct)} distinct captions for {shapes}")
    return [c[0].upper() + c[1:] + "." for c in distinct[:5]]


def generate(
    out_dir: str | Path,
    seed: int = DEMO["seed"],
    num_train: int = DEMO["num_train"],
    num_val: int = DEMO["num_val"],
    num_test: int = DEMO["num_test"],
    num_restval: int = DEMO["num_restval"],
    image_size: int = DEMO["image_size"],
    jpeg_quality: int = 90,
) -> dict:
    """Write ``images/``, ``dataset_coco.json`` and ``boxes.json`` under ``out_dir``.

    ``num_restval`` of the training images are labelled ``restval`` (Karpathy's extra training
    images), so the demo exercises the same split handling as COCO.
    """
    if min(num_train, num_val, num_test) < 1 or num_restval < 0 or num_restval > num_train:
        raise InputError("need at least one image per split and 0 <= num_restval <= num_train")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    splits = ["train"] * (num_train - num_restval) + ["restval"] * num_restval
    splits += ["val"] * num_val + ["test"] * num_test
    images, boxes = [], {}
    sentid = 0
    with atomic_path(out_dir / "images") as image_dir:
        image_dir.mkdir(parents=True)
        for imgid, split in enumerate(splits):
            cocoid = 100000 + imgid
            shapes = _place_shapes(rng, rng.randint(1, 3), image_size)
            image = _draw(shapes, rng, image_size)
            filename = f"demo_{cocoid:06d}.jpg"
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=jpeg_quality)
            (image_dir / filename).write_bytes(buffer.getvalue())
            sentences = []
            for raw in _captions(shapes, rng, image_size):
                sentences.append({"tokens": tokenize(raw), "raw": raw, "imgid": imgid, "sentid": sentid})
                sentid += 1
            images.append(
                {
                    "filepath": "images",
                    "filename": filename,
                    "imgid": imgid,
                    "cocoid": cocoid,
                    "split": split,
                    "sentids": [s["sentid"] for s in sentences],
                    "sentences": sentences,
                }
            )
            boxes[str(cocoid)] = {
                "boxes": [list(s.box) for s in shapes],
                "labels": [f"{s.colour} {s.kind}" for s in shapes],
            }
    write_json(out_dir / "boxes.json", boxes, indent=None)
    write_json(out_dir / "dataset_coco.json", {"images": images, "dataset": "coco"}, indent=None)
    return {"images": len(images), "captions": sentid}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, DemoDataSpec)
    parser.add_argument("--out", required=True)


def run(args) -> None:
    stats = generate(args.out, **vars(spec_from_args(DemoDataSpec, args)))
    print(f"demo dataset -> {args.out}: {stats['images']} images, {stats['captions']} captions", file=sys.stderr)
