"""``regions.backend: detectron2`` for real: a standard detectron2 C4 model through ``python -m features job extract``.

Needs a detectron2 checkout kept *outside* this repository (v0.2.1, be792b9, is what MILVLG pins; --detectron2),
imported without compiled ops by :mod:`benchmarks.reference.detectron2_shim`, and a Python with detectron2's pure-Python
dependencies (see ``benchmarks/reference/compare_milvlg.py``).

1. Build the config's model (default ``COCO-Detection/faster_rcnn_R_50_C4_3x.yaml``) with random weights, seeded:
   detectron2's initialisation, random norm scales/shifts with running statistics measured on a calibration image,
   and class biases that make the background column recognisable: background +2, "person" (class 0) +4, the other
   79 classes 0, so a misplaced background column would show (it would rank as an object class, "person" would
   vanish as if it were the background).
2. Save the weights as a .pth, run ``python -m features job extract`` (regions, boxes: detector, backend:
   detectron2; in this process, so the shim applies) on synthetic images, read the store back.
3. Check each image against detectron2's own inference of the same model and input (``model.inference`` with
   SCORE_THRESH_TEST 0): the best region's score and class must be its best detection's (its top-scoring
   detection always survives its NMS; its scores are the same softmax columns without the background).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import append_results  # noqa: E402
from benchmarks.compare_milvlg import calibrate_norms, synthetic_image  # noqa: E402
from benchmarks.reference.detectron2_shim import install_detectron2  # noqa: E402
from pipeline.manifest import ManifestImage, write_manifest  # noqa: E402

SIZES = [(427, 640), (640, 427), (480, 640)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectron2", type=Path, required=True, help="detectron2 checkout (v0.2.1, be792b9)")
    parser.add_argument("--config", default="configs/COCO-Detection/faster_rcnn_R_50_C4_3x.yaml",
                        help="a C4 config, relative to the checkout")
    parser.add_argument("--images", type=int, default=len(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-results", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    install_detectron2(args.detectron2)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from PIL import Image

    import features.__main__ as features_cli
    from features.detectron2_backend import Detectron2Detector, load_config
    from features.images import load_rgb
    from features.store.reader import FeatureStore

    config_file = str((args.detectron2 / args.config).resolve())
    cfg = load_config(config_file)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # detectron2's own inference below: every score counts
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 6000, 300  # what the backend sets
    cfg.freeze()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="detectron2-backend-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(args.seed)
        model = build_model(cfg).eval()
        calibration = synthetic_image(600, 800, np.random.default_rng(args.seed + 1000))

        def forward(bgr):
            tensor = torch.as_tensor(np.ascontiguousarray(bgr.transpose(2, 0, 1))).float()
            with torch.no_grad():
                model.inference([{"image": tensor, "height": bgr.shape[0], "width": bgr.shape[1]}])

        calibrate_norms(model, lambda: forward(calibration[:, :, ::-1]), args.seed)
        predictor = model.roi_heads.box_predictor
        background = predictor.cls_score.bias.shape[0] - 1  # detectron2: the last column
        with torch.no_grad():
            predictor.cls_score.bias[background] = 2.0
            predictor.cls_score.bias[0] = 4.0
        weights = tmp / "random-r50-c4.pth"
        torch.save({"model": model.state_dict()}, weights)

        images, records = tmp / "images", []
        images.mkdir()
        for i, (height, width) in enumerate(SIZES[: args.images]):
            Image.fromarray(synthetic_image(height, width, rng)).save(images / f"{i}.png")
            records.append(ManifestImage(image_id=i, path=f"{i}.png", split="test"))
        write_manifest(tmp / "manifest.json", records)
        store = tmp / "regions.h5"
        started = time.perf_counter()
        spec = {"kind": "regions",
                "store": {"num_workers": 0, "batch_size": 1, "device": "cpu", "dtype": "float32"},
                "extractor": {"boxes": "detector", "backend": "detectron2", "detectron2_config": config_file,
                              "weights": str(weights)}}
        code = features_cli.main(["job", "extract", "--spec", json.dumps(spec), "--manifest", str(tmp / "manifest.json"),
                                  "--image-root", str(images), "--out", str(store), "--threads", str(args.threads)])
        wall = time.perf_counter() - started
        if code:
            raise SystemExit(f"python -m features job extract failed ({code})")
        found = FeatureStore(store)
        data = found.gather(found.image_ids)
        meta = found.meta

        # detectron2's own inference on the input the backend gives it
        reference = build_model(cfg).eval()
        DetectionCheckpointer(reference).load(str(weights))
        backend = Detectron2Detector(config_file, str(weights), 600, 1000, 0.3, 0.2, 10, 100, torch.device("cpu"))
        rows = []
        for row, record in enumerate(records):
            rgb = np.asarray(load_rgb(images / record.path))
            inputs, _ = backend._inputs(rgb)
            with torch.no_grad():
                instances = reference.inference([inputs])[0]["instances"]
            best = int(instances.scores.argmax())
            n = int(data["num_boxes"][row])
            boxes = data["boxes"][row, :n]
            top = int(data["box_scores"][row, :n].argmax())  # rows are in BUTD's order, not by score
            rows.append({
                "hw": tuple(int(v) for v in data["image_hw"][row]), "num_boxes": n,
                "class_ids": sorted(set(data["class_ids"][row, :n].tolist())),
                "scores": (float(data["box_scores"][row, :n].min()), float(data["box_scores"][row, :n].max())),
                "top_score_diff": abs(float(data["box_scores"][row, top]) - float(instances.scores[best])),
                "top_class": (int(data["class_ids"][row, top]), int(instances.pred_classes[best])),
                "inside": bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] <= rgb.shape[1]).all()
                               and (boxes[:, 3] <= rgb.shape[0]).all()),
                "features": (tuple(data["features"].shape[1:]), float(np.abs(data["features"][row, :n]).max())),
            })
            print(rows[-1], file=sys.stderr)

    lines = [
        f"`python -m features job extract` (regions, boxes: detector, backend: detectron2) in-process on "
        f"{len(records)} synthetic PNGs, detectron2 v0.2.1 from a checkout (compiled ops stubbed by "
        f"`benchmarks/reference/detectron2_shim.py`), `{args.config}`, CPU fp32, {args.threads} threads, regions defaults "
        "(600/1000, RPN 6000 -> 300, NMS 0.3, conf 0.2, 10-100 boxes); random weights (seed "
        f"{args.seed}, norm statistics measured on a calibration image) saved as a .pth, class biases: background "
        "(last column) +2, person (column 0) +4; background position found by the backend: "
        f"{'first' if backend.background_first else 'last'}; weights record in the store: "
        f"sha256 {meta['weights_record']['sha256'][:12]}…; {wall:.0f} s for the extract command", "",
        "| image (h x w) | regions | class ids stored | scores min / max | best region vs detectron2's best detection: "
        "abs Δ score, class (ours / detectron2, both 0-based) | boxes inside the image | features (rows x dim), max abs |",
        "|---|---:|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['hw'][0]} x {r['hw'][1]} | {r['num_boxes']} | {r['class_ids']} | "
                     f"{r['scores'][0]:.3f} / {r['scores'][1]:.3f} | {r['top_score_diff']:.1e}, "
                     f"{r['top_class'][0]} / {r['top_class'][1]} | {'yes' if r['inside'] else 'NO'} | "
                     f"{r['features'][0][0]} x {r['features'][0][1]}, {r['features'][1]:.2f} |")
    if args.no_results:
        print("\n".join(lines))
    else:
        append_results("detectron2 backend: a standard C4 model through the extract command", lines)


if __name__ == "__main__":
    main()
