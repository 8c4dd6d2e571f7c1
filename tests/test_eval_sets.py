"""Further evaluation sets (evaluate.sets): a Karpathy-format dataset added as one config entry is decoded and scored
by every trained model and tabled, without touching any rule file; adding or removing one reruns nothing else."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from captioner.data import eval_set
from captioner.evaluation.scoring import score_captions
from pipeline.errors import InputError
from pipeline.manifest import read_manifest
from tests.workflow_helpers import PROJECT, TINY_CONFIG, clone_run, edit_config, flickr_shaped, planned_jobs, snakemake

RUN = "results/tiny"
MODELS = ["sat_soft", "sat_hard", "m2_xe", "m2_scst", "sat_soft_blind"]
SET = "flickr_tiny"


def set_entry(folder: Path) -> dict:
    return {"karpathy_json": str(folder / "dataset_flickr8k.json"), "image_root": str(folder / "images"),
            "boxes_json": str(folder / "boxes.json")}


def test_a_set_is_its_split_with_raw_references_and_a_manifest(tmp_path):
    folder = flickr_shaped(tmp_path / "flickr")
    count = eval_set.prepare(folder / "dataset_flickr8k.json", SET, "test", tmp_path / "set.json",
                             tmp_path / "manifest.json", folder / "images")
    written = json.loads((tmp_path / "set.json").read_text())
    source = json.loads((folder / "dataset_flickr8k.json").read_text())
    tests = [image for image in source["images"] if image["split"] == "test"]
    assert count == 6 and list(written["splits"]) == [SET]
    assert [(i["image_id"], i["path"]) for i in written["splits"][SET]] == [(i["imgid"], i["filename"]) for i in tests]
    assert [i["refs"] for i in written["splits"][SET]] == [[s["raw"] for s in i["sentences"]] for i in tests]
    manifest = read_manifest(tmp_path / "manifest.json")
    assert [(m.image_id, m.path, m.split) for m in manifest] == [(i["imgid"], i["filename"], "test") for i in tests]


def test_a_missing_image_or_an_empty_split_is_named(tmp_path):
    folder = flickr_shaped(tmp_path / "flickr")
    source = json.loads((folder / "dataset_flickr8k.json").read_text())
    last = [i for i in source["images"] if i["split"] == "test"][-1]
    gone = folder / "images" / last["filename"]
    gone.unlink()
    with pytest.raises(InputError, match=rf"{gone}: image {last['imgid']} of evaluation set {SET} is missing \(1 of 6"):
        eval_set.prepare(folder / "dataset_flickr8k.json", SET, "test", tmp_path / "set.json", tmp_path / "m.json",
                         folder / "images")
    with pytest.raises(InputError, match=r"no val images .*set evaluate.sets.other.split"):
        source["images"] = [i for i in source["images"] if i["split"] != "val"]
        (tmp_path / "noval.json").write_text(json.dumps(source))
        eval_set.prepare(tmp_path / "noval.json", "other", "val", tmp_path / "set.json", tmp_path / "m.json")
    assert not (tmp_path / "set.json").exists() and not (tmp_path / "m.json").exists()
    result = subprocess.run([sys.executable, "-m", "captioner", "job", "prepare-eval-set", "--karpathy-json",
                             str(folder / "dataset_flickr8k.json"), "--name", SET, "--split", "test", "--captions",
                             str(tmp_path / "set.json"), "--manifest", str(tmp_path / "m.json"), "--image-root",
                             str(folder / "images")], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {gone}: image {last['imgid']} of evaluation set {SET} is missing (1 of 6 "
        f"images are); check evaluate.sets.{SET}.image_root"]


def test_a_set_named_like_a_split_is_refused(tmp_path):
    from snakemake.utils import validate

    config = yaml.safe_load((PROJECT / TINY_CONFIG).read_text())
    config["evaluate"]["sets"] = {"test": {"karpathy_json": "x.json", "image_root": "x"}}
    with pytest.raises(Exception, match="test"):
        validate(config, str(PROJECT / "workflow/schemas/config.schema.yaml"))
    config["evaluate"]["sets"] = {"flickr": {"karpathy_json": "x.json", "image_root": "x"}}
    validate(config, str(PROJECT / "workflow/schemas/config.schema.yaml"))
    assert config["evaluate"]["sets"]["flickr"]["split"] == "test"  # the schema's default, filled in


@pytest.mark.slow
def test_a_config_entry_adds_a_scored_and_tabled_set_and_reruns_nothing_else(finished_run, tmp_path):
    run = clone_run(finished_run, tmp_path / "run")
    folder = flickr_shaped(tmp_path / "flickr")
    trained = {m: (run / RUN / f"models/{m}/seed0/checkpoint.pt").stat().st_mtime_ns for m in MODELS}
    edit_config(run, lambda c: c["evaluate"].__setitem__("sets", {SET: set_entry(folder)}))
    # the set's text, its two stores, every model's decode and score, its table; costs reads them all
    assert planned_jobs(run) == Counter(prepare_eval_set=1, extract_set_features=2, decode=len(MODELS),
                                        score=len(MODELS), set_tables=1, costs=1, all=1)
    snakemake(run)
    assert {m: (run / RUN / f"models/{m}/seed0/checkpoint.pt").stat().st_mtime_ns for m in MODELS} == trained

    source = json.loads((folder / "dataset_flickr8k.json").read_text())
    references = {i["imgid"]: [s["raw"] for s in i["sentences"]] for i in source["images"] if i["split"] == "test"}
    with open(run / RUN / "tables/sets.csv") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(MODELS)
    for model in MODELS:
        predictions = json.loads((run / RUN / f"eval/{model}/seed0/predictions_{SET}.json").read_text())
        assert sorted(p["image_id"] for p in predictions) == sorted(references)
        # scored against the set's own references: the same numbers from pycocoevalcap directly
        direct = score_captions({p["image_id"]: p["caption"] for p in predictions}, references,
                                ["bleu", "cider"])["corpus"]
        assert rows[model]["split"] == SET and rows[model]["images"] == "6"
        assert float(rows[model]["CIDEr-D"]) == pytest.approx(direct["CIDEr-D"], abs=0.01)
        assert float(rows[model]["BLEU-4"]) == pytest.approx(direct["BLEU-4"], abs=0.01)
    assert f"## {SET}" in (run / RUN / "tables/sets.md").read_text()
    assert "prepare_eval_set" in (run / RUN / "tables/costs.md").read_text()

    edit_config(run, lambda c: c["evaluate"].__setitem__("sets", {}))
    assert planned_jobs(run) == Counter(costs=1, all=1)
