"""``python -m captioner caption``: caption your own images with a trained model. Features are extracted on the fly
with the extractor settings recorded in the checkpoint (backbone, weights, input size), then beam-searched."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch

from captioner.models.beam_search import beam_search, collapse_repeats
from captioner.models.checkpoint import CheckpointError, load_for_inference
from features.config import recorded_extractor
from features.extract import ImageDataset, build_extractor
from features.images import ImageError
from pipeline.atomic import write_json
from pipeline.config import defaults
from pipeline.device import pick_device
from pipeline.errors import InputError, MissingKeyError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    if not paths:
        raise InputError(f"no images found in {inputs}")
    return paths


def box_keys(path: Path) -> list[str]:
    """The keys an image's boxes may have in a boxes JSON: its file name, its stem, or its image id, the number that
    ends a COCO-style name (``COCO_val2014_000000391895.jpg``: 391895; the demo's ``demo_100000.jpg``: 100000)."""
    keys = [path.name, path.stem]
    digits = re.search(r"(\d+)$", path.stem)
    if digits:
        keys.append(str(int(digits.group(1))))
    return keys


def boxes_by_file_name(boxes_json: str | Path, paths: list[Path]) -> dict[int, list]:
    """Each input image's boxes, looked up in the JSON by its file name, stem or image id (``box_keys``;
    ``{"photo.jpg": {"boxes": [...]}}``, ``{"391895": [[x1, y1, x2, y2], ...]}``); keyed by the image's position in
    ``paths``."""
    with open(boxes_json, encoding="utf-8") as handle:
        given = json.load(handle)
    names = [path.name for path in paths]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"--boxes matches images by file name, and {repeated[0]} is given more than once")
    found = {i: next((key for key in box_keys(path) if key in given), None) for i, path in enumerate(paths)}
    missing = [paths[i].name for i, key in found.items() if key is None]
    if missing:
        raise MissingKeyError(f"{boxes_json}: no boxes for {missing[0]} ({len(missing)} of {len(names)} images "
                              "without boxes; keys are the image file names, stems or image ids)")
    return {i: given[key]["boxes"] if isinstance(given[key], dict) else given[key] for i, key in found.items()}


def caption_images(model_path: str, inputs: list[str], beam_size: int, max_length: int, boxes_json: str | None,
                   device: str, batch_size: int = 8, detector_weights: str | None = None) -> list[dict]:
    if beam_size < 1 or max_length < 1:  # before the model loads: a bad argument costs nothing
        raise InputError(f"--beam-size and --max-length must be at least 1 (got {beam_size} and {max_length})")
    paths = image_paths(inputs)
    device = pick_device(device)
    bundle = load_for_inference(model_path, device)
    recorded = (bundle.checkpoint.get("features") or {}).get("extractor")
    if not recorded or "kind" not in recorded:
        raise CheckpointError(f"{model_path}: no extractor settings recorded (imported weights?); extract features "
                              "with `python -m features job extract` and decode them instead")
    config = recorded_extractor(recorded)
    detects = config.kind == "regions" and config.boxes == "detector"
    if detector_weights:
        if not detects:
            raise InputError(f"{model_path} reads {config.kind} features that no detector makes: drop "
                             "--detector-weights")
        config = replace(config, weights=detector_weights)
    elif detects and not config.weights:
        raise InputError(f"{model_path} reads bottom-up detector regions and records no detector weights (imported "
                         "weights): pass --detector-weights, e.g. MILVLG's bua-caffe-frcn-r101-k10-100.pth")
    boxes = None
    if config.kind == "regions" and config.boxes == "given":
        if boxes_json is None:
            raise InputError(f"{model_path} was trained on given boxes: pass --boxes JSON with boxes per image "
                             "(keys: the image file names)")
        boxes = boxes_by_file_name(boxes_json, paths)
    extractor = build_extractor(config, device, boxes)
    dataset = ImageDataset(list(enumerate(paths)), extractor)
    results: list[dict] = [{} for _ in paths]  # in the order given, bad images included
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = dataset.collate([dataset[i] for i in range(start, min(start + batch_size, len(paths)))])
            for error in batch["errors"]:
                results[error["image_id"]] = {"image": str(paths[error["image_id"]]), "error": error["reason"]}
            if not batch["keys"]:
                continue
            state, step = bundle.model.decoder(**bundle.inputs(extractor(batch)))
            found = beam_search(state, step, len(batch["keys"]), beam_size, max_length, bundle.vocab.bos_id,
                                bundle.vocab.eos_id, bundle.vocab.pad_id)
            for row, index in enumerate(batch["keys"]):
                words = bundle.vocab.decode(found.tokens[row, 0].tolist()).split()
                if bundle.collapse_repeats:
                    words = collapse_repeats(words)
                results[index] = {"image": str(paths[index]), "caption": " ".join(words),
                                  "logprob": float(found.logprob[row, 0])}
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint.pt of a trained model")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--beam-size", type=int, default=defaults("evaluate")["beam_size"])
    parser.add_argument("--max-length", type=int, default=defaults("evaluate")["max_length"])
    parser.add_argument("--boxes", help="for models trained on given boxes: JSON of boxes per image, keyed by the "
                                        "image's file name ({\"photo.jpg\": {\"boxes\": [[x1, y1, x2, y2], ...]}})")
    parser.add_argument("--detector-weights", help="for models on detected regions: the bottom-up detector's weights "
                                                   "(needed for imported weights, which record none)")
    parser.add_argument("--device", default=defaults("train")["device"])
    parser.add_argument("--threads", type=int, default=defaults("train")["threads"])
    parser.add_argument("--out", help="also write the captions as JSON here")
    parser.add_argument("--on-error", choices=["fail", "skip"], default=defaults("features")["on_error"],
                        help="images that cannot be read: fail (after captioning the others, naming every bad "
                             "file) or skip (listed in the output with their reason)")


def run(args) -> None:
    torch.set_num_threads(args.threads)
    results = caption_images(args.model, args.images, args.beam_size, args.max_length, args.boxes, args.device,
                             detector_weights=args.detector_weights)
    for result in results:
        print(f"{result['image']}: {result.get('caption', 'ERROR ' + result.get('error', ''))}")
    if args.out:
        write_json(args.out, results)  # the bad images are in it too, each with its reason
        print(f"wrote {args.out}", file=sys.stderr)
    errors = [result for result in results if "error" in result]
    if errors and args.on_error == "fail":
        listed = "\n  ".join(result["error"] for result in errors)
        raise ImageError(f"{len(errors)} of {len(results)} image(s) could not be read (--on-error fail):\n  {listed}")
