"""Optional detectron2 backend for region features (``features.regions.backend: detectron2``).

detectron2 is not on the package registries this project installs from, so everything here is import-
guarded: :func:`status` says whether it can be used and why not. With detectron2 installed, a C4
detector described by a detectron2 config file (``MODEL.META_ARCHITECTURE: GeneralizedRCNN`` with
``Res5ROIHeads``, e.g. ``COCO-Detection/faster_rcnn_R_101_C4_3x.yaml`` or a Visual-Genome variant) proposes
regions, its res5 head pools them, and the same BUTD rule (:mod:`features.butd`) picks the boxes, so the
output has the schema of the torchvision backend.
"""

from __future__ import annotations

import numpy as np
import torch

from features.butd import select_boxes
from pipeline.errors import InputError


def status() -> tuple[bool, str]:
    try:
        import detectron2  # noqa: F401
    except ImportError as error:
        return False, (f"detectron2 is not installed ({error}); it is not on PyPI, so install it from source "
                       "(https://github.com/facebookresearch/detectron2) to use regions.backend: detectron2")
    return True, f"detectron2 {detectron2.__version__}"


class Detectron2Detector:
    def __init__(self, config_file: str, weights: str, min_size: int, max_size: int, nms_thresh: float,
                 conf_thresh: float, min_boxes: int, max_boxes: int, device: torch.device,
                 pre_nms_top_n: int = 6000, post_nms_top_n: int = 300):
        available, reason = status()
        if not available:
            raise InputError(reason)
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        cfg = get_cfg()
        cfg.merge_from_file(config_file)
        cfg.MODEL.WEIGHTS = weights
        cfg.MODEL.DEVICE = str(device)
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = pre_nms_top_n
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = post_nms_top_n
        self.model = build_model(cfg).eval()
        DetectionCheckpointer(self.model).load(weights)
        if not hasattr(self.model.roi_heads, "_shared_roi_transform"):
            raise InputError(f"{config_file}: region features need a C4 model with Res5ROIHeads")
        self.input_format = cfg.INPUT.FORMAT
        self.min_size, self.max_size = min_size, max_size
        self.rule = dict(nms_thresh=nms_thresh, conf_thresh=conf_thresh, min_boxes=min_boxes, max_boxes=max_boxes)
        self.device = device

    @torch.no_grad()
    def detect(self, rgb: np.ndarray) -> dict:
        from detectron2.data.transforms import ResizeShortestEdge

        height, width = rgb.shape[:2]
        image = rgb[:, :, ::-1] if self.input_format == "BGR" else rgb
        resized = ResizeShortestEdge(self.min_size, self.max_size).get_transform(image).apply_image(image)
        scale = resized.shape[0] / height
        tensor = torch.as_tensor(np.ascontiguousarray(resized).transpose(2, 0, 1)).float()
        model = self.model
        images = model.preprocess_image([{"image": tensor.to(self.device), "height": height, "width": width}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        heads = model.roi_heads
        boxes = [p.proposal_boxes for p in proposals]
        pooled = heads._shared_roi_transform([features[name] for name in heads.in_features], boxes)
        vectors = pooled.mean(dim=(2, 3))
        logits, _ = heads.box_predictor(vectors)
        scores = logits.softmax(dim=-1)
        scores = torch.cat([scores[:, -1:], scores[:, :-1]], dim=1)  # detectron2 puts background last
        raw = proposals[0].proposal_boxes.tensor / scale
        selection = select_boxes(raw, scores, **self.rule)
        return {"features": vectors[selection.index], "boxes": raw[selection.index], "class_id": selection.class_id,
                "score": selection.score}
