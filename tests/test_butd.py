import torch
from torchvision.ops import nms

import numpy as np

from features.butd import at_least, per_class_nms_keep, select_boxes


def random_rois(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 80 + 5
    return torch.cat([xy, xy + wh], 1), g


def test_batched_nms_equals_torchvision_per_class():
    boxes, g = random_rois(120, 0)
    scores = torch.rand(120, 37, generator=g)
    keep = per_class_nms_keep(boxes, scores, 0.3)
    for c in range(37):
        expected = torch.zeros(120, dtype=torch.bool)
        expected[nms(boxes, scores[:, c], 0.3)] = True
        assert torch.equal(keep[:, c], expected), c


def greedy_legacy_nms(boxes, scores, threshold):
    """Plain-Python greedy NMS with +1 areas and IoU >= threshold (the Caffe/MILVLG CPU kernel's rule)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    b = boxes.tolist()

    def iou(i, j):
        w = min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]) + 1
        h = min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]) + 1
        inter = max(w, 0) * max(h, 0)
        area = lambda k: (b[k][2] - b[k][0] + 1) * (b[k][3] - b[k][1] + 1)  # noqa: E731
        return inter / (area(i) + area(j) - inter)

    kept = []
    for i in order:
        if all(iou(i, k) < threshold for k in kept):
            kept.append(i)
    return set(kept)


def test_legacy_convention_equals_caffe_rule():
    boxes, g = random_rois(80, 3)
    boxes = boxes.round()  # integer pixel boxes, where the +1 convention matters most
    scores = torch.rand(80, 9, generator=g)
    keep = per_class_nms_keep(boxes, scores, 0.3, legacy=True)
    for c in range(9):
        assert set(torch.nonzero(keep[:, c]).flatten().tolist()) == greedy_legacy_nms(boxes, scores[:, c], 0.3)


def test_threshold_and_clamp():
    boxes, g = random_rois(60, 1)
    scores = torch.softmax(torch.randn(60, 31, generator=g) * 1.5, dim=1)
    keep = per_class_nms_keep(boxes, scores[:, 1:], 0.3, legacy=True)
    max_conf = torch.where(keep, scores[:, 1:], torch.zeros(())).max(1).values
    confident = int((max_conf >= 0.2).sum())
    assert 10 < confident < 40  # the clamps below are not trivially satisfied
    assert len(select_boxes(boxes, scores, min_boxes=10, max_boxes=100).index) == confident
    assert len(select_boxes(boxes, scores, min_boxes=confident + 5, max_boxes=100).index) == confident + 5
    top = select_boxes(boxes, scores, min_boxes=1, max_boxes=7)
    assert len(top.index) == 7
    assert torch.all(top.confidence[:-1] >= top.confidence[1:])
    assert torch.equal(top.confidence, max_conf.sort(descending=True).values[:7])
    # within the clamps BUTD keeps the confident RoIs in their own order (torch.nonzero)
    unclamped = select_boxes(boxes, scores, min_boxes=10, max_boxes=100)
    assert torch.equal(unclamped.index, torch.nonzero(max_conf >= 0.2).flatten())


def test_suppressed_duplicate_does_not_count():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]], dtype=torch.float32)
    # class 1 scores the two overlapping boxes 0.9 and 0.8; the second is suppressed for that class
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.7, 0.0, 0.3]])
    selection = select_boxes(boxes, scores, conf_thresh=0.2, min_boxes=0, max_boxes=10)
    assert selection.index.tolist() == [0, 2]
    assert selection.class_id.tolist() == [0, 1]  # 0-based over the object classes, as BUTD saves objects_id


def test_saved_class_is_the_raw_argmax_even_where_that_class_was_suppressed():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 11]], dtype=torch.float32)
    # RoI 1 loses class 1 to RoI 0 but survives class 2 at 0.3: kept with max_conf 0.3; BUTD saves its argmax
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.5, 0.3]])
    selection = select_boxes(boxes, scores, conf_thresh=0.2, min_boxes=0, max_boxes=10)
    assert selection.index.tolist() == [0, 1]
    assert selection.class_id.tolist() == [0, 0]
    assert torch.allclose(selection.score, torch.tensor([0.9, 0.5]))
    assert torch.allclose(selection.confidence, torch.tensor([0.9, 0.3]))


def caffe_nms_float32(boxes, scores, threshold):
    """MILVLG's CPU kernel in float32 arithmetic: +1 areas, suppress when IoU >= float32(threshold)."""
    b = boxes.numpy().astype(np.float32)
    one, zero, t = np.float32(1), np.float32(0), np.float32(threshold)
    areas = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    suppressed, kept = np.zeros(len(b), bool), []
    for i in np.argsort(-scores.numpy(), kind="stable"):
        if suppressed[i]:
            continue
        kept.append(int(i))
        w = np.maximum(zero, np.minimum(b[i, 2], b[:, 2]) - np.maximum(b[i, 0], b[:, 0]) + one)
        h = np.maximum(zero, np.minimum(b[i, 3], b[:, 3]) - np.maximum(b[i, 1], b[:, 1]) + one)
        inter = w * h
        suppressed |= (inter / (areas[i] + areas - inter)) >= t
    return sorted(kept)


def test_rpn_nms_suppresses_at_exactly_the_threshold_as_caffe():
    # 10 x 1 and 7 x 1 pixel boxes (+1 convention): IoU = 7 / 10, the float32 nearest 0.7
    boxes = torch.tensor([[0, 0, 9, 0], [3, 0, 9, 0]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    shifted = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0])  # how the detector gets +1 areas from torchvision
    assert nms(shifted, scores, 0.7).tolist() == [0, 1]  # torchvision's own rule (IoU > t) keeps both
    assert nms(shifted, scores, at_least(0.7)).tolist() == [0] == caffe_nms_float32(boxes, scores, 0.7)


def test_rpn_nms_equals_caffe_kernel_on_random_and_integer_boxes():
    for seed, integer in ((5, False), (6, True)):
        boxes, g = random_rois(400, seed)
        boxes = boxes.round() if integer else boxes
        scores = torch.rand(400, generator=g)
        shifted = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0])
        ours = sorted(nms(shifted, scores, at_least(0.7)).tolist())
        assert ours == caffe_nms_float32(boxes, scores, 0.7), seed
