"""Released weights as a model of the DAG: download -> verify -> import instead of training, features for the scored
images only, the authors' own features beside ours, labelled rows (captioner/models/releases.py,
workflow/rules/releases.smk)."""

import csv
import hashlib
import json
import re
import shlex
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from captioner.apps.import_m2_weights import REFERENCE_SPECIALS
from captioner.models.m2 import M2Config, MeshedMemoryTransformer
from captioner.models.releases import RELEASES, ReleasedModel
from features.store.reader import FeatureStore
from pipeline.errors import InputError
from tests.http_server import Server
from tests.test_import_m2_weights import pickle_reference_vocab, reference_layout
from tests.workflow_helpers import PROJECT, clone_run, copy_workflow, edit_config, environment, planned_jobs, snakemake

RUN = "results/tiny"
RELEASE = RELEASES["m2_cornia2020"]
MODELS = {"m2_released": {"release": "m2_cornia2020"},
          "m2_released_authors_features": {"release": "m2_cornia2020", "features": "release"}}


def released_files(run_dir, folder) -> dict[str, bytes]:
    """The three released files made for the tiny run: a reference-layout checkpoint whose features are the tiny
    region store's width, its vocab.pkl (the tiny run's words), and coco_detections-layout features of the test
    images (2-5 regions each, as the authors' file varies them)."""
    words = [w for w in json.loads((run_dir / "text/vocab.json").read_text())["itos"] if not w.startswith("<")]
    reference_itos = list(REFERENCE_SPECIALS) + words
    our_itos = ["<pad>", "<bos>", "<eos>", "<unk>"] + words
    dim = FeatureStore(run_dir / "features/regions.h5").feature_dim
    torch.manual_seed(0)
    config = M2Config(vocab_size=len(our_itos), feature_dim=dim, d_model=16, heads=8, d_ff=32, memory_slots=4,
                      max_length=20, reference_compat=True)
    checkpoint = folder / "meshed_memory_transformer.pth"
    torch.save({"state_dict": reference_layout(MeshedMemoryTransformer(config), our_itos, reference_itos),
                "epoch": 28}, checkpoint)
    pickle_reference_vocab(folder / "vocab.pkl", reference_itos)
    test_ids = [image["image_id"] for image in json.loads((run_dir / "text/captions.json").read_text())
                ["splits"]["test"]]
    rng = np.random.default_rng(0)
    with h5py.File(folder / "coco_detections.hdf5", "w") as handle:
        for image_id in test_ids:
            count = int(rng.integers(2, 6))
            handle[f"{image_id}_features"] = rng.random((count, dim), dtype=np.float32)
            handle[f"{image_id}_boxes"] = rng.random((count, 4), dtype=np.float32) * 100
    return {name: (folder / name).read_bytes()
            for name in ("meshed_memory_transformer.pth", "vocab.pkl", "coco_detections.hdf5")}


def use_releases(workdir, server, files, models=MODELS):
    """The tiny config with only released-weights models, their files served by ``server``."""
    server.files.update(files)
    vocab = files["vocab.pkl"]

    def edit(config):
        config["models"] = dict(models)
        config["releases"] = {"m2_cornia2020": {
            "checkpoint": {"url": f"{server.url}/meshed_memory_transformer.pth"},
            "vocab": {"url": f"{server.url}/vocab.pkl", "size": len(vocab),
                      "sha256": hashlib.sha256(vocab).hexdigest()},
            "features": {"url": f"{server.url}/coco_detections.hdf5"}}}
    edit_config(workdir, edit)


def csv_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_released_weights_are_scored_without_training_then_a_training_run_extracts_only_the_rest(finished_run,
                                                                                                  tmp_path):
    """An evaluation-only run: the released files fetched (the checkpoint pinned), imported, the test images' regions
    extracted and the authors' features of the same images imported, two labelled rows and a paired test. Then a
    model that trains on regions is added: only the other images are extracted, joined with the scored part into
    the store one extraction makes, and nothing of the released rows reruns."""
    workdir = clone_run(finished_run, tmp_path / "run")
    (workdir / RUN / "features/regions.h5").unlink()  # the finished run's one-go store: compared with at the end
    files = released_files(finished_run / RUN, tmp_path)
    server = Server()
    try:
        use_releases(workdir, server, files)
        planned = planned_jobs(workdir)
        assert "train" not in planned and "extract_features" not in planned, planned
        assert planned["release_file"] == 3 and planned["import_release"] == 2, planned
        # the scored part of the regions (test images only) and the authors' features of the same images
        assert planned["extract_set_features"] == 1 and planned["import_release_features"] == 1, planned
        snakemake(workdir)
        # the checkpoint has no published checksum: its first download is pinned beside the config and checked after
        # (another file at the same URL is refused, and nothing is left at the path)
        lock = json.loads((workdir / ".test/config/config.lock.json").read_text())
        target = "data/weights/releases/m2_cornia2020/meshed_memory_transformer.pth"
        (workdir / target).rename(tmp_path / "kept.pth")
        server.files["meshed_memory_transformer.pth"] = files["meshed_memory_transformer.pth"][:-10] + b"0" * 10
        refused = snakemake(workdir, "--", target, check=False)
        left = (workdir / target).exists()
        (tmp_path / "kept.pth").rename(workdir / target)
    finally:
        server.close()
    run = workdir / RUN
    checkpoint_url = f"{server.url}/meshed_memory_transformer.pth"
    pinned = hashlib.sha256(files["meshed_memory_transformer.pth"]).hexdigest()
    assert lock[checkpoint_url] == pinned
    assert f"{server.url}/vocab.pkl" not in lock  # its SHA-256 is published: nothing to pin
    assert refused.returncode != 0 and not left
    log = (workdir / "data/weights/logs/releases/m2_cornia2020/meshed_memory_transformer.pth.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checksum mismatch" in errors[0] and f"expected sha256 {pinned}" in errors[0], log

    test_ids = sorted(image["image_id"] for image in json.loads((run / "text/captions.json").read_text())
                      ["splits"]["test"])
    for store in ("scored_regions.h5", "scored_m2_cornia2020.h5"):
        assert sorted(FeatureStore(run / "features" / store).image_ids.tolist()) == test_ids, store
    imported = torch.load(run / "models/m2_released/seed0/checkpoint.pt", weights_only=True)
    assert imported["name"] == "m2_released" and imported["release"]["id"] == "m2_cornia2020"
    assert imported["epoch"] == 28

    rows = {row["model"]: row for row in csv_rows(run / "tables/scores.csv")}
    assert "features extracted by this run" in rows["m2_released"]["label"]
    assert "coco_detections.hdf5" in rows["m2_released_authors_features"]["label"]
    assert all(RELEASE.label in rows[m]["label"] for m in MODELS)
    # (the authors' log is a row of COCO runs only: these are the demo's images; test_tables holds that row)
    assert not any(name.startswith("reported:") for name in rows)
    assert int(rows["m2_released"]["images"]) == len(test_ids)
    # the same weights on two feature sources: other log-probabilities (a random model may well write the same
    # words), and a paired test between the two rows
    logprobs = [[beam["logprob"] for beam in json.loads(
        (run / f"eval/{model}/seed0/predictions_test_beams.json").read_text())["images"]] for model in MODELS]
    assert logprobs[0] != pytest.approx(logprobs[1])
    significance = json.loads((run / "tables/significance.json").read_text())
    assert [pair["a"] + " vs " + pair["b"] for pair in significance["pairs"]] == [
        "m2_released_authors_features vs m2_released"]
    assert "released weights (Cornia et al. 2020)" in (run / "tables/scores.md").read_text()


    edit_config(workdir, lambda c: c["models"].update(m2_xe={}))
    planned = planned_jobs(workdir)
    assert "extract_features" not in planned and "import_release" not in planned, planned
    assert planned["manifest_part"] == 1 and planned["extract_rest_features"] == 1, planned  # the rest
    assert planned["complete_features"] == 1 and planned["train"] == 1, planned
    assert planned["decode"] == 1, planned  # m2_xe's: the released rows keep reading the scored part
    snakemake(workdir, "--", f"{RUN}/features/regions.h5")
    rest = len(json.loads((run / "text/rest_images.json").read_text())["images"])
    assert f"{rest} done, 0 already written" in (run / "logs/extract_features/rest_regions.log").read_text()
    assert not (run / "features/rest_regions.h5").exists()  # temp: the full store holds those rows now
    completed, one_go = FeatureStore(run / "features/regions.h5"), FeatureStore(finished_run / RUN / "features/regions.h5")
    assert len(completed) == rest + len(test_ids) == len(one_go)
    ids = sorted(one_go.image_ids.tolist())
    assert sorted(completed.image_ids.tolist()) == ids
    a, b = completed.gather(ids), one_go.gather(ids)
    for key in b:
        assert np.allclose(a[key], b[key], atol=1e-3), key


def test_the_coco_released_config_plans_no_training_and_the_test_images_only(tmp_path):
    workdir = copy_workflow(tmp_path / "coco")
    planned = planned_jobs(workdir, configfile="config/coco-released.yaml")
    assert "train" not in planned and "extract_features" not in planned and "torchvision_weights" not in planned
    # val2014 (the test images' archive), the JSON, the detector, the three released files
    assert planned["image_archive"] == 1 and planned["karpathy_json"] == 1 and planned["detector_weights"] == 1
    assert planned["release_file"] == 3 and planned["import_release"] == 2 and planned["import_release_features"] == 1
    assert planned["manifest_part"] == 1 and planned["extract_set_features"] == 1
    assert planned["decode"] == planned["score"] == 2 and planned["tables"] == 1 and planned["significance"] == 1
    # the tables job labels both rows and adds the authors' log of the weights (a COCO run's test split)
    commands = snakemake(workdir, "-n", "-p", configfile="config/coco-released.yaml").stdout
    released = json.loads(shlex.split(commands.split("--released ", 1)[1])[0])
    # the detector is fetched with config/coco.yaml's own command (one lock file): switching configs refetches nothing
    coco = snakemake(workdir, "-n", "-p", configfile="config/coco.yaml").stdout
    detector = re.compile(r"python -m captioner download .*--out data/weights/bua-caffe-frcn-r101-k10-100.pth.*")
    assert detector.search(commands)[0] == detector.search(coco)[0]
    assert set(released["labels"]) == {"m2_released", "m2_released_authors_features"}
    assert released["reported"] == [[RELEASE.reported_source, 5000, 5, RELEASE.reported]]


def import_job(*args):
    return subprocess.run([sys.executable, "-m", "captioner", "job", "import-m2-weights", *map(str, args)],
                          capture_output=True, text=True, cwd=PROJECT, env=environment(), timeout=120,
                          check=False)


@pytest.fixture
def reference_pair(tmp_path):
    itos = list(REFERENCE_SPECIALS) + ["a", "dog", "runs"]
    ours = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog", "runs"]
    config = M2Config(vocab_size=len(ours), feature_dim=8, d_model=16, heads=8, d_ff=32, memory_slots=2,
                      max_length=20, reference_compat=True)
    torch.save({"state_dict": reference_layout(MeshedMemoryTransformer(config), ours, itos), "epoch": 1},
               tmp_path / "meshed_memory_transformer.pth")
    pickle_reference_vocab(tmp_path / "vocab.pkl", itos)
    return tmp_path / "meshed_memory_transformer.pth", tmp_path / "vocab.pkl", itos


def test_a_damaged_checkpoint_fails_with_one_error_naming_it(reference_pair, tmp_path):
    checkpoint, vocab, _ = reference_pair
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])  # a transfer cut short
    result = import_job(checkpoint, vocab, tmp_path / "ours.pt", "--name", "m2_released")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(checkpoint) in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "ours.pt").exists()


@pytest.mark.parametrize("damage", ["truncated", "html"])
def test_a_damaged_vocabulary_fails_with_one_error_naming_it(reference_pair, tmp_path, damage):
    checkpoint, vocab, _ = reference_pair
    data = vocab.read_bytes()
    vocab.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>404 Not Found</html>")
    result = import_job(checkpoint, vocab, tmp_path / "ours.pt")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and str(vocab) in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "ours.pt").exists()


def test_a_vocabulary_of_the_wrong_size_fails_with_one_error_naming_it(reference_pair, tmp_path):
    checkpoint, vocab, itos = reference_pair
    pickle_reference_vocab(vocab, itos + ["extra"])
    result = import_job(checkpoint, vocab, tmp_path / "ours.pt", "--release", "m2_cornia2020")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(vocab) in errors[0] and "8 words" in errors[0], result.stderr
    assert not (tmp_path / "ours.pt").exists()
    # the right pair imports, named as asked
    pickle_reference_vocab(vocab, itos)
    assert import_job(checkpoint, vocab, tmp_path / "ours.pt", "--name", "m2_mine").returncode == 0
    assert torch.load(tmp_path / "ours.pt", weights_only=True)["name"] == "m2_mine"


def test_released_model_names_carry_their_family():
    name = ReleasedModel.parse("m2_released_theirs", "m2_cornia2020")
    assert (name.family, name.trained, name.init_from, name.features) == ("m2", False, None, "regions")
    with pytest.raises(InputError, match="sat_released.*m2_"):
        ReleasedModel.parse("sat_released", "m2_cornia2020")
    with pytest.raises(InputError, match="unknown release"):
        ReleasedModel.parse("m2_released", "m2_2031")
    with pytest.raises(InputError, match="not trained"):
        _ = name.objective
    with pytest.raises(InputError, match="a trained model's name"):  # m2_scst would start from it
        ReleasedModel.parse("m2_xe", "m2_cornia2020")


def test_the_authors_features_cannot_be_asked_of_images_they_do_not_cover(tmp_path):
    workdir = copy_workflow(tmp_path / "tiny")
    edit_config(workdir, lambda c: c.update(models={"m2_released_authors_features": MODELS[
        "m2_released_authors_features"]}, evaluate=dict(c["evaluate"], nocaps={"source": "demo"})))
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    assert "models.m2_released_authors_features.features: release" in result.stdout + result.stderr
