"""Drive the real ``snakemake`` CLI on a private copy of the workflow (code included)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
WORKFLOW_ITEMS = ("Snakefile", "workflow", "config", "envs", "pipeline", "captioner", "features", ".test")
TINY_CONFIG = ".test/config/config.yaml"


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow and the project code it runs (jobs import the copy, see common.smk)."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in WORKFLOW_ITEMS:
        source = PROJECT / item
        target = dest / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    return dest


def clone_run(source: Path, dest: Path) -> Path:
    """Copy a finished run (results and .snakemake metadata, mtimes preserved)."""
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "locks"))
    return dest


def environment(slurm: bool = False) -> dict:
    """The environment of a snakemake call: this virtualenv first on PATH, no PYTHONPATH (jobs set their own).

    Unless ``slurm``, SLURM's ``scontrol`` is shadowed by one that fails at once: the SLURM executor plugin runs
    ``scontrol show config`` (10 s timeout) whenever Snakemake starts, and on a machine with SLURM's client but no
    controller running (ours, once tests/slurm has installed it) every snakemake call would wait those 10 s.
    """
    env = dict(os.environ)
    paths = [str(Path(sys.executable).parent), env.get("PATH", "")]
    if not slurm:
        paths.insert(0, str(failing_scontrol_dir()))
    env["PATH"] = os.pathsep.join(paths)
    env.pop("PYTHONPATH", None)
    return env


@lru_cache(maxsize=None)
def failing_scontrol_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="no-slurm-"))
    scontrol = folder / "scontrol"
    scontrol.write_text("#!/bin/sh\necho 'scontrol: no SLURM controller for this test' >&2\nexit 1\n")
    scontrol.chmod(0o755)
    return folder


def snakemake(workdir: Path, *args: str, configfile: str = TINY_CONFIG, check: bool = True,
              timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=1", "--configfile", configfile,
               *args]
    result = subprocess.run(command, cwd=workdir, env=environment(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def planned_jobs(workdir: Path, *args: str, configfile: str = TINY_CONFIG) -> Counter:
    """Jobs a dry run would execute, from its "Job stats" table (empty when nothing is to be done)."""
    result = snakemake(workdir, "-n", *args, configfile=configfile)
    output = result.stdout + result.stderr
    if "Nothing to be done" in output:
        return Counter()
    table = output.split("Job stats:", 1)[1]
    jobs = Counter()
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            jobs[match.group(1)] = int(match.group(2))
    return jobs


def edit_config(workdir: Path, edit, configfile: str = TINY_CONFIG) -> None:
    """Apply ``edit`` (a function of the config dict) to the workflow copy's config file."""
    path = workdir / configfile
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def flickr_shaped(folder: Path, num_train: int = 3, num_val: int = 2, num_test: int = 6) -> Path:
    """A small dataset in the shape of Karpathy's dataset_flickr8k.json: ``imgid`` ids only, Flickr-style file names
    in one flat folder, no ``filepath``; boxes keyed by those ids. Drawn by the demo generator with another seed than
    the training set's."""
    from captioner.data.demo import generate

    demo = generate(folder / "drawn", seed=7, num_train=num_train, num_val=num_val, num_test=num_test,
                    num_restval=0, image_size=128)
    assert demo["images"] == num_train + num_val + num_test
    drawn = json.loads((folder / "drawn/dataset_coco.json").read_text())
    boxes = json.loads((folder / "drawn/boxes.json").read_text())
    (folder / "images").mkdir()
    images, flickr_boxes = [], {}
    for index, entry in enumerate(drawn["images"]):
        name = f"{2000000000 + 7919 * index}_{index:04x}a1b2c3.jpg"
        shutil.copy(folder / "drawn" / entry["filepath"] / entry["filename"], folder / "images" / name)
        images.append({"sentids": entry["sentids"], "imgid": index, "split": entry["split"], "filename": name,
                       "sentences": [{**s, "imgid": index} for s in entry["sentences"]]})
        flickr_boxes[str(index)] = boxes[str(entry["cocoid"])]
    (folder / "dataset_flickr8k.json").write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    (folder / "boxes.json").write_text(json.dumps(flickr_boxes))
    shutil.rmtree(folder / "drawn")
    return folder
