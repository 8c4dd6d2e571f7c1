"""Caption scoring with pycocoevalcap's scorers, built directly (not ``COCOEvalCap.evaluate()``, which always
constructs SPICE and tries to download Stanford CoreNLP).

- Captions are sanitised first: newlines and non-printable characters would desync METEOR's line protocol.
- PTB tokenisation runs pycocoevalcap's CoreNLP jar with its temporary file in a writable temp
  directory, not inside site-packages (so a read-only install works).
- One METEOR process per scoring run (reused across subsets: :class:`MeteorProcess`).
- Scores are reported on the 0-100 scale papers use; per-image scores are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

from captioner.evaluation.specs import ScoreSpec
from pipeline.config import defaults
from pipeline.errors import InputError, MissingKeyError, PipelineError
from pipeline.spec import add_spec_argument, spec_from_args

PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
               "...", ";"}
METRICS = ("bleu", "meteor", "rouge", "cider", "spice")


class JavaMissingError(PipelineError, RuntimeError):
    """pycocoevalcap needs a Java runtime and none is on PATH."""


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError(
            "java is not on PATH: pycocoevalcap's tokenizer and METEOR need a Java runtime "
            "(Debian/Ubuntu: apt-get install default-jre-headless; conda: conda install openjdk)")
    return java


def sanitize(caption: str) -> str:
    """One line of printable text: newlines/tabs become spaces, control and format characters are dropped."""
    caption = caption.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    caption = "".join(ch for ch in caption if unicodedata.category(ch)[0] != "C")
    return " ".join(caption.split())


def ptb_tokenize(captions: dict) -> dict:
    """{key: [caption, ...]} -> {key: [tokenized caption, ...]} with pycocoevalcap's Stanford PTB tokenizer."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    java = require_java()
    jar = Path(ptb.__file__).with_name(ptb.STANFORD_CORENLP_3_4_1_JAR)
    keys = [k for k, caps in captions.items() for _ in caps]
    lines = [sanitize(c) for caps in captions.values() for c in caps]
    with tempfile.TemporaryDirectory(prefix="ptbtok-") as tmp:
        source = Path(tmp) / "captions.txt"
        source.write_text("\n".join(lines), encoding="utf-8")
        result = subprocess.run([java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                                 "-lowerCase", str(source)], capture_output=True, cwd=tmp, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed (exit {result.returncode}): {result.stderr.decode()[-500:]}")
    out_lines = result.stdout.decode("utf-8").split("\n")
    tokenized: dict = {k: [] for k in captions}
    for key, line in zip(keys, out_lines + [""] * (len(keys) - len(out_lines))):
        tokenized[key].append(" ".join(w for w in line.rstrip().split(" ") if w and w not in PUNCTUATION))
    return tokenized


def spice_status() -> tuple[bool, str]:
    """SPICE is opt-in and needs Stanford CoreNLP 3.6.0 jars beside pycocoevalcap's spice jar."""
    import pycocoevalcap.spice.spice as spice

    lib = Path(spice.__file__).parent / "lib"
    if not list(lib.glob("stanford-corenlp-3.6.0*.jar")):
        return False, (f"SPICE skipped: Stanford CoreNLP 3.6.0 jars are not in {lib} (pycocoevalcap does not ship "
                       "them and would download ~400 MB at run time)")
    return True, "SPICE jars present"


def run_spice(gts: dict, res: dict) -> tuple[float, list[float]]:
    """SPICE F-score via pycocoevalcap's jar, without its ``-cache`` (which fails on Java >= 16)."""
    import pycocoevalcap.spice.spice as spice

    jar = Path(spice.__file__).with_name("spice-1.0.jar")
    java = require_java()
    ids = list(gts)
    with tempfile.TemporaryDirectory(prefix="spice-") as tmp:
        source, target = Path(tmp) / "input.json", Path(tmp) / "output.json"
        source.write_text(json.dumps([{"image_id": str(i), "test": res[i][0], "refs": gts[i]} for i in ids]))
        result = subprocess.run([java, "-jar", "-Xmx8G", str(jar), str(source), "-out", str(target), "-subset",
                                 "-silent"], capture_output=True, cwd=tmp, check=False, timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(f"SPICE failed (exit {result.returncode}): {result.stderr.decode()[-500:]}")
        by_id = {item["image_id"]: item["scores"]["All"]["f"] for item in json.loads(target.read_text())}
    per = [float(by_id[str(i)]) for i in ids]
    return sum(per) / len(per), per


def score_captions(predictions: dict, references: dict, metrics=METRICS) -> dict:
    """``predictions``: {image_id: caption}; ``references``: {image_id: [captions]}.

    Returns {"corpus": {metric: 0-100 score}, "per_image": {image_id: {metric: score}}}.
    """
    check_metrics(metrics)
    gts, res = tokenize_for_scoring(predictions, references)
    return score_tokenized(gts, res, metrics)


def check_metrics(metrics) -> None:
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise InputError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")


def tokenize_for_scoring(predictions: dict, references: dict) -> tuple[dict, dict]:
    """PTB-tokenised references and predictions of the images in ``references`` (each needs a prediction)."""
    missing = [i for i in references if i not in predictions]
    if missing:
        raise MissingKeyError(f"no prediction for image id {missing[0]} ({len(missing)} missing)")
    ids = list(references)
    return ptb_tokenize({i: list(references[i]) for i in ids}), ptb_tokenize({i: [predictions[i]] for i in ids})


class MeteorProcess:
    """pycocoevalcap's METEOR scorer (one Java process), closed on exit; reusable for several subsets."""

    def __enter__(self):
        from pycocoevalcap.meteor.meteor import Meteor

        self.meteor = Meteor()
        return self.meteor

    def __exit__(self, *exc):
        self.meteor.meteor_p.stdin.close()
        self.meteor.meteor_p.kill()
        self.meteor.meteor_p.wait()


def score_tokenized(gts: dict, res: dict, metrics=METRICS, meteor=None) -> dict:
    """:func:`score_captions` on tokenised captions (``gts``/``res`` keyed by image id): every metric is computed over
    exactly these images (CIDEr-D's document frequencies too). ``meteor``: a running :class:`MeteorProcess`."""
    ids = list(gts)
    corpus: dict[str, float] = {}
    per_image: dict = {i: {} for i in ids}

    def record(name, value, values):
        corpus[name] = 100.0 * float(value)
        for i, v in zip(ids, values):
            per_image[i][name] = 100.0 * float(v)

    if "bleu" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        values, per = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            record(f"BLEU-{n + 1}", values[n], per[n])
    if "meteor" in metrics:
        if meteor is None:
            with MeteorProcess() as own:
                value, per = own.compute_score(gts, res)
        else:
            value, per = meteor.compute_score(gts, res)
        record("METEOR", value, per)
    if "rouge" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        value, per = Rouge().compute_score(gts, res)
        record("ROUGE-L", value, per)
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        value, per = Cider().compute_score(gts, res)
        record("CIDEr-D", value, per)
    spice_note = None
    if "spice" in metrics:
        available, spice_note = spice_status()
        if available:
            value, per = run_spice(gts, res)
            record("SPICE", value, per)
    scores = {"corpus": corpus, "per_image": {str(i): v for i, v in per_image.items()}, "spice": spice_note}
    if "bleu" in metrics:  # what resampled corpus BLEU is rebuilt from (captioner.evaluation.statistics)
        from captioner.evaluation.statistics import bleu_statistics

        scores["bleu_stats"] = bleu_statistics(gts, res)
    if "METEOR" in corpus:  # resamples average per-image METEOR: how far that is from the corpus score here
        scores["meteor_mean_minus_corpus"] = sum(v["METEOR"] for v in per_image.values()) / len(ids) - corpus["METEOR"]
    return scores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_argument(parser, ScoreSpec)
    parser.add_argument("--predictions", required=True)
    parser.add_argument("--beams", help="the decode's beams JSON: model, epoch and beam size go into the scores")
    parser.add_argument("--captions", required=True)
    parser.add_argument("--split", default=defaults("evaluate")["split"], help="the split the predictions are of")
    parser.add_argument("--out", required=True)

def run(args) -> None:
    from captioner.data.vocab import load_captions
    from pipeline.atomic import write_json

    with open(args.predictions, encoding="utf-8") as handle:
        predictions = {int(p["image_id"]): p["caption"] for p in json.load(handle)}
    images = load_captions(args.captions)["splits"][args.split]
    references = {int(image["image_id"]): image["refs"] for image in images}
    metrics = spec_from_args(ScoreSpec, args).metrics
    scores = score_captions(predictions, references, metrics)
    info = {}
    if args.beams:
        with open(args.beams, encoding="utf-8") as handle:
            beams = json.load(handle)
        info = {k: beams[k] for k in ("model", "epoch", "beam_size", "max_length") if k in beams}
    scores.update(info, split=args.split, images=len(references))
    if scores["spice"] is None:
        scores["spice"] = "SPICE not requested (add spice to evaluate.metrics)"
    write_json(args.out, scores)
    summary = ", ".join(f"{k} {v:.1f}" for k, v in scores["corpus"].items())
    print(f"{info.get('model', args.predictions)} {args.split}: {summary}", file=sys.stderr)
    print(scores["spice"], file=sys.stderr)
