"""Command line: ``python -m features extract ...``, ``pretrain ...``, ``merge ...``, ``import-m2 ...`` and
``verify STORE``."""

from __future__ import annotations

import argparse
import sys


def _extract(args) -> None:
    import torch

    from features.extract import ExtractorConfig, RunOptions, extract

    torch.set_num_threads(args.threads)
    config = ExtractorConfig(kind=args.kind, backbone=args.backbone, weights=args.weights,
                             image_size=args.image_size, grid_size=args.grid_size, min_size=args.min_size,
                             max_size=args.max_size, max_boxes=args.max_boxes, seed=args.seed,
                             boxes=args.box_source, min_boxes=args.min_boxes, conf_thresh=args.conf_thresh,
                             nms_thresh=args.nms_thresh, pre_nms_top_n=args.pre_nms_top_n,
                             post_nms_top_n=args.post_nms_top_n, backend=args.backend,
                             detectron2_config=args.detectron2_config)
    options = RunOptions(batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                         dtype=args.dtype, compression=args.compression, on_error=args.on_error, limit=args.limit)
    extract(args.karpathy_json, args.image_root, args.out, config, options, boxes_json=args.boxes,
            shard=args.shard, num_shards=args.num_shards)


def _merge(args) -> None:
    from features.store import merge_stores

    merge_stores(args.shards, args.out)
    print(f"merged {len(args.shards)} shards -> {args.out}", file=sys.stderr)


def _import_m2(args) -> None:
    from features.import_m2 import import_reference

    stats = import_reference(args.source, args.out, args.karpathy_json, args.max_boxes, args.dtype)
    print(f"imported {stats['images']} images -> {args.out}", file=sys.stderr)


def _pretrain(args) -> None:
    from features.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed, precision=args.precision,
                            device=args.device, threads=args.threads, num_workers=args.num_workers)
    report = pretrain(args.karpathy_json, args.image_root, args.boxes, args.out, config,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    last = report["history"][-1]
    print(f"backbone -> {args.out}: {report['train_images']} training images, {len(report['labels'])} labels, "
          f"final loss {last['loss']:.3f}", file=sys.stderr)


def _verify(args) -> int:
    from captioner import karpathy
    from features.store import FeatureStore, StoreError, nonfinite_rows

    try:
        store = FeatureStore(args.store)
    except StoreError as error:
        print(f"FAIL {error}")
        return 1
    problems = []
    bad_ids, out_of_range = [], []
    for start in range(0, len(store), 512):  # in slices: a COCO store does not fit in memory
        ids = store.image_ids[start:start + 512]
        data = store.gather(ids, require_finite=False)  # count them all instead of stopping at the first
        feats = data["features"]
        bad_ids += ids[nonfinite_rows(feats)].tolist()
        if store.kind == "regions":
            nb = data["num_boxes"]
            out_of_range += ids[(nb < 0) | (nb > store.rows_per_image)].tolist()
    if bad_ids:
        problems.append(f"non-finite values for {len(bad_ids)} image(s), ids {bad_ids[:10]}")
    if out_of_range:
        problems.append(f"num_boxes out of range for ids {out_of_range[:10]}")
    if args.split_file:
        wanted = {image.image_id for image in karpathy.load(args.split_file).images}
        missing = sorted(wanted - set(store.image_ids.tolist()))
        if missing:
            problems.append(f"{len(missing)} ids of {args.split_file} missing from the store, e.g. {missing[:10]}")
    print(f"{args.store}: {store.kind}, {len(store)} images, rows {store.rows_per_image} x dim {store.feature_dim}, "
          f"dtype {store.meta.get('dtype')}, {len(store.meta.get('errors', []))} recorded errors")
    for problem in problems:
        print(f"FAIL {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m features", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ext = sub.add_parser("extract", help="extract grid or region features into a store (.h5 or .zarr)")
    ext.add_argument("--kind", choices=["grid", "regions"], required=True)
    ext.add_argument("--karpathy-json", required=True)
    ext.add_argument("--image-root", required=True)
    ext.add_argument("--out", required=True)
    ext.add_argument("--boxes", help="given-boxes JSON ({image_id: {boxes: [[x1,y1,x2,y2],...]}})")
    ext.add_argument("--backbone", default="resnet101")
    ext.add_argument("--weights", default="none")
    ext.add_argument("--image-size", type=int, default=448)
    ext.add_argument("--grid-size", type=int, default=14)
    ext.add_argument("--min-size", type=int, default=600)
    ext.add_argument("--max-size", type=int, default=1000)
    ext.add_argument("--max-boxes", type=int, default=100)
    ext.add_argument("--box-source", choices=["given", "detector"], default="given",
                     help="regions: pool --boxes, or detect with the bottom-up Faster R-CNN")
    ext.add_argument("--backend", choices=["torchvision", "detectron2"], default="torchvision",
                     help="detector implementation (detectron2 is optional and installed separately)")
    ext.add_argument("--detectron2-config", default="", help="detectron2 backend: the model's config file")
    ext.add_argument("--min-boxes", type=int, default=10, help="detector: BUTD lower clamp")
    ext.add_argument("--conf-thresh", type=float, default=0.2, help="detector: BUTD class-score threshold")
    ext.add_argument("--nms-thresh", type=float, default=0.3, help="detector: BUTD per-class NMS IoU")
    ext.add_argument("--pre-nms-top-n", type=int, default=6000, help="detector: RPN proposals before NMS")
    ext.add_argument("--post-nms-top-n", type=int, default=300, help="detector: RPN proposals kept")
    ext.add_argument("--seed", type=int, default=0)
    ext.add_argument("--batch-size", type=int, default=32)
    ext.add_argument("--num-workers", type=int, default=2)
    ext.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ext.add_argument("--device", default="auto")
    ext.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ext.add_argument("--compression", choices=["gzip", "lzf", "zstd"], default=None)
    ext.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    ext.add_argument("--limit", type=int, default=None, help="only the first N images (smoke runs)")
    ext.add_argument("--shard", type=int, default=0, help="which contiguous slice of the images to extract")
    ext.add_argument("--num-shards", type=int, default=1)

    pre = sub.add_parser("pretrain", help="train a ResNet trunk on the training split's labelled boxes "
                                          "(offline stand-in for ImageNet weights)")
    pre.add_argument("--karpathy-json", required=True)
    pre.add_argument("--image-root", required=True)
    pre.add_argument("--boxes", required=True, help="JSON {image_id: {boxes: [[x1,y1,x2,y2],...], labels: [...]}}")
    pre.add_argument("--out", required=True, help="the trunk's state_dict (.pt); a JSON report goes beside it")
    pre.add_argument("--backbone", default="resnet18")
    pre.add_argument("--image-size", type=int, default=256)
    pre.add_argument("--epochs", type=int, default=8)
    pre.add_argument("--batch-size", type=int, default=32)
    pre.add_argument("--lr", type=float, default=1e-3)
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    pre.add_argument("--device", default="auto")
    pre.add_argument("--threads", type=int, default=1)
    pre.add_argument("--num-workers", type=int, default=0)

    mer = sub.add_parser("merge", help="merge shard stores into one store")
    mer.add_argument("--out", required=True)
    mer.add_argument("shards", nargs="+")

    imp = sub.add_parser("import-m2", help="import a coco_detections.hdf5 (M² reference layout) into a store")
    imp.add_argument("source")
    imp.add_argument("--out", required=True)
    imp.add_argument("--karpathy-json", required=True, help="the images to import (every one must be present)")
    imp.add_argument("--max-boxes", type=int, default=50)
    imp.add_argument("--dtype", choices=["float16", "float32"], default="float16")

    ver = sub.add_parser("verify", help="check a store: shapes, NaN/Inf, num_boxes, missing ids")
    ver.add_argument("store")
    ver.add_argument("--split-file", help="Karpathy JSON whose ids must all be present")

    args = parser.parse_args(argv)
    from captioner.cli_errors import run_cleanly

    command = {"extract": _extract, "pretrain": _pretrain, "merge": _merge, "import-m2": _import_m2,
               "verify": _verify}[args.command]
    return run_cleanly(command, args)


if __name__ == "__main__":
    sys.exit(main())
