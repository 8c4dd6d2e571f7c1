import shutil

import pytest

from captioner.evaluation.scoring import JavaMissingError, ptb_tokenize, sanitize, score_captions, spice_status

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs java on PATH")

REFS = {1: ["a red circle left of a blue square", "there is a blue square to the right of a red circle"],
        2: ["a small green star", "one green star in the middle"],
        3: ["two shapes a white diamond and a yellow circle", "a white diamond above a yellow circle"]}


@needs_java
def test_hypothesis_equal_to_references_scores_full_bleu():
    predictions = {i: refs[0] for i, refs in REFS.items()}
    single_refs = {i: [refs[0]] for i, refs in REFS.items()}
    scores = score_captions(predictions, single_refs)
    assert scores["corpus"]["BLEU-4"] == pytest.approx(100.0, abs=1e-4)
    assert scores["corpus"]["CIDEr-D"] > 0
    assert scores["corpus"]["METEOR"] > 90
    assert set(scores["per_image"]["1"]) >= {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"}


@needs_java
def test_newlines_and_control_characters_do_not_desync_meteor():
    predictions = {1: "a red circle\nleft of a\r blue square", 2: "a small\x00 green star\t", 3: ""}
    refs = dict(REFS)
    refs[2] = ["a small green star\n", "one green\nstar"]
    scores = score_captions(predictions, refs)
    assert scores["per_image"]["1"]["METEOR"] > 50
    assert scores["per_image"]["3"]["METEOR"] == 0.0
    assert sanitize("a\nb\x07 c\u200b") == "a b c"


@needs_java
def test_tokenizer_matches_reference_behaviour():
    tokenized = ptb_tokenize({7: ["A Dog's bone, on the Mat."]})
    assert tokenized[7] == ["a dog 's bone on the mat"]


@needs_java
def test_spice_absent_is_reported_and_other_metrics_remain():
    available, reason = spice_status()
    if available:
        pytest.skip("SPICE jars are installed here")
    assert "SPICE skipped" in reason
    scores = score_captions({1: "a red circle", 2: "a star"}, {1: ["a red circle"], 2: ["a green star"]},
                            ("bleu", "cider", "spice"))
    assert "SPICE skipped" in scores["spice"]
    assert "SPICE" not in scores["corpus"] and {"BLEU-4", "CIDEr-D"} <= set(scores["corpus"])


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no java on it
    with pytest.raises(JavaMissingError, match="java is not on PATH.*apt-get install default-jre-headless"):
        score_captions({1: "a dog"}, {1: ["a dog"]})
