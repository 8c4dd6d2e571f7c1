"""The bottom-up-attention box rule, batched over classes.

BUTD keeps a region when, for some object class, it survives that class's NMS (IoU 0.3) with a class
score of at least ``conf_thresh`` (0.2); the region's confidence is the best such score (``max_conf``).
The number of regions is then clamped to [min_boxes, max_boxes] by ``max_conf``.

The original code loops over 1,600 classes. Here all classes are suppressed at once: every class
ranks the *same* RoIs, so one RoI x RoI IoU matrix serves all of them, and greedy NMS proceeds by rank
position (at most #RoIs steps) over a (classes x RoIs) state, on whatever device the scores live on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou


def at_least(threshold: float) -> float:
    """The threshold that makes torchvision's ``nms`` (suppress when IoU > t) act as Caffe's (IoU >= t).

    Caffe's kernel compares a float32 IoU with ``float32(t)``; for float32 IoUs, ``>=`` that is the same test
    as ``>`` the next float32 below it (nothing lies in between), which torchvision's kernels compare exactly.
    """
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def legacy_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU with the Caffe/Detectron-v1 pixel convention: a box [x1, x2] is x2 - x1 + 1 pixels wide."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def overlap_matrix(boxes: torch.Tensor, iou_threshold: float, legacy: bool) -> torch.Tensor:
    """Which pairs suppress each other: torchvision's rule (IoU > t) or BUTD's (+1 areas, IoU >= t)."""
    if legacy:
        return legacy_iou(boxes, boxes) >= iou_threshold
    return box_iou(boxes, boxes) > iou_threshold


def per_class_nms_keep(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                       legacy: bool = False) -> torch.Tensor:
    """Greedy NMS for every class column of ``scores`` (R, C) over shared ``boxes`` (R, 4).

    Returns a bool (R, C) mask: True where RoI r survives the NMS of class c. With ``legacy=False`` it
    equals ``torchvision.ops.nms(boxes, scores[:, c], iou_threshold)`` for each c; ``legacy=True`` uses
    the +1 pixel convention and ``>=`` of the Caffe/MILVLG extractors.
    """
    num_rois, num_classes = scores.shape
    if num_rois == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    overlaps = overlap_matrix(boxes, iou_threshold, legacy)  # (R, R), same for all classes
    order = scores.t().argsort(dim=1, descending=True, stable=True)  # (C, R) RoIs by rank per class
    suppressed = torch.zeros(num_classes, num_rois, dtype=torch.bool, device=scores.device)
    keep = torch.zeros(num_classes, num_rois, dtype=torch.bool, device=scores.device)
    classes = torch.arange(num_classes, device=scores.device)
    for rank in range(num_rois):
        current = order[:, rank]  # (C,) the RoI at this rank for each class
        alive = ~suppressed[classes, current]
        keep[classes, current] = alive
        # an alive RoI suppresses every RoI overlapping it (itself included, it is already decided)
        suppressed |= overlaps[current] & alive[:, None]
    return keep.t()


@dataclass
class Selection:
    index: torch.Tensor  # (K,) RoI indices, in BUTD's order (see select_boxes)
    class_id: torch.Tensor  # (K,) argmax over the object classes, 0-based (BUTD's saved ``objects_id``)
    score: torch.Tensor  # (K,) that class's raw probability (BUTD's ``objects_conf``)
    confidence: torch.Tensor  # (K,) max_conf: the best class score surviving its class's NMS (what selects)


def select_boxes(boxes: torch.Tensor, class_scores: torch.Tensor, nms_thresh: float = 0.3,
                 conf_thresh: float = 0.2, min_boxes: int = 10, max_boxes: int = 100,
                 legacy: bool = True) -> Selection:
    """BUTD selection. ``class_scores``: (R, 1 + C) softmax scores with background in column 0.

    The order is BUTD's: ascending RoI index when the confident regions already number min..max boxes,
    otherwise decreasing ``max_conf`` cut to the clamp.
    """
    if min_boxes > max_boxes:
        raise ValueError(f"min_boxes {min_boxes} > max_boxes {max_boxes}")
    object_scores = class_scores[:, 1:]
    keep = per_class_nms_keep(boxes, object_scores, nms_thresh, legacy)
    max_conf = torch.where(keep, object_scores, torch.zeros_like(object_scores)).max(dim=1).values
    confident = torch.nonzero(max_conf >= conf_thresh).flatten()
    if min_boxes <= len(confident) <= max_boxes:
        chosen = confident
    else:
        count = min_boxes if len(confident) < min_boxes else max_boxes
        chosen = torch.argsort(max_conf, descending=True)[:count]  # BUTD's own call: ties fall as its sort leaves them
    score, class_id = object_scores[chosen].max(dim=1)
    return Selection(index=chosen, class_id=class_id, score=score, confidence=max_conf[chosen])
