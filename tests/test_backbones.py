"""Grid features of named timm backbones in the DAG (features.backbones), read by both decoders, and named
experiments (models.<name>: {base, features, init_from}): M² on a grid store beside M² on regions, in the same tables
and paired tests; the weights fetched by the download rule and pinned; the plan-time errors."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save

from captioner.evaluation.tables import feature_comparison_rows, label_rows
from features.config import TimmGridConfig, recorded_extractor
from features.store.reader import FeatureStore
from features.timm_grid import build, create
from tests.http_server import Server
from tests.workflow_helpers import (
    PROJECT,
    TINY_CONFIG,
    clone_run,
    copy_workflow,
    environment,
    planned_jobs,
    snakemake,
)

RUN = "results/tiny"


def tiny_vit_weights(seed: int = 7) -> bytes:
    """A trained-looking test_vit (random, seeded) as the hub's model.safetensors holds a tag's weights."""
    model = create(TimmGridConfig(model="test_vit", weights="none", seed=seed))
    return save({key: value.contiguous() for key, value in model.state_dict().items()})


def backbone_config(workdir, weights_url: str) -> dict:
    config = yaml.safe_load((workdir / TINY_CONFIG).read_text())
    config["features"]["backbones"] = {"vit": {"model": "test_vit", "image_size": 64, "weights_url": weights_url}}
    config["models"] = {
        "m2_xe": {},  # on regions
        "m2_xe_vit": {"base": "m2_xe", "features": "vit"},  # the same recipe on the ViT's grid
        "sat_soft_vit": {"base": "sat_soft", "features": "vit", "lr": 0.002},
    }
    config["evaluate"].update(attention_maps=1, metrics=["bleu", "cider"])
    return config


@pytest.mark.slow
def test_m2_and_sat_on_a_timm_grid_beside_m2_on_regions(finished_run, tmp_path):
    server = Server()
    try:
        weights = tiny_vit_weights()
        server.files["test_vit/model.safetensors"] = weights
        # a backbone and two experiments on it added to a finished run: m2_xe on regions is kept, not retrained
        workdir = clone_run(finished_run, tmp_path / "project")
        url = f"{server.url}/test_vit/model.safetensors"
        (workdir / "vit.yaml").write_text(yaml.safe_dump(backbone_config(workdir, url)))
        planned = planned_jobs(workdir, configfile="vit.yaml")
        assert planned["train"] == 2 and planned["extract_features"] == 1, planned  # the two on the ViT's grid
        snakemake(workdir, configfile="vit.yaml")

        # the weights: fetched by rule timm_weights, their first download's digest pinned beside the config
        fetched = workdir / "data/weights/timm/test_vit.safetensors"
        assert fetched.read_bytes() == weights
        assert hashlib.sha256(weights).hexdigest() in (workdir / "vit.lock.json").read_text()

        # the store: a grid of the ViT's 4x4 patches at 64 px, recorded as timm's, from the fetched weights
        store = FeatureStore(workdir / RUN / "features/vit.h5")
        recorded = store.meta["extractor"]
        assert store.kind == "grid" and store.feature_dim == 64 and store.meta["software"]["timm"]
        assert recorded == {"kind": "grid", "library": "timm", "model": "test_vit", "image_size": 64, "seed": 0,
                            "weights": "data/weights/timm/test_vit.safetensors"}
        first = json.loads((workdir / RUN / "text/images.json").read_text())["images"][0]
        image_id, path = first["image_id"], workdir / RUN / "dataset" / first["path"]
        config = recorded_extractor(recorded)
        extractor = build(TimmGridConfig(**{**vars(config), "weights": str(fetched)}), torch.device("cpu"))
        image = Image.open(path).convert("RGB")
        ours = extractor(extractor.collate([extractor.load(image, image_id)]))["features"][0]
        stored = store.gather([image_id])["features"][0].astype(np.float32)
        assert stored.shape == (16, 64) and np.allclose(stored, ours, atol=2e-2, rtol=1e-2)  # (stored as float16)
        random = build(TimmGridConfig(model="test_vit", weights="none", image_size=64), torch.device("cpu"))
        assert not np.allclose(stored, random(random.collate([random.load(image, image_id)]))["features"][0],
                               atol=2e-2, rtol=1e-2)  # the hub's weights, not a random start

        # M² trained on the grid under its own name, with the recipe of m2_xe
        checkpoint = torch.load(workdir / RUN / "models/m2_xe_vit/seed0/checkpoint.pt", weights_only=False)
        assert (checkpoint["name"], checkpoint["family"]) == ("m2_xe_vit", "m2")
        assert checkpoint["features"]["kind"] == "grid" and checkpoint["features"]["extractor"] == recorded
        sat = torch.load(workdir / RUN / "models/sat_soft_vit/seed0/checkpoint.pt", weights_only=False)
        assert sat["hparams"]["lr"] == 0.002 and "base" not in sat["hparams"] and "features" not in sat["hparams"]

        # one table with both M² rows, the experiments labelled; a paired test between them
        with open(workdir / RUN / "tables/scores.csv") as handle:
            rows = {row["model"]: row for row in csv.DictReader(handle)}
        assert set(rows) == {"m2_xe", "m2_xe_vit", "sat_soft_vit"}
        assert rows["m2_xe_vit"]["label"] == "m2_xe recipe; features vit (test_vit, 64 px)"
        assert rows["sat_soft_vit"]["label"] == "sat_soft recipe; features vit (test_vit, 64 px); lr: 0.002"
        assert rows["m2_xe"]["label"] == ""
        significance = json.loads((workdir / RUN / "tables/significance.json").read_text())
        assert [(p["a"], p["b"]) for p in significance["pairs"]] == [("m2_xe_vit", "m2_xe")]
        assert (workdir / RUN / "eval/sat_soft_vit/seed0/attention/00.png").stat().st_size > 0

        # the recorded extractor is enough to caption a new photo with the model trained on the grid
        captioned = subprocess.run(
            [sys.executable, "-m", "captioner", "caption", "--model", f"{RUN}/models/m2_xe_vit/seed0/checkpoint.pt",
             str(path), "--beam-size", "2", "--max-length", "6"],
            cwd=workdir, env=environment(), capture_output=True, text=True, timeout=300)
        assert captioned.returncode == 0, captioned.stderr
        assert str(path) in captioned.stdout
    finally:
        server.close()


@pytest.mark.parametrize("models, expected", [
    ({"m2_scst_vit": {"base": "m2_scst", "features": "vit"}},
     "models.m2_scst_vit reads vit but starts from m2_xe, which reads regions; set models.m2_scst_vit.init_from to a "
     "model of m2_xe on vit (e.g. m2_xe_vit: {base: m2_xe, features: vit})"),
    ({"m2_scst_vit": {"base": "m2_scst", "features": "vit", "init_from": "sat_soft"}},
     "models.m2_scst_vit.init_from: sat_soft trains sat_soft's recipe; m2_scst_vit (m2_scst) starts from a model of "
     "m2_xe's"),
    ({"m2_scst_vit": {"base": "m2_scst", "features": "vit", "init_from": "m2_xe_nowhere"}},
     "models.m2_scst_vit.init_from: m2_xe_nowhere is neither a model of the config nor a registered one"),
    ({"sat_soft_regions": {"base": "sat_soft", "features": "regions"}},
     "models.sat_soft_regions.features: regions is a regions store; sat reads grid stores: grid or a "
     "features.backbones name"),
    ({"m2_xe_clip": {"base": "m2_xe", "features": "clip"}},
     "models.m2_xe_clip.features: 'clip' is neither grid, regions nor a name under features.backbones (vit)"),
    ({"sat_soft_lr": {"lr": 0.01}},
     "models.sat_soft_lr: unknown model 'sat_soft_lr'; expected one of sat_soft, sat_hard, m2_xe, m2_scst optionally "
     "followed by _blind; a named experiment of one of them gives base: (e.g. base: sat_soft)"),
])
def test_what_a_model_reads_and_starts_from_is_checked_while_planning(tmp_path, models, expected):
    workdir = copy_workflow(tmp_path / "project")
    config = backbone_config(workdir, "")
    config["features"]["backbones"]["vit"]["weights"] = "none"
    config["models"] = models
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", configfile="bad.yaml", check=False)
    assert result.returncode != 0 and expected in result.stdout + result.stderr


def test_a_named_scst_experiment_on_a_grid_starts_from_its_own_xe_model(tmp_path):
    """The plan, not the run: m2_scst_vit trains from m2_xe_vit's checkpoint on the ViT store, its blind twin from
    m2_xe_vit_blind's; regions are not extracted for them."""
    workdir = copy_workflow(tmp_path / "project")
    config = backbone_config(workdir, "")
    config["features"]["backbones"]["vit"]["weights"] = "none"
    config["models"] = {"m2_xe_vit": {"base": "m2_xe", "features": "vit"},
                        "m2_scst_vit": {"base": "m2_scst", "features": "vit", "init_from": "m2_xe_vit"},
                        "m2_scst_vit_blind": {}}
    (workdir / "vit.yaml").write_text(yaml.safe_dump(config))
    plan = snakemake(workdir, "-n", "-p", configfile="vit.yaml").stdout
    commands = [line for line in plan.splitlines() if "captioner job train" in line]
    by_model = {line.split("--model ")[1].split()[0]: line for line in commands}
    assert sorted(by_model) == ["m2_scst_vit", "m2_scst_vit_blind", "m2_xe_vit", "m2_xe_vit_blind"]
    assert "--recipe m2_scst " in by_model["m2_scst_vit"] and "--recipe m2_xe_blind " in by_model["m2_xe_vit_blind"]
    assert all("--features results/tiny/features/vit.h5" in line for line in commands)
    assert f"--init {RUN}/models/m2_xe_vit/seed0/checkpoint.pt" in by_model["m2_scst_vit"]
    assert f"--init {RUN}/models/m2_xe_vit_blind/seed0/checkpoint.pt" in by_model["m2_scst_vit_blind"]
    assert "features/regions.h5" not in plan and "timm_weights" not in plan  # weights: none, nothing fetched
    pairs = [line for line in plan.splitlines() if "job significance" in line]
    assert '["m2_scst_vit","m2_xe_vit"]' in pairs[0] and '["m2_scst_vit","m2_scst_vit_blind"]' in pairs[0]


def test_the_feature_comparison_rows_are_cocos_and_labels_name_the_experiment():
    rows = feature_comparison_rows("coco")
    assert [r["CIDEr-D"] for r in rows] == [116.6, 130.0, 120.6, 134.2, 122.3, 136.6, 123.6, 136.2]
    assert all(r["model"].startswith("published: X-modaler Transformer") and r["images"] == 5000 for r in rows)
    assert feature_comparison_rows("flickr8k") == []
    labelled = label_rows([{"model": "a"}, {"model": "b"}], {"b": "m2_xe recipe; features vit"})
    assert labelled == [{"model": "a"}, {"model": "b", "label": "m2_xe recipe; features vit"}]


def test_the_coco_clip_config_fetches_the_hub_weights_timm_itself_would(tmp_path):
    """config/coco-clip.yaml from nothing: the tag's file at the URL timm's pretrained config names, pinned."""
    import timm

    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", "config/coco-clip.yaml",
                             "-d", str(tmp_path)], cwd=PROJECT, env=environment(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROJECT / "config/coco-clip.yaml").read_text())
    for entry in config["features"]["backbones"].values():
        hub_id = timm.models.get_pretrained_cfg(entry["model"]).hf_hub_id
        assert f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors" in result.stdout
    assert "config/coco.lock.json" in result.stdout.split("--lock ", 1)[1].split()[0]  # the COCO configs' pins
    assert "rule timm_weights" in result.stdout and "rule extract_features" in result.stdout
    assert "features/clip_vit_b16.h5" in result.stdout and "features/regions.h5" not in result.stdout


def test_a_backbone_store_reads_back_its_recorded_extractor():
    config = TimmGridConfig(model="test_vit", weights="none", image_size=64, seed=2)
    assert recorded_extractor(config.record()) == config
    assert config.record()["kind"] == "grid" and config.module == "features.timm_grid"


def test_the_schema_names_every_registered_recipe_as_a_base():
    import re

    from captioner.models.registry import base_models
    from pipeline.config import schema

    pattern = schema()["$defs"]["training"]["properties"]["base"]["pattern"]
    names = [*base_models(), *(f"{m}_blind" for m in base_models())]
    assert all(re.fullmatch(pattern, name) for name in names)
    assert pattern == f"^({'|'.join(base_models())})(_blind)?$"  # one list: the registry's
