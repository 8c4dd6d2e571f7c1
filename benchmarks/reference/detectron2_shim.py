"""Import detectron2 v0.2.1 (and MILVLG's ``bua`` package) from source checkouts without compiling their ops.

For the comparison scripts of this folder only; nothing of the project imports it. Checkouts stay outside this
repository and are not edited: everything is patched here, at run time.

- ``detectron2._C``: a stub module. v0.2.1 already takes NMS, RoIAlign and RoIPool from torchvision (with
  torchvision >= 0.7); only deformable convolution, rotated boxes and the COCO-eval kernels need ``_C``, and a C4
  Faster R-CNN uses none of them, so the stub's functions raise when called.
- ``PIL.Image.LINEAR``: removed in Pillow 10; v0.2.1 names it as a default argument (``ExtentTransform``).
- ``bua.caffe.modeling._C.nms``: MILVLG's compiled CPU kernel (``layers/csrc/nms/nms_cpu.cpp``) in Python, with the
  same float32 arithmetic: +1 areas, boxes visited by descending score, suppress when IoU >= threshold, the kept
  indices returned in index order (``nonzero``), not score order.
- ``apex.amp.float_function``: MILVLG wraps the kernel with apex's AMP hint; here a cast of its tensors to float32.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import InputError


def _not_compiled(name: str):
    def missing(*args, **kwargs):
        raise NotImplementedError(f"detectron2._C.{name} is not compiled here (see benchmarks/reference/detectron2_shim.py)")
    return missing


def caffe_nms(dets: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """MILVLG's ``nms_cpu`` kernel, step for step (float32 operations in the same order give the same bits)."""
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    boxes = dets.detach().cpu().numpy()
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, i]) for i in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.detach().cpu().sort(0, descending=True)[1].numpy()  # at::sort, as the kernel
    suppressed = np.zeros(len(boxes), dtype=bool)
    limit = np.asarray(threshold, dtype=boxes.dtype)  # the kernel's `const float threshold`
    zero, one = boxes.dtype.type(0), boxes.dtype.type(1)
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        rest = order[position + 1:]
        rest = rest[~suppressed[rest]]
        width = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        height = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = width * height
        overlap = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[overlap >= limit]] = True
    return torch.from_numpy(np.nonzero(~suppressed)[0]).long()


def install_detectron2(detectron2_repo: str | Path):
    """Make ``import detectron2`` work from the checkout at ``detectron2_repo`` (its root, holding ``detectron2/``)."""
    root = Path(detectron2_repo).resolve()
    if not (root / "detectron2" / "__init__.py").is_file():
        raise InputError(f"{root}: not a detectron2 checkout (no detectron2/__init__.py)")
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # Pillow 10 dropped the alias
    if "detectron2._C" not in sys.modules:
        stub = types.ModuleType("detectron2._C")
        for name in ("deform_conv_forward", "deform_conv_backward_input", "deform_conv_backward_filter",
                     "modulated_deform_conv_forward", "modulated_deform_conv_backward", "nms_rotated",
                     "box_iou_rotated", "roi_align_rotated_forward", "roi_align_rotated_backward",
                     "roi_align_forward", "roi_align_backward", "COCOevalAccumulate", "COCOevalEvaluateImages",
                     "InstanceAnnotation", "ImageEvaluation"):
            setattr(stub, name, _not_compiled(name))
        sys.modules["detectron2._C"] = stub
    sys.path.insert(0, str(root))
    import detectron2

    if Path(detectron2.__file__).resolve().parent != root / "detectron2":
        raise InputError(f"imported detectron2 from {detectron2.__file__}, not from {root}")
    return detectron2


def install_milvlg(milvlg_repo: str | Path):
    """Make MILVLG's ``bua`` and ``utils.extract_utils`` importable from the checkout (after detectron2)."""
    root = Path(milvlg_repo).resolve()
    if not (root / "bua" / "caffe" / "modeling" / "rcnn.py").is_file():
        raise InputError(f"{root}: not a bottom-up-attention.pytorch checkout (no bua/caffe/modeling/rcnn.py)")
    if "apex" not in sys.modules:
        apex, amp = types.ModuleType("apex"), types.ModuleType("apex.amp")

        def float_function(function):
            def wrapped(*args, **kwargs):
                args = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
                return function(*args, **kwargs)
            return wrapped

        amp.float_function = float_function
        apex.amp = amp
        sys.modules["apex"], sys.modules["apex.amp"] = apex, amp
    if "bua.caffe.modeling._C" not in sys.modules:
        kernels = types.ModuleType("bua.caffe.modeling._C")
        kernels.nms = caffe_nms
        sys.modules["bua.caffe.modeling._C"] = kernels  # found by `from bua.caffe.modeling import _C`
    sys.path.insert(0, str(root))
    import bua  # noqa: F401  registers GeneralizedBUARCNN, BUARPN, BUACaffeRes5ROIHeads with detectron2

    if Path(bua.__file__).resolve().parent != root / "bua":
        raise InputError(f"imported bua from {bua.__file__}, not from {root}")
    # by file: utils/__init__.py imports the extraction scripts, which need ray
    spec = importlib.util.spec_from_file_location("milvlg_extract_utils", root / "utils" / "extract_utils.py")
    extract_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract_utils)
    return bua, extract_utils
