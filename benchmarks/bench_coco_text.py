"""Text costs at COCO scale on synthetic data of COCO's shape: ``prepare-text`` (the real CLI) and the CIDEr-D
document frequencies SCST builds over the training references at the start of every job.

The synthetic ``dataset_coco.json`` has Karpathy's split counts (113,287 train+restval / 5,000 val / 5,000 test),
5-7 sentences per image (COCO's mix: almost all 5), 8 + Poisson(2.5) words per sentence (mean 10.5, as COCO) drawn
i.i.d. from a Zipf law whose exponent is solved so that about ``--vocab`` words reach the ``min_word_count`` of the
config schema. I.i.d. words make far more distinct 3- and 4-grams than real captions do, so the document-frequency
table here is larger than COCO's: a pessimistic case for the CIDEr-D build.

Every measurement runs in its own process (wall time and peak RSS from ``os.wait4``). ``--baseline DIR`` (a copy
of an older tree, e.g. ``git archive HEAD | tar -x -C DIR``) runs the same two measurements on that code,
interleaved with ours, checks that both trees write the same files and give the same CIDEr-D scores, and reports
the ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import append_results  # noqa: E402
from pipeline.config import defaults  # noqa: E402

SPLITS = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}  # Karpathy's COCO split
SENTENCES_PER_IMAGE = {5: 0.997, 6: 0.0025, 7: 0.0005}  # COCO: 616,767 captions over 123,287 images

# what SelfCritical.__init__ does before the build (captioner/training/scst.py), then a fixed set of scores so that
# two trees can be compared; run with the tree under test first on sys.path
CIDER_CHILD = r"""
import json, random, resource, sys, time
t0 = time.perf_counter()
from captioner.data.karpathy import tokenize
from captioner.data.vocab import load_captions
from captioner.training.cider import CiderD
images = load_captions(sys.argv[1])["splits"]["train"]
refs = [[" ".join(tokenize(r)) for r in image["refs"]] for image in images]
t1, c1 = time.perf_counter(), time.process_time()
rss_before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024
scorer = CiderD(refs)
t2, c2 = time.perf_counter(), time.process_time()
rng = random.Random(0)
picked = rng.sample(range(len(refs)), 200)
hyps = [rng.choice(refs[rng.randrange(len(refs))]) if k % 2 else refs[i][0] for k, i in enumerate(picked)]
scores = scorer.score(hyps, [refs[i] for i in picked]).tolist()
print(json.dumps({"load_s": t1 - t0, "build_s": t2 - t1, "build_cpu_s": c2 - c1, "rss_before_kb": rss_before,
                  "peak_after_build_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "scores": scores}))
"""


def word_list(count: int) -> list[str]:
    """``count`` distinct lower-case alphabetic words (tokenize leaves them as they are)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = []
    for i in range(count):
        word, i = "", i + 26
        while i:
            i, digit = divmod(i, 26)
            word = letters[digit] + word
        words.append(word)
    return words


def zipf_exponent(total_words: int, tokens: float, target: int, min_count: int) -> float:
    """The exponent s for which about ``target`` of ``total_words`` Zipf(s) words are expected to occur
    ``min_count`` times or more in ``tokens`` draws."""
    ranks = np.arange(1, total_words + 1, dtype=np.float64)
    lo, hi = 0.0, 3.0
    for _ in range(60):
        s = (lo + hi) / 2
        rate = tokens * ranks ** -s / (ranks ** -s).sum()
        # expected words with a Poisson(rate) count >= min_count (the tail words that pass by chance included)
        below = np.exp(-rate) * sum(rate ** k / math.factorial(k) for k in range(min_count))
        if (1 - below).sum() > target:
            lo = s
        else:
            hi = s
    return (lo + hi) / 2


def generate(path: Path, scale: float, vocab: int, total_words: int, min_count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    counts = {split: max(1, round(n * scale)) for split, n in SPLITS.items()}
    images = sum(counts.values())
    sizes = rng.choice(list(SENTENCES_PER_IMAGE), size=images, p=list(SENTENCES_PER_IMAGE.values()))
    lengths = 8 + rng.poisson(2.5, size=int(sizes.sum()))
    train_tokens = lengths[:int(sizes[:counts["train"] + counts["restval"]].sum())].sum()
    s = zipf_exponent(total_words, float(train_tokens), vocab, min_count)
    p = np.arange(1, total_words + 1, dtype=np.float64) ** -s
    words = np.array(word_list(total_words), dtype=object)
    # a fixed random word order per rank, so that frequent words are not also the short ones
    words = words[rng.permutation(total_words)]
    drawn = words[rng.choice(total_words, size=int(lengths.sum()), p=p / p.sum())].tolist()
    split_of = [split for split, n in counts.items() for _ in range(n)]
    entries, word, sentence = [], 0, 0
    for index in range(images):
        cocoid = 100_000 + index
        sentences = []
        for _ in range(int(sizes[index])):
            tokens = drawn[word:word + int(lengths[sentence])]
            word += len(tokens)
            raw = " ".join(tokens).capitalize() + "."
            sentences.append({"tokens": tokens, "raw": raw, "imgid": index, "sentid": sentence})
            sentence += 1
        folder = "train2014" if split_of[index] == "train" else "val2014"
        entries.append({"filepath": folder, "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "imgid": index,
                        "cocoid": cocoid, "split": split_of[index], "sentids": [x["sentid"] for x in sentences],
                        "sentences": sentences})
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"images": entries, "dataset": "coco"}, handle)
    return {"images": images, "splits": counts, "sentences": int(sizes.sum()), "mean_words": float(lengths.mean()),
            "zipf_s": s, "total_words": total_words, "bytes": path.stat().st_size}


def run_child(command: list[str], tree: Path) -> dict:
    """Run ``command`` in ``tree`` (first on sys.path): wall seconds, peak RSS (MiB), stdout. The child is reaped
    with wait4 for its own rusage (RUSAGE_CHILDREN would be the maximum over every child so far)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if process.returncode:
            raise SystemExit(f"{' '.join(command)} failed in {tree}:\n{err.read().decode()[-3000:]}")
        return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024,
                "stdout": out.read().decode()}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_text(tree: Path, karpathy_json: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    # the text settings' defaults: a typed spec since issue 30 (older trees took flags and defaulted them)
    spec = ["--spec", "{}"] if (tree / "captioner/data/specs.py").exists() else []
    result = run_child([sys.executable, "-m", "captioner", "job", "prepare-text", *spec, "--karpathy-json",
                        str(karpathy_json), "--vocab", str(out / "vocab.json"), "--captions", str(out / "captions.json")],
                       tree)
    result["digest"] = digest(out / "vocab.json") + digest(out / "captions.json")
    result["vocab_size"] = len(json.loads((out / "vocab.json").read_text())["itos"])
    return result


def cider_build(tree: Path, captions: Path) -> dict:
    result = run_child([sys.executable, "-c", CIDER_CHILD, str(captions)], tree)
    result.update(json.loads(result.pop("stdout").splitlines()[-1]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCO's image counts (1 = COCO)")
    parser.add_argument("--vocab", type=int, default=10_000, help="words expected to reach min_word_count")
    parser.add_argument("--total-words", type=int, default=27_000, help="distinct words drawn from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="runs per tree and stage; the fastest is reported")
    parser.add_argument("--baseline", type=Path, help="an older tree to time side by side (and compare outputs)")
    parser.add_argument("--workdir", type=Path, help="keep the generated files here (default: a temp dir)")
    parser.add_argument("--no-append", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()
    min_count = int(defaults("text")["min_word_count"])
    with tempfile.TemporaryDirectory(prefix="bench_coco_text_") as temp:
        work = args.workdir or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        karpathy_json = work / "dataset_coco.json"
        start = time.perf_counter()
        shape = generate(karpathy_json, args.scale, args.vocab, args.total_words, min_count, args.seed)
        print(f"generated {shape} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        trees = {"ours": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
        text = {name: [] for name in trees}
        cider = {name: [] for name in trees}
        for _ in range(args.repeats):  # interleaved, so that load from other work hits both trees alike
            for name, tree in trees.items():
                text[name].append(prepare_text(tree, karpathy_json, work / name))
                print(f"{name} prepare-text {text[name][-1]['wall_s']:.1f} s "
                      f"{text[name][-1]['peak_mib']:.0f} MiB", file=sys.stderr)
            for name, tree in trees.items():
                cider[name].append(cider_build(tree, work / name / "captions.json"))
                print(f"{name} CiderD {cider[name][-1]['build_s']:.1f} s "
                      f"{cider[name][-1]['peak_mib']:.0f} MiB", file=sys.stderr)
        best_text = {name: min(runs, key=lambda r: r["wall_s"]) for name, runs in text.items()}
        best_cider = {name: min(runs, key=lambda r: r["build_s"]) for name, runs in cider.items()}

    split_counts = ", ".join(f"{k} {v:,}" for k, v in shape["splits"].items())
    lines = [
        f"synthetic Karpathy JSON of COCO's shape: {shape['images']:,} images ({split_counts}), "
        f"{shape['sentences']:,} sentences (5-7 per image, COCO's mix), {shape['mean_words']:.2f} words per sentence, "
        f"words i.i.d. Zipf(s={shape['zipf_s']:.3f}) over {shape['total_words']:,} words, "
        f"{shape['bytes'] / 2**20:.0f} MiB; min_word_count {min_count} -> vocabulary "
        f"{best_text['ours']['vocab_size']:,} (with specials). prepare-text = the CLI in a subprocess; CiderD = "
        f"`CiderD(train_refs)` as `SelfCritical.__init__` builds it, in a subprocess after `load_captions` + "
        f"tokenize (RSS before the build = current RSS then); best of {args.repeats}; peak RSS from `os.wait4`",
        "",
        "| stage | tree | wall s | CPU s | peak RSS MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for name in trees:
        t, c = best_text[name], best_cider[name]
        lines.append(f"| `prepare-text` | {name} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} | {t['peak_mib']:.0f} |")
        lines.append(f"| `CiderD(train_refs)` build ({c['rss_before_kb'] / 1024:.0f} MiB before it) | {name} | "
                     f"{c['build_s']:.1f} | {c['build_cpu_s']:.1f} | {c['peak_after_build_kb'] / 1024:.0f} |")
    if args.baseline:
        t, tb = best_text["ours"], best_text["baseline"]
        c, cb = best_cider["ours"], best_cider["baseline"]
        same_files = t["digest"] == tb["digest"]
        worst = max(abs(a - b) for a, b in zip(c["scores"], cb["scores"]))
        lines += [
            "",
            f"ours vs baseline: prepare-text {tb['wall_s'] / t['wall_s']:.2f}x faster (CPU "
            f"{tb['cpu_s'] / t['cpu_s']:.2f}x), peak RSS {t['peak_mib'] / tb['peak_mib']:.2f}x; CiderD build "
            f"{cb['build_s'] / c['build_s']:.2f}x faster (CPU {cb['build_cpu_s'] / c['build_cpu_s']:.2f}x), peak RSS "
            f"{c['peak_after_build_kb'] / cb['peak_after_build_kb']:.2f}x; vocab.json + captions.json "
            f"{'byte-identical' if same_files else 'DIFFER'}; CIDEr-D of 200 hypotheses: max |difference| "
            f"{worst:.1e}",
        ]
    if args.no_append:
        print("\n".join(lines))
    else:
        append_results("COCO-scale text preparation and CIDEr-D document frequencies (synthetic)", lines)


if __name__ == "__main__":
    main()
