"""Optional detectron2 backend for region features (``features.regions.backend: detectron2``).

detectron2 is not on the package registries this project installs from, so everything here is import-
guarded: :func:`status` says whether it can be used and why not. With detectron2 installed, a C4
detector described by a detectron2 config file (``Res5ROIHeads`` or a subclass) proposes regions, its res5 head
pools them, and the same BUTD rule (:mod:`features.butd`) picks the boxes, so the output has the schema of the
torchvision backend. Two families of models:

- detectron2's own (``GeneralizedRCNN``, e.g. ``COCO-Detection/faster_rcnn_R_101_C4_3x.yaml``, or MILVLG's "d2"
  Visual-Genome models with ``AttributeRes5ROIHeads``): input resized by ``ResizeShortestEdge`` and normalised by
  the model; ``FastRCNNOutputLayers`` puts the background class *last*;
- MILVLG/bottom-up-attention.pytorch's "caffe" models (``GeneralizedBUARCNN``, ``BUACaffeRes5ROIHeads``): input
  mean-subtracted before the resize (:func:`features.detector.caffe_preprocess`, as its ``get_image_blob``); its
  ``BUACaffeFastRCNNOutputLayers`` puts the background class *first* (Caffe's convention).

MILVLG's configs need its ``bua`` package importable (it registers their meta-architecture and heads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from features.butd import select_boxes
from pipeline.errors import InputError

MILVLG_CAFFE_ARCH = "GeneralizedBUARCNN"


def status() -> tuple[bool, str]:
    try:
        import detectron2  # noqa: F401
    except ImportError as error:
        return False, (f"detectron2 is not installed ({error}); it is not on PyPI, so install it from source "
                       "(https://github.com/facebookresearch/detectron2) to use regions.backend: detectron2")
    return True, f"detectron2 {detectron2.__version__}"


def load_config(config_file: str):
    """A detectron2 config from ``config_file``, with MILVLG's extra keys added first where the file uses them."""
    from detectron2.config import CfgNode, get_cfg

    if not config_file or not Path(config_file).is_file():
        raise InputError(f"regions.detectron2_config {config_file!r}: no such config file (give a detectron2 "
                         "config of a C4 model, e.g. configs/COCO-Detection/faster_rcnn_R_101_C4_3x.yaml)")
    raw = CfgNode.load_yaml_with_base(config_file, allow_unsafe=True)  # with its _BASE_ files
    model = raw.get("MODEL", {}) or {}
    cfg = get_cfg()
    if model.get("META_ARCHITECTURE") == MILVLG_CAFFE_ARCH or "BUA" in model or "ATTRIBUTE_ON" in model:
        try:
            import bua
        except ImportError as error:
            raise InputError(f"{config_file} is a MILVLG bottom-up-attention config: its 'bua' package "
                             f"(github.com/MILVLG/bottom-up-attention.pytorch) must be importable ({error})") from None
        if model.get("META_ARCHITECTURE") == MILVLG_CAFFE_ARCH:
            bua.caffe.add_bottom_up_attention_config(cfg, True)
        else:
            bua.d2.add_attribute_config(cfg)
    cfg.merge_from_file(config_file)
    return cfg


def background_first(model) -> bool:
    """Where the class scores put the background, from the model's box predictor (not from a guess)."""
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

    predictor = model.roi_heads.box_predictor
    if isinstance(predictor, FastRCNNOutputLayers):
        return False  # detectron2: classes [0, K) are objects, K is the background
    if type(predictor).__name__ == "BUACaffeFastRCNNOutputLayers":
        return True  # MILVLG caffe: column 0 is the background (its extractor reads scores[:, 1:])
    raise InputError(f"box predictor {type(predictor).__module__}.{type(predictor).__name__}: unknown class-score "
                     "layout (supported: detectron2's FastRCNNOutputLayers, MILVLG's BUACaffeFastRCNNOutputLayers)")


class Detectron2Detector:
    def __init__(self, config_file: str, weights: str, min_size: int, max_size: int, nms_thresh: float,
                 conf_thresh: float, min_boxes: int, max_boxes: int, device: torch.device,
                 pre_nms_top_n: int = 6000, post_nms_top_n: int = 300, seed: int = 0):
        available, reason = status()
        if not available:
            raise InputError(reason)
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        cfg = load_config(config_file)
        random_init = weights in ("none", "")  # "": detectron2's own spelling of no weights
        cfg.MODEL.WEIGHTS = "" if random_init else weights
        cfg.MODEL.DEVICE = str(device)
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = pre_nms_top_n
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = post_nms_top_n
        torch.manual_seed(seed)  # weights: none -> the model's own initialisation, reproducibly
        self.model = build_model(cfg).eval()
        if not random_init:
            if not Path(weights).is_file():
                raise InputError(f"detector weights {weights!r}: no such file (give 'none' or a detectron2 checkpoint)")
            DetectionCheckpointer(self.model).load(weights)
        heads = self.model.roi_heads
        if not hasattr(heads, "_shared_roi_transform"):
            raise InputError(f"{config_file}: region features need a C4 model with Res5ROIHeads, not "
                             f"{type(heads).__name__}")
        self.caffe = cfg.MODEL.META_ARCHITECTURE == MILVLG_CAFFE_ARCH
        if self.caffe:
            from features.detector import CAFFE_PIXEL_MEAN_BGR

            if tuple(cfg.MODEL.PIXEL_MEAN) != CAFFE_PIXEL_MEAN_BGR:  # caffe_preprocess subtracts these
                raise InputError(f"{config_file}: PIXEL_MEAN {list(cfg.MODEL.PIXEL_MEAN)}, expected the Caffe "
                                 f"means {list(CAFFE_PIXEL_MEAN_BGR)}")
        self.background_first = background_first(self.model)
        self.input_format = cfg.INPUT.FORMAT
        self.min_size, self.max_size = min_size, max_size
        self.rule = dict(nms_thresh=nms_thresh, conf_thresh=conf_thresh, min_boxes=min_boxes, max_boxes=max_boxes)
        self.device = device

    def _inputs(self, rgb: np.ndarray) -> tuple[dict, torch.Tensor]:
        """The model's input dict and the factors from original to input pixels (x1, y1, x2, y2)."""
        height, width = rgb.shape[:2]
        if self.caffe:  # MILVLG's get_image_blob: BGR, means off, then cv2-exact resize
            from features.detector import caffe_preprocess

            tensor, scale = caffe_preprocess(rgb, self.min_size, self.max_size)
            return {"image": tensor.to(self.device), "im_scale": scale}, torch.full((4,), scale)
        from detectron2.data.transforms import ResizeShortestEdge

        image = rgb[:, :, ::-1] if self.input_format == "BGR" else rgb
        resized = ResizeShortestEdge(self.min_size, self.max_size).get_transform(image).apply_image(image)
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()  # a writable copy
        sx, sy = resized.shape[1] / width, resized.shape[0] / height  # each axis rounds on its own
        return {"image": tensor.to(self.device), "height": height, "width": width}, torch.tensor([sx, sy, sx, sy])

    @torch.no_grad()
    def detect(self, rgb: np.ndarray) -> dict:
        inputs, scale = self._inputs(rgb)
        model = self.model
        images = model.preprocess_image([inputs])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        heads = model.roi_heads
        boxes = [p.proposal_boxes for p in proposals]
        pooled = heads._shared_roi_transform([features[name] for name in heads.in_features], boxes)
        vectors = pooled.mean(dim=(2, 3))
        # MILVLG's caffe predictor takes the proposals too (for its attribute head); logits come first in both
        predicted = heads.box_predictor(vectors, proposals) if self.caffe else heads.box_predictor(vectors)
        scores = predicted[0].softmax(dim=-1)
        if not self.background_first:
            scores = torch.cat([scores[:, -1:], scores[:, :-1]], dim=1)  # select_boxes wants it in column 0
        raw = proposals[0].proposal_boxes.tensor / scale.to(vectors.device)
        selection = select_boxes(raw, scores, **self.rule)
        return {"features": vectors[selection.index], "boxes": raw[selection.index], "class_id": selection.class_id,
                "score": selection.score}
