"""Caption your own images with a trained model: features are extracted on the fly with the extractor settings
recorded in the checkpoint (backbone, weights, input size), then beam-searched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from captioner.atomic import write_json
from captioner.checkpoint import CheckpointError, load_for_inference
from captioner.decoding import beam_search, collapse_repeats

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    if not paths:
        raise FileNotFoundError(f"no images found in {inputs}")
    return paths


def caption_images(model_path: str, inputs: list[str], beam_size: int = 5, max_length: int = 20,
                   boxes_json: str | None = None, device: str = "auto", batch_size: int = 8) -> list[dict]:
    from features.extract import ExtractorConfig, _collate, _ImageDataset, batch_features, build_extractor, pick_device

    device = pick_device(device)
    bundle = load_for_inference(model_path, device)
    recorded = (bundle.checkpoint.get("features") or {}).get("extractor")
    if not recorded or "kind" not in recorded:
        raise CheckpointError(f"{model_path}: no extractor settings recorded (imported weights?); extract features "
                              "with `python -m features extract` and decode them instead")
    config = ExtractorConfig(**recorded)
    boxes = None
    if config.kind == "regions" and config.boxes == "given":
        if boxes_json is None:
            raise ValueError(f"{model_path} was trained on given boxes: pass --boxes JSON with boxes per image "
                             "(keys: the image file names)")
        with open(boxes_json, encoding="utf-8") as handle:
            boxes = {i: entry["boxes"] if isinstance(entry, dict) else entry
                     for i, entry in enumerate(json.load(handle).values())}
    extractor, _, rows, dim = build_extractor(config, device)
    paths = image_paths(inputs)
    dataset = _ImageDataset(list(enumerate(paths)), config, boxes)
    results = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = _collate([dataset[i] for i in range(start, min(start + batch_size, len(paths)))])
            for error in batch["errors"]:
                results.append({"image": str(paths[error["image_id"]]), "error": error["reason"]})
            if not batch["image_ids"]:
                continue
            arrays = batch_features(extractor, batch, config, device, rows, dim)
            state, step = bundle.model.decoder(**bundle.inputs(arrays))
            found = beam_search(state, step, len(batch["image_ids"]), beam_size, max_length, bundle.vocab.bos_id,
                                bundle.vocab.eos_id, bundle.vocab.pad_id)
            for row, index in enumerate(batch["image_ids"]):
                words = bundle.vocab.decode(found.tokens[row, 0].tolist()).split()
                if bundle.collapse_repeats:
                    words = collapse_repeats(words)
                results.append({"image": str(paths[index]), "caption": " ".join(words),
                                "logprob": float(found.logprob[row, 0])})
    return results


def caption_from_cli(args) -> None:
    torch.set_num_threads(args.threads)
    results = caption_images(args.model, args.images, args.beam_size, args.max_length, args.boxes, args.device)
    for result in results:
        print(f"{result['image']}: {result.get('caption', 'ERROR ' + result.get('error', ''))}")
    if args.out:
        write_json(args.out, results)
        print(f"wrote {args.out}", file=sys.stderr)
