"""Experiments as short config files (pipeline/config_files.py): `extends:` chains merged then validated as a whole,
`--config` reaching nested keys, and a ten-line experiment of a finished run planning only its own jobs."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from pipeline.config_files import deep_merge, resolve_extends, typed_overrides
from pipeline.errors import InputError
from tests.workflow_helpers import TINY_CONFIG, clone_run, planned_jobs, snakemake


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_chain_of_extends_merges_each_file_over_the_one_it_extends(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "root.yaml", {"run": "a", "evaluate": {"beam_size": 3, "split": "test"}, "models": {"m2_xe": {}}})
    write(tmp_path / "mid.yaml", {"extends": "root.yaml", "evaluate": {"beam_size": 5}})
    top = {"extends": "mid.yaml", "run": "b", "models": {"sat_soft_lr": {"base": "sat_soft", "lr": 0.001}}}
    merged, chain = resolve_extends(top, "top.yaml")
    assert merged == {"run": "b", "evaluate": {"beam_size": 5, "split": "test"},
                      "models": {"m2_xe": {}, "sat_soft_lr": {"base": "sat_soft", "lr": 0.001}}}
    assert [str(p) for p in chain] == ["root.yaml", "mid.yaml"]
    assert resolve_extends({"run": "x"}, "plain.yaml") == ({"run": "x"}, [])


def test_a_missing_or_circular_extends_is_one_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"^top.yaml: extends: nowhere.yaml is not a file"):
        resolve_extends({"extends": "nowhere.yaml"}, "top.yaml")
    write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(InputError, match=r"extends: a.yaml is already in the chain"):
        resolve_extends({"extends": "a.yaml"}, "top.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match=r"list.yaml: a config file is a mapping of keys, got list"):
        resolve_extends({"extends": "list.yaml"}, "top.yaml")


def test_command_line_sections_get_their_yaml_types():
    """What Snakemake hands over for --config 'evaluate={beam_size: 3, metrics: [bleu]}' run=x seed=4."""
    given = {"evaluate": {"beam_size": "3", "metrics": ["bleu"], "collapse": "true", "lr": "0.001", "x": "1e-3"},
             "run": "x", "seed": 4}
    assert typed_overrides(given) == {"evaluate": {"beam_size": 3, "metrics": ["bleu"], "collapse": True,
                                                   "lr": 0.001, "x": "1e-3"}, "run": "x", "seed": 4}
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}, "d": 4}) == {"a": {"b": 3, "c": 2}, "d": 4}


@pytest.mark.slow
def test_a_ten_line_experiment_file_plans_only_its_own_jobs(finished_run, tmp_path):
    """Done when (issue 34): an experiment extending the finished run's config with one sat_soft variant plans that
    variant's training, decoding, scoring and attention figures plus the tables and the paired test against
    sat_soft; a nested key set on the command line reruns exactly what reads it."""
    run = clone_run(finished_run, tmp_path / "run")
    (run / "experiment.yaml").write_text(
        f"# a learning-rate ablation of sat_soft, in the same run\n"
        f"extends: {TINY_CONFIG}\n"
        "models:\n"
        "  sat_soft_lr3: {base: sat_soft, lr: 0.003}\n")
    assert planned_jobs(run, configfile="experiment.yaml") == Counter(
        train=1, decode=1, score=1, attention_maps=1, tables=1, significance=1, costs=1, all=1)
    plan = snakemake(run, "-n", "-p", configfile="experiment.yaml").stdout
    assert '["sat_soft_lr3","sat_soft"]' in plan  # the paired test between the variant and its base
    # a nested key from the command line, typed and merged into its section: only the decoding and what follows
    nested = planned_jobs(run, "--config", "evaluate={beam_size: 3}")
    assert nested["decode"] == nested["score"] == 5 and "train" not in nested
    assert planned_jobs(run, "--config", "evaluate={beam_size: 2}") == Counter()  # the value it had: nothing


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["models"].update(sat_soft={"lrr": 0.001}),
     "models.sat_soft.lrr: unknown key (known keys: adam_beta2, base, "),
    (lambda c: c["evaluate"].update(beam_sise=3),
     "evaluate.beam_sise: unknown key (known keys: attention_maps, batch_size, beam_size, "),
    (lambda c: c["sat"].update(lr="1e-3"),
     "sat.lr: '1e-3' is not a number (YAML reads 1e-3 as text: write it with a dot, e.g. 1.0e-3, or as 0.001)"),
    (lambda c: c["features"]["grid"].update(stage="layer5"), "features.grid.stage: 'layer5' is not one of layer3, "
                                                             "layer4"),
    (lambda c: c["models"].update(xx_soft={}), "models.xx_soft: unknown key (names matching ^sat_, ^m2_)"),
])
def test_a_config_error_is_one_line_naming_the_key(tmp_path, edit, expected):
    from tests.workflow_helpers import copy_workflow

    workdir = copy_workflow(tmp_path / "project")
    config = yaml.safe_load((workdir / TINY_CONFIG).read_text())
    edit(config)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", configfile="bad.yaml", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    lines = [line for line in output.splitlines() if expected in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"bad.yaml: {expected}" in lines[0], output[-2000:]
    assert len(output.strip().splitlines()) == 1  # that line alone
    assert "$schema" not in output and "additionalProperties" not in output  # no schema dump


def test_significance_refuses_one_model_name_from_two_runs(finished_run, tmp_path):
    """`sat_soft` of the demo and `sat_soft` of an lr run are two models: pooling them as seeds of one would test
    nothing ("+0.0, p 1.0000"); the command names both runs instead."""
    import json
    import shutil
    import subprocess
    import sys

    from tests.workflow_helpers import PROJECT

    files = []
    for run in ("demo", "demo_lr"):
        for model in ("sat_soft", "sat_soft_blind"):
            target = tmp_path / f"results/{run}/eval/{model}/seed0/scores_test.json"
            target.parent.mkdir(parents=True)
            shutil.copy(finished_run / f"results/tiny/eval/{model}/seed0/scores_test.json", target)
            files.append(str(target))
    spec = json.dumps({"pairs": [["sat_soft", "sat_soft_blind"]], "trials": 100})  # (the rest: the schema's defaults)
    result = subprocess.run([sys.executable, "-m", "captioner", "job", "significance", "--spec", spec, "--scores",
                             *files, "--out-md", str(tmp_path / "s.md"), "--out-json", str(tmp_path / "s.json")],
                            cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and not (tmp_path / "s.json").exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: sat_soft: score files from 2 runs (") and "results/demo_lr" in line
