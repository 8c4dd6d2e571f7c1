"""One home per default: the config schema holds every default (the model dataclasses hold the architecture's),
Snakemake fills them at validation, and no command line or dataclass writes one of them again."""

from __future__ import annotations

import ast
import copy
import json
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml

from pipeline.config import defaults, schema
from tests.workflow_helpers import PROJECT, TINY_CONFIG, copy_workflow, snakemake

SECTIONS = [("text",), ("features",), ("features", "grid"), ("features", "regions"), ("features", "pretrain"),
            ("sat",), ("m2",), ("train",), ("evaluate",), ("dataset", "demo")]
NO_DEFAULT = {"weights", "boxes", "boxes_json"}  # the user chooses these (or, boxes_json: only with given boxes)


def section(*keys):
    node = schema()
    for key in keys:
        node = node["properties"][key]
    return node


def test_every_optional_key_of_every_section_has_a_default_in_the_schema():
    for keys in SECTIONS:
        node = section(*keys)
        required = set(node.get("required", []))
        undefaulted = set(node["properties"]) - set(defaults(*keys)) - required - NO_DEFAULT
        undefaulted -= {k for k, v in node["properties"].items() if v.get("type") == "object" and k in ("grid", "regions")}
        assert not undefaulted, f"{'.'.join(keys)}: no default for {sorted(undefaulted)}"


def test_model_architecture_defaults_live_in_the_model_dataclasses_only():
    from captioner.models.m2 import M2Config
    from captioner.models.sat import SATConfig

    for name, config in (("sat_model", SATConfig), ("m2_model", M2Config)):
        properties = schema()["$defs"][name]["properties"]
        assert not [k for k, v in properties.items() if "default" in v], f"{name}: defaults belong to {config}"
        field_defaults = {f.name: f.default for f in fields(config)}
        assert set(properties) <= set(field_defaults)
        assert all(field_defaults[k] is not MISSING for k in properties)


def literal(node: ast.AST) -> bool:
    return isinstance(node, (ast.Constant, ast.List, ast.Tuple)) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant))


# which config sections each module's command line and dataclasses mirror
MIRRORS = {
    "features/config.py": [("features", "grid"), ("features", "regions")],
    "features/detector.py": [("features", "regions")],
    "features/extract.py": [("features",), ("features", "grid"), ("features", "regions")],
    "features/pretrain.py": [("features", "pretrain")],
    "features/import_m2_features.py": [("features",)],
    "captioner/data/demo.py": [("dataset", "demo")],
    "captioner/data/text.py": [("text",)],
    "captioner/training/trainer.py": [("train",)],
    "captioner/evaluation/decode.py": [("evaluate",), ("train",)],
    "captioner/evaluation/scoring.py": [("evaluate",)],
    "captioner/evaluation/tables.py": [("evaluate",)],
    "captioner/evaluation/attention_maps.py": [("evaluate",)],
    "captioner/evaluation/specs.py": [("evaluate",), ("evaluate", "bootstrap"), ("evaluate", "significance"), ("train",)],
    "captioner/apps/caption.py": [("evaluate",), ("train",)],
}


def second_defaults(root: Path, mirrors: dict = MIRRORS) -> list[str]:
    """Command-line options and dataclass fields named like a key of the config section they mirror, whose own
    default is a literal: a second home of a default the schema holds."""
    found = []
    for relative, sections in mirrors.items():
        keys = {key for keys in sections for key in defaults(*keys)}
        path = root / relative
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
                option = node.args[0].value if isinstance(node.args[0], ast.Constant) else ""
                name = option.lstrip("-").replace("-", "_")
                for keyword in node.keywords:
                    if keyword.arg == "default" and name in keys and literal(keyword.value):
                        found.append(f"{relative}:{node.lineno}: {option} default")
            if isinstance(node, ast.ClassDef) and any(getattr(d, "id", "") == "dataclass" for d in node.decorator_list):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None \
                            and item.target.id in keys and literal(item.value) \
                            and not (isinstance(item.value, ast.Constant) and item.value.value is None):
                        found.append(f"{relative}:{item.lineno}: {node.name}.{item.target.id}")
    return found


def test_no_command_line_or_dataclass_writes_a_schema_default_again():
    assert second_defaults(PROJECT) == []


def test_the_second_default_check_can_fail(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features/extract.py").write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass C:\n    image_size: int = 448\n\n"
        "def add_arguments(parser):\n    parser.add_argument('--batch-size', type=int, default=5)\n"
        "    parser.add_argument('--beam-size', type=int, default=5)\n")
    found = second_defaults(tmp_path, {"features/extract.py": MIRRORS["features/extract.py"]})
    assert found == ["features/extract.py:5: C.image_size", "features/extract.py:8: --batch-size default"]


def test_python_layers_read_the_schema_defaults():
    from captioner.models.registry import ModelName
    from captioner.training.trainer import merged_hparams
    from features.config import ExtractorConfig
    from features.detector import DetectorConfig
    from features.pretrain import PretrainConfig

    # an M2 config without m2.scst_epochs used to pass the schema and fail after loading everything
    assert merged_hparams(ModelName.parse("m2_scst"), {})["scst_epochs"] == defaults("m2")["scst_epochs"]
    assert merged_hparams(ModelName.parse("sat_hard"), {"lr": 1.0})["entropy_weight"] == 0.002
    assert ExtractorConfig("grid").image_size == defaults("features", "grid")["image_size"]
    assert DetectorConfig().nms_thresh == ExtractorConfig("regions").nms_thresh == 0.3
    assert PretrainConfig().epochs == defaults("features", "pretrain")["epochs"]


def strip_optional(config: dict, node: dict) -> dict:
    """``config`` without every key the schema ``node`` gives a default (recursively)."""
    out = {}
    for key, value in config.items():
        sub = node.get("properties", {}).get(key, {})
        if "default" in sub:
            continue
        out[key] = strip_optional(value, sub) if isinstance(value, dict) and "properties" in sub else value
    return out


@pytest.mark.slow
def test_a_config_of_required_keys_only_validates_plans_and_gets_the_defaults(tmp_path):
    workdir = copy_workflow(tmp_path / "project")
    config = yaml.safe_load((workdir / TINY_CONFIG).read_text())
    minimal = strip_optional(config, schema())
    assert set(minimal) == {"run", "dataset", "features", "models"}
    (workdir / "minimal.yaml").write_text(yaml.safe_dump(minimal))
    result = snakemake(workdir, "-n", "-p", configfile="minimal.yaml")
    commands = result.stdout + result.stderr
    hparams = {}
    for match in re.finditer(r"captioner job train --model (\w+) .*?--hparams '(\{.*?\})'", commands):
        hparams[match.group(1)] = json.loads(match.group(2))
    assert set(hparams) == set(minimal["models"])
    assert hparams["m2_scst"]["scst_epochs"] == defaults("m2")["scst_epochs"]
    assert hparams["sat_hard"]["lr"] == defaults("sat")["lr"] and hparams["m2_xe"]["lr"] == defaults("m2")["lr"]
    assert f'"beam_size":{defaults("evaluate")["beam_size"]}' in commands  # decode's spec


@pytest.mark.slow
@pytest.mark.parametrize("path", [("run",), ("features", "grid", "weights"), ("features", "regions", "boxes"),
                                  ("dataset", "source")])
def test_a_missing_required_key_fails_at_validation_naming_it(tmp_path, path):
    workdir = copy_workflow(tmp_path / "project")
    config = yaml.safe_load((workdir / TINY_CONFIG).read_text())
    broken = copy.deepcopy(config)
    node = broken
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    (workdir / "broken.yaml").write_text(yaml.safe_dump(broken))
    result = snakemake(workdir, "-n", configfile="broken.yaml", check=False)
    assert result.returncode != 0
    assert f"'{path[-1]}' is required" in result.stdout + result.stderr


def restated_defaults(config: dict, node: dict, path: tuple = ()) -> list[str]:
    """Keys of ``config`` whose value is the schema's default (the model sections: their dataclass's default)."""
    import importlib

    from captioner.models.registry import FAMILIES

    found = []
    for key, value in config.items():
        sub = node.get("properties", {}).get(key, {})
        if path and path[-1] in FAMILIES and key == "model":
            spec = FAMILIES[path[-1]]
            config_class = getattr(importlib.import_module(spec.module), spec.config_class)
            model_defaults = {f.name: f.default for f in fields(config_class) if f.default is not MISSING}
            found += [f"{'.'.join(path)}.model.{k}" for k, v in value.items() if model_defaults.get(k, MISSING) == v]
        elif isinstance(value, dict) and "properties" in sub:
            found += restated_defaults(value, sub, (*path, key))
        elif "default" in sub and sub["default"] == value:
            found.append(".".join((*path, key)))
    return found


SHIPPED_CONFIGS = sorted(str(path.relative_to(PROJECT)) for path in (PROJECT / "config").glob("*.yaml"))


def test_every_dataset_has_its_shipped_config():
    assert SHIPPED_CONFIGS == ["config/coco-clip.yaml", "config/coco-released.yaml", "config/coco.yaml",
                               "config/config.yaml", "config/flickr30k.yaml", "config/flickr8k.yaml"]


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_the_shipped_configs_state_only_what_differs_from_the_defaults(name):
    """So a reader sees what a recipe changes: a value equal to its default is noise, and hides a later change of
    the default."""
    config = yaml.safe_load((PROJECT / name).read_text())
    assert restated_defaults(config, schema()) == []
    # the checker itself: a restated default is found
    config.setdefault("sat", {})["batch_size"] = defaults("sat")["batch_size"]
    config.setdefault("m2", {})["model"] = {"heads": 8}
    assert restated_defaults(config, schema()) == ["sat.batch_size", "m2.model.heads"]
