"""The conda environments (envs/*.yaml) hold what their rules import, with the versions pyproject.toml pins.

Each rule's job runs project commands (``python -m captioner|features COMMAND``); the modules they run are those of
the rule's code fingerprint (every project module they import, transitively, and the model and objective modules
the registry imports by name). Every third-party import in them has to be in the rule's env, where pyproject.toml
(the one source of versions) gives the same version range. The light environments (data, evaluate) also run their
rules for real, in a virtualenv holding exactly that env's pip packages.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from captioner.models.registry import FAMILIES, base_models, objective_module
from pipeline.provenance import project_modules
from tests.workflow_helpers import PROJECT, clone_run, copy_workflow, edit_config, environment

RULE_FILES = sorted((PROJECT / "workflow/rules").glob("*.smk"))
PROJECT_PACKAGES = {"captioner", "features", "pipeline"}
# not on any registry, so in no env: every use is behind features.detectron2_backend.status()
OPTIONAL = {"detectron2"}
COMMAND = re.compile(r"python -m (captioner|features) (?:job )?([a-z0-9-]+)|\{params\.launch\} (captioner) job (train)")
RULE = re.compile(r"^\s*(?:use rule (\w+) as (\w+) with|rule (\w+)):", re.M)
CONDA = re.compile(r'conda:\s*"\.\./\.\./(envs/[\w.]+)"')


def cli_module(package: str, command: str) -> str:
    module = __import__(f"{package}.__main__", fromlist=["COMMANDS"])
    return {**module.COMMANDS, **module.JOBS}[command][0]


@functools.cache
def rules() -> dict[str, tuple[str, set[str]]]:
    """rule -> (its conda env file, the project modules its jobs run)."""
    found = {}
    for path in RULE_FILES:
        text = path.read_text()
        starts = list(RULE.finditer(text))
        for match, following in zip(starts, starts[1:] + [None]):
            block = text[match.end(): following.start() if following else len(text)]
            original, name = (match[1], match[2]) if match[1] else (None, match[3])
            env = CONDA.search(block)
            commands = [(m[1] or m[3], m[2] or m[4]) for m in COMMAND.finditer(block)]
            modules = {cli_module(package, command) for package, command in commands}
            if "{params.launch}" in block:
                modules.add("captioner.training.launch")
            if "pipeline.gpu_slots" in block:  # the GPU jobs start through the slot allocator
                modules.add("pipeline.gpu_slots")
            if "model_module(" in block:  # the registry imports these by name: every family's
                modules |= {FAMILIES[f].module for f in FAMILIES}
            if "objective_module" in block:
                modules |= {objective_module(m) for m in base_models()}
            modules |= set(re.findall(r'code\(\s*"([\w.]+)"', block))
            if original:  # `use rule ... with:` keeps the original's env and command unless it names its own
                env_file = env[1] if env else found[original][0]
                found[name] = (env_file, modules | found[original][1])
            elif commands:
                assert env, f"{path.name}: rule {name} runs {commands} but names no conda env"
                found[name] = (env[1], modules)
    return found


def third_party_imports(modules: set[str]) -> dict[str, str]:
    """Top-level third-party import name -> the project module that imports it (any import, lazy ones too)."""
    found = {}
    for module, path in sorted(project_modules(PROJECT, *modules).items()):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in PROJECT_PACKAGES and top != "__future__":
                    found.setdefault(top, module)
    return found


def env_packages(env_file: str) -> dict[str, Requirement]:
    """Distribution name -> requirement of an env's conda and pip dependencies (python, pip, openjdk left out)."""
    spec = yaml.safe_load((PROJECT / env_file).read_text())
    entries = []
    for dependency in spec["dependencies"]:
        if isinstance(dependency, dict):
            entries += dependency.get("pip", [])
        else:
            entries.append(dependency.replace("=", "==", 1) if re.fullmatch(r"[\w-]+=[\w.]+", dependency)
                           else dependency)
    packages = {}
    for entry in entries:
        requirement = Requirement(entry)
        if requirement.name not in ("python", "pip", "openjdk"):
            packages[requirement.name.lower()] = requirement
    return packages


def pyproject_pins() -> dict[str, Requirement]:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}


@functools.cache
def _import_names() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(import_name: str) -> set[str]:
    """The installed distributions providing a top-level import (PIL -> pillow, yaml -> pyyaml)."""
    return {d.lower() for d in _import_names().get(import_name, [import_name])}


def test_every_rule_that_runs_project_code_is_found():
    found = rules()
    for rule in ("demo_data", "prepare_text", "pretrain_backbone", "extract_features", "train", "decode", "score",
                 "tables", "significance", "costs", "image_archive", "score_nocaps", "extract_set_features"):
        assert rule in found, sorted(found)
    assert found["train"][0] == "envs/train.yaml" and "captioner.models.m2" in found["train"][1]
    assert found["extract_set_features"][0] == "envs/features.yaml"


@pytest.mark.parametrize("rule", sorted(rules()))
def test_each_rule_env_lists_every_third_party_import_of_its_code(rule):
    env_file, modules = rules()[rule]
    packages = env_packages(env_file)
    missing = {name: importer for name, importer in third_party_imports(modules).items()
               if name not in OPTIONAL and not distributions(name) & set(packages)}
    assert not missing, f"{env_file} (rule {rule}) lacks what these modules import: {missing}"


def test_env_versions_are_pyproject_pins():
    pins = pyproject_pins()
    for env_file in sorted((PROJECT / "envs").glob("*.yaml")):
        for name, requirement in env_packages(f"envs/{env_file.name}").items():
            assert name in pins, f"{env_file.name}: {name} is not a dependency in pyproject.toml"
            assert requirement.specifier == pins[name].specifier, (
                f"{env_file.name}: {requirement} but pyproject.toml pins {pins[name]}")


def test_the_import_scan_sees_imports_inside_functions():
    imports = third_party_imports({"captioner.training.trainer", "features.detectron2_backend"})
    assert imports["matplotlib"] == "captioner.training.metrics"  # imported inside write_metrics
    assert imports["detectron2"] == "features.detectron2_backend"


# ------------------------------------------------------------------ the light envs, for real
def light_venv(env_file: str, where: Path) -> Path:
    """A virtualenv with exactly the env's pip packages (and their dependencies), nothing of the project's venv."""
    venv = where / Path(env_file).stem
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    packages = [str(r) for r in env_packages(env_file).values()]
    result = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", *packages],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"pip could not install {packages} from the registry: {result.stderr[-500:]}")
    return venv


def run_with(venv: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake (the project's) whose jobs find the venv's python first on PATH."""
    env = environment()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile",
                           ".test/config/config.yaml", *args], cwd=workdir, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_the_data_env_runs_the_data_rules(tmp_path):
    venv = light_venv("envs/data.yaml", tmp_path)
    workdir = copy_workflow(tmp_path / "project")
    result = run_with(venv, workdir, "--", "results/tiny/text/captions.json", "results/tiny/text/images.json")
    assert result.returncode == 0, result.stderr[-3000:]
    for rule in ("demo_data", "image_manifest", "prepare_text"):
        assert f"rule {rule}:" in result.stdout + result.stderr
    assert not list(venv.glob("lib/python*/site-packages/torch"))  # the data rules never import torch


@pytest.mark.slow
def test_the_evaluate_env_runs_scoring_tables_significance_and_costs(finished_run, tmp_path):
    venv = light_venv("envs/evaluate.yaml", tmp_path)
    workdir = clone_run(finished_run, tmp_path / "copy")
    # the two M² models' score jobs with METEOR too (which the tiny config leaves out: each job starts its JVM,
    # ~10 CPU-s), and everything after them; only these two, by modification times
    edit_config(workdir, lambda config: config["evaluate"].update(metrics=["bleu", "meteor", "rouge", "cider"]))
    forced = [f"results/tiny/eval/{model}/seed0/scores_test.json" for model in ("m2_xe", "m2_scst")]
    result = run_with(venv, workdir, "--rerun-triggers", "mtime", "--forcerun", *forced, "--",
                      "results/tiny/tables/costs.md")
    assert result.returncode == 0, result.stderr[-3000:]
    for rule in ("score", "tables", "significance", "costs"):
        assert f"rule {rule}:" in result.stdout + result.stderr
    for path in forced:
        assert 0 < json.loads((workdir / path).read_text())["corpus"]["METEOR"] <= 100, path
    # significance tests METEOR on the per-image scores whose mean it shows, beside the corpus scores
    m2_pair = (workdir / "results/tiny/tables/significance.md").read_text().split("`m2_scst` vs `m2_xe`")[1]
    assert "METEOR (mean of per-image scores)" in m2_pair.split("\n## ")[0]
