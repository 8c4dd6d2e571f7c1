"""Bottom-up-attention region detector: a Caffe-style ResNet C4 Faster R-CNN from torchvision parts.

Matches the Visual-Genome detector of Anderson et al. (2018) as converted to detectron2 format by
MILVLG/bottom-up-attention.pytorch ("caffe" mode), so its checkpoints load by a key mapping
(:func:`load_detectron2_checkpoint`):

- input: BGR, Caffe pixel means subtracted (no std), bilinear resize to shorter side 600 / longer <= 1000;
- trunk to res4 (stride 16) with the stride on the 1x1 conv, Caffe max-pool (ceil mode, no padding);
- RPN: 12 Caffe anchors (ratios 0.5/1/2 x scales 4/8/16/32 of a 16-px base), 2-way softmax objectness,
  +1-pixel box coder, top 6000 -> NMS (suppress at IoU >= 0.7, +1 areas, as Caffe's kernel) -> top 300 proposals;
- head: RoIPool 14x14 on res4, res5 with stride 1 and dilation 2, mean over 14x14 -> 2048-d,
  1601-way class softmax (background first);
- regions: the BUTD rule of :mod:`features.butd` on the raw proposals (as BUTD saves them), in BUTD's order,
  with BUTD's class metadata (argmax over the 1,600 objects, 0-based, and its raw probability).

One residual difference from Caffe's NMS kernel: its +1 areas are ``x2 - x1 + 1``, torchvision's on shifted
corners ``(x2 + 1) - x1``; the two can differ in the last bit, which changes a decision only for an IoU within
an ulp of 0.7 (never seen in the MILVLG comparison, benchmarks/reference/compare_milvlg.py).
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.ops import nms, roi_pool

from features.butd import at_least, select_boxes
from features.config import REGIONS
from pipeline.errors import InputError

CAFFE_PIXEL_MEAN_BGR = (102.9801, 115.9465, 122.7717)
BBOX_CLAMP = math.log(1000.0 / 16)


@dataclass
class DetectorConfig:
    backbone: str = REGIONS["backbone"]  # configurable values: their defaults are the config schema's
    num_classes: int = 1601  # Visual Genome: 1600 objects + background
    min_size: int = REGIONS["min_size"]
    max_size: int = REGIONS["max_size"]
    pre_nms_top_n: int = REGIONS["pre_nms_top_n"]
    post_nms_top_n: int = REGIONS["post_nms_top_n"]
    rpn_nms_thresh: float = 0.7
    rpn_min_size: int = 16
    nms_thresh: float = REGIONS["nms_thresh"]
    conf_thresh: float = REGIONS["conf_thresh"]
    min_boxes: int = REGIONS["min_boxes"]
    max_boxes: int = REGIONS["max_boxes"]
    boxes_from: str = "proposals"  # proposals (BUTD) | regressed
    trunk_precision: str = REGIONS["precision"]  # fp32 (MILVLG) | bf16: stem..res4 under bf16 autocast


@contextlib.contextmanager
def strict_fp32():
    """IEEE fp32 convolutions and matrix products, as MILVLG ran: since Ampere, PyTorch lets cuDNN use TF32 (a
    10-bit mantissa) for fp32 convolutions by default, which moves box coordinates as bf16 would."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def caffe_cell_anchors(base: int = 16, ratios=(0.5, 1.0, 2.0), scales=(4, 8, 16, 32)) -> torch.Tensor:
    """py-faster-rcnn's anchors: ratio-major, rounded widths, centred on the base cell (12 x 4)."""
    centre = (base - 1) / 2.0
    anchors = []
    for ratio in ratios:
        width = round(math.sqrt(base * base / ratio))
        height = round(width * ratio)
        for scale in scales:
            w, h = width * scale, height * scale
            anchors.append([centre - 0.5 * (w - 1), centre - 0.5 * (h - 1), centre + 0.5 * (w - 1),
                            centre + 0.5 * (h - 1)])
    return torch.tensor(anchors, dtype=torch.float32)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Caffe box coder (+1 widths), weights (1, 1, 1, 1), dw/dh clamped at log(1000/16)."""
    widths = anchors[:, 2] - anchors[:, 0] + 1.0
    heights = anchors[:, 3] - anchors[:, 1] + 1.0
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0], deltas[:, 1]
    dw, dh = deltas[:, 2].clamp(max=BBOX_CLAMP), deltas[:, 3].clamp(max=BBOX_CLAMP)
    pred_x, pred_y = dx * widths + ctr_x, dy * heights + ctr_y
    pred_w, pred_h = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([pred_x - 0.5 * pred_w, pred_y - 0.5 * pred_h, pred_x + 0.5 * pred_w, pred_y + 0.5 * pred_h], 1)


def linear_taps(source: int, size: int, scale: float, device=None):
    """INTER_LINEAR's two source indices and the weight of the second for each of ``size`` output positions.

    Source coordinates are ``(x + 0.5) / scale - 0.5`` with the exact scale, in double precision (as OpenCV's float
    path, which hands the resize to IPP, computes them: a float32 coordinate of ~600 keeps only 6e-5 of its
    fraction, which moved samples by up to 9e-3 here before); clamped at the borders.
    """
    coordinate = (np.arange(size, dtype=np.float64) + 0.5) / scale - 0.5
    first = np.floor(coordinate)
    weight = coordinate - first
    first = first.astype(np.int64)
    weight[first < 0], first[first < 0] = 0.0, 0
    weight[first >= source - 1], first[first >= source - 1] = 0.0, source - 1
    second = np.minimum(first + 1, source - 1)
    return (torch.from_numpy(first).to(device), torch.from_numpy(second).to(device),
            torch.from_numpy(weight.astype(np.float32)).to(device))


def resize_linear(image: torch.Tensor, scale: float) -> torch.Tensor:
    """(C, H, W) float -> ``cv2.resize(fx=scale, fy=scale, interpolation=INTER_LINEAR)`` of it: output sides
    ``round(side * scale)`` (half to even, as cvRound), rows then columns, fp32 products of double-precision
    weights. Measured against opencv-python: <= 3e-5 apart on mean-subtracted images (IPP's own rounding)."""
    _, height, width = image.shape
    x0, x1, wx = linear_taps(width, max(1, round(width * scale)), scale, image.device)
    y0, y1, wy = linear_taps(height, max(1, round(height * scale)), scale, image.device)
    rows = image.index_select(2, x0) * (1 - wx) + image.index_select(2, x1) * wx
    return rows.index_select(1, y0) * (1 - wy)[:, None] + rows.index_select(1, y1) * wy[:, None]


def caffe_preprocess(rgb: np.ndarray, min_size: int, max_size: int) -> tuple[torch.Tensor, float]:
    """uint8 RGB (H, W, 3) -> mean-subtracted BGR (3, H', W') at the test scale, and the scale.

    The resize is BUTD's ``cv2.resize(im, None, fx=scale, fy=scale, interpolation=INTER_LINEAR)`` on the float
    image (:func:`resize_linear`), not a resize to the rounded size, whose sampling ratio differs from the scale.
    """
    height, width = rgb.shape[:2]
    scale = min_size / min(height, width)
    if round(scale * max(height, width)) > max_size:  # py-faster-rcnn's test (np.round, half to even)
        scale = max_size / max(height, width)
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1])).permute(2, 0, 1).float()
    bgr -= torch.tensor(CAFFE_PIXEL_MEAN_BGR).view(3, 1, 1)  # subtracted before resizing, as BUTD
    return resize_linear(bgr, scale), scale


def caffe_resnet(backbone: str) -> torchvision.models.ResNet:
    """A torchvision ResNet rearranged as the Caffe/detectron2 C4 model (weights loaded separately)."""
    resnet = getattr(torchvision.models, backbone)(weights=None)
    if not isinstance(resnet.layer1[0], torchvision.models.resnet.Bottleneck):
        raise InputError(f"the detector needs a bottleneck ResNet (50/101/152), not {backbone}")
    resnet.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for layer in (resnet.layer2, resnet.layer3):  # stride on the 1x1 conv (STRIDE_IN_1X1)
        first = layer[0]
        first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)
    for block in resnet.layer4:  # res5: stride 1, dilation 2 (14x14 RoIs stay 14x14)
        block.conv1.stride = (1, 1)
        block.conv2.stride, block.conv2.dilation, block.conv2.padding = (1, 1), (2, 2), (2, 2)
    resnet.layer4[0].downsample[0].stride = (1, 1)
    return resnet


class BottomUpDetector(nn.Module):
    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        resnet = caffe_resnet(config.backbone)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.res2, self.res3, self.res4, self.res5 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.register_buffer("cell_anchors", caffe_cell_anchors())
        anchors = self.cell_anchors.shape[0]
        self.rpn_conv = nn.Conv2d(1024, 512, 3, padding=1)
        self.rpn_objectness = nn.Conv2d(512, 2 * anchors, 1)
        self.rpn_deltas = nn.Conv2d(512, 4 * anchors, 1)
        self.cls_score = nn.Linear(2048, config.num_classes)
        self.bbox_pred = nn.Linear(2048, 4 * config.num_classes)
        # detectron2's initialisation of the heads (only matters for randomly initialised detectors)
        for layer, std in ((self.rpn_conv, 0.01), (self.rpn_objectness, 0.01), (self.rpn_deltas, 0.01),
                           (self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def preprocess(self, rgb: np.ndarray) -> tuple[torch.Tensor, float]:
        return caffe_preprocess(rgb, self.config.min_size, self.config.max_size)

    # ------------------------------------------------------------------------------- network
    def proposals(self, res4: torch.Tensor, image_hw: tuple[int, int], scale: float) -> torch.Tensor:
        c = self.config
        x = F.relu(self.rpn_conv(res4))
        num_anchors = self.cell_anchors.shape[0]
        _, _, height, width = res4.shape
        objectness = self.rpn_objectness(x).view(1, 2, num_anchors, height, width).softmax(dim=1)[:, 1]
        scores = objectness.permute(0, 2, 3, 1).reshape(-1)  # (H, W, A) order
        deltas = self.rpn_deltas(x).view(1, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2).reshape(-1, 4)
        shift_y, shift_x = torch.meshgrid(torch.arange(height, device=res4.device) * 16.0,
                                          torch.arange(width, device=res4.device) * 16.0, indexing="ij")
        shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], -1).view(-1, 1, 4)
        anchors = (shifts + self.cell_anchors.view(1, -1, 4)).view(-1, 4)
        boxes = decode_boxes(deltas.float(), anchors)
        img_h, img_w = image_hw
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_w - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_h - 1)
        min_size = c.rpn_min_size * scale
        widths, heights = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (widths > min_size) & (heights > min_size)
        boxes, scores = boxes[valid], scores[valid].float()
        order = scores.argsort(descending=True)[: c.pre_nms_top_n]
        boxes, scores = boxes[order], scores[order]
        # Caffe's kernel: visits in its own sort's order (which settles tied scores, e.g. saturated objectness),
        # +1-pixel areas (here by shifted corners), suppresses at IoU >= t (at_least), returns candidate order
        visit = scores.sort(descending=True).indices
        rank = torch.empty_like(visit)
        rank[visit] = torch.arange(len(visit), device=visit.device)
        keep = nms(boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device), -rank.float(),
                   at_least(c.rpn_nms_thresh))
        return boxes[keep.sort().values[: c.post_nms_top_n]]

    def box_features(self, res4: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        pooled = roi_pool(res4, [boxes.to(res4.dtype)], output_size=(14, 14), spatial_scale=1.0 / 16)  # fp32 here
        return self.res5(pooled).mean(dim=(2, 3))

    @torch.no_grad()
    def detect(self, image: torch.Tensor, scale: float, original_hw: tuple[int, int]) -> dict:
        """One preprocessed image (3, H, W) -> BUTD regions in original-image pixels.

        Everything from res4 on (RPN, box decoding, RoI pooling, res5, class scores, box selection) runs in fp32
        whatever autocast the caller set: in bf16, box coordinates round by up to 2 px at COCO scales and a third
        of the boxes pool other cells. ``trunk_precision: bf16`` runs only the trunk under bf16 autocast.
        """
        c = self.config
        device = image.device.type
        with strict_fp32():  # fp32 means IEEE fp32 here, on GPUs too (bf16 trunk ops are unaffected)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=c.trunk_precision == "bf16"):
                res4 = self.res4(self.res3(self.res2(self.stem(image[None]))))
            with torch.autocast(device, enabled=False):
                return self._regions(res4.float(), image, scale, original_hw)

    def _regions(self, res4: torch.Tensor, image: torch.Tensor, scale: float, original_hw: tuple[int, int]) -> dict:
        c = self.config
        proposals = self.proposals(res4, tuple(image.shape[1:]), scale)
        feats = self.box_features(res4, proposals)
        class_scores = self.cls_score(feats).softmax(dim=-1)
        boxes = proposals / scale  # BUTD selects on, and saves, the raw proposals in original pixels
        selection = select_boxes(boxes, class_scores, c.nms_thresh, c.conf_thresh, c.min_boxes, c.max_boxes)
        if c.boxes_from == "regressed":
            # py-faster-rcnn's order: un-scale the proposals, then apply the deltas of the region's argmax class
            deltas = self.bbox_pred(feats[selection.index]).float().view(-1, c.num_classes, 4)
            deltas = deltas[torch.arange(len(selection.index)), selection.class_id + 1]
            boxes = decode_boxes(deltas, boxes[selection.index])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, original_hw[1] - 1)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, original_hw[0] - 1)
        else:
            boxes = boxes[selection.index]
        # class_id/score as BUTD saves them: argmax over the 1,600 objects (0-based) and its probability
        return {"features": feats[selection.index], "boxes": boxes, "class_id": selection.class_id,
                "score": selection.score}


# ----------------------------------------------------------------------------------- checkpoint import
_BLOCK_PARTS = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "shortcut": "downsample.0"}
_NORMS = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "shortcut": "downsample.1"}
_STAGES = {"backbone.res2": "res2", "backbone.res3": "res3", "backbone.res4": "res4", "roi_heads.res5": "res5"}
_FIXED = {
    "backbone.stem.conv1.weight": "stem.0.weight",
    "proposal_generator.rpn_head.conv.weight": "rpn_conv.weight",
    "proposal_generator.rpn_head.conv.bias": "rpn_conv.bias",
    "proposal_generator.rpn_head.objectness_logits.weight": "rpn_objectness.weight",
    "proposal_generator.rpn_head.objectness_logits.bias": "rpn_objectness.bias",
    "proposal_generator.rpn_head.anchor_deltas.weight": "rpn_deltas.weight",
    "proposal_generator.rpn_head.anchor_deltas.bias": "rpn_deltas.bias",
    "proposal_generator.anchor_generator.cell_anchors.0": "cell_anchors",
    "roi_heads.box_predictor.cls_score.weight": "cls_score.weight",
    "roi_heads.box_predictor.cls_score.bias": "cls_score.bias",
    "roi_heads.box_predictor.bbox_pred.weight": "bbox_pred.weight",
    "roi_heads.box_predictor.bbox_pred.bias": "bbox_pred.bias",
}
_IGNORED_PREFIXES = ("roi_heads.box_predictor.cls_embed", "roi_heads.box_predictor.attr_linear")  # attribute head
# buffers newer detectron2 versions save that hold no weights of the network (its input normalisation is Caffe's)
_HARMLESS = ("pixel_mean", "pixel_std")
ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"


def detectron2_to_ours(key: str) -> str | None:
    """Map one detectron2/MILVLG key to this module's name (None: not used, e.g. the attribute head).

    ``backbone.stem.conv1.norm.weight`` -> ``stem.1.weight``;
    ``backbone.res4.3.conv2.norm.running_var`` -> ``res4.3.bn2.running_var``;
    ``roi_heads.res5.0.shortcut.weight`` -> ``res5.0.downsample.0.weight``.
    """
    if key in _FIXED:
        return _FIXED[key]
    if key.startswith(_IGNORED_PREFIXES) or key.endswith("num_batches_tracked") or key in _HARMLESS:
        return None
    if key.startswith("backbone.stem.conv1.norm."):
        return "stem.1." + key.rsplit(".", 1)[1]
    for prefix, stage in _STAGES.items():
        if key.startswith(prefix + "."):
            block, part, *rest = key[len(prefix) + 1:].split(".")
            if part not in _BLOCK_PARTS:
                break
            if rest[0] == "norm":
                return f"{stage}.{block}.{_NORMS[part]}.{rest[1]}"
            return f"{stage}.{block}.{_BLOCK_PARTS[part]}.{rest[0]}"
    raise InputError(f"unexpected key in detectron2 checkpoint: {key}")


def load_detectron2_checkpoint(model: BottomUpDetector, path: str | Path) -> dict:
    """Load a detectron2-format BUTD checkpoint (.pth/.pkl: {"model": state} or a bare state, numpy or torch)."""
    path = Path(path)
    if path.suffix == ".pkl":
        import pickle

        with open(path, "rb") as handle:
            raw = pickle.load(handle, encoding="latin1")  # detectron2 model-zoo .pkl files are plain pickles
    else:
        raw = torch.load(path, map_location="cpu", weights_only=False)  # trusted user-given checkpoint
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    converted, unused = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        ours = detectron2_to_ours(key)
        if ours is None:
            unused.append(key)
            continue
        converted[ours] = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    anchors = "checkpoint"
    if "cell_anchors" not in converted:
        # detectron2 stopped saving the anchor buffer in May 2021: a checkpoint re-saved since has none, and the
        # config's sizes would give 3-23 px anchors. The Visual-Genome detector was trained with these.
        anchors = "py-faster-rcnn (scales 4, 8, 16, 32 x ratios 0.5, 1, 2 at stride 16; not in the checkpoint)"
        print(f"note: {path} holds no {ANCHORS_KEY}; using the {anchors} anchors", file=sys.stderr)
        expected.discard("cell_anchors")
    missing = sorted(expected - set(converted))
    if missing:
        raise InputError(f"{path}: checkpoint lacks {len(missing)} detector weights, e.g. {missing[:5]}")
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(model.state_dict()[k].shape)})" for k, v in converted.items()
             if tuple(v.shape) != tuple(model.state_dict()[k].shape)]
    if wrong:
        raise InputError(f"{path}: {len(wrong)} weights do not fit this detector ({config_name(model)}), "
                         f"e.g. {wrong[:3]}")
    harmless = [k for k in unused if k in _HARMLESS]
    if harmless:
        print(f"note: {path}: ignoring {', '.join(harmless)} (not weights of the network)", file=sys.stderr)
    model.load_state_dict(converted, strict=False)
    return {"unused_keys": unused, "anchors": anchors}


def config_name(model: BottomUpDetector) -> str:
    return f"{model.config.backbone}, {model.config.num_classes} classes"


def ours_to_detectron2(state: dict) -> dict:
    """Inverse of :func:`detectron2_to_ours` (used by tests to write a checkpoint in detectron2 layout)."""
    inverse = {v: k for k, v in _FIXED.items()}
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key in inverse:
            out[inverse[key]] = value
            continue
        stage, rest = key.split(".", 1)
        if stage == "stem":
            out[{"0.weight": "backbone.stem.conv1.weight"}.get(rest, "backbone.stem.conv1.norm." + rest[2:])] = value
            continue
        prefix = {v: k for k, v in _STAGES.items()}[stage]
        block, part = rest.split(".", 1)
        for name, ours in _BLOCK_PARTS.items():
            if part.startswith(ours + "."):
                out[f"{prefix}.{block}.{name}.{part[len(ours) + 1:]}"] = value
        for name, ours in _NORMS.items():
            if part.startswith(ours + "."):
                out[f"{prefix}.{block}.{name}.norm.{part[len(ours) + 1:]}"] = value
    return out
