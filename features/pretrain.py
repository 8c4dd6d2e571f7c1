"""Train a ResNet trunk on box labels: the offline stand-in for ImageNet weights.

The grid extractor needs a backbone whose cells say *what* is there. Without internet there are no
pretrained torchvision weights, and a random trunk's grid cells barely separate the demo's shapes (a linear
probe of the shape class at an object's cell: 0.36, chance 0.20). This module trains the trunk on the
training split's labelled boxes instead: every cell of the output map is classified as the label of the
(smallest) box whose area holds the cell's centre, or as background. Only ``train``/``restval`` images are
used, so val and test stay unseen. The result is a plain torchvision state_dict, loaded by the extractors
like any user-given checkpoint (``weights: <path>``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from features.backbones import stage_channels, trunk
from features.boxes import load_given_boxes
from features.config import STAGE_STRIDES, PretrainSpec, Stage
from features.images import ImageError, load_rgb, to_tensor
from pipeline.atomic import atomic_path, write_json
from pipeline.config import defaults
from pipeline.device import pick_device
from pipeline.errors import InputError
from pipeline.manifest import ManifestImage, read_manifest
from pipeline.spec import Precision, check_choice, parse
from pipeline.spec import load as load_spec


class PretrainError(InputError):
    """The boxes or images cannot train the trunk."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX); elsewhere
    bf16 autocast is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


DEFAULTS = defaults("features", "pretrain")  # the config schema holds every default


@dataclass
class PretrainConfig:
    backbone: str = DEFAULTS["backbone"]
    stage: Stage = DEFAULTS["stage"]  # the last stage trained (layer3: stride 16, for res4 grids and pooled regions)
    image_size: int = DEFAULTS["image_size"]
    epochs: int = DEFAULTS["epochs"]
    batch_size: int = DEFAULTS["batch_size"]
    lr: float = DEFAULTS["lr"]
    weight_decay: float = 1e-4
    background_weight: float = 0.2  # most cells are background; they still count, less
    seed: int = DEFAULTS["seed"]
    precision: Precision = DEFAULTS["precision"]  # auto: bf16 autocast where the device has bf16 units, else fp32
    device: str = "auto"
    threads: int = 2
    num_workers: int = 0

    def __post_init__(self):
        check_choice(self.stage, Stage, "stage")
        check_choice(self.precision, Precision, "precision")
        if self.image_size % self.stride:
            raise InputError(f"image_size must be a multiple of {self.stride} (the {self.stage} stride), "
                             f"not {self.image_size}")
        if min(self.epochs, self.batch_size) < 1 or self.lr <= 0 or not 0 <= self.background_weight <= 1:
            raise InputError("epochs and batch_size >= 1, lr > 0, 0 <= background_weight <= 1")

    @property
    def stride(self) -> int:
        return STAGE_STRIDES[self.stage]


def cell_targets(boxes: np.ndarray, labels: list[int], width: int, height: int, cells: int) -> np.ndarray:
    """(cells, cells) label map: the smallest box holding each cell's centre (in image pixels), 0 = none."""
    target = np.zeros((cells, cells), dtype=np.int64)
    centres = (np.arange(cells) + 0.5) / cells
    cx, cy = np.meshgrid(centres * width, centres * height)
    order = np.argsort([-(b[2] - b[0]) * (b[3] - b[1]) for b in boxes], kind="stable")  # large first, small wins
    for k in order:
        x1, y1, x2, y2 = boxes[k]
        target[(cx >= x1) & (cx < x2) & (cy >= y1) & (cy < y2)] = labels[k]
    return target


class _BoxLabelDataset(Dataset):
    def __init__(self, items: list[tuple[Path, np.ndarray, list[int]]], image_size: int, stride: int, flip: bool,
                 seed: int):
        self.items, self.image_size, self.stride, self.flip = items, image_size, stride, flip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, boxes, labels = self.items[index]
        try:
            image = load_rgb(path)
        except ImageError as error:
            raise PretrainError(str(error)) from None
        width, height = image.size
        target = cell_targets(boxes, labels, width, height, self.image_size // self.stride)
        tensor = to_tensor(image.resize((self.image_size, self.image_size), resample=2))
        if self.flip and self.rng.random() < 0.5:
            tensor, target = tensor.flip(-1), target[:, ::-1].copy()
        return tensor, torch.from_numpy(target)


def _items(images: list[ManifestImage], image_root: Path, given: dict, boxes: dict[int, list], boxes_json: Path,
           label_ids: dict | None):
    """(image path, boxes, label ids) of ``images``; label ids are numbered from these images when not given."""
    missing = [im.image_id for im in images if str(im.image_id) not in given]
    if missing:
        raise PretrainError(f"{boxes_json}: no boxes for {len(missing)} image(s), e.g. {missing[:5]}")
    if label_ids is None:
        names = sorted({label for im in images for label in given[str(im.image_id)].get("labels", [])})
        if not names:
            raise PretrainError(f"{boxes_json}: the boxes have no 'labels' to learn from")
        label_ids = {name: k + 1 for k, name in enumerate(names)}  # 0 = background
    items = []
    for im in images:
        entry = given[str(im.image_id)]
        labels = entry.get("labels", [])
        if len(labels) != len(entry["boxes"]):
            raise PretrainError(f"{boxes_json}: image {im.image_id} has {len(entry['boxes'])} boxes but "
                                f"{len(labels)} labels")
        ids = [label_ids.get(name, 0) for name in labels]  # a label never seen in training: background
        items.append((image_root / im.path, np.asarray(boxes[im.image_id], dtype=np.float32).reshape(-1, 4), ids))
    return items, label_ids


class _CellClassifier(torch.nn.Module):
    def __init__(self, resnet: torch.nn.Module, classes: int, stage: str):
        super().__init__()
        self.trunk = trunk(resnet, stage)
        self.head = torch.nn.Conv2d(stage_channels(resnet, stage), classes, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def _cell_accuracy(model, loader, device, autocast) -> float:
    """Share of object cells (not background) classified right."""
    model.eval()
    right = total = 0
    with torch.inference_mode():
        for images, targets in loader:
            with autocast():
                predicted = model(images.to(device)).argmax(1).cpu()
            objects = targets > 0
            right += int((predicted[objects] == targets[objects]).sum())
            total += int(objects.sum())
    return right / max(total, 1)


def pretrain(manifest: str | Path, image_root: str | Path, boxes_json: str | Path, out: str | Path,
             config: PretrainConfig, report_path: str | Path | None = None, log=print) -> dict:
    """Train, write the trunk's state_dict to ``out`` (atomically) and a JSON report (default: beside it)."""
    torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    images = read_manifest(manifest)
    given = json.loads(Path(boxes_json).read_text())  # labels; the boxes themselves are checked by the loader
    boxes = load_given_boxes(boxes_json)
    train_items, label_ids = _items([im for im in images if im.split == "train"], Path(image_root),
                                    given, boxes, Path(boxes_json), None)
    val_items, _ = _items([im for im in images if im.split == "val"], Path(image_root), given, boxes,
                          Path(boxes_json), label_ids)
    if not train_items:
        raise PretrainError(f"{manifest}: no training images")
    torch.manual_seed(config.seed)
    resnet = getattr(torchvision.models, config.backbone)(weights=None)
    model = _CellClassifier(resnet, len(label_ids) + 1, config.stage).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(train_items) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.2)
    weights = torch.ones(len(label_ids) + 1, device=device)
    weights[0] = config.background_weight
    bf16 = config.precision == "bf16" or (config.precision == "auto" and native_bf16(device))

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(_BoxLabelDataset(train_items, config.image_size, config.stride, True, config.seed),
                              batch_size=config.batch_size, shuffle=True, generator=generator,
                              num_workers=config.num_workers)
    val_loader = DataLoader(_BoxLabelDataset(val_items, config.image_size, config.stride, False, config.seed),
                            batch_size=config.batch_size, num_workers=config.num_workers) if val_items else None
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        start, total, batches = time.perf_counter(), 0.0, 0
        for images, targets in tqdm(train_loader, desc=f"backbone epoch {epoch}/{config.epochs}", unit="batch",
                                    file=sys.stderr, mininterval=10, leave=False):
            with autocast():
                logits = model(images.to(device))
            loss = F.cross_entropy(logits.float(), targets.to(device), weight=weights)
            if not torch.isfinite(loss):
                raise PretrainError(f"non-finite loss at epoch {epoch}, batch {batches + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, batches = total + float(loss.detach()), batches + 1
        row = {"epoch": epoch, "loss": total / batches, "seconds": time.perf_counter() - start}
        if val_loader is not None:
            row["val_object_cell_accuracy"] = _cell_accuracy(model, val_loader, device, autocast)
        history.append(row)
        left = (config.epochs - epoch) * (time.perf_counter() - start)  # this epoch's pace, validation included
        log(f"backbone epoch {epoch}/{config.epochs}: loss {row['loss']:.3f}, val object-cell accuracy "
            f"{row.get('val_object_cell_accuracy', float('nan')):.3f} ({row['seconds']:.0f} s"
            + (f"; ~{left / 60:.1f} min more)" if epoch < config.epochs else ")"))
    # the stages after config.stage stay at their random init: the extractors refuse to use them (see the workflow)
    state = {k: v.detach().cpu() for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    report = {"config": asdict(config), "bf16": bf16, "labels": label_ids, "train_images": len(train_items),
              "val_images": len(val_items), "history": history}
    write_json(report_path or out.with_suffix(".json"), report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="the settings: JSON of features.pretrain and features.device "
                                                      "(inline or a file; see features.config.PretrainSpec)")
    parser.add_argument("--manifest", required=True, help="image manifest (python -m captioner job image-manifest)")
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--boxes", required=True, help="JSON {image_id: {boxes: [[x1,y1,x2,y2],...], labels: [...]}}")
    parser.add_argument("--out", required=True, help="the trunk's state_dict (.pt)")
    parser.add_argument("--report", help="the JSON report (default: beside --out, .json)")
    parser.add_argument("--threads", type=int, default=defaults("features")["threads"])


def run(args) -> None:
    spec = parse(PretrainSpec, load_spec(args.spec), "--spec")
    config = PretrainConfig(**asdict(spec), threads=args.threads)
    report = pretrain(args.manifest, args.image_root, args.boxes, args.out, config, report_path=args.report,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    last = report["history"][-1]
    print(f"backbone -> {args.out}: {report['train_images']} training images, {len(report['labels'])} labels, "
          f"final loss {last['loss']:.3f}", file=sys.stderr)
