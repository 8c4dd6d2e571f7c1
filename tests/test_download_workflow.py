"""From nothing to scores.csv through the download rules, against a local HTTP server (no internet): COCO-style zips
and a Karpathy zip the test builds, with the test's own sizes and checksums in the config."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.http_server import Server
from tests.workflow_helpers import PROJECT, TINY_CONFIG, copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.slow

FOLDER_OF_SPLIT = {"train": "train2014", "restval": "val2014", "val": "val2014", "test": "val2014"}


def coco_style_zips(tmp_path: Path) -> dict[str, bytes]:
    """train2014.zip, val2014.zip and caption_datasets.zip as COCO and Karpathy publish them, from demo images."""
    from captioner.data.demo import generate

    source = tmp_path / "source"
    generate(source, seed=5, num_train=10, num_val=3, num_test=3, num_restval=2, image_size=128)
    dataset = json.loads((source / "dataset_coco.json").read_text())
    archives = {name: io.BytesIO() for name in ("train2014", "val2014")}
    handles = {name: zipfile.ZipFile(buffer, "w") for name, buffer in archives.items()}
    for image in dataset["images"]:
        folder = FOLDER_OF_SPLIT[image["split"]]
        handles[folder].write(source / "images" / image["filename"], f"{folder}/{image['filename']}")
        image["filepath"] = folder
    # a top-level entry beside the folder (never unpacked) makes the zip span several 64 KiB network reads, so a
    # connection dropped half-way leaves a partial transfer to resume
    handles["train2014"].writestr("padding.bin", random.Random(0).randbytes(400_000))
    for handle in handles.values():
        handle.close()
    karpathy = io.BytesIO()
    with zipfile.ZipFile(karpathy, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("dataset_coco.json", json.dumps(dataset))
        handle.writestr("dataset_flickr8k.json", json.dumps({"images": [], "dataset": "flickr8k"}))
    files = {f"{name}.zip": buffer.getvalue() for name, buffer in archives.items()}
    files["caption_datasets.zip"] = karpathy.getvalue()
    return files


def count_in(data: bytes, folder: str) -> int:
    return sum(1 for name in zipfile.ZipFile(io.BytesIO(data)).namelist() if name.startswith(f"{folder}/"))


def download_config(workdir: Path, server: Server, files: dict[str, bytes]) -> dict:
    config = yaml.safe_load((workdir / TINY_CONFIG).read_text())
    sources = {}
    for key, name in (("train2014", "train2014.zip"), ("val2014", "val2014.zip"), ("karpathy", "caption_datasets.zip")):
        sources[key] = {"url": f"{server.url}/{name}", "size": len(files[name]),
                        "sha256": hashlib.sha256(files[name]).hexdigest()}
        if key != "karpathy":
            sources[key]["files"] = count_in(files[name], key)
    config["dataset"] = {"source": "karpathy", "download": True, "root": "data/coco", "sources": sources}
    config["models"] = {"sat_soft": {}}  # one model is enough: the point is the data path
    config["features"]["grid"]["image_size"] = 64
    config["evaluate"].update(attention_maps=0, metrics=["bleu", "cider"])
    return config


def write(workdir: Path, config: dict) -> None:
    (workdir / "coco.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def test_the_dag_fetches_verifies_unpacks_and_scores_and_a_rerun_fetches_nothing(tmp_path):
    server = Server()
    try:
        files = coco_style_zips(tmp_path)
        server.files.update(files)
        workdir = copy_workflow(tmp_path / "project")
        config = download_config(workdir, server, files)
        right_sha = config["dataset"]["sources"]["karpathy"]["sha256"]
        config["dataset"]["sources"]["karpathy"]["sha256"] = "0" * 64  # first run: a wrong checksum ...
        config["dataset"]["sources"]["val2014"]["url"] = f"{server.url}/moved/val2014.zip"  # ... and a 404
        write(workdir, config)
        half = len(files["train2014.zip"]) // 2
        server.drop_after["train2014.zip"] = half  # ... and a connection that drops half-way

        failed = snakemake(workdir, "--keep-going", configfile="coco.yaml", check=False)
        assert failed.returncode != 0
        root = workdir / "data/coco"
        # the dropped transfer was resumed: the second request asked for the remaining bytes only
        first, second = server.requested("train2014.zip")
        assert first is None and 0 < int(second.removeprefix("bytes=").rstrip("-")) <= half
        unpacked = sorted(p.name for p in (root / "train2014").glob("*.jpg"))
        assert unpacked == sorted(Path(name).name for name in zipfile.ZipFile(io.BytesIO(files["train2014.zip"])).namelist()
                                  if name.startswith("train2014/"))
        # the 404 is one error line naming the URL and where to put the file by hand
        errors = [line for line in (root / "logs/val2014.log").read_text().splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"{server.url}/moved/val2014.zip" in errors[0] and "404" in errors[0]
        assert "by hand" in errors[0] and "zips/val2014.zip" in errors[0]
        # the checksum mismatch names the file and both digests; nothing that looks complete is left
        log = (root / "logs/karpathy_json.log").read_text()
        assert "caption_datasets.zip" in log and "0" * 64 in log and right_sha in log
        assert not (root / "dataset_coco.json").exists() and not (root / "val2014").exists()
        assert sorted(p.name for p in (root / "zips").iterdir()) == []  # no zip, no partial transfer
        assert not (workdir / "results/tiny/text").exists()

        config["dataset"]["sources"]["karpathy"]["sha256"] = right_sha
        config["dataset"]["sources"]["val2014"]["url"] = f"{server.url}/val2014.zip"
        write(workdir, config)
        planned = planned_jobs(workdir, configfile="coco.yaml")
        assert "image_archive" in planned and planned["image_archive"] == 1  # train2014/ is done: only val2014
        assert planned["karpathy_json"] == 1
        snakemake(workdir, configfile="coco.yaml")
        with open(workdir / "results/tiny/tables/scores.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [row["model"] for row in rows] == ["sat_soft"]
        assert sorted(p.name for p in root.iterdir()) == ["dataset_coco.json", "logs", "train2014", "val2014", "zips"]
        assert list((root / "zips").iterdir()) == []  # unpacked zips are deleted (dataset.keep_zips: false)

        requests = len(server.requests)
        assert planned_jobs(workdir, configfile="coco.yaml") == {}  # a rerun plans no download (nor anything)
        assert len(server.requests) == requests
    finally:
        server.close()


def test_the_coco_config_plans_every_download_before_the_jobs_that_read_it(tmp_path):
    """`snakemake -n --configfile config/coco.yaml` on a machine without the data."""
    import re

    workdir = copy_workflow(tmp_path / "project")
    planned = planned_jobs(workdir, configfile="config/coco.yaml")
    assert planned["image_archive"] == 2 and planned["karpathy_json"] == 1
    assert planned["torchvision_weights"] == 1 and planned["detector_weights"] == 1
    assert planned["extract_features"] == 2 and planned["tables"] == 1
    assert planned["nocaps_json"] == 1 and planned["nocaps_images"] == 1 and planned["nocaps_tables"] == 1
    graph = snakemake(workdir, "--rulegraph", configfile="config/coco.yaml").stdout
    names = dict(re.findall(r'(\d+)\[label = "(\w+)"', graph))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(\d+) -> (\d+)", graph)}
    for download in ("image_archive", "torchvision_weights", "detector_weights"):
        assert (download, "extract_features") in edges
    assert ("nocaps_images", "prepare_nocaps") in edges and ("nocaps_json", "nocaps_images") in edges
    assert ("detector_weights", "extract_set_features") in edges
    assert ("karpathy_json", "image_manifest") in edges and ("karpathy_json", "prepare_text") in edges
    # with download off, the same config names your own copies and nothing is fetched
    config = yaml.safe_load((workdir / "config/coco.yaml").read_text())
    own = tmp_path / "own"
    (own / "train2014").mkdir(parents=True)
    (own / "dataset_coco.json").write_text("{}")
    config["dataset"] = {"source": "karpathy", "download": False, "karpathy_json": str(own / "dataset_coco.json"),
                         "image_root": str(own)}
    config["features"]["regions"]["weights"] = str(PROJECT / "README.md")  # any existing file
    config["evaluate"]["nocaps"] = {"source": "none"}
    (workdir / "own.yaml").write_text(yaml.safe_dump(config))
    # the ImageNet weights the config names are a file to place (the same path the download rule writes)
    absent = snakemake(workdir, "-n", configfile="own.yaml", check=False)
    assert absent.returncode != 0 and "data/weights/resnet101-IMAGENET1K_V1.pth" in absent.stdout + absent.stderr
    (workdir / "data/weights").mkdir(parents=True, exist_ok=True)
    (workdir / "data/weights/resnet101-IMAGENET1K_V1.pth").write_bytes(b"a copy")
    result = snakemake(workdir, "-n", configfile="own.yaml")
    output = result.stdout + result.stderr
    assert "extract_features" in output
    assert not any(rule in output for rule in ("image_archive", "karpathy_json", "torchvision_weights", "nocaps_json"))
    # ... and an image folder that is not there is named, with where the images come from
    config["dataset"]["image_root"] = str(tmp_path / "elsewhere")
    (workdir / "own.yaml").write_text(yaml.safe_dump(config))
    missing = snakemake(workdir, "-n", configfile="own.yaml", check=False)
    assert missing.returncode != 0
    assert (f"dataset.image_root {tmp_path / 'elsewhere'} is not a folder: coco's images come from "
            "http://images.cocodataset.org") in missing.stdout + missing.stderr
