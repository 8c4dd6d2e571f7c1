"""Grid (Show-Attend-Tell) and region (M²) feature extraction into a feature store.

Grid: a torchvision ResNet trunk up to res5 on a square resize, adaptively pooled to a
``grid_size`` x ``grid_size`` grid (448 px -> 14x14 natively for ResNet-101).

Regions, given-boxes mode: bottom-up-attention style C4 head. The trunk runs to res4 (stride 16)
on the image resized to shorter side ``min_size`` (longer side <= ``max_size``); each box is
RoI-pooled to 14x14 on res4, passed through res5 and mean-pooled to one vector per box.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner import karpathy
from features.images import ImageError, load_rgb, to_tensor
from features.store import StoreWriter

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass
class ExtractorConfig:
    kind: str  # grid | regions
    backbone: str = "resnet101"
    weights: str = "none"  # none | a torchvision weights name (e.g. IMAGENET1K_V2) | a checkpoint path
    image_size: int = 448  # grid: square input side
    grid_size: int = 14
    min_size: int = 600  # regions: shorter side
    max_size: int = 1000  # regions: longer side cap
    max_boxes: int = 100
    boxes: str = "given"  # regions: given (boxes JSON) | detector (bottom-up Faster R-CNN)
    backend: str = "torchvision"  # detector: torchvision (built here) | detectron2 (optional install)
    detectron2_config: str = ""  # detector + detectron2: the model's detectron2 config file
    min_boxes: int = 10  # detector: BUTD rule
    conf_thresh: float = 0.2
    nms_thresh: float = 0.3
    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    seed: int = 0  # for weights: none

    def __post_init__(self):
        if self.kind not in ("grid", "regions"):
            raise ValueError(f"kind must be grid or regions, not {self.kind!r}")
        if self.boxes not in ("given", "detector"):
            raise ValueError(f"boxes must be given or detector, not {self.boxes!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, not {self.backbone!r}")


@dataclass
class RunOptions:
    batch_size: int = 32
    num_workers: int = 2
    device: str = "auto"
    dtype: str = "float16"
    compression: str | None = None
    on_error: str = "fail"  # fail | skip
    limit: int | None = None
    errors: list = field(default_factory=list)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
            raise ValueError(f"{weights}: not a torchvision {backbone} state_dict "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        record["sha256"] = sha256_of(weights)
    else:
        enum = torchvision.models.get_model_weights(backbone)
        try:
            weight_enum = enum[weights]
        except KeyError:
            raise ValueError(f"weights {weights!r}: neither 'none', an existing file, nor one of "
                             f"{[w.name for w in enum]}") from None
        model = builder(weights=weight_enum)  # downloads into the torch hub cache when online
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weight_enum.url).name
        record["url"] = weight_enum.url
        record["sha256"] = sha256_of(cached) if cached.exists() else None
    return model.eval(), record


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------- models
class GridExtractor(torch.nn.Module):
    def __init__(self, resnet: torch.nn.Module, image_size: int, grid_size: int):
        super().__init__()
        self.trunk = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                         resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        self.image_size, self.grid_size = image_size, grid_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.trunk(images)
        if maps.shape[-1] != self.grid_size or maps.shape[-2] != self.grid_size:
            maps = F.adaptive_avg_pool2d(maps, self.grid_size)
        return maps.flatten(2).transpose(1, 2)  # (B, grid*grid, C)


class RegionExtractor(torch.nn.Module):
    """C4 region head: RoIPool 14x14 on res4, res5, mean pool."""

    def __init__(self, resnet: torch.nn.Module):
        super().__init__()
        self.trunk = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                         resnet.layer1, resnet.layer2, resnet.layer3)
        self.res5 = resnet.layer4

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = self.trunk(images)
        pooled = torchvision.ops.roi_pool(maps, boxes, output_size=(14, 14), spatial_scale=1.0 / 16)
        vectors = self.res5(pooled).mean(dim=(2, 3))
        return list(vectors.split([len(b) for b in boxes]))


# ------------------------------------------------------------------------------------------------- data
class _ImageDataset(Dataset):
    def __init__(self, items: list[tuple[int, Path]], config: ExtractorConfig, boxes: dict | None):
        self.items, self.config, self.boxes = items, config, boxes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image_id, path = self.items[index]
        try:
            image = load_rgb(path)
        except ImageError as error:
            return {"image_id": image_id, "error": str(error)}
        width, height = image.size
        if self.config.kind == "regions" and self.config.boxes == "detector" and self.config.backend == "detectron2":
            return {"image_id": image_id, "image": np.asarray(image), "scale": 1.0, "hw": (height, width)}
        if self.config.kind == "regions" and self.config.boxes == "detector":
            from features.detector import caffe_preprocess

            tensor, scale = caffe_preprocess(np.asarray(image), self.config.min_size, self.config.max_size)
            return {"image_id": image_id, "image": tensor, "scale": scale, "hw": (height, width)}
        if self.config.kind == "grid":
            size = self.config.image_size
            image = image.resize((size, size), resample=2)  # bilinear
            return {"image_id": image_id, "image": to_tensor(image)}
        scale = self.config.min_size / min(width, height)
        scale = min(scale, self.config.max_size / max(width, height))
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((new_w, new_h), resample=2)
        boxes = np.asarray(self.boxes[image_id], dtype=np.float32).reshape(-1, 4)[: self.config.max_boxes]
        return {"image_id": image_id, "image": to_tensor(image), "boxes": torch.from_numpy(boxes),
                "scale": scale, "hw": (height, width)}


def _collate(batch: list[dict]) -> dict:
    good = [b for b in batch if "error" not in b]
    out = {"errors": [{"image_id": b["image_id"], "reason": b["error"]} for b in batch if "error" in b],
           "image_ids": [b["image_id"] for b in good]}
    if not good:
        return out
    if "scale" in good[0] and "boxes" not in good[0]:  # detector: images of different sizes, run one by one
        out.update(image_list=[b["image"] for b in good], scales=[b["scale"] for b in good],
                   hw=[b["hw"] for b in good])
        return out
    height = max(b["image"].shape[1] for b in good)
    width = max(b["image"].shape[2] for b in good)
    images = torch.zeros(len(good), 3, height, width)
    for i, b in enumerate(good):  # zero (= mean colour) padding at the bottom/right
        images[i, :, : b["image"].shape[1], : b["image"].shape[2]] = b["image"]
    out["images"] = images
    if "boxes" in good[0]:
        out["boxes"] = [b["boxes"] for b in good]
        out["scales"] = [b["scale"] for b in good]
        out["hw"] = [b["hw"] for b in good]
    return out


def load_given_boxes(path: str | Path) -> dict[int, list]:
    import json

    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    boxes = {}
    for key, value in data.items():
        value = value["boxes"] if isinstance(value, dict) else value
        array = np.asarray(value, dtype=np.float32).reshape(-1, 4)
        if len(array) == 0:
            raise ValueError(f"{path}: image {key} has no boxes")
        if not np.all(array[:, 2] > array[:, 0]) or not np.all(array[:, 3] > array[:, 1]):
            raise ValueError(f"{path}: image {key} has a box with x2<=x1 or y2<=y1")
        boxes[int(key)] = array.tolist()
    return boxes


def build_detector(config: ExtractorConfig, device: torch.device):
    if config.backend == "detectron2":
        from features.detectron2_backend import Detectron2Detector

        model = Detectron2Detector(config.detectron2_config, config.weights, config.min_size, config.max_size,
                                   config.nms_thresh, config.conf_thresh, config.min_boxes, config.max_boxes, device,
                                   config.pre_nms_top_n, config.post_nms_top_n)
        return model, {"weights": config.weights, "sha256": sha256_of(config.weights),
                       "detectron2_config": config.detectron2_config}
    from features.detector import BottomUpDetector, DetectorConfig, load_detectron2_checkpoint

    detector_config = DetectorConfig(
        backbone=config.backbone, min_size=config.min_size, max_size=config.max_size,
        pre_nms_top_n=config.pre_nms_top_n, post_nms_top_n=config.post_nms_top_n, nms_thresh=config.nms_thresh,
        conf_thresh=config.conf_thresh, min_boxes=config.min_boxes, max_boxes=config.max_boxes)
    torch.manual_seed(config.seed)
    model = BottomUpDetector(detector_config)
    record = {"weights": config.weights, "sha256": None}
    if config.weights == "none":
        record["note"] = f"random init, torch seed {config.seed}"
    elif Path(config.weights).is_file():
        record["unused_keys"] = load_detectron2_checkpoint(model, config.weights)["unused_keys"]
        record["sha256"] = sha256_of(config.weights)
    else:
        raise ValueError(f"detector weights {config.weights!r}: give 'none' or the path of a detectron2-format "
                         "bottom-up-attention checkpoint (e.g. bua-caffe-frcn-r101-k10-100.pth)")
    return model.eval(), record


def build_extractor(config: ExtractorConfig, device: torch.device):
    """The model for ``config`` on ``device``, its weights record, and the store row shape (rows, dim)."""
    if config.kind == "regions" and config.boxes == "detector":
        model, weights_record = build_detector(config, device)
        feature_dim = 2048
    else:
        resnet, weights_record = build_resnet(config.backbone, config.weights, config.seed)
        model = GridExtractor(resnet, config.image_size, config.grid_size) if config.kind == "grid" \
            else RegionExtractor(resnet)
        feature_dim = resnet.fc.in_features
    if isinstance(model, torch.nn.Module):  # the detectron2 wrapper places its model itself
        model = model.to(device).eval()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
    rows = config.grid_size ** 2 if config.kind == "grid" else config.max_boxes
    return model, weights_record, rows, feature_dim


def batch_features(model, batch: dict, config: ExtractorConfig, device: torch.device, rows: int,
                   feature_dim: int) -> dict:
    """Run the extractor on one collated batch -> the arrays a store row holds (grid: ``features`` only)."""
    if config.kind == "grid":
        images = batch["images"].to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return {"features": model(images).float().cpu().numpy()}
    n = len(batch["image_ids"])
    out = {"features": np.zeros((n, rows, feature_dim), dtype=np.float32),
           "num_boxes": np.zeros(n, dtype=np.int32), "boxes": np.zeros((n, rows, 4), dtype=np.float32),
           "image_hw": np.asarray(batch["hw"], dtype=np.int32).reshape(n, 2),
           "class_ids": np.full((n, rows), -1, dtype=np.int32), "box_scores": np.zeros((n, rows), dtype=np.float32)}
    if "image_list" in batch:  # detector: one image at a time
        found = [model.detect(image) if isinstance(image, np.ndarray) else model.detect(image.to(device), scale, hw)
                 for image, scale, hw in zip(batch["image_list"], batch["scales"], batch["hw"])]
        found = [{k: v.float().cpu().numpy() if k != "class_id" else v.cpu().numpy() for k, v in f.items()}
                 for f in found]
        pieces = [(f["features"], f["boxes"], f["class_id"], f["score"]) for f in found]
    else:  # given boxes, pooled for the whole batch at once
        images = batch["images"].to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        scaled = [(b * s).to(device) for b, s in zip(batch["boxes"], batch["scales"])]
        vectors = model(images, scaled)
        pieces = [(v.float().cpu().numpy(), b.numpy(), None, None) for v, b in zip(vectors, batch["boxes"])]
    for i, (feats, boxes, class_ids, scores) in enumerate(pieces):
        k = len(feats)
        out["features"][i, :k], out["boxes"][i, :k], out["num_boxes"][i] = feats, boxes, k
        if class_ids is not None:
            out["class_ids"][i, :k], out["box_scores"][i, :k] = class_ids, scores
    return out


# ------------------------------------------------------------------------------------------------- run
def shard_slice(count: int, shard: int, num_shards: int) -> slice:
    """Contiguous slice ``shard`` of ``num_shards`` near-equal slices of ``count`` items."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    size = -(-count // num_shards)
    return slice(shard * size, min((shard + 1) * size, count))


def extract(karpathy_json: str | Path, image_root: str | Path, out: str | Path, config: ExtractorConfig,
            options: RunOptions, boxes_json: str | Path | None = None, shard: int = 0, num_shards: int = 1) -> dict:
    """Extract features for every image of the split file (or of one shard of it) into the store at ``out``.

    An interrupted run leaves a partial store beside ``out``; running the same command again extracts
    only the images not yet written.
    """
    started = time.time()
    dataset = karpathy.load(karpathy_json)
    image_root = Path(image_root)
    items = [(image.image_id, image_root / image.path) for image in dataset.images]
    if options.limit:
        items = items[: options.limit]
    items = items[shard_slice(len(items), shard, num_shards)]
    boxes = None
    if config.kind == "regions" and config.boxes == "given":
        if boxes_json is None:
            raise ValueError("region extraction in given-boxes mode needs a boxes JSON file")
        boxes = load_given_boxes(boxes_json)
        absent = [i for i, _ in items if i not in boxes]
        if absent:
            raise KeyError(f"{boxes_json}: no boxes for image id {absent[0]} ({len(absent)} images without boxes)")

    device = pick_device(options.device)
    model, weights_record, rows, feature_dim = build_extractor(config, device)
    meta = {
        "extractor": asdict(config),
        "weights_record": weights_record,
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "source": {"karpathy_json": str(karpathy_json), "image_root": str(image_root)},
        "storage": {"dtype": options.dtype, "compression": options.compression},
        "shard": {"index": shard, "count": num_shards},
    }
    writer = StoreWriter(out, config.kind, [i for i, _ in items], rows, feature_dim, options.dtype,
                         options.compression, meta)
    todo_ids = set(writer.missing_ids)
    todo = [item for item in items if item[0] in todo_ids]
    loader = DataLoader(_ImageDataset(todo, config, boxes), batch_size=options.batch_size,
                        num_workers=options.num_workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    errors: list[dict] = []
    done = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast, tqdm(total=len(todo), unit="img", desc=f"{config.kind} features",
                                                file=sys.stderr, mininterval=5) as progress:
        for batch in loader:
            errors += batch["errors"]
            failing = errors and options.on_error == "fail"  # keep decoding only to name every bad file
            if batch["image_ids"] and not failing:
                arrays = batch_features(model, batch, config, device, rows, feature_dim)
                writer.write(batch["image_ids"], **arrays)
                done += len(batch["image_ids"])
            progress.update(len(batch["image_ids"]) + len(batch["errors"]))
    if errors and options.on_error == "fail":
        writer.close()
        listed = "\n  ".join(f"{e['image_id']}: {e['reason']}" for e in errors)
        raise ImageError(f"{len(errors)} image(s) could not be read (features.on_error: fail):\n  {listed}")
    if errors:
        writer.record_errors(errors)
        writer.drop_rows(e["image_id"] for e in errors)
        for error in errors:
            print(f"skipped image {error['image_id']}: {error['reason']}", file=sys.stderr)
    writer.finalize()
    summary = {"done": done, "skipped_already_written": len(items) - len(todo), "failed": len(errors),
               "wall_s": round(time.time() - started, 1)}
    print(f"{config.kind} features -> {out}: {summary['done']} done, {summary['skipped_already_written']} "
          f"already written, {summary['failed']} failed, {summary['wall_s']} s", file=sys.stderr)
    return summary
