"""The DAG end to end on the tiny config, and the stale-only rerun rules users rely on."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from tests.workflow_helpers import (
    TINY_CONFIG,
    clone_run,
    copy_workflow,
    edit_config,
    environment,
    planned_jobs,
    snakemake,
)

pytestmark = pytest.mark.slow

RUN = "results/tiny"
MODELS = ["sat_soft", "sat_hard", "m2_xe", "m2_scst", "sat_soft_blind"]


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return clone_run(finished_run, tmp_path / "copy")


def test_full_run_writes_a_row_per_model(finished_run):
    with open(finished_run / RUN / "tables/scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == MODELS
    for row in rows:
        for metric in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"):
            assert 0.0 <= float(row[metric]) <= 100.0
        assert "METEOR" not in row  # the columns are the config's metrics (the tiny config leaves METEOR out)
        assert row["beam_size"] == "2"
    markdown = (finished_run / RUN / "tables/scores.md").read_text()
    assert all(f"`{m}`" in markdown for m in MODELS)
    predictions = json.loads((finished_run / RUN / "eval/m2_scst/seed0/predictions_test.json").read_text())
    assert len(predictions) == 8 and {"image_id", "caption"} <= set(predictions[0])
    for model in ("sat_soft", "sat_hard"):
        for i in range(2):
            figure = finished_run / RUN / f"eval/{model}/seed0/attention/{i:02d}.png"
            assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (finished_run / RUN / "eval/sat_soft_blind/seed0/attention").exists()
    significance = (finished_run / RUN / "tables/significance.md").read_text()
    for pair in ("`sat_soft` vs `sat_soft_blind`", "`m2_scst` vs `m2_xe`", "`sat_hard` vs `sat_soft`"):
        assert pair in significance
    assert "approximate randomisation" in significance
    assert "CIDEr-D CI low" in (finished_run / RUN / "tables/scores.csv").read_text()
    with open(finished_run / RUN / "tables/costs.csv") as handle:  # every job's benchmark file, summed
        costs = {(row["table"], row["name"]): row for row in csv.DictReader(handle)}
    stages = ("prepare_text", "extract_features grid", "extract_features regions", "train", "decode", "score")
    assert {("stage", stage) for stage in stages} | {("model", model) for model in MODELS} <= set(costs)
    assert int(costs["stage", "train"]["jobs"]) == len(MODELS) and int(costs["stage", "decode"]["jobs"]) == len(MODELS)
    # GPU jobs that ran on this CPU (CUDA never initialised, their usage lines say) held no GPU-hours
    assert float(costs["stage", "train"]["gpu_hours"]) == 0 and float(costs["stage", "score"]["gpu_hours"]) == 0
    assert float(costs["model", "sat_soft"]["wall_s"]) > float(costs["stage", "prepare_text"]["wall_s"])
    # each job's own peak (its usage line), even for jobs of seconds that Snakemake's sampling saw as their 3 MB
    # shell: at least a Python interpreter; torch's import alone is hundreds of MB
    peaks = {key[1]: float(row["max_rss_mb"]) for key, row in costs.items() if key[0] == "stage"}
    assert min(peaks.values()) > 9 and min(peaks["train"], peaks["decode"], peaks["extract_features grid"]) > 200
    assert peaks["score"] > 40, peaks  # pycocoevalcap's tokenizer is a JVM (METEOR's, in runs that score it, more)
    # the significance table's model columns are the results table's numbers, or say what else they are
    scores = {row["model"]: row for row in csv.DictReader(open(finished_run / RUN / "tables/scores.csv"))}
    rows = [line.split("|")[1:4] for line in significance.split("`sat_hard` vs `sat_soft`")[1].split("\n## ")[0]
            .splitlines() if line.startswith("| ") and not line.startswith("| metric")]
    checked = 0
    for label, hard, soft in (map(str.strip, row) for row in rows):
        assert float(hard) == pytest.approx(float(scores["sat_hard"][label]), abs=0.051), label
        assert float(soft) == pytest.approx(float(scores["sat_soft"][label]), abs=0.051), label
        checked += 1
    assert checked >= 6 and not [row for row in rows if "METEOR" in row[0]]  # (its row: tests/test_envs.py)
    with open(finished_run / RUN / "models/m2_scst/seed0/metrics.csv") as handle:  # the SCST curve's reward
        scst = [row for row in csv.DictReader(handle) if row["stage"] == "scst"]
    assert scst and all(0 <= float(row["train_reward"]) <= 1000 for row in scst)  # CIDEr-D, the tables' 0-100 scale
    # one CIDEr-D scale everywhere: the record shows the checkpoint's best (kept as the scorer computes it) x100
    best = torch.load(finished_run / RUN / "models/sat_soft/seed0/checkpoint.pt", weights_only=False)["best"]
    with open(finished_run / RUN / "models/sat_soft/seed0/metrics.csv") as handle:
        shown = {int(row["epoch"]): float(row["val_cider"]) for row in csv.DictReader(handle)}
    assert shown[best["epoch"]] == pytest.approx(100 * best["val_cider"])
    log = (finished_run / RUN / "models/sat_soft/seed0/history.log").read_text()
    assert f"val CIDEr-D {100 * best['val_cider']:.1f} " in log
    # an SCST row's epochs: its XE start's, then its own
    assert re.fullmatch(r"\d+\+\d+", scores["m2_scst"]["epoch"]) and "+" not in scores["m2_xe"]["epoch"]
    assert "epoch `a+b`" in markdown


def test_second_run_does_nothing(run_copy):
    result = snakemake(run_copy)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_training_parameter_change_reruns_only_that_model(run_copy):
    grid = run_copy / RUN / "features/grid.h5"
    regions = run_copy / RUN / "features/regions.h5"
    untouched = [grid, regions, run_copy / RUN / "models/sat_soft/seed0/checkpoint.pt",
                 run_copy / RUN / "models/m2_xe/seed0/checkpoint.pt"]
    before = {path: path.stat().st_mtime_ns for path in untouched}
    retrained = run_copy / RUN / "models/sat_hard/seed0/checkpoint.pt"
    retrained_before = retrained.stat().st_mtime_ns

    edit_config(run_copy, lambda c: c["models"].__setitem__("sat_hard", {"lr": 0.002}))
    assert planned_jobs(run_copy) == Counter(train=1, attention_maps=1, decode=1, score=1, tables=1,
                                             significance=1, costs=1, all=1)
    snakemake(run_copy)
    assert {path: path.stat().st_mtime_ns for path in untouched} == before
    assert retrained.stat().st_mtime_ns != retrained_before


def test_a_sighted_models_recipe_change_retrains_its_blind_twin_too(run_copy):
    """As the README's rerun table says: sat_soft_blind takes sat_soft's recipe, so it retrains with it."""
    edit_config(run_copy, lambda c: c["models"].__setitem__("sat_soft", {"lr": 0.002}))
    assert planned_jobs(run_copy) == Counter(train=2, attention_maps=1, decode=2, score=2, tables=1,
                                             significance=1, costs=1, all=1)


def test_a_second_seed_adds_only_its_own_jobs_and_removing_it_reruns_only_the_tables(run_copy):
    first = run_copy / RUN / "models/sat_soft/seed0/checkpoint.pt"
    before = first.stat().st_mtime_ns
    edit_config(run_copy, lambda c: c["models"].__setitem__("sat_soft", {"seeds": [0, 1]}))
    # sat_soft and its blind baseline (the same recipe) each get a seed-1 training, decode and score
    assert planned_jobs(run_copy) == Counter(train=2, decode=2, score=2, tables=1, significance=1, costs=1, all=1)
    snakemake(run_copy)
    assert first.stat().st_mtime_ns == before and (run_copy / RUN / "models/sat_soft/seed1/checkpoint.pt").exists()
    with open(run_copy / RUN / "tables/scores.csv") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    seeds = [json.loads((run_copy / RUN / f"eval/sat_soft/seed{k}/scores_test.json").read_text())["corpus"]["CIDEr-D"]
             for k in (0, 1)]
    assert rows["sat_soft"]["seeds"] == "0,1" and rows["sat_hard"]["seeds"] == "0"
    assert float(rows["sat_soft"]["CIDEr-D"]) == pytest.approx(sum(seeds) / 2, abs=0.01)
    assert float(rows["sat_soft"]["CIDEr-D std"]) == pytest.approx(abs(seeds[0] - seeds[1]) / 2 ** 0.5, abs=0.01)
    low, high = float(rows["sat_soft"]["CIDEr-D CI low"]), float(rows["sat_soft"]["CIDEr-D CI high"])
    assert low <= min(seeds) <= max(seeds) <= high or low <= sum(seeds) / 2 <= high
    assert "seeds 2 vs 2, averaged" in (run_copy / RUN / "tables/significance.md").read_text()
    edit_config(run_copy, lambda c: c["models"].__setitem__("sat_soft", {"seeds": [0]}))
    assert planned_jobs(run_copy) == Counter(tables=1, significance=1, costs=1, all=1)


def test_feature_parameter_change_reruns_extraction_and_everything_after(run_copy):
    edit_config(run_copy, lambda c: c["features"]["grid"].__setitem__("grid_size", 3))
    sat_models = sum(m.startswith("sat") for m in MODELS)
    sighted = sum(m.startswith("sat") and not m.endswith("blind") for m in MODELS)
    assert planned_jobs(run_copy) == Counter(extract_features=1, train=sat_models, attention_maps=sighted,
                                             decode=sat_models, score=sat_models, tables=1, significance=1,
                                             costs=1, all=1)


SAT = [m for m in MODELS if m.startswith("sat")]
M2 = [m for m in MODELS if m.startswith("m2")]


def test_a_recipe_key_added_later_retrains_nothing_at_its_old_value(run_copy):
    """sat.optimizer came after runs existed (Adam only): naming Adam plans nothing; RMSProp retrains SAT."""
    edit_config(run_copy, lambda c: c["sat"].__setitem__("optimizer", "adam"))
    assert planned_jobs(run_copy) == Counter()
    edit_config(run_copy, lambda c: c["sat"].__setitem__("optimizer", "rmsprop"))
    assert planned_jobs(run_copy) == after_training(SAT)


def after_training(models) -> Counter:
    """The jobs that retraining ``models`` plans: their training, decoding, scoring, attention figures, tables."""
    jobs = Counter(train=len(models), decode=len(models), score=len(models), tables=1, significance=1, costs=1, all=1)
    jobs["attention_maps"] = sum(m.startswith("sat") and not m.endswith("blind") for m in models)
    return +jobs


# the rerun matrix: a code edit of one module -> exactly the jobs that run it (and what depends on their outputs)
RERUN_MATRIX = {
    "decode command": ("captioner/evaluation/decode.py", Counter(decode=5, score=5, tables=1, significance=1, costs=1, all=1)),
    "scorer": ("captioner/evaluation/scoring.py", Counter(score=5, tables=1, significance=1, costs=1, all=1)),
    "statistics": ("captioner/evaluation/statistics.py", Counter(score=5, tables=1, significance=1, costs=1, all=1)),
    "tables": ("captioner/evaluation/tables.py", Counter(tables=1, significance=1, costs=1, all=1)),  # significance imports it
    "significance": ("captioner/evaluation/significance.py", Counter(significance=1, costs=1, all=1)),
    "region detector": ("features/detector.py", Counter()),  # the tiny run pools given boxes: no job runs it
    "given-box regions": ("features/regions.py", Counter(extract_features=1) + after_training(M2)),
    "grid extractor": ("features/grid.py", Counter(extract_features=1) + after_training(SAT)),
    "beam search": ("captioner/models/beam_search.py", Counter(train=1, decode=5, score=5, attention_maps=2, tables=1,
                                                               significance=1, costs=1, all=1)),  # train: m2_scst samples
    "M2 model file": ("captioner/models/m2.py", after_training(M2)),
    "SAT model file": ("captioner/models/sat.py", after_training(SAT)),
    "store reader": ("features/store/reader.py", after_training(MODELS)),
    "store format": ("features/store/format.py", Counter(extract_features=2) + after_training(MODELS)),
    "SCST objective": ("captioner/training/scst.py", after_training(["m2_scst"])),
    "hard-attention objective": ("captioner/training/reinforce.py", after_training(["sat_hard"])),
    "text preparation": ("captioner/data/text.py", Counter(prepare_text=1) + after_training(MODELS)),
    # released weights (issue 32): a run that trains everything runs none of their code
    "release facts": ("captioner/models/releases.py", Counter()),
    "released M2 importer": ("captioner/apps/import_m2_weights.py", Counter()),
    "manifest parts": ("captioner/data/split_manifest.py", Counter()),
    "store merge": ("features/store/merge.py", Counter()),  # (shards: 1, nothing to join)
    # timm backbones (issue 33): a run without features.backbones runs none of their code
    "timm grid extractor": ("features/timm_grid.py", Counter()),
}


@pytest.mark.parametrize("edit", list(RERUN_MATRIX))
def test_a_code_edit_reruns_exactly_the_jobs_that_run_it(run_copy, edit):
    path, expected = RERUN_MATRIX[edit]
    module = run_copy / path
    module.write_text(module.read_text() + "\n\ndef _rerun_probe():\n    return 1\n")
    assert planned_jobs(run_copy) == expected


def test_a_code_edits_rerun_reason_names_the_module(run_copy):
    """Snakemake prints the params that changed: the fingerprint names each module a job runs with its digest, so the
    reason says which one (the decode jobs' reason names the model file edited, not the decoder)."""
    module = run_copy / "captioner/models/sat.py"
    module.write_text(module.read_text() + "\n\ndef _rerun_probe():\n    return 1\n")
    result = snakemake(run_copy, "-n", "--", f"{RUN}/eval/sat_soft/seed0/predictions_test.json")
    reasons = [line for line in result.stdout.splitlines() if "Params have changed" in line]
    assert reasons  # the training's (the decoding's reason is its new input)
    for line in reasons:
        before, now = (set(line.split(f"{when}: ", 1)[1].split("'")[1].split()) for when in ("before", "now"))
        assert {token.split("@")[0] for token in before ^ now} == {"captioner.models.sat"}, line


def test_comments_docstrings_and_formatting_rerun_nothing(run_copy):
    for path in ("captioner/__init__.py", "captioner/models/m2.py", "features/extract.py", "pipeline/errors.py"):
        module = run_copy / path
        source = module.read_text()
        docstring_end = source.index('"""', 3)
        edited = source[:docstring_end] + " Edited." + source[docstring_end:]  # the module docstring
        edited = edited.replace("    def ", "    # a comment\n    def ", 1) + "\n\n# trailing comment\n"
        module.write_text(edited)
    run_copy.joinpath("captioner/training/trainer.py").write_text(
        run_copy.joinpath("captioner/training/trainer.py").read_text().replace(
            '"""The objective\'s own buffers (e.g. a REINFORCE baseline), without the model\'s."""',
            '"""The objective\'s buffers, not the model\'s."""'))  # a function docstring
    assert planned_jobs(run_copy) == Counter()


def test_each_extractor_fingerprint_holds_only_its_own_kind():
    from features.config import extractor_module
    from pipeline.provenance import project_modules
    from tests.workflow_helpers import PROJECT

    def modules(kind, boxes):
        return set(project_modules(PROJECT, "features.extract", extractor_module(kind, boxes)))

    grid, given, detected = modules("grid", "given"), modules("regions", "given"), modules("regions", "detector")
    assert "features.grid" in grid and not {"features.regions", "features.bottom_up", "features.detector"} & grid
    assert "features.regions" in given and not {"features.grid", "features.detector"} & given
    assert {"features.bottom_up", "features.detector", "features.butd"} <= detected and "features.grid" not in detected
    assert not any(m.startswith("captioner") for m in grid | given | detected)


def test_input_content_change_reruns_its_consumers(run_copy):
    dataset = run_copy / RUN / "dataset/dataset_coco.json"
    original = dataset.read_text()
    dataset.touch()  # same content: small files are compared by checksum, so nothing reruns
    assert planned_jobs(run_copy) == Counter()

    data = json.loads(original)
    data["images"][0]["sentences"][0]["raw"] = "A completely new caption."
    data["images"][0]["sentences"][0]["tokens"] = ["a", "completely", "new", "caption"]
    dataset.write_text(json.dumps(data))
    planned = planned_jobs(run_copy)
    assert "demo_data" not in planned
    assert planned["prepare_text"] == 1
    assert planned["extract_features"] == 2
    assert planned["train"] == len(MODELS) and planned["tables"] == 1


def test_karpathy_source_dag(tmp_path):
    """A user's own Karpathy JSON + image root: no demo rule, the rest of the DAG unchanged."""
    from captioner.data.demo import generate

    workdir = copy_workflow(tmp_path / "project")
    generate(tmp_path / "coco", seed=3, num_train=6, num_val=2, num_test=2)
    config = yaml.safe_load((workdir / TINY_CONFIG).read_text())
    config["dataset"] = {"source": "karpathy", "karpathy_json": str(tmp_path / "coco/dataset_coco.json"),
                         "image_root": str(tmp_path / "coco")}
    config["features"]["regions"]["boxes_json"] = str(tmp_path / "coco/boxes.json")
    (workdir / "coco.yaml").write_text(yaml.safe_dump(config))
    planned = planned_jobs(workdir, configfile="coco.yaml")
    assert "demo_data" not in planned
    assert planned["prepare_text"] == 1 and planned["extract_features"] == 2
    assert planned["train"] == len(MODELS)
    # offline (download: false), a torchvision weights name is a file to place, named while planning: nothing
    # reaches for the network when the job runs
    config["features"]["grid"]["weights"] = "IMAGENET1K_V1"
    (workdir / "offline.yaml").write_text(yaml.safe_dump(config))
    missing = snakemake(workdir, "-n", configfile="offline.yaml", check=False)
    assert missing.returncode != 0 and "data/weights/resnet18-IMAGENET1K_V1.pth" in missing.stdout + missing.stderr
    (workdir / "data/weights").mkdir(parents=True)
    (workdir / "data/weights/resnet18-IMAGENET1K_V1.pth").write_bytes(b"placed by hand")
    plan = snakemake(workdir, "-n", "-p", configfile="offline.yaml").stdout
    assert '"weights":"data/weights/resnet18-IMAGENET1K_V1.pth"' in plan


def test_lint_passes():
    from tests.workflow_helpers import PROJECT

    result = snakemake(PROJECT, "--lint", configfile="config/config.yaml", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shards_become_parallel_jobs_and_a_merge(tmp_path):
    workdir = copy_workflow(tmp_path / "project")
    edit_config(workdir, lambda c: c["features"].__setitem__("shards", 3))
    planned = planned_jobs(workdir)
    assert planned["extract_features"] == 6 and planned["merge_features"] == 2


def test_multi_gpu_training_jobs_run_the_signal_safe_torchrun_launcher(tmp_path):
    workdir = copy_workflow(tmp_path / "project")
    edit_config(workdir, lambda c: c["train"].__setitem__("gpus_per_job", {"sat": 2, "m2": 1}))
    commands = snakemake(workdir, "-n", "-p", "--resources", "gpu=2", "--forceall").stdout
    trains = [line for line in commands.splitlines() if " captioner job train --model " in line]
    launched = [line for line in trains if "-m captioner.training.launch --standalone --nproc-per-node 2 -m " in line]
    assert trains and {line.split("--model ")[1].split()[0] for line in launched} == {"sat_soft", "sat_hard",
                                                                                      "sat_soft_blind"}
    assert not [line for line in trains if "torchrun" in line]  # plain torchrun would lose a stopped job's save


def test_samples_and_report(run_copy):
    samples = (run_copy / RUN / "tables/samples.md").read_text()
    assert all(f"`{m}`" in samples for m in MODELS) and "*reference*" in samples
    snakemake(run_copy, "--report", "report.html")
    report = (run_copy / "report.html").read_text(errors="replace")
    assert len(report) > 10_000 and "scores" in report and "attention" in report.lower() and "costs.md" in report


def test_caption_cli_on_a_demo_image(finished_run, tmp_path, monkeypatch):
    import subprocess
    import sys

    from tests.faults.helpers import run_in_process

    images = sorted((finished_run / RUN / "dataset/images").glob("*.jpg"))[:2]
    boxes = json.loads((finished_run / RUN / "dataset/boxes.json").read_text())
    monkeypatch.chdir(finished_run)  # as a user runs it, beside the run's files

    def checkpoint(model):
        return str(finished_run / RUN / f"models/{model}/seed0/checkpoint.pt")

    # the command's own code in this process (each `python -m captioner caption` costs a torch and torchvision
    # import, ~4 CPU-s); the last case below runs it as a command, where its exit status and stderr are the point
    def captioned(arguments):
        result = run_in_process([sys.executable, "-m", "captioner", *arguments])
        assert result.returncode == 0, result.stderr
        return result

    def caption(model, paths, boxes_by_name=None):
        out = tmp_path / f"{model}.{len(paths)}.{paths[0].name}.json"
        arguments = ["caption", "--model", checkpoint(model), *map(str, paths), "--beam-size", "2", "--out", str(out)]
        if boxes_by_name is not None:  # trained on given boxes: the caller supplies them, keyed by file name
            (tmp_path / "boxes.json").write_text(json.dumps(boxes_by_name))
            arguments += ["--boxes", str(tmp_path / "boxes.json")]
        captioned(arguments)
        return json.loads(out.read_text())

    for model in ("sat_soft", "m2_xe"):
        by_name = None
        if model == "m2_xe":  # listed in the other order than the images: matching is by name, not position
            by_name = {p.name: boxes[str(int(p.stem.split("_")[1]))] for p in reversed(images)}
        captions = caption(model, images, by_name)
        assert [c["image"] for c in captions] == [str(p) for p in images]
        assert all(c["caption"] for c in captions)
        if model == "m2_xe":  # each image captioned alone, with only its own boxes, gets the same caption
            for path, together in zip(images, captions):
                alone = caption(model, [path], {path.name: by_name[path.name]})
                assert alone[0]["logprob"] == pytest.approx(together["logprob"], abs=1e-4)

    # the demo's own boxes.json, keyed by image id (the number ending each file name), serves as it is
    (tmp_path / "by_id.json").write_text(json.dumps(boxes))
    captioned(["caption", "--model", checkpoint("m2_xe"), str(images[0]), "--beam-size", "2",
               "--boxes", str(tmp_path / "by_id.json")])

    # bad images: every one named (fail, the default, after captioning the rest) or listed with its reason (skip)
    from PIL import Image

    truncated, bomb = tmp_path / "truncated.jpg", tmp_path / "bomb.png"
    truncated.write_bytes(images[0].read_bytes()[:300])
    Image.new("1", (13500, 13500)).save(bomb)  # past Pillow's decompression-bomb limit
    for on_error in ("skip", "fail"):
        out = tmp_path / f"bad.{on_error}.json"
        arguments = ["caption", "--model", checkpoint("sat_soft"), str(images[0]), str(truncated), str(bomb),
                     "--beam-size", "2", "--out", str(out), "--on-error", on_error]
        if on_error == "skip":
            captioned(arguments)
        else:
            result = subprocess.run([sys.executable, "-m", "captioner", *arguments], capture_output=True, text=True,
                                    env=environment(), cwd=finished_run)
            assert result.returncode != 0 and "Traceback" not in result.stderr
            assert "error: 2 of 3 image(s) could not be read" in result.stderr
        written = json.loads(out.read_text())
        assert written[0]["caption"] and "truncated.jpg" in written[1]["error"] and "Pillow" in written[2]["error"]
