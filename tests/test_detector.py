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
    assert ((found["class_id"] >= 0) & (found["class_id"] < 1600)).all()
    assert (found["score"] > 0).all()
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
        assert (data["class_ids"][row, :n] >= 0).all() and (data["class_ids"][row, n:] == -1).all()
        assert (data["box_scores"][row, :n] > 0).all()
    assert store.meta["extractor"]["boxes"] == "detector"
    assert len(store.meta["weights_record"]["sha256"]) == 64




@pytest.mark.parametrize("height, width", [(427, 640), (640, 427), (500, 375), (612, 612), (1200, 1600), (37, 41)])
def test_preprocessing_resizes_exactly_as_butd_cv2_resize(height, width):
    """BUTD resizes the mean-subtracted float image with cv2.resize(fx=scale, INTER_LINEAR): the same output size
    and, within float rounding, the same samples (427x640 is the common COCO size where a resize to the rounded
    size is off by grey levels)."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (a test extra) compares the resize")
    from features.detector import CAFFE_PIXEL_MEAN_BGR, caffe_preprocess

    ys, xs = np.mgrid[0:height, 0:width]
    texture = (127 + 120 * np.sin(xs / 3.0) * np.cos(ys / 5.0))[..., None] * np.ones(3)  # edges in every direction
    rgb = np.clip(texture + np.random.default_rng(0).normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    ours, scale = caffe_preprocess(rgb, 600, 1000)
    image = rgb[:, :, ::-1].astype(np.float32) - np.asarray(CAFFE_PIXEL_MEAN_BGR, dtype=np.float32)
    if round(scale * max(height, width)) > 1000:
        assert scale == 1000 / max(height, width)
    expected = cv2.resize(image, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    assert ours.permute(1, 2, 0).shape == expected.shape
    # OpenCV hands float resizes to IPP, whose own rounding sits ~3 ulp from the exact value: 3e-5 at these values
    # (the resize to the rounded size was up to 1e-2 off; a float32 coordinate alone is 9e-3 off)
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), expected, rtol=0, atol=6e-5)


def test_a_checkpoint_without_the_anchor_buffer_or_with_harmless_extras_loads_with_a_note(tmp_path, capsys):
    """detectron2 stopped saving ``cell_anchors`` in 2021 and newer versions save ``pixel_mean``/``pixel_std``: such a
    re-saved checkpoint loads with the py-faster-rcnn anchors and says so; weights that do not fit are refused."""
    source, target = small_detector(0), small_detector(1)
    state = ours_to_detectron2(source.state_dict())
    del state["proposal_generator.anchor_generator.cell_anchors.0"]
    state["pixel_mean"], state["pixel_std"] = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    torch.save({"model": state}, tmp_path / "resaved.pth")
    report = load_detectron2_checkpoint(target, tmp_path / "resaved.pth")
    notes = capsys.readouterr().err
    assert "cell_anchors" in notes and "py-faster-rcnn" in notes and "pixel_mean" in notes
    assert report["anchors"].startswith("py-faster-rcnn") and {"pixel_mean", "pixel_std"} <= set(report["unused_keys"])
    assert torch.equal(target.cell_anchors, caffe_cell_anchors())
    rgb = (np.random.default_rng(0).random((100, 150, 3)) * 255).astype(np.uint8)
    image, scale = source.preprocess(rgb)
    a, b = source.detect(image, scale, (100, 150)), target.detect(image, scale, (100, 150))
    assert all(torch.equal(a[key], b[key]) for key in a)

    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(7, 2048)  # another label set
    torch.save({"model": state}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"cls_score.weight \(7, 2048\)"):
        load_detectron2_checkpoint(small_detector(2), tmp_path / "other.pth")
    state = ours_to_detectron2(source.state_dict())
    state["roi_heads.box_head.fc1.weight"] = torch.zeros(4, 4)  # a layer this detector does not have
    torch.save({"model": state}, tmp_path / "fpn.pth")
    with pytest.raises(ValueError, match="roi_heads.box_head.fc1.weight"):
        load_detectron2_checkpoint(small_detector(2), tmp_path / "fpn.pth")


def test_the_box_path_stays_fp32_under_the_callers_autocast():
    """Under an outer bf16 autocast (the GPU default of the other extractors) proposals, pooled features, class
    scores and selected boxes equal the fp32 run exactly; ``trunk_precision: bf16`` changes only the trunk."""
    detector = small_detector(0, anchors_as_proposals=True)
    rgb = (np.random.default_rng(1).random((120, 160, 3)) * 255).astype(np.uint8)
    image, scale = detector.preprocess(rgb)
    plain = detector.detect(image, scale, (120, 160))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wrapped = detector.detect(image, scale, (120, 160))
    for key in plain:
        assert wrapped[key].dtype == plain[key].dtype and torch.equal(wrapped[key], plain[key]), key
    assert plain["features"].dtype == torch.float32
    detector.config.trunk_precision = "bf16"
    mixed = detector.detect(image, scale, (120, 160))
    assert mixed["features"].dtype == torch.float32 and mixed["boxes"].dtype == torch.float32
    assert not torch.equal(mixed["features"], plain["features"])  # the trunk really ran in bf16


@pytest.mark.parametrize("height, width", [(375, 500), (500, 375)])
def test_preprocessing_is_unchanged_where_the_old_resize_already_sampled_exactly(height, width):
    """Where 1 / scale is exact in binary (600 / 375 = 1.6: 0.625) a float32 coordinate is exact too, so the
    previous resize (torch's bilinear kernel at the rounded size) sampled the same points: the two differ only by
    fp32 rounding of the same products: an ulp of the pixel range at most."""
    from features.detector import CAFFE_PIXEL_MEAN_BGR, caffe_preprocess

    rgb = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    ours, scale = caffe_preprocess(rgb, 600, 1000)
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1])).permute(2, 0, 1).float()
    bgr -= torch.tensor(CAFFE_PIXEL_MEAN_BGR).view(3, 1, 1)
    before = torch.ops.aten.upsample_bilinear2d.default(bgr[None], list(ours.shape[1:]), False, scale, scale)[0]
    assert float((ours - before).abs().max()) <= float(np.spacing(np.float32(256)))


def test_fp32_detection_turns_tf32_off_for_its_own_run_only():
    """PyTorch lets cuDNN run fp32 convolutions in TF32 by default (Ampere and newer): the detector's fp32 is
    IEEE fp32, as MILVLG ran, and the process's own setting comes back afterwards."""
    detector = small_detector(0, anchors_as_proposals=True)
    seen = []
    detector.stem.register_forward_hook(lambda *_: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))
    rgb = (np.random.default_rng(1).random((90, 160, 3)) * 255).astype(np.uint8)
    image, scale = detector.preprocess(rgb)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        detector.detect(image, scale, (90, 160))
        assert seen == [(False, False)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
