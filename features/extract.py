"""``python -m features extract``: features of every image of the manifest (or of one shard of it) into a store.

The kind of extractor comes from :func:`features.config.extractor_module` (grid: :mod:`features.grid`; regions from
given boxes: :mod:`features.regions`; detected regions: :mod:`features.bottom_up`). Each implements the same small
contract: ``rows`` and ``feature_dim`` of a store row, ``weights_record``, ``load(image, key)`` (CPU work, in loader
workers), ``collate(items)``, ``__call__(batch) -> arrays of store rows``, and optionally ``check(keys)`` (raise
when an input it needs for one of them is missing: given boxes). This module is the run loop around it:
image decoding with clear errors, batching, resumable atomic writing, progress.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from features.config import REGION_HEADS, STAGES, ExtractorConfig, extractor_module
from features.images import ImageError, load_rgb
from features.store.writer import StoreWriter
from pipeline.config import defaults
from pipeline.device import pick_device
from pipeline.errors import InputError
from pipeline.manifest import read_manifest

STAGE = defaults("features")  # the config schema holds every default


@dataclass
class RunOptions:
    batch_size: int = STAGE["batch_size"]
    num_workers: int = STAGE["num_workers"]
    device: str = STAGE["device"]
    dtype: str = STAGE["dtype"]
    compression: str | None = None  # none | gzip | lzf | zstd (the config's "none" is None here)
    on_error: str = STAGE["on_error"]  # fail | skip
    limit: int | None = None


def build_extractor(config: ExtractorConfig, device: torch.device, boxes=None):
    """The extractor of ``config``'s kind, from its own module (imported by name: see features.config)."""
    return importlib.import_module(extractor_module(config.kind, config.boxes)).build(config, device, boxes)


class ImageDataset(Dataset):
    """(key, path) items -> decoded, extractor-prepared images; a bad file becomes an error entry, not a crash."""

    def __init__(self, items: list[tuple[int, Path]], extractor):
        self.items, self.extractor = items, extractor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        key, path = self.items[index]
        try:
            image = load_rgb(path)
        except ImageError as error:
            return {"key": key, "error": str(error)}
        try:
            return {"key": key, **self.extractor.load(image, key)}
        except ImageError as error:  # decodable, but unusable by this extractor
            return {"key": key, "error": f"{path}: {error}"}

    def collate(self, items: list[dict]) -> dict:
        good = [item for item in items if "error" not in item]
        batch = {"errors": [{"image_id": item["key"], "reason": item["error"]} for item in items if "error" in item],
                 "keys": [item["key"] for item in good]}
        if good:
            batch.update(self.extractor.collate(good))
        return batch

    def __getstate__(self):  # loader workers started by pickling (spawn) need no copy of the network
        state = dict(self.__dict__)
        state["extractor"] = copy.copy(self.extractor)
        vars(state["extractor"]).pop("model", None)
        return state


def shard_slice(count: int, shard: int, num_shards: int) -> slice:
    """Contiguous slice ``shard`` of ``num_shards`` near-equal slices of ``count`` items."""
    if not 0 <= shard < num_shards:
        raise InputError(f"shard {shard} is not in [0, {num_shards})")
    size = -(-count // num_shards)
    return slice(shard * size, min((shard + 1) * size, count))


def extract(manifest: str | Path, image_root: str | Path, out: str | Path, config: ExtractorConfig,
            options: RunOptions, boxes_json: str | Path | None = None, shard: int = 0, num_shards: int = 1) -> dict:
    """Extract features for every image of the manifest (or of one shard of it) into the store at ``out``.

    An interrupted run leaves a partial store beside ``out``; running the same command again extracts
    only the images not yet written.
    """
    started = time.time()
    image_root = Path(image_root)
    items = [(image.image_id, image_root / image.path) for image in read_manifest(manifest)]
    if options.limit:
        items = items[: options.limit]
    items = items[shard_slice(len(items), shard, num_shards)]
    device = pick_device(options.device)
    extractor = build_extractor(config, device, boxes_json)
    if hasattr(extractor, "check"):  # inputs it needs per image (given boxes): all present before the first one
        extractor.check([i for i, _ in items])
    meta = {
        "extractor": asdict(config),
        "weights_record": extractor.weights_record,
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "source": {"manifest": str(manifest), "image_root": str(image_root)},
        "storage": {"dtype": options.dtype, "compression": options.compression},
        "shard": {"index": shard, "count": num_shards},
    }
    writer = StoreWriter(out, config.kind, [i for i, _ in items], extractor.rows, extractor.feature_dim,
                         options.dtype, options.compression, meta)
    todo_ids = set(writer.missing_ids)
    todo = [item for item in items if item[0] in todo_ids]
    dataset = ImageDataset(todo, extractor)
    loader = DataLoader(dataset, batch_size=options.batch_size, num_workers=options.num_workers,
                        collate_fn=dataset.collate,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    errors: list[dict] = []
    done = 0
    with torch.inference_mode(), tqdm(total=len(todo), unit="img", desc=f"{config.kind} features",
                                                file=sys.stderr, mininterval=5) as progress:
        for batch in loader:
            errors += batch["errors"]
            failing = errors and options.on_error == "fail"  # keep decoding only to name every bad file
            if batch["keys"] and not failing:
                writer.write(batch["keys"], **extractor(batch))
                done += len(batch["keys"])
            progress.update(len(batch["keys"]) + len(batch["errors"]))
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


# ------------------------------------------------------------------------------------------------ command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["grid", "regions"], required=True)
    parser.add_argument("--manifest", required=True, help="image manifest JSON (python -m captioner image-manifest)")
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--boxes", help="given-boxes JSON ({image_id: {boxes: [[x1,y1,x2,y2],...]}})")
    config = {f.name: f.default for f in fields(ExtractorConfig) if f.name != "kind"}  # defaults: the schema's
    parser.add_argument("--backbone", default=config["backbone"])
    parser.add_argument("--weights", default=config["weights"])
    parser.add_argument("--image-size", type=int, default=config["image_size"])
    parser.add_argument("--grid-size", type=int, default=config["grid_size"])
    parser.add_argument("--stage", choices=STAGES, default=config["stage"],
                        help="grid: the trunk's last stage (layer3 = res4, stride 16)")
    parser.add_argument("--head", choices=REGION_HEADS, default=config["head"],
                        help="regions from given boxes: res5 on 14x14 RoIs, or res4 averaged over the box")
    parser.add_argument("--min-size", type=int, default=config["min_size"])
    parser.add_argument("--max-size", type=int, default=config["max_size"])
    parser.add_argument("--max-boxes", type=int, default=config["max_boxes"])
    parser.add_argument("--box-source", choices=["given", "detector"], default=config["boxes"],
                        help="regions: pool --boxes, or detect with the bottom-up Faster R-CNN")
    parser.add_argument("--backend", choices=["torchvision", "detectron2"], default=config["backend"],
                        help="detector implementation (detectron2 is optional and installed separately)")
    parser.add_argument("--detectron2-config", default=config["detectron2_config"],
                        help="detectron2 backend: the model's config file")
    parser.add_argument("--min-boxes", type=int, default=config["min_boxes"], help="detector: BUTD lower clamp")
    parser.add_argument("--conf-thresh", type=float, default=config["conf_thresh"],
                        help="detector: BUTD class-score threshold")
    parser.add_argument("--nms-thresh", type=float, default=config["nms_thresh"], help="detector: BUTD per-class NMS IoU")
    parser.add_argument("--pre-nms-top-n", type=int, default=config["pre_nms_top_n"],
                        help="detector: RPN proposals before NMS")
    parser.add_argument("--post-nms-top-n", type=int, default=config["post_nms_top_n"],
                        help="detector: RPN proposals kept")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=config["precision"],
                        help="regions: the trunk's arithmetic; boxes, RoI pooling and the head stay fp32")
    parser.add_argument("--seed", type=int, default=config["seed"], help="the seed of weights none")
    options = {f.name: f.default for f in fields(RunOptions)}
    parser.add_argument("--batch-size", type=int, default=options["batch_size"])
    parser.add_argument("--num-workers", type=int, default=options["num_workers"])
    parser.add_argument("--threads", type=int, default=STAGE["threads"], help="torch CPU threads")
    parser.add_argument("--device", default=options["device"])
    parser.add_argument("--dtype", choices=["float16", "float32"], default=options["dtype"])
    parser.add_argument("--compression", choices=["gzip", "lzf", "zstd"], default=options["compression"])
    parser.add_argument("--on-error", choices=["fail", "skip"], default=options["on_error"])
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (smoke runs)")
    parser.add_argument("--shard", type=int, default=0, help="which contiguous slice of the images to extract")
    parser.add_argument("--num-shards", type=int, default=1)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    config = ExtractorConfig(kind=args.kind, backbone=args.backbone, weights=args.weights,
                             image_size=args.image_size, grid_size=args.grid_size, stage=args.stage, head=args.head,
                             min_size=args.min_size, max_size=args.max_size, max_boxes=args.max_boxes, seed=args.seed,
                             boxes=args.box_source, min_boxes=args.min_boxes, conf_thresh=args.conf_thresh,
                             nms_thresh=args.nms_thresh, pre_nms_top_n=args.pre_nms_top_n,
                             post_nms_top_n=args.post_nms_top_n, backend=args.backend, precision=args.precision,
                             detectron2_config=args.detectron2_config)
    options = RunOptions(batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                         dtype=args.dtype, compression=args.compression, on_error=args.on_error, limit=args.limit)
    extract(args.manifest, args.image_root, args.out, config, options, boxes_json=args.boxes,
            shard=args.shard, num_shards=args.num_shards)
