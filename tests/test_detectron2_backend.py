"""The optional detectron2 backend: clear errors without it; with it (not a project dependency), the class-score
layout it reads from the model and its output contract."""

from pathlib import Path

import numpy as np
import pytest
import torch

from features.detectron2_backend import status
from pipeline.errors import InputError

AVAILABLE, REASON = status()
needs_detectron2 = pytest.mark.skipif(not AVAILABLE, reason=f"needs detectron2: {REASON}")


def c4_config() -> str:
    """R-50 C4 from the detectron2 in use: its model zoo, or the configs/ folder of a source checkout."""
    import detectron2

    path = Path(detectron2.__file__).resolve().parent / "model_zoo" / "configs" / "COCO-Detection"
    if not path.is_dir():
        path = Path(detectron2.__file__).resolve().parents[1] / "configs" / "COCO-Detection"
    config = path / "faster_rcnn_R_50_C4_1x.yaml"
    if not config.is_file():
        pytest.skip(f"no detectron2 config files found beside {detectron2.__file__}")
    return str(config)


def test_without_detectron2_the_backend_says_how_to_get_it():
    if AVAILABLE:
        pytest.skip(f"detectron2 is installed ({REASON})")
    from features.detectron2_backend import Detectron2Detector

    assert "install it from source" in REASON
    with pytest.raises(InputError, match="detectron2 is not installed"):
        Detectron2Detector("x.yaml", "none", 128, 192, 0.3, 0.2, 4, 12, torch.device("cpu"))


@needs_detectron2
def test_standard_detectron2_model_puts_the_background_last():
    from features.detectron2_backend import Detectron2Detector

    detector = Detectron2Detector(c4_config(), "none", 128, 192, 0.3, 0.2, 4, 12, torch.device("cpu"), 300, 40)
    assert detector.background_first is False
    predictor = detector.model.roi_heads.box_predictor
    with torch.no_grad():  # background (last column) certain: no object reaches 0.2, the minimum decides
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.zero_()
        predictor.cls_score.bias[-1] = 20.0
    found = detector.detect((np.random.default_rng(0).random((90, 160, 3)) * 255).astype(np.uint8))
    # random weights: the proposals may collapse onto a few boxes, so at most min_boxes regions
    assert 1 <= len(found["features"]) <= 4 and found["features"].shape[1] == 2048
    assert (found["score"] < 1e-6).all()
    with torch.no_grad():  # now class 0 (detectron2's first object class) is certain everywhere
        predictor.cls_score.bias[-1] = 0.0
        predictor.cls_score.bias[0] = 20.0
    found = detector.detect((np.random.default_rng(0).random((90, 160, 3)) * 255).astype(np.uint8))
    assert (found["class_id"] == 0).all() and (found["score"] > 0.99).all()  # 0-based, as the torchvision backend
    boxes = found["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 90).all()


@needs_detectron2
def test_missing_config_or_weights_are_input_errors(tmp_path):
    from features.detectron2_backend import Detectron2Detector

    with pytest.raises(InputError, match="no such config file"):
        Detectron2Detector(str(tmp_path / "missing.yaml"), "none", 128, 192, 0.3, 0.2, 4, 12, torch.device("cpu"))
    with pytest.raises(InputError, match="no such file"):
        Detectron2Detector(c4_config(), str(tmp_path / "missing.pth"), 128, 192, 0.3, 0.2, 4, 12,
                           torch.device("cpu"))
