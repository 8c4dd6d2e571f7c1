"""Karpathy's three datasets as data (dataset.name): the Flickr8k and Flickr30k configs plan from nothing to the
tables, a Flickr8k-shaped dataset goes through the download rules (a zip of images with no published checksum,
pinned on first download) and the whole DAG, and the published rows are those of the dataset run."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.http_server import Server
from tests.workflow_helpers import TINY_CONFIG, copy_workflow, flickr_shaped, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def test_the_flickr8k_config_plans_its_downloads_then_the_whole_dag(tmp_path):
    workdir = copy_workflow(tmp_path / "project")
    planned = planned_jobs(workdir, configfile="config/flickr8k.yaml")
    assert planned["image_archive"] == 1 and planned["karpathy_json"] == 1
    assert planned["torchvision_weights"] == 1 and planned["detector_weights"] == 1
    assert planned["train"] == 4 * 3 and planned["tables"] == 1 and planned["costs"] == 1
    commands = snakemake(workdir, "-n", "-p", configfile="config/flickr8k.yaml").stdout
    assert "--entry dataset_flickr8k.json --out data/flickr8k/dataset_flickr8k.json" in commands
    assert (f"Flickr8k_Dataset.zip --out data/flickr8k/zips/Flicker8k_Dataset.zip --lock "
            f"{workdir / 'config/flickr8k.lock.json'} ") in commands
    assert "--entry Flicker8k_Dataset --out data/flickr8k/Flicker8k_Dataset --expect-files 8091" in commands


def test_the_flickr30k_config_names_where_its_images_come_from_and_fetches_the_rest(tmp_path):
    workdir = copy_workflow(tmp_path / "project")
    missing = snakemake(workdir, "-n", configfile="config/flickr30k.yaml", check=False)
    assert missing.returncode != 0
    assert ("dataset.image_root data/flickr30k/flickr30k-images is not a folder: flickr30k's images come from the "
            "request form at http://hockenmaier.cs.illinois.edu/DenotationGraph/") in missing.stdout + missing.stderr
    (workdir / "data/flickr30k/flickr30k-images").mkdir(parents=True)
    planned = planned_jobs(workdir, configfile="config/flickr30k.yaml")
    assert "image_archive" not in planned and planned["karpathy_json"] == 1 and planned["torchvision_weights"] == 1
    assert planned["train"] == 4 * 3 and planned["tables"] == 1
    # with download: true, the images have no URL to fetch them from: the same advice, before anything runs
    config = yaml.safe_load((workdir / "config/flickr30k.yaml").read_text())
    config["dataset"] = {"source": "karpathy", "name": "flickr30k", "download": True, "root": "data/elsewhere"}
    (workdir / "f30k.yaml").write_text(yaml.safe_dump(config))
    failed = snakemake(workdir, "-n", configfile="f30k.yaml", check=False)
    assert failed.returncode != 0 and "data/elsewhere/flickr30k-images: flickr30k's images are not there and have " \
        "no download URL; get them from the request form" in failed.stdout + failed.stderr


def flickr8k_zips(tmp_path: Path) -> dict[str, bytes]:
    """Flickr8k_Dataset.zip (its folder misspelt as published, macOS debris beside it) and a caption_datasets.zip
    whose dataset_flickr8k.json is a Flickr-shaped tiny set (its COCO file is of no use to this run)."""
    source = flickr_shaped(tmp_path / "flickr", num_train=16, num_val=4, num_test=4)
    images = io.BytesIO()
    with zipfile.ZipFile(images, "w") as handle:
        for image in sorted((source / "images").iterdir()):
            handle.write(image, f"Flicker8k_Dataset/{image.name}")
            handle.writestr(f"__MACOSX/Flicker8k_Dataset/._{image.name}", b"\x00\x05")
    karpathy = io.BytesIO()
    with zipfile.ZipFile(karpathy, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("dataset_coco.json", json.dumps({"images": [], "dataset": "coco"}))
        handle.write(source / "dataset_flickr8k.json", "dataset_flickr8k.json")
    return {"Flickr8k_Dataset.zip": images.getvalue(), "caption_datasets.zip": karpathy.getvalue(),
            "boxes.json": (source / "boxes.json").read_bytes()}


def test_a_flickr8k_shaped_dataset_is_fetched_pinned_and_run_to_its_own_published_rows(tmp_path):
    server = Server()
    try:
        files = flickr8k_zips(tmp_path)
        server.files.update(files)
        workdir = copy_workflow(tmp_path / "project")
        (workdir / "boxes.json").write_bytes(files["boxes.json"])
        config = yaml.safe_load((workdir / TINY_CONFIG).read_text())
        karpathy = files["caption_datasets.zip"]
        config["dataset"] = {"source": "karpathy", "name": "flickr8k", "download": True, "root": "data/flickr8k",
                             "sources": {"flickr8k_images": {"url": f"{server.url}/Flickr8k_Dataset.zip", "files": 24},
                                         "karpathy": {"url": f"{server.url}/caption_datasets.zip",
                                                      "size": len(karpathy),
                                                      "sha256": hashlib.sha256(karpathy).hexdigest()}}}
        config["features"]["regions"]["boxes_json"] = "boxes.json"
        config["models"] = {"sat_soft": {}}  # one model is enough: the point is the data path
        config["evaluate"].update(attention_maps=0, metrics=["bleu", "cider"], published_rows=True)
        (workdir / "flickr8k.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        snakemake(workdir, configfile="flickr8k.yaml")
        root = workdir / "data/flickr8k"
        assert sorted(p.name for p in root.iterdir()) == ["Flicker8k_Dataset", "dataset_flickr8k.json", "logs", "zips"]
        assert len(list((root / "Flicker8k_Dataset").glob("*.jpg"))) == 24
        # no checksum was published: the first download's is pinned beside the config
        pinned = json.loads((workdir / "flickr8k.lock.json").read_text())
        assert hashlib.sha256(files["Flickr8k_Dataset.zip"]).hexdigest() in json.dumps(pinned)
        manifest = json.loads((workdir / "results/tiny/text/images.json").read_text())["images"]
        assert len(manifest) == 24 and all("/" not in image["path"] for image in manifest)  # Flickr's flat paths
        with open(workdir / "results/tiny/tables/scores.csv") as handle:
            rows = [row["model"] for row in csv.DictReader(handle)]
        assert rows == ["sat_soft", "published: Xu et al. 2015, soft attention (VGG), Flickr8k",
                        "published: Xu et al. 2015, hard attention (VGG), Flickr8k"]  # none of COCO's, no M²
        assert "(1,000 images)" in (workdir / "results/tiny/tables/scores.md").read_text()

        # from then on the pinned digest is checked: another file at that URL is refused, naming both digests
        changed = files["Flickr8k_Dataset.zip"] + b"\x00"
        server.files["Flickr8k_Dataset.zip"] = changed
        for path in sorted((root / "Flicker8k_Dataset").iterdir()):
            path.unlink()
        (root / "Flicker8k_Dataset").rmdir()
        failed = snakemake(workdir, "--", "data/flickr8k/Flicker8k_Dataset", configfile="flickr8k.yaml", check=False)
        assert failed.returncode != 0
        log = (root / "logs/Flicker8k_Dataset.log").read_text()
        assert hashlib.sha256(changed).hexdigest() in log and hashlib.sha256(files["Flickr8k_Dataset.zip"]).hexdigest() \
            in log
        assert not (root / "Flicker8k_Dataset").exists()
    finally:
        server.close()
