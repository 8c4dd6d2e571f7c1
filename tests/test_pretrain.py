"""Backbone pre-training on labelled boxes (the offline stand-in for ImageNet weights): cell targets, the CLI,
loading the result as a user checkpoint, and the DAG rule that runs it where ``weights: pretrain``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.data.demo import generate
from features.backbones import build_resnet
from features.pretrain import cell_targets
from features.store.reader import FeatureStore
from pipeline.digest import sha256_of
from tests.faults.helpers import manifest_for
from tests.workflow_helpers import copy_workflow, edit_config, planned_jobs, snakemake

ROOT = Path(__file__).resolve().parents[1]


def test_cell_targets_pick_the_smallest_box_holding_each_centre():
    boxes = np.array([[0, 0, 64, 64], [32, 32, 128, 128]], dtype=np.float32)  # cell centres: 16, 48, 80, 112
    target = cell_targets(boxes, [1, 2], width=128, height=128, cells=4)
    assert target.tolist() == [[1, 1, 0, 0],
                               [1, 1, 2, 2],  # (1, 1) lies in both: the smaller box wins
                               [0, 2, 2, 2],
                               [0, 2, 2, 2]]
    wide = cell_targets(boxes[:1], [5], width=256, height=128, cells=4)  # x centres 32, 96, 160, 224
    assert wide.tolist() == [[5, 0, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def pretrain_command(data: Path, out: Path, epochs: int) -> list[str]:
    spec = {"image_size": 64, "batch_size": 8, "lr": 0.003, "device": "cpu", "precision": "fp32", "epochs": epochs}
    return [sys.executable, "-m", "features", "job", "pretrain", "--spec", json.dumps(spec), "--manifest",
            str(manifest_for(data / "dataset_coco.json")), "--image-root", str(data), "--boxes", str(data / "boxes.json"),
            "--out", str(out)]


def test_pretrain_learns_from_training_boxes_only_and_loads_as_a_checkpoint(tmp_path):
    data = tmp_path / "demo"
    generate(data, seed=2, num_train=40, num_val=6, num_test=6)
    split = {im["cocoid"]: im for im in json.loads((data / "dataset_coco.json").read_text())["images"]}
    for image in split.values():  # test images are never read: remove them
        if image["split"] == "test":
            (data / image["filepath"] / image["filename"]).unlink()
    out = tmp_path / "backbone.pt"
    result = subprocess.run(pretrain_command(data, out, 4), cwd=ROOT, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    losses = [row["loss"] for row in report["history"]]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    assert report["train_images"] == 40 and report["val_images"] == 6
    boxes = json.loads((data / "boxes.json").read_text())
    train_labels = {label for cocoid, im in split.items() if im["split"] in ("train", "restval")
                    for label in boxes[str(cocoid)]["labels"]}
    assert set(report["labels"]) == train_labels and sorted(report["labels"].values()) == list(
        range(1, len(train_labels) + 1))

    trained, record = build_resnet("resnet18", str(out))  # the extractors' loader for user checkpoints
    random_init, _ = build_resnet("resnet18", "none", seed=0)
    assert record["sha256"] and len(record["sha256"]) == 64
    assert not torch.equal(trained.conv1.weight, random_init.conv1.weight)
    assert not torch.equal(trained.bn1.running_mean, random_init.bn1.running_mean)  # BN statistics were learnt


def test_boxes_without_labels_are_a_clear_error(tmp_path):
    data = tmp_path / "demo"
    generate(data, seed=2, num_train=4, num_val=1, num_test=1)
    boxes = json.loads((data / "boxes.json").read_text())
    (data / "boxes.json").write_text(json.dumps({k: {"boxes": v["boxes"]} for k, v in boxes.items()}))
    out = tmp_path / "backbone.pt"
    result = subprocess.run(pretrain_command(data, out, 1), cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "labels" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.slow
def test_weights_pretrain_adds_one_job_before_extraction_and_reruns_when_its_settings_change(tmp_path):
    workdir = copy_workflow(tmp_path / "project")

    def use_pretrain(config):  # the demo's recipe: trained to res4, grid cells from res4
        config["features"]["grid"].update(weights="pretrain", stage="layer3")
        config["features"]["pretrain"] = {"stage": "layer3", "image_size": 64, "epochs": 1, "batch_size": 16}

    edit_config(workdir, use_pretrain)
    grid = "results/tiny/features/grid.h5"
    assert planned_jobs(workdir, grid) == Counter(demo_data=1, image_manifest=1, pretrain_backbone=1, extract_features=1)
    snakemake(workdir, "--printshellcmds", grid)  # (a flag first: a bare target would extend --configfile)
    trunk = workdir / "results/tiny/features/backbone.pt"
    meta = FeatureStore(workdir / grid).meta
    assert json.dumps(meta).count(str(Path("results/tiny/features/backbone.pt"))) >= 1
    assert sha256_of(trunk) in json.dumps(meta)
    assert FeatureStore(workdir / grid).feature_dim == 256  # ResNet-18's res4
    assert json.loads(trunk.with_suffix(".json").read_text())["config"]["stage"] == "layer3"
    assert planned_jobs(workdir, grid) == Counter()
    edit_config(workdir, lambda c: c["features"]["pretrain"].__setitem__("epochs", 2))
    assert planned_jobs(workdir, grid) == Counter(pretrain_backbone=1, extract_features=1)


@pytest.mark.parametrize("features", [{"grid": {"stage": "layer4"}}, {"regions": {"weights": "pretrain", "head": "res5"}}])
def test_a_stage_past_the_pretrained_one_is_refused_while_planning(tmp_path, features):
    workdir = copy_workflow(tmp_path / "project")

    def edit(config):
        config["features"]["grid"].update(weights="pretrain", stage="layer3")
        config["features"]["pretrain"] = {"stage": "layer3", "image_size": 64}
        for kind, keys in features.items():
            config["features"][kind].update(keys)

    edit_config(workdir, edit)
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    assert "runs past features.pretrain.stage (layer3), whose later stages are untrained" in result.stdout + result.stderr
