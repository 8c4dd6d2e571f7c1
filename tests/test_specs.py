"""Every job's spec (pipeline.spec) against the config schema: each field's config key exists, with the same type,
allowed values and default; a class standing for a whole section has all of its keys. Plus: bad specs are one
``error:`` line naming the key, and the workflow's specs parse."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Literal

import pytest

from captioner.data import specs as data_specs
from captioner.evaluation import specs as evaluation_specs
from captioner.training.recipes import RECIPES
from features import config as feature_config
from pipeline.errors import InputError
from pipeline.spec import from_config, parse, schema_mismatches, setting
from tests.workflow_helpers import PROJECT

SPEC_MODULES = [data_specs, feature_config, evaluation_specs]


def spec_classes() -> list[type]:
    """The dataclasses of the spec modules whose fields name config keys."""
    found = []
    for module in SPEC_MODULES:
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__ \
                    and any("config" in f.metadata for f in dataclasses.fields(value)):
                found.append(value)
    return found + list(RECIPES.values())  # made by make_dataclass: listed by hand


def test_every_job_spec_module_is_covered():
    names = {cls.__name__ for cls in spec_classes()}
    assert {"DemoDataSpec", "DemoNocapsSpec", "TextSpec", "NocapsImagesSpec", "NocapsSpec", "StoreSettings", "GridSettings", "RegionSettings", "PretrainSpec", "DecodeSpec", "AttentionSpec",
            "ScoreSpec", "TablesSpec", "SignificanceSpec", "SatRecipe", "M2Recipe"} <= names, names


@pytest.mark.parametrize("cls", spec_classes(), ids=lambda cls: cls.__name__)
def test_the_spec_agrees_with_the_schema(cls):
    assert schema_mismatches(cls) == []


@dataclasses.dataclass
class Disagreeing:
    """A spec drifting from the schema in each way the check must catch."""

    SECTION = ("evaluate", "bootstrap")
    beams: int = setting("evaluate", "beam_width", required=True)  # no such key
    resamples: str = setting("evaluate", "bootstrap", "resamples")  # the schema says integer
    confidence: float = dataclasses.field(default=0.9, metadata={"config": ("evaluate", "bootstrap", "confidence")})
    split: Literal["val", "test", "train"] = setting("evaluate", "split")  # the schema allows val, test
    # evaluate.bootstrap.seed: missing


def test_the_schema_check_fails_on_a_disagreeing_spec():
    found = "\n".join(schema_mismatches(Disagreeing))
    assert "Disagreeing.resamples (evaluate.bootstrap.resamples): the spec says ['string'], the schema ['integer']" in found
    assert "default 0.9 in the spec, 0.95 in the schema" in found
    assert "Disagreeing.split (evaluate.split): allowed values differ" in found
    assert "evaluate.beam_width is not in the config schema" in found
    assert "evaluate.bootstrap.seed is in the schema, not in the spec" in found
    assert len(schema_mismatches(Disagreeing)) == 5


def test_a_bad_spec_names_its_key():
    with pytest.raises(InputError, match=r"--spec.extractor.stage: 'layer5' is not one of 'layer3', 'layer4'"):
        feature_config.ExtractSpec.parse({"kind": "grid", "store": {}, "extractor": {"weights": "none", "stage": "layer5"}})
    with pytest.raises(InputError, match=r"--spec.store.batch_sise: unknown key"):
        feature_config.ExtractSpec.parse({"kind": "grid", "store": {"batch_sise": 4}, "extractor": {"weights": "none"}})
    with pytest.raises(InputError, match=r"--spec.extractor.boxes: missing"):
        feature_config.ExtractSpec.parse({"kind": "regions", "store": {}, "extractor": {"weights": "x.pth"}})
    with pytest.raises(InputError, match=r"--spec.beam_size: expected an integer, got '5'"):
        parse(evaluation_specs.DecodeSpec, {"beam_size": "5"}, "--spec")
    with pytest.raises(InputError, match=r"--spec.metrics\[1\]: 'cider-d' is not one of"):
        parse(evaluation_specs.ScoreSpec, {"metrics": ["bleu", "cider-d"]}, "--spec")


def test_a_job_given_a_bad_spec_prints_one_error_line():
    result = subprocess.run([sys.executable, "-m", "captioner", "job", "decode", "--spec", '{"beam_size": 0.5}',
                             "--checkpoint", "x.pt", "--features", "x.h5", "--captions", "x.json", "--out", "p.json"],
                            cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == ["error: --spec.beam_size: expected an integer, got 0.5"]


def test_specs_read_from_the_shipped_configs_parse_to_the_config_values():
    import yaml
    from snakemake.utils import validate

    for name in ("config.yaml", "coco.yaml", "flickr8k.yaml", "flickr30k.yaml"):
        config = yaml.safe_load((PROJECT / "config" / name).read_text())
        validate(config, str(PROJECT / "workflow/schemas/config.schema.yaml"))  # fills the defaults, as the workflow
        for cls in (evaluation_specs.DecodeSpec, evaluation_specs.TablesSpec, feature_config.PretrainSpec,
                    data_specs.TextSpec, data_specs.NocapsSpec,
                    *([data_specs.DemoDataSpec] if config["dataset"]["source"] == "demo" else [])):
            spec = parse(cls, from_config(cls, config), name)
            assert spec.__dict__ == from_config(cls, config)
        for kind in ("grid", "regions"):
            text = feature_config.ExtractSpec.json_from_config(config, kind, "weights.pth")
            spec = feature_config.ExtractSpec.parse(json.loads(text))
            assert spec.extractor.weights == "weights.pth" and spec.store.dtype == config["features"]["dtype"]
            assert spec.extractor.backbone == config["features"][kind]["backbone"]
