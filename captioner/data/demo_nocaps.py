"""A nocaps-like evaluation set for the demo: shapes and colours the demo's training generator never uses.

nocaps scores COCO-trained captioners on images whose objects training never names. Here an object is *novel* when its
kind (hexagon, cross, pentagon) or its colour (pink, cyan) is absent from :mod:`captioner.data.demo`; the domains follow
nocaps: ``in-domain`` images hold seen objects only, ``near-domain`` ones at least one seen and one novel object,
``out-domain`` ones novel objects only. The captions file is in the official nocaps format
(``nocaps_val_captions.json``, 10 captions per image), read by :func:`captioner.data.nocaps.load`; the ground-truth
boxes and labels go to ``boxes.json`` in the demo's format. Everything derives from one seed: the same arguments
give byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from captioner.data.demo import (
    _RELATION_PHRASES,
    COLOURS,
    NUMBER_WORDS,
    SHAPES,
    SIZE_PIXELS,
    SIZE_WORDS,
    Shape,
    _overlaps,
    _region,
    _relation,
    _star_points,
)
from captioner.data.nocaps import DOMAINS
from captioner.data.specs import DemoNocapsSpec
from pipeline.atomic import atomic_path, write_json
from pipeline.config import defaults
from pipeline.errors import InputError
from pipeline.spec import add_spec_argument, spec_from_args

NOCAPS_DEMO = defaults("evaluate", "nocaps", "demo")  # the config schema holds every default
NOVEL_SHAPES = ("hexagon", "cross", "pentagon")
NOVEL_COLOURS = {"pink": (250, 120, 190), "cyan": (40, 215, 225)}
ALL_COLOURS = {**COLOURS, **NOVEL_COLOURS}
SEEN_OBJECTS = tuple((colour, kind) for kind in SHAPES for colour in COLOURS)
NOVEL_OBJECTS = tuple((colour, kind) for kind in SHAPES + NOVEL_SHAPES for colour in ALL_COLOURS
                      if kind in NOVEL_SHAPES or colour in NOVEL_COLOURS)
DOMAIN_SHARES = {"in-domain": 0.30, "out-domain": 0.25}  # near-domain takes the rest (about 45%)
CAPTIONS_PER_IMAGE = 10
CAPTIONS_FILE = "nocaps_val_captions.json"
DATE_CAPTURED = "2018-11-06 00:00:00"


def held_out_words() -> set[str]:
    """The tokens training never sees: the novel kinds and colours."""
    return set(NOVEL_SHAPES) | set(NOVEL_COLOURS)


def is_novel(colour: str, kind: str) -> bool:
    return kind in NOVEL_SHAPES or colour in NOVEL_COLOURS


def _domain_plan(rng: random.Random, num_images: int) -> list[str]:
    """Fixed counts per domain (each at least one), in a seeded random order."""
    counts = {domain: max(1, round(share * num_images)) for domain, share in DOMAIN_SHARES.items()}
    counts["near-domain"] = num_images - sum(counts.values())
    plan = [domain for domain in DOMAINS for _ in range(counts[domain])]
    rng.shuffle(plan)
    return plan


def _choose_objects(rng: random.Random, domain: str) -> list[tuple[str, str]]:
    """Distinct (colour, kind) pairs for one image of ``domain``."""
    if domain == "in-domain":
        num_seen, num_novel = rng.randint(1, 3), 0
    elif domain == "out-domain":
        num_seen, num_novel = 0, rng.randint(1, 3)
    else:
        count = rng.randint(2, 3)
        num_novel = rng.randint(1, count - 1)
        num_seen = count - num_novel
    objects = rng.sample(SEEN_OBJECTS, num_seen) + rng.sample(NOVEL_OBJECTS, num_novel)
    rng.shuffle(objects)
    return objects


def _place(rng: random.Random, objects: list[tuple[str, str]], image_size: int) -> list[Shape]:
    """Rejection-sample a size and a non-overlapping box for each object; start over when one does not fit."""
    while True:
        shapes: list[Shape] = []
        for colour, kind in objects:
            for _attempt in range(200):
                size = rng.choice(("small", "large"))
                side = rng.randint(*SIZE_PIXELS[size])
                x1 = rng.randint(4, image_size - side - 4)
                y1 = rng.randint(4, image_size - side - 4)
                box = (x1, y1, x1 + side, y1 + side)
                if not any(_overlaps(box, other.box) for other in shapes):
                    shapes.append(Shape(kind, colour, size, box))
                    break
            else:
                break
        if len(shapes) == len(objects):
            return shapes


def _regular_polygon(box: tuple[int, int, int, int], corners: int, start_angle: float) -> list[tuple[float, float]]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    radius = (box[2] - box[0]) / 2
    return [(cx + radius * math.cos(start_angle + i * 2 * math.pi / corners),
             cy + radius * math.sin(start_angle + i * 2 * math.pi / corners)) for i in range(corners)]


def _cross_points(box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """A plus sign whose arms are a third of the box wide."""
    x1, y1, x2, y2 = box
    a, b = x1 + (x2 - x1) / 3, x1 + 2 * (x2 - x1) / 3
    c, d = y1 + (y2 - y1) / 3, y1 + 2 * (y2 - y1) / 3
    return [(a, y1), (b, y1), (b, c), (x2, c), (x2, d), (b, d), (b, y2), (a, y2), (a, d), (x1, d), (x1, c), (a, c)]


def _draw(shapes: list[Shape], rng: random.Random, image_size: int) -> Image.Image:
    """demo.py's scene drawing extended to the novel kinds and colours: same background, noise and blur, drawn from
    the same random stream, so a scene of seen objects comes out pixel-identical to the training images."""
    base = np.array([rng.randint(70, 150) for _ in range(3)], dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, rng.uniform(4, 12), (image_size, image_size, 1))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        fill = ALL_COLOURS[shape.colour]
        x1, y1, x2, y2 = shape.box
        cx, cy = shape.centre
        if shape.kind == "circle":
            draw.ellipse(shape.box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(shape.box, fill=fill)
        elif shape.kind == "triangle":
            draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=fill)
        elif shape.kind == "diamond":
            draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill)
        elif shape.kind == "star":
            draw.polygon(_star_points(shape.box), fill=fill)
        elif shape.kind == "hexagon":
            draw.polygon(_regular_polygon(shape.box, 6, 0.0), fill=fill)
        elif shape.kind == "pentagon":
            draw.polygon(_regular_polygon(shape.box, 5, -math.pi / 2), fill=fill)
        elif shape.kind == "cross":
            draw.polygon(_cross_points(shape.box), fill=fill)
        else:
            raise ValueError(f"no drawing for shape kind {shape.kind!r}")
    return image.filter(ImageFilter.GaussianBlur(0.6))


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _listing(phrases: list[str]) -> str:
    return ", ".join(phrases[:-1]) + f" and {phrases[-1]}"


def _single_shape_pool(shape: Shape, rng: random.Random, image_size: int) -> list[str]:
    phrase, plain = shape.phrase(rng, with_size=True), shape.phrase(rng, with_size=False)
    size = rng.choice(SIZE_WORDS[shape.size])
    region = _region(shape, image_size)
    object_words = f"{shape.colour} {shape.kind}"
    return [
        f"{phrase} {region}",
        f"there is {phrase} in the picture",
        f"a single {object_words} {region}",
        f"an image with one {size} {object_words}",
        f"{plain} on a plain background",
        f"only {plain} is shown {region}",
        f"the picture shows {phrase}",
        f"one {object_words} and nothing else",
        f"{phrase} alone on a noisy background",
        f"a lone {size} {object_words}",
        f"{region} there is {plain}",
        f"a {size} {shape.kind} coloured {shape.colour}",
        f"the only shape is {plain}",
        f"{_with_article(object_words)} sits {region}",
    ]


def _several_shapes_pool(shapes: list[Shape], rng: random.Random, image_size: int) -> list[str]:
    phrases = [shape.phrase(rng, with_size=True) for shape in shapes]
    plain = [shape.phrase(rng, with_size=False) for shape in shapes]
    count = len(shapes)
    pool = []
    for i, a in enumerate(shapes):
        for j, b in enumerate(shapes):
            if i != j:
                words = rng.choice(_RELATION_PHRASES[_relation(a, b)])
                pool += [f"{phrases[i]} {words} {plain[j]}", f"there is {plain[i]} {words} {phrases[j]}",
                         f"{plain[i]} is {words} {plain[j]}"]
    listing = _listing(phrases)
    pool += [
        listing,
        f"{NUMBER_WORDS[count]} shapes {listing}",
        f"{listing} on a plain background",
        f"an image of {_listing(plain)}",
        f"a picture of {NUMBER_WORDS[count]} shapes, {_listing(plain)}",
    ]
    others = f"{NUMBER_WORDS[count - 1]} other shape" + ("s" if count > 2 else "")
    for shape, phrase, plain_phrase in zip(shapes, phrases, plain):
        pool += [f"{phrase} {_region(shape, image_size)} and {others}", f"{plain_phrase} {_region(shape, image_size)}"]
    for colour in dict.fromkeys(shape.colour for shape in shapes):
        kinds = [_with_article(shape.kind) for shape in shapes if shape.colour == colour]
        if len(kinds) > 1:
            pool.append(f"{NUMBER_WORDS[len(kinds)]} {colour} shapes, {_listing(kinds)}")
    return pool


def _captions(shapes: list[Shape], rng: random.Random, image_size: int) -> list[str]:
    """Ten distinct sentence-case captions; every one names at least one object by colour and kind."""
    if len(shapes) == 1:
        pool = _single_shape_pool(shapes[0], rng, image_size)
    else:
        pool = _several_shapes_pool(shapes, rng, image_size)
    rng.shuffle(pool)
    distinct = list(dict.fromkeys(pool))
    if len(distinct) < CAPTIONS_PER_IMAGE:  # the templates above always give more; guard the invariant anyway
        raise RuntimeError(f"only {len(distinct)} distinct captions for {shapes}")
    return [caption[0].upper() + caption[1:] + "." for caption in distinct[:CAPTIONS_PER_IMAGE]]


def generate_nocaps(
    out_dir: str | Path,
    seed: int = NOCAPS_DEMO["seed"],
    num_images: int = NOCAPS_DEMO["num_images"],
    image_size: int = defaults("dataset", "demo")["image_size"],
    jpeg_quality: int = 90,
) -> dict:
    """Write ``images/<open_images_id>.jpg``, ``nocaps_val_captions.json`` and ``boxes.json`` under ``out_dir``;
    returns the image and caption counts and the image count per domain."""
    if num_images < len(DOMAINS):
        raise InputError(f"need at least {len(DOMAINS)} images (one per domain), got {num_images}")
    if image_size < 128:
        raise InputError(f"image_size must be at least 128 (the large shapes are up to 96 px), got {image_size}")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    plan = _domain_plan(rng, num_images)
    images, annotations, boxes = [], [], {}
    used_open_images_ids: set[str] = set()
    with atomic_path(out_dir / "images") as image_dir:
        image_dir.mkdir(parents=True)
        for image_id, domain in enumerate(plan):
            open_images_id = f"{rng.getrandbits(64):016x}"
            while open_images_id in used_open_images_ids:
                open_images_id = f"{rng.getrandbits(64):016x}"
            used_open_images_ids.add(open_images_id)
            shapes = _place(rng, _choose_objects(rng, domain), image_size)
            image = _draw(shapes, rng, image_size)
            file_name = f"{open_images_id}.jpg"
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=jpeg_quality)
            (image_dir / file_name).write_bytes(buffer.getvalue())
            images.append({"id": image_id, "open_images_id": open_images_id, "file_name": file_name,
                           "height": image_size, "width": image_size, "domain": domain, "license": 0,
                           "date_captured": DATE_CAPTURED})
            for caption in _captions(shapes, rng, image_size):
                annotations.append({"image_id": image_id, "id": len(annotations), "caption": caption})
            boxes[str(image_id)] = {"boxes": [list(shape.box) for shape in shapes],
                                    "labels": [f"{shape.colour} {shape.kind}" for shape in shapes]}
    info = {"description": "demo nocaps-like validation set", "version": "1.0", "year": 2018,
            "contributor": "captioner demo generator", "url": "", "date_created": DATE_CAPTURED.split()[0],
            "seed": seed, "held_out_words": sorted(held_out_words())}
    write_json(out_dir / "boxes.json", boxes, indent=None)
    write_json(out_dir / CAPTIONS_FILE, {"licenses": [], "info": info, "images": images, "annotations": annotations},
               indent=None)
    return {"images": len(images), "captions": len(annotations),
            "domains": {domain: plan.count(domain) for domain in DOMAINS}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, DemoNocapsSpec)
    parser.add_argument("--out", required=True)


def run(args) -> None:
    stats = generate_nocaps(args.out, **vars(spec_from_args(DemoNocapsSpec, args)))
    print(f"demo nocaps set -> {args.out}: {stats['images']} images, {stats['captions']} captions ("
          + ", ".join(f"{domain} {count}" for domain, count in stats["domains"].items()) + ")", file=sys.stderr)
