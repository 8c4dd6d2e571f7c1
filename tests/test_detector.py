import numpy as np
import pytest
import torch

from captioner.data.demo import generate
from features.config import ExtractorConfig
from features.detector import (
    BottomUpDetector,
    DetectorConfig,
    caffe_cell_anchors,
    load_detectron2_checkpoint,
    ours_to_detectron2,
)
from features.extract import RunOptions, extract
from features.store.reader import FeatureStore
from tests.faults.helpers import manifest_for

SMALL = dict(backbone="resnet50", min_size=128, max_size=192, pre_nms_top_n=300, post_nms_top_n=40,
             min_boxes=4, max_boxes=12)


def small_detector(seed, anchors_as_proposals=False):
    """Random weights. Random-init ResNet activations are huge, so the RPN would push every box to the image
    border; ``anchors_as_proposals`` zeroes its regression (proposals = anchors) and the class scores."""
    torch.manual_seed(seed)
    detector = BottomUpDetector(DetectorConfig(**SMALL)).eval()
    if anchors_as_proposals:
        with torch.no_grad():
            for layer in (detector.rpn_deltas, detector.cls_score):
                layer.weight.zero_()
            detector.rpn_objectness.weight.mul_(1e-4)
    return detector


def test_caffe_anchor_table():
    anchors = caffe_cell_anchors()
    assert anchors.shape == (12, 4)
    assert anchors[0].tolist() == [-38, -16, 53, 31]
    assert anchors[5].tolist() == [-56, -56, 71, 71]
    assert anchors[11].tolist() == [-168, -344, 183, 359]


def test_detectron2_layout_checkpoint_loads_exactly(tmp_path):
    source, target = small_detector(0), small_detector(1)
    state = {k: v.numpy() for k, v in ours_to_detectron2(source.state_dict()).items()}
    assert "roi_heads.res5.0.shortcut.norm.running_var" in state
    assert "backbone.res4.5.conv2.norm.weight" in state
    state["roi_heads.box_predictor.attr_linear1.weight"] = np.zeros((4, 4), np.float32)  # attribute head: unused
    torch.save({"model": state}, tmp_path / "butd.pth")
    report = load_detectron2_checkpoint(target, tmp_path / "butd.pth")
    assert report["unused_keys"] == ["roi_heads.box_predictor.attr_linear1.weight"]
    rgb = (np.random.default_rng(0).random((100, 150, 3)) * 255).astype(np.uint8)
    image, scale = source.preprocess(rgb)
    a, b = source.detect(image, scale, (100, 150)), target.detect(image, scale, (100, 150))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    del state["backbone.res2.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="res2.0.conv1.weight"):
        load_detectron2_checkpoint(small_detector(2), tmp_path / "partial.pth")


def test_detection_output_contract():
    detector = small_detector(0, anchors_as_proposals=True)
    rgb = (np.random.default_rng(1).random((90, 160, 3)) * 255).astype(np.uint8)
    image, scale = detector.preprocess(rgb)
    assert min(image.shape[1:]) == 128 or max(image.shape[1:]) == 192
    found = detector.detect(image, scale, (90, 160))
    k = len(found["features"])
    assert 4 <= k <= 12 and found["features"].shape == (k, 2048)
    boxes = found["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 90).all()
    assert ((found["class_id"] >= 1) & (found["class_id"] <= 1600)).all()
    assert torch.all(found["score"][:-1] >= found["score"][1:])
    # uniform class scores: nothing reaches conf 0.2, so the min_boxes clamp decides
    assert k == 4


def test_extract_in_detector_mode(tmp_path):
    generate(tmp_path / "demo", seed=4, num_train=2, num_val=1, num_test=1)
    state = ours_to_detectron2(small_detector(0, anchors_as_proposals=True).state_dict())
    torch.save({"model": state}, tmp_path / "butd.pth")
    config = ExtractorConfig(kind="regions", boxes="detector", weights=str(tmp_path / "butd.pth"), **SMALL)
    extract(manifest_for(tmp_path / "demo/dataset_coco.json"), tmp_path / "demo", tmp_path / "regions.h5", config,
            RunOptions(batch_size=2, num_workers=0, device="cpu", dtype="float32"))
    store = FeatureStore(tmp_path / "regions.h5")
    data = store.gather(store.image_ids)
    assert store.shape == (4, 12, 2048)
    assert ((data["num_boxes"] >= 4) & (data["num_boxes"] <= 12)).all()
    for row, n in enumerate(data["num_boxes"]):
        assert (data["class_ids"][row, :n] >= 1).all() and (data["class_ids"][row, n:] == -1).all()
        assert (data["box_scores"][row, :n] > 0).all()
    assert store.meta["extractor"]["boxes"] == "detector"
    assert len(store.meta["weights_record"]["sha256"]) == 64




def test_detectron2_backend_output_contract():
    from features.detectron2_backend import status

    available, reason = status()
    if not available:
        pytest.skip(reason)
    from detectron2 import model_zoo

    from features.detectron2_backend import Detectron2Detector

    config_file = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    detector = Detectron2Detector(config_file, "", 128, 192, 0.3, 0.2, 4, 12, torch.device("cpu"), 300, 40)
    found = detector.detect((np.random.default_rng(0).random((90, 160, 3)) * 255).astype(np.uint8))
    assert found["features"].shape[1] == 2048 and 1 <= len(found["features"]) <= 12
