"""Our bottom-up-attention detector against MILVLG/bottom-up-attention.pytorch on the same random weights and images.

Needs checkouts kept *outside* this repository (never committed here): MILVLG/bottom-up-attention.pytorch
(--milvlg) and facebookresearch/detectron2 at v0.2.1, be792b9, the commit MILVLG pins (--detectron2). Neither is
compiled nor edited: :mod:`benchmarks.reference.detectron2_shim` stubs the compiled ops at run time. Run it with a Python that
has detectron2 v0.2.1's pure-Python dependencies (fvcore, iopath, yacs, pycocotools, termcolor, tabulate,
cloudpickle) and opencv besides this project's own (a separate venv: they are not project dependencies).

1. Build MILVLG's ``GeneralizedBUARCNN`` from its own code and ``configs/caffe/test-caffe-r101.yaml`` on the CPU in
   fp32 (extractor mode 1, as its extract script runs it). Random weights, seeded: detectron2's initialisation of
   the convolutions, random norm scales/shifts, and running statistics measured on a calibration image (so that
   activations stay O(1) through 101 layers and the RPN proposes boxes all over the image, not at its border);
   the py-faster-rcnn anchors in the anchor buffer, as the published checkpoint holds them. The class scores are
   scaled (the factor searched on the test images) so that some images have boxes over the 0.2 threshold and
   others fall back to the 10-box minimum.
2. Save the weights in the published 536-key layout (no ``num_batches_tracked`` of res4/res5), load that file into
   a fresh MILVLG model with its ``DetectionCheckpointer`` and into our ``BottomUpDetector`` with
   ``load_detectron2_checkpoint``.
3. Per synthetic image (4 colour sizes as PNG, a greyscale JPEG, a CMYK JPEG), each pipeline decodes the file its
   own way (MILVLG: ``cv2.imread``, BGR; ours: ``features.images.load_rgb``, as the extractor does) and runs; compared:
   the decoded pixels, the preprocessed tensor and scale (MILVLG: ``extract_utils.get_image_blob``), res4, the 300
   proposals and their order, the pooled 2048-d features, the class probabilities, and the saved regions (MILVLG:
   ``extract_utils.save_roi_features``: per-class NMS 0.3, conf 0.2, 10-100 boxes; ours: ``detect``). Where the
   proposals differ, our RPN and head are also run on MILVLG's res4/proposals, to tell the stages apart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import append_results  # noqa: E402
from benchmarks.reference.detectron2_shim import install_detectron2, install_milvlg  # noqa: E402
from features.butd import per_class_nms_keep, select_boxes  # noqa: E402
from features.detector import (  # noqa: E402
    BottomUpDetector,
    DetectorConfig,
    caffe_cell_anchors,
    caffe_preprocess,
    load_detectron2_checkpoint,
)
from features.images import load_rgb  # noqa: E402

IMAGES = [  # name, height, width, kind
    ("colour_427x640.png", 427, 640, "RGB"),
    ("colour_640x427.png", 640, 427, "RGB"),
    ("colour_500x375.png", 500, 375, "RGB"),
    ("colour_480x640.png", 480, 640, "RGB"),
    ("grey_375x500.jpg", 375, 500, "L"),
    ("cmyk_424x640.jpg", 424, 640, "CMYK"),
]
CONFIG = "configs/caffe/test-caffe-r101.yaml"


def synthetic_image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour fields, flat shapes with edges and fine noise: something for every filter to respond to."""
    import cv2

    coarse = rng.random((height // 24 + 2, width // 24 + 2, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) * 200
    for _ in range(12):
        colour = rng.integers(0, 256, 3).tolist()
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(20, width // 2)), int(rng.integers(20, height // 2))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, -1)
        else:
            cv2.ellipse(image, (x, y), (w // 2, h // 2), float(rng.integers(0, 180)), 0, 360, colour, -1)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(folder: Path, seed: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for name, height, width, kind in IMAGES:
        image = Image.fromarray(synthetic_image(height, width, rng)).convert(kind)
        path = folder / name
        image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ MILVLG side
def milvlg_config(bua, milvlg: Path):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    bua.caffe.add_bottom_up_attention_config(cfg, True)  # what extract_features.py's add_config does in caffe mode
    cfg.merge_from_file(str(milvlg / CONFIG))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BUA.EXTRACT_FEATS", True, "MODEL.BUA.EXTRACTOR.MODE", 1])
    cfg.freeze()
    return cfg


def milvlg_forward(model, extract_utils, cfg, bgr: np.ndarray, stop_after_res4: bool = False) -> dict:
    """``GeneralizedBUARCNN.inference`` in extract mode, stage by stage (the same calls, kept apart to compare)."""
    blob = extract_utils.get_image_blob(bgr, cfg.MODEL.PIXEL_MEAN)
    with torch.no_grad():
        images = model.preprocess_image([blob])
        features = model.backbone(images.tensor)
        if stop_after_res4:
            return {"blob": blob, "res4": features["res4"][0]}
        proposals, _ = model.proposal_generator(images, features, None)
        boxes, scores, pooled, attributes = model.roi_heads(images, features, proposals, None)
    return {"blob": blob, "images": images, "res4": features["res4"][0], "proposals": proposals,
            "boxes": [b.tensor for b in boxes], "scores": list(scores), "pooled": list(pooled),
            "attributes": list(attributes)}


def milvlg_probs(model, run: dict) -> torch.Tensor:
    """The class probabilities of the (final) box predictor on the pooled features, as its roi_heads computes them."""
    from bua.caffe.modeling.fast_rcnn import BUACaffeFastRCNNOutputs

    heads = model.roi_heads
    with torch.no_grad():
        logits, deltas, _ = heads.box_predictor(run["pooled"][0], run["proposals"])
        outputs = BUACaffeFastRCNNOutputs(heads.box2box_transform, logits, deltas, run["proposals"],
                                          heads.smooth_l1_beta, run["images"].image_scales)
        return outputs.predict_probs()[0]


def calibrate_norms(model, forward, seed: int) -> None:
    """Random norm scales/shifts; running statistics measured on one input as it flows through ``forward()``
    (pre-hooks set each norm's mean/var from its own input before it normalises it), so activations stay O(1)."""
    from detectron2.layers import FrozenBatchNorm2d

    generator = torch.Generator().manual_seed(seed)
    hooks = []
    for norm in [m for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d))]:
        channels = norm.weight.shape[0]
        with torch.no_grad():
            norm.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
            norm.bias.copy_(torch.randn(channels, generator=generator) * 0.2)

        def measure(module, inputs):
            x = inputs[0].detach()
            module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
            module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

        hooks.append(norm.register_forward_pre_hook(measure))
    try:
        forward()
    finally:
        for hook in hooks:
            hook.remove()


def randomise(model, calibration_bgr: np.ndarray, extract_utils, cfg, seed: int) -> None:
    with torch.no_grad():  # first: the head's statistics are measured on the RoIs these anchors give
        dict(model.named_buffers())["proposal_generator.anchor_generator.cell_anchors.0"].copy_(caffe_cell_anchors())
    calibrate_norms(model, lambda: milvlg_forward(model, extract_utils, cfg, calibration_bgr), seed)
    # objectness logit differences (object - background) with std 2 on the calibration image: spread scores, yet
    # none saturated to exactly 1.0 (ties would make the proposal order depend on the sort algorithm)
    head = model.proposal_generator.rpn_head
    with torch.no_grad():
        run = milvlg_forward(model, extract_utils, cfg, calibration_bgr, stop_after_res4=True)
        logits = head.objectness_logits(torch.relu(head.conv(run["res4"][None])))
        logits = logits.view(1, 2, -1, *logits.shape[2:])
        factor = 2.0 / float((logits[:, 1] - logits[:, 0]).std())
        head.objectness_logits.weight.mul_(factor)
        head.objectness_logits.bias.mul_(factor)


def confident_counts(boxes: list, pooled: list, weight: torch.Tensor, factor: float) -> list[int]:
    counts = []
    for box, feature in zip(boxes, pooled):
        scores = (feature @ (weight * factor).t()).softmax(dim=-1)
        counts.append(int((select_boxes(box, scores, 0.3, 0.2, 0, 10**6).score >= 0.2).sum()))
    return counts


def pick_class_scale(runs: list[dict], weight: torch.Tensor) -> tuple[float, list[int]]:
    """The smallest factor on the class weights with one image under 10 confident boxes and one over 10."""
    boxes = [run["boxes"][0] / run["blob"]["im_scale"] for run in runs]
    pooled = [run["pooled"][0] for run in runs]
    best = (1.0, confident_counts(boxes, pooled, weight, 1.0))
    for factor in np.geomspace(1.25, 1000, 30):
        counts = confident_counts(boxes, pooled, weight, float(factor))
        if min(counts) < 10 <= max(counts):
            return float(factor), counts
        best = (float(factor), counts)
    return best


def published_layout(state: dict) -> dict:
    """The published checkpoint's keys: res4/res5 norms' num_batches_tracked are absent (536 of 616)."""
    return {k: v.clone() for k, v in state.items()
            if not (k.endswith("num_batches_tracked") and (".res4." in k or ".res5." in k))}


# --------------------------------------------------------------------------------------------------- ours
def ours_forward(detector: BottomUpDetector, rgb: np.ndarray, preprocessed=None) -> dict:
    """``detect`` as the extractor calls it (or on a given ``(tensor, scale)``), with the intermediate results
    captured on the way."""
    captured = {}
    hooks = [detector.res4.register_forward_hook(lambda m, i, o: captured.__setitem__("res4", o[0])),
             detector.res5.register_forward_hook(lambda m, i, o: captured.__setitem__("pooled", o.mean(dim=(2, 3)))),
             detector.cls_score.register_forward_hook(lambda m, i, o: captured.__setitem__("probs", o.softmax(-1)))]
    proposals = detector.proposals

    def capture_proposals(*args):
        captured["proposals"] = proposals(*args)
        return captured["proposals"]

    detector.proposals = capture_proposals
    try:
        tensor, scale = preprocessed or caffe_preprocess(rgb, detector.config.min_size, detector.config.max_size)
        found = detector.detect(tensor, scale, rgb.shape[:2])
    finally:
        del detector.proposals
        for hook in hooks:
            hook.remove()
    return {"tensor": tensor, "scale": scale, **captured, "found": found}


# ------------------------------------------------------------------------------------------------ compare
def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def same_rows(a: torch.Tensor, b: torch.Tensor, tol: float = 0.0) -> int:
    """Rows equal (within ``tol`` px in every coordinate) at the same position."""
    n = min(len(a), len(b))
    return int(((a[:n].double() - b[:n].double()).abs().amax(dim=1) <= tol).sum()) if n else 0


MATCH_PX = 0.5  # "the same box" when the trunks' float rounding has moved it by less than this


def match(ours: torch.Tensor, theirs: torch.Tensor, tol: float = MATCH_PX) -> torch.Tensor:
    """For each of their boxes the index of our box at most ``tol`` px away in every coordinate (-1: none)."""
    if not len(ours) or not len(theirs):
        return torch.full((len(theirs),), -1)
    distance = (theirs[:, None, :].double() - ours[None, :, :].double()).abs().amax(dim=2)
    best, index = distance.min(dim=1)
    return torch.where(best <= tol, index, torch.full_like(index, -1))


def compare_regions(found: dict, saved, info: dict, tol: float) -> dict:
    """Our detect() output against MILVLG's saved npz: boxes matched within ``tol`` px, then per matched box."""
    their_boxes = torch.from_numpy(saved["bbox"])
    index = match(found["boxes"], their_boxes, tol)
    hit = index >= 0
    out = {"count": (int(saved["num_bbox"]), len(found["boxes"])), "matched": int(hit.sum()),
           "same_order": bool(len(their_boxes) == len(found["boxes"]) and torch.equal(index, torch.arange(len(index))))}
    if hit.any():
        at = index[hit]
        out["boxes_max"] = max_abs(their_boxes[hit], found["boxes"][at])
        out["features_max"] = max_abs(torch.from_numpy(saved["x"])[hit], found["features"][at])
        their_ids = torch.from_numpy(np.asarray(info["objects_id"]))[hit]
        their_conf = torch.from_numpy(np.asarray(info["objects_conf"]))[hit]
        out["ids_equal"] = int((found["class_id"][at] == their_ids).sum())
        out["conf_equal"] = int((found["score"][at] == their_conf).sum())
        out["conf_max"] = max_abs(found["score"][at], their_conf)
    return out


def compare_image(path: Path, theirs: dict, model, extract_utils, cfg, detector, backend, workdir: Path) -> dict:
    """``theirs``: MILVLG's stages on this image (milvlg_forward), run before the checkpoint round trip."""
    import cv2

    bgr = cv2.imread(str(path))  # MILVLG's decoding (extract_features_singlegpu.py)
    rgb = np.asarray(load_rgb(path))  # ours (features.extract -> features.images.load_rgb)
    same_pixels = np.ascontiguousarray(bgr[:, :, ::-1])
    decode = np.abs(same_pixels.astype(np.int16) - rgb.astype(np.int16))
    row = {"image": path.name, "hw": rgb.shape[:2], "decode_max": int(decode.max()),
           "decode_mean": float(decode.mean()), "decode_share": float((decode > 0).any(axis=2).mean())}

    # MILVLG: class probabilities of the loaded model, selection and npz by its save_roi_features
    theirs = dict(theirs, probs=milvlg_probs(model, theirs))
    extract_utils.save_roi_features(SimpleNamespace(output_dir=str(workdir)), cfg, path.name, bgr, theirs["blob"],
                                    theirs["boxes"], [theirs["probs"]], theirs["pooled"], theirs["attributes"])
    saved = np.load(workdir / (path.name.split(".")[0] + ".npz"), allow_pickle=True)
    info = saved["info"].item()
    blob, their_props = theirs["blob"], theirs["boxes"][0]
    row["confident"] = int(saved["num_bbox"])

    # A. the same decoded pixels, each pipeline preprocessing them (what the extractor does end to end)
    started = time.perf_counter()
    a = ours_forward(detector, same_pixels)
    row["ours_s"] = time.perf_counter() - started
    row["size"] = (tuple(blob["image"].shape[1:]), tuple(a["tensor"].shape[1:]))
    row["scale_equal"] = blob["im_scale"] == a["scale"]
    row["pre_max"] = max_abs(blob["image"], a["tensor"])
    row["a_res4_max"] = max_abs(theirs["res4"], a["res4"])
    row["res4_scale"] = float(theirs["res4"].abs().max())
    row["a_props"] = (len(their_props), len(a["proposals"]), same_rows(their_props, a["proposals"]),
                      same_rows(their_props, a["proposals"], MATCH_PX),
                      int((match(a["proposals"], their_props) >= 0).sum()))
    row["a_regions"] = compare_regions(a["found"], saved, info, MATCH_PX)

    # B. MILVLG's preprocessed tensor into our detector: everything after the resize
    b = ours_forward(detector, same_pixels, (blob["image"].float(), blob["im_scale"]))
    row["b_res4_max"] = max_abs(theirs["res4"], b["res4"])
    row["b_props"] = (len(b["proposals"]), same_rows(their_props, b["proposals"]),
                      max_abs(their_props, b["proposals"]) if len(their_props) == len(b["proposals"]) else None)
    identical = len(their_props) == len(b["proposals"]) and torch.equal(their_props, b["proposals"])
    if identical:
        row["pooled_max"], row["pooled_on"] = max_abs(theirs["pooled"][0], b["pooled"]), "B"
        row["probs_max"] = max_abs(theirs["probs"], b["probs"])
        row["argmax_equal"] = int((theirs["probs"][:, 1:].argmax(1) == b["probs"][:, 1:].argmax(1)).sum())
    else:  # our head on their res4 and proposals
        with torch.no_grad():
            pooled = detector.box_features(theirs["res4"][None], their_props)
        row["pooled_max"], row["pooled_on"] = max_abs(theirs["pooled"][0], pooled), "their res4 + proposals"
    row["pooled_scale"] = float(theirs["pooled"][0].abs().max())
    row["b_regions"] = compare_regions(b["found"], saved, info, 0.0)

    # C. our RPN on their res4
    with torch.no_grad():
        rpn = detector.proposals(theirs["res4"][None], tuple(blob["image"].shape[1:]), blob["im_scale"])
    row["c_rpn"] = (len(rpn), same_rows(their_props, rpn))
    # D. the rule alone: MILVLG's proposals and probabilities into our select_boxes
    rule = select_boxes(their_props / blob["im_scale"], theirs["probs"])
    found = {"boxes": (their_props / blob["im_scale"])[rule.index], "features": theirs["pooled"][0][rule.index],
             "class_id": rule.class_id, "score": rule.score}
    row["d_rule"] = compare_regions(found, saved, info, 0.0)
    # ties in max_conf make the 10/100 clamp depend on the sort (MILVLG: torch.argsort, ours: stable)
    object_scores = theirs["probs"][:, 1:]
    keep = per_class_nms_keep(their_props / blob["im_scale"], object_scores, 0.3, legacy=True)
    max_conf = torch.where(keep, object_scores, torch.zeros_like(object_scores)).max(dim=1).values
    row["ties"] = len(max_conf) - len(torch.unique(max_conf))

    if row["decode_max"]:  # end to end, each its own decoding
        own = ours_forward(detector, rgb)
        row["pre_max_own_decode"] = max_abs(blob["image"], own["tensor"])
        row["own_regions"] = compare_regions(own["found"], saved, info, MATCH_PX)
    if backend is not None:  # regions.backend: detectron2 running MILVLG's own modules on the same checkpoint
        with torch.no_grad():
            via = backend.detect(same_pixels)
        row["backend"] = compare_regions(via, saved, info, MATCH_PX)
        row["backend_vs_ours"] = (len(via["boxes"]), len(a["found"]["boxes"]),
                                  bool(len(via["boxes"]) == len(a["found"]["boxes"])
                                       and torch.equal(via["boxes"], a["found"]["boxes"])),
                                  max_abs(via["features"], a["found"]["features"])
                                  if len(via["boxes"]) == len(a["found"]["boxes"]) else None)
    return row


def fmt(value, digits=1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "0" if value == 0 else f"{value:.{digits}e}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--milvlg", type=Path, required=True, help="bottom-up-attention.pytorch checkout")
    parser.add_argument("--detectron2", type=Path, required=True, help="detectron2 checkout at v0.2.1 (be792b9)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="only the images whose names contain one of these (smoke runs)")
    parser.add_argument("--no-backend", action="store_true",
                        help="skip features.detectron2_backend on MILVLG's config and checkpoint")
    parser.add_argument("--no-results", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    install_detectron2(args.detectron2)
    bua, extract_utils = install_milvlg(args.milvlg)
    import cv2
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = milvlg_config(bua, args.milvlg)
    with tempfile.TemporaryDirectory(prefix="compare-milvlg-") as tmp:
        workdir = Path(tmp)
        paths = [p for p in write_images(workdir, args.seed) if not args.only or any(s in p.name for s in args.only)]
        calibration = cv2.imread(str(write_images_calibration(workdir, args.seed)))
        torch.manual_seed(args.seed)
        model = build_model(cfg).eval()
        randomise(model, calibration, extract_utils, cfg, args.seed)
        print("MILVLG forward on all images (trunk, RPN and res5 are final here)", file=sys.stderr)
        first = [milvlg_forward(model, extract_utils, cfg, cv2.imread(str(p))) for p in paths]
        weight = model.roi_heads.box_predictor.cls_score.weight
        factor, counts = pick_class_scale(first, weight.detach())
        with torch.no_grad():
            weight.mul_(factor)
        state = published_layout(model.state_dict())
        checkpoint = workdir / "bua-random-r101.pth"
        torch.save({"model": state}, checkpoint)

        torch.manual_seed(args.seed + 1)  # other initial weights: everything must come from the file
        theirs = build_model(cfg).eval()
        DetectionCheckpointer(theirs).load(str(checkpoint))
        loaded = theirs.state_dict()
        differing = [k for k, v in model.state_dict().items()
                     if not k.endswith("num_batches_tracked") and not torch.equal(v, loaded[k])]
        if differing:
            raise SystemExit(f"MILVLG's loader did not restore {differing[:5]}")
        detector = BottomUpDetector(DetectorConfig()).eval()
        report = load_detectron2_checkpoint(detector, checkpoint)
        backend = None
        if not args.no_backend:
            from features.detectron2_backend import Detectron2Detector

            backend = Detectron2Detector(str(args.milvlg / CONFIG), str(checkpoint), 600, 1000, 0.3, 0.2, 10, 100,
                                         torch.device("cpu"))
        rows = []
        for path, run in zip(paths, first):
            print(f"comparing {path.name}", file=sys.stderr)
            rows.append(compare_image(path, run, theirs, extract_utils, cfg, detector, backend, workdir))
            print(rows[-1], file=sys.stderr)

    def regions(r: dict) -> str:
        text = f"{r['count'][0]} / {r['count'][1]}, {r['matched']} matched, order {'same' if r['same_order'] else 'differs'}"
        if "features_max" in r:
            text += (f"; boxes {fmt(r['boxes_max'])} px, features {fmt(r['features_max'])}, class ids equal "
                     f"{r['ids_equal']}, scores equal {r['conf_equal']} (max abs {fmt(r['conf_max'])})")
        return text

    lines = [
        f"MILVLG/bottom-up-attention.pytorch HEAD `GeneralizedBUARCNN` built from its own code and `{CONFIG}` on "
        f"detectron2 v0.2.1 (be792b9; compiled ops replaced at run time by `benchmarks/reference/detectron2_shim.py`), CPU fp32, "
        f"{args.threads} threads; random weights (seed {args.seed}: detectron2 init, random norm scales/shifts with "
        "running statistics measured on a calibration image, objectness logit differences scaled to std 2 there, "
        f"class weights x{factor:.3g} so that the images have {counts} regions over conf 0.2 before the 10-100 "
        f"clamp), saved in the published layout ({len(state)} keys), loaded by MILVLG's `DetectionCheckpointer` "
        "(bit-identical to the weights its trunk, RPN and res5 ran with) and by our `load_detectron2_checkpoint` "
        f"(unused: {len(report['unused_keys'])} attribute-head keys; anchors from the {report['anchors']}). MILVLG "
        "decodes with `cv2.imread`, we with `features.images.load_rgb`; A and B feed cv2's pixels to both. Boxes "
        f"'match' within {MATCH_PX} px in every coordinate (A) or exactly (B, D).", "",
        "| image | cv2 vs PIL decode: max / mean abs, pixels differing | resize: size, scale equal, max abs |"
        " A (each preprocesses): res4 max abs (max value); proposals MILVLG / ours, same rows exact / within 0.5 px, "
        "matched as a set | A: saved regions MILVLG / ours |",
        "|---|---|---|---|---|"]
    for r in rows:
        pre = f"{r['size'][0]}{'' if r['size'][0] == r['size'][1] else ' vs ' + str(r['size'][1])}, " \
              f"{'yes' if r['scale_equal'] else 'NO'}, {fmt(r['pre_max'])}"
        if "pre_max_own_decode" in r:
            pre += f" (from PIL's decode: {fmt(r['pre_max_own_decode'])})"
        props = f"{fmt(r['a_res4_max'])} ({r['res4_scale']:.0f}); {r['a_props'][0]} / {r['a_props'][1]}, " \
                f"{r['a_props'][2]} / {r['a_props'][3]}, {r['a_props'][4]}"
        lines.append(f"| {r['image']} | {r['decode_max']} / {r['decode_mean']:.2f}, {100 * r['decode_share']:.1f}% | "
                     f"{pre} | {props} | {regions(r['a_regions'])} |")
    lines += ["", "| image | B (MILVLG's resized tensor into ours): res4 max abs; proposals same rows of 300, max abs px |"
              " pooled 2048-d max abs (max value) | class probs max abs, same argmax | B: saved regions MILVLG / ours | "
              "C: our RPN on MILVLG's res4, same rows | D: our `select_boxes` on MILVLG's proposals + probs |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        pooled = f"{fmt(r['pooled_max'])} ({r['pooled_scale']:.0f})" + \
            ("" if r["pooled_on"] == "B" else " on MILVLG's res4 + proposals")
        probs = f"{fmt(r.get('probs_max'))}, {r.get('argmax_equal', '–')}"
        lines.append(f"| {r['image']} | {fmt(r['b_res4_max'])}; {r['b_props'][1]}, {fmt(r['b_props'][2])} | {pooled} "
                     f"| {probs} | {regions(r['b_regions'])} | {r['c_rpn'][1]} of {r['c_rpn'][0]} | "
                     f"{regions(r['d_rule'])} |")
    lines += ["", "- tied max_conf values among the 300 proposals (MILVLG's): " + ", ".join(
        f"{r['image']} {r['ties']}" for r in rows)]
    own = [r for r in rows if "own_regions" in r]
    if own:
        lines += ["", "- end to end with each pipeline's own decoding (cv2 vs PIL): " + "; ".join(
            f"{r['image']}: {regions(r['own_regions'])}" for r in own)]
    if backend is not None:
        lines += ["", f"- `regions.backend: detectron2` (`features.detectron2_backend`; background column found: "
                  f"{'first' if backend.background_first else 'last'}) on `{CONFIG}` and the same checkpoint, cv2's "
                  "pixels: " + "; ".join(
                      f"{r['image']}: vs MILVLG {regions(r['backend'])}; vs our torchvision backend (A) "
                      f"{r['backend_vs_ours'][0]} / {r['backend_vs_ours'][1]} regions, boxes "
                      f"{'identical' if r['backend_vs_ours'][2] else 'differ'}, features max abs "
                      f"{fmt(r['backend_vs_ours'][3])}" for r in rows)]
    if args.no_results:
        print("\n".join(lines))
    else:
        append_results("Bottom-up detector: ours vs MILVLG's caffe R101 (same weights, same images)", lines)


def write_images_calibration(folder: Path, seed: int) -> Path:
    import cv2

    path = folder / "calibration.png"
    cv2.imwrite(str(path), synthetic_image(600, 800, np.random.default_rng(seed + 1000)))
    return path


if __name__ == "__main__":
    main()
