import csv
import io
import json

from captioner.evaluation.tables import (build_rows, label_released, published_rows, samples_markdown, to_csv,
                                         to_markdown)


def write_scores(path, model, cider, bleu4):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "epoch": 3, "beam_size": 5, "split": "test", "images": 2,
                                "corpus": {"BLEU-4": bleu4, "CIDEr-D": cider}, "per_image": {}}))
    return path


def test_tables_come_from_score_files(tmp_path):
    files = [write_scores(tmp_path / "a/scores_test.json", "sat_soft", 101.234, 30.0),
             write_scores(tmp_path / "b/scores_test.json", "sat_soft_blind", 20.0, 10.5)]
    rows = build_rows(files)
    table = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [r["model"] for r in table] == ["sat_soft", "sat_soft_blind"]
    assert table[0]["CIDEr-D"] == "101.23" and table[1]["BLEU-4"] == "10.5" and table[0]["epoch"] == "3"
    assert "| `sat_soft` | 30.0 | 101.2 | 5 | 3 |" in to_markdown(rows)
    markdown = to_markdown(rows + published_rows("coco"), "demo")
    assert "| `sat_soft` | – | – | – | 30.0 | – | – | 101.2 | – | 5 | 3 |" in markdown
    assert "*published: Cornia et al. 2020, M² Transformer, COCO*" in markdown and "131.2" in markdown
    assert "not produced by this pipeline" in markdown and "(5,000 images)" in markdown
    assert "published" not in to_markdown(rows)


def test_the_published_rows_are_those_of_the_dataset_run():
    flickr8k = {row["model"]: row for row in published_rows("flickr8k")}
    assert set(flickr8k) == {"published: Xu et al. 2015, soft attention (VGG), Flickr8k",
                             "published: Xu et al. 2015, hard attention (VGG), Flickr8k"}  # M² reports COCO only
    assert flickr8k["published: Xu et al. 2015, soft attention (VGG), Flickr8k"]["BLEU-4"] == 19.5
    assert {row["model"]: row["BLEU-4"] for row in published_rows("flickr30k")} == {
        "published: Xu et al. 2015, soft attention (VGG), Flickr30k": 19.1,
        "published: Xu et al. 2015, hard attention (VGG), Flickr30k": 19.9}
    assert all(row["images"] == 1000 for row in published_rows("flickr30k"))
    assert "(1,000 images)" in to_markdown(published_rows("flickr8k"))
    assert {row["BLEU-4"] for row in published_rows("coco")} == {24.3, 25.0, 39.1}


def test_samples_list_every_model_next_to_a_reference(tmp_path):
    captions = {"splits": {"test": [{"image_id": 5, "path": "x/5.jpg", "refs": ["a red circle", "x"]},
                                    {"image_id": 6, "path": "x/6.jpg", "refs": ["a blue star"]}]}}
    for model, text in (("sat_soft", "a red thing"), ("m2_xe", "a red circle")):
        (tmp_path / model).mkdir()
        (tmp_path / model / "predictions_test.json").write_text(
            json.dumps([{"image_id": 5, "caption": text}, {"image_id": 6, "caption": "a star"}]))
    text = samples_markdown([tmp_path / "sat_soft/predictions_test.json", tmp_path / "m2_xe/predictions_test.json"],
                            captions, "test", 1)
    assert "*reference*: a red circle" in text and "`sat_soft`: a red thing" in text and "`m2_xe`: a red circle" in text
    assert "image 6" not in text and "_blind" not in text
    (tmp_path / "sat_soft_blind").mkdir()
    (tmp_path / "sat_soft_blind/predictions_test.json").write_text(
        json.dumps([{"image_id": 5, "caption": "a shape"}, {"image_id": 6, "caption": "a shape"}]))
    files = [tmp_path / "sat_soft/predictions_test.json", tmp_path / "sat_soft_blind/predictions_test.json"]
    text = samples_markdown(files, captions, "test", 2)
    assert "they see no image, so they write one caption for every image" in text  # why its rows repeat


def test_released_weights_rows_are_labelled_and_their_authors_log_is_a_row_of_its_own(tmp_path):
    files = [write_scores(tmp_path / "a/scores_test.json", "m2_released", 125.0, 38.0),
             write_scores(tmp_path / "b/scores_test.json", "m2_xe", 110.0, 35.0)]
    released = {"labels": {"m2_released": "released weights (Cornia et al. 2020); features extracted by this run"},
                "reported": [["Cornia et al., their test log", 5000, 5, {"BLEU-4": 39.09, "CIDEr-D": 131.2}]]}
    rows = label_released(build_rows(files), released)
    table = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [(r["model"], r["label"]) for r in table] == [
        ("m2_released", "released weights (Cornia et al. 2020); features extracted by this run"), ("m2_xe", ""),
        ("reported: Cornia et al., their test log", "")]
    assert table[2]["CIDEr-D"] == "131.2" and table[2]["beam_size"] == "5" and table[2]["images"] == "5000"
    markdown = to_markdown(rows)
    assert "| `m2_released` (released weights (Cornia et al. 2020); features extracted by this run) |" in markdown
    assert "| *reported: Cornia et al., their test log* |" in markdown and "authors' own logs" in markdown
    assert "label" not in to_csv(build_rows(files)).splitlines()[0]  # no released weights: the columns as before
