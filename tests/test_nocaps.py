"""nocaps: the official-format reader, per-domain scoring against pycocoevalcap run by hand on each subset, the table
built from the score files, and the per-image image download (local HTTP server)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from captioner.data.nocaps import DOMAINS, NocapsFormatError, load, prepare
from tests.http_server import Server

CAPTIONS = {
    "in-domain": ["a man riding a horse on a beach", "a dog sitting on a couch", "two people playing tennis"],
    "near-domain": ["a jellyfish floating in the water", "a man holding a red accordion", "a cat next to a lantern"],
    "out-domain": ["a tortoise on the sand", "a stack of pancakes on a plate", "a harpsichord in a hall"],
}


def official_file(path, with_captions=True, per_image=10):
    """A small nocaps file in the official format (plus the domain key third-party loaders read)."""
    images, annotations = [], []
    for domain, captions in CAPTIONS.items():
        for caption in captions:
            image_id = len(images)
            oid = f"{image_id:016x}"
            images.append({"id": image_id, "open_images_id": oid, "file_name": f"{oid}.jpg", "height": 480,
                           "width": 640, "coco_url": f"https://s3.amazonaws.com/nocaps/val/{oid}.jpg",
                           "license": 0, "date_captured": "2018-11-06 11:04:33", "domain": domain})
            for k in range(per_image if with_captions else 0):
                annotations.append({"image_id": image_id, "id": len(annotations),
                                    "caption": f"{caption} {'seen from afar' if k % 2 else 'in the daylight'} {k}"})
    data = {"licenses": [], "info": {"description": "nocaps validation dataset", "version": "0.1"}, "images": images}
    if with_captions:
        data["annotations"] = annotations
    path.write_text(json.dumps(data))
    return data


def test_the_reader_reads_the_official_format(tmp_path):
    official_file(tmp_path / "val.json")
    images = load(tmp_path / "val.json")
    assert len(images) == 9 and [i.domain for i in images] == [d for d in DOMAINS for _ in range(3)]
    assert all(len(i.captions) == 10 for i in images) and images[0].url.endswith(f"{images[0].file_name}")
    official_file(tmp_path / "test.json", with_captions=False)
    assert all(i.captions == () for i in load(tmp_path / "test.json", with_captions=False))


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["images"][4].pop("domain"), r"image 4 has no 'domain' key.*UNCONFIRMED"),
    (lambda d: d["images"][4].update(domain="novel"), r"image 4 has domain 'novel'; expected one of in-domain"),
    (lambda d: d["images"][5].update(id=2), r"duplicate image id 2"),
    (lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 7]), r"image 7 has no caption"),
    (lambda d: d["annotations"].append({"image_id": 99, "caption": "x"}), r"image id 99, which is not in images"),
    (lambda d: d["annotations"][0].update(caption=" "), r"annotations\[0\] \(image 0\) has an empty caption"),
    (lambda d: d.pop("images"), r"no 'images' list"),
])
def test_bad_input_is_one_error_naming_the_file_and_image(tmp_path, damage, message):
    data = official_file(tmp_path / "val.json")
    damage(data)
    (tmp_path / "val.json").write_text(json.dumps(data))
    with pytest.raises(NocapsFormatError, match=message) as raised:
        load(tmp_path / "val.json")
    assert str(tmp_path / "val.json") in str(raised.value)


def test_prepare_writes_the_evaluation_set_and_fails_or_skips_missing_images(tmp_path):
    from pipeline.errors import InputError
    from pipeline.manifest import read_manifest

    data = official_file(tmp_path / "val.json")
    (tmp_path / "images").mkdir()
    for image in data["images"][1:]:
        (tmp_path / "images" / image["file_name"]).write_bytes(b"jpeg")
    with pytest.raises(InputError, match=r"nocaps image 0 is missing \(1 of 9"):
        prepare(tmp_path / "val.json", tmp_path / "nocaps.json", tmp_path / "m.json", "val", tmp_path / "images")
    assert not (tmp_path / "nocaps.json").exists()
    counts = prepare(tmp_path / "val.json", tmp_path / "nocaps.json", tmp_path / "m.json", "val",
                     tmp_path / "images", on_missing="skip")
    assert counts == {"in-domain": 2, "near-domain": 3, "out-domain": 3}
    written = json.loads((tmp_path / "nocaps.json").read_text())
    assert written["missing_images"] == [0] and written["nocaps_split"] == "val"
    assert [item["domain"] for item in written["splits"]["nocaps"]].count("in-domain") == 2
    assert len(written["splits"]["nocaps"][0]["refs"]) == 10
    assert [image.image_id for image in read_manifest(tmp_path / "m.json")] == list(range(1, 9))


def predictions_for(data):
    """Captions that overlap their references to different degrees per image."""
    words = ["a", "man", "on", "the", "sand", "dog", "plate", "water", "in", "hall"]
    return {image["id"]: " ".join(words[(image["id"] * 3 + k) % len(words)] for k in range(4 + image["id"] % 3))
            for image in data["images"]}


def by_hand(references: dict, predictions: dict, meteor) -> dict:
    """pycocoevalcap's own tokenizer and scorers on one subset, as its COCOEvalCap runs them (``meteor``: its
    Meteor, started once for all subsets: METEOR keeps no state between EVAL lines)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in references})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n + 1}": 100 * bleu[n] for n in range(4)}
    scores["METEOR"] = 100 * meteor.compute_score(gts, res)[0]
    scores["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    scores["CIDEr-D"] = 100 * Cider().compute_score(gts, res)[0]
    return scores


def subset_ids(items: list, subset: str) -> list:
    return [item["image_id"] for item in items if subset in (item["domain"], "entire")]


def test_each_domain_is_an_independent_pycocoevalcap_run(tmp_path):
    from captioner.evaluation.nocaps_scoring import score_by_domain

    data = official_file(tmp_path / "val.json")
    prepare(tmp_path / "val.json", tmp_path / "nocaps.json", tmp_path / "m.json", "val")
    items = json.loads((tmp_path / "nocaps.json").read_text())["splits"]["nocaps"]
    predictions = predictions_for(data)
    scores = score_by_domain(predictions, items, ["bleu", "meteor", "rouge", "cider"])
    from pycocoevalcap.meteor.meteor import Meteor

    # by hand, one METEOR process too but the subsets in the opposite order: anything a subset's scores carried
    # into the next one's in either process would make them differ
    meteor = Meteor()
    try:
        expected_by_subset = {subset: by_hand({i: items[i]["refs"] for i in subset_ids(items, subset)}, predictions,
                                              meteor) for subset in reversed((*DOMAINS, "entire"))}
    finally:
        meteor.meteor_p.kill()
    for subset in (*DOMAINS, "entire"):
        ids = subset_ids(items, subset)
        expected = expected_by_subset[subset]
        assert scores["domains"][subset]["images"] == len(ids)
        for metric, value in expected.items():
            assert scores["domains"][subset]["corpus"][metric] == pytest.approx(value, abs=1e-9), (subset, metric)
    # document frequencies come from the subset: its CIDEr-D is not the entire run's per-image CIDEr-D averaged
    in_ids = [str(item["image_id"]) for item in items if item["domain"] == "in-domain"]
    sliced = sum(scores["per_image"][i]["CIDEr-D"] for i in in_ids) / len(in_ids)
    assert abs(scores["domains"]["in-domain"]["corpus"]["CIDEr-D"] - sliced) > 0.1


def test_the_nocaps_table_is_built_from_the_score_files(tmp_path):
    from captioner.evaluation import nocaps_tables
    from pipeline.atomic import write_json

    files = []
    for model, base in (("sat_soft", 10.0), ("m2_xe", 20.0)):
        domains = {subset: {"images": 3 if subset != "entire" else 9,
                            "corpus": {"BLEU-4": base + k, "CIDEr-D": 2 * base + k}}
                   for k, subset in enumerate((*DOMAINS, "entire"))}
        path = tmp_path / model / "scores_nocaps.json"
        path.parent.mkdir()
        write_json(path, {"model": model, "epoch": 3, "beam_size": 5, "domains": domains})
        files.append(str(path))

    class Args:
        scores, out_csv, out_md, title, published = files, tmp_path / "nocaps.csv", tmp_path / "nocaps.md", "t", True

    nocaps_tables.run(Args)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "nocaps.csv").read_text())))
    assert [r["model"] for r in rows][:2] == ["sat_soft", "m2_xe"] and rows[2]["model"].startswith("published: UpDown")
    assert float(rows[1]["out-domain CIDEr-D"]) == 42.0 and float(rows[0]["entire BLEU-4"]) == 13.0
    assert rows[2]["out-domain CIDEr-D"] == "31.3" and rows[2]["in-domain CIDEr-D"] == "78.1"
    markdown = (tmp_path / "nocaps.md").read_text()
    # CIDEr-D and SPICE (which only the published row has) in / near / out / entire
    assert "| `m2_xe` | 40.0 | – | 41.0 | – | 42.0 | – | 43.0 | – |" in markdown
    assert all(f"## {subset}" in markdown for subset in (*DOMAINS, "entire")) and "UNCONFIRMED" in markdown


def test_images_are_fetched_per_url_and_failures_listed(tmp_path):
    from captioner.data.nocaps_images import fetch_images
    from pipeline.download import DownloadError

    server = Server()
    try:
        data = official_file(tmp_path / "val.json")
        for image in data["images"]:
            image["coco_url"] = f"{server.url}/val/{image['file_name']}"
            if image["id"] not in (2, 6):
                server.files[f"val/{image['file_name']}"] = bytes([image["id"]]) * 2000
        (tmp_path / "val.json").write_text(json.dumps(data))
        out, failures = tmp_path / "nocaps/val", tmp_path / "nocaps/failures.json"
        with pytest.raises(DownloadError, match=r"2 of 9 nocaps images could not be fetched") as raised:
            fetch_images(tmp_path / "val.json", out, failures, workers=3, on_error="fail", backoff=0.01)
        assert data["images"][2]["coco_url"] in str(raised.value) and str(failures) in str(raised.value)
        assert [f["url"] for f in json.loads(failures.read_text())] == [data["images"][i]["coco_url"] for i in (2, 6)]
        assert not out.exists()  # nothing looks complete; what was fetched waits in the staging folder
        served = len(server.requests)
        count, missing = fetch_images(tmp_path / "val.json", out, failures, workers=3, on_error="skip", backoff=0.01)
        assert count == 7 and len(missing) == 2 and len(list(out.iterdir())) == 7
        assert len(server.requests) - served == 2  # the rerun asked only for the two it did not have
    finally:
        server.close()


@pytest.mark.slow
def test_the_demo_nocaps_set_runs_through_the_dag_to_the_per_domain_table(finished_run, tmp_path):
    import yaml

    from tests.workflow_helpers import TINY_CONFIG, clone_run, planned_jobs, snakemake

    # nocaps added to a finished run: its models are scored on the new set, not retrained
    workdir = clone_run(finished_run, tmp_path / "project")
    config = yaml.safe_load((workdir / TINY_CONFIG).read_text())
    config["models"] = {"sat_soft": {}, "m2_xe": {}}
    config["evaluate"].update(attention_maps=0, metrics=["bleu", "cider"],
                              nocaps={"source": "demo", "demo": {"seed": 2, "num_images": 24}})
    (workdir / "nocaps.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    planned = planned_jobs(workdir, configfile="nocaps.yaml")
    assert not {"train", "demo_data", "prepare_text"} & set(planned) and planned["score_nocaps"] == 2, planned
    snakemake(workdir, configfile="nocaps.yaml")
    run = workdir / "results/tiny"
    rows = list(csv.DictReader(io.StringIO((run / "tables/nocaps.csv").read_text())))
    assert [row["model"] for row in rows] == ["sat_soft", "m2_xe"]
    for row in rows:
        counts = [int(row[f"{s} images"]) for s in (*DOMAINS, "entire")]
        assert sum(counts[:3]) == counts[3] == 24 and min(counts) > 0
        scores = json.loads((run / f"eval/{row['model']}/seed0/scores_nocaps.json").read_text())
        assert float(row["out-domain CIDEr-D"]) == pytest.approx(scores["domains"]["out-domain"]["corpus"]["CIDEr-D"],
                                                                 abs=0.01)
    assert "## CIDEr-D per domain" in (run / "tables/nocaps.md").read_text()
    # the test split has no captions: each model's EvalAI submission file, no scores
    config["evaluate"]["nocaps"]["split"] = "test"
    (workdir / "nocaps.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    planned = planned_jobs(workdir, configfile="nocaps.yaml")
    assert "score_nocaps" not in planned and "nocaps_tables" not in planned and planned["prepare_nocaps"] == 1
