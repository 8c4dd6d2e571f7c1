"""Command line of the captioning pipeline: ``python -m captioner COMMAND ...``."""

from __future__ import annotations

import argparse
import json
import sys

from captioner.cli_errors import run_cleanly


def _demo_data(args) -> None:
    from captioner.demo_data import generate

    stats = generate(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                     num_test=args.num_test, num_restval=args.num_restval, image_size=args.image_size)
    print(f"demo dataset -> {args.out}: {stats['images']} images, {stats['captions']} captions", file=sys.stderr)


def _prepare_text(args) -> None:
    from captioner.text import prepare

    stats = prepare(args.karpathy_json, args.out_dir, args.min_word_count, args.max_caption_length)
    print(json.dumps(stats), file=sys.stderr)


def _train(args) -> None:
    from captioner.training import train_from_cli

    train_from_cli(args)


def _decode(args) -> None:
    from captioner.decoding import decode_from_cli

    decode_from_cli(args)


def _score(args) -> None:
    from captioner.scoring import score_from_cli

    score_from_cli(args)


def _attention(args) -> None:
    from captioner.attention_maps import attention_from_cli

    attention_from_cli(args)


def _caption(args) -> None:
    from captioner.caption import caption_from_cli

    caption_from_cli(args)


def _import_m2(args) -> None:
    from captioner.import_m2 import import_checkpoint

    out = import_checkpoint(args.checkpoint, args.vocab, args.out)
    print(f"converted -> {out}", file=sys.stderr)


def _tables(args) -> None:
    from captioner.tables import tables_from_cli

    tables_from_cli(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="generate the embedded shapes dataset (Karpathy format)")
    demo.add_argument("--out", required=True)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-train", type=int, default=1200)
    demo.add_argument("--num-val", type=int, default=150)
    demo.add_argument("--num-test", type=int, default=150)
    demo.add_argument("--num-restval", type=int, default=0)
    demo.add_argument("--image-size", type=int, default=256)
    demo.set_defaults(run=_demo_data)

    text = sub.add_parser("prepare-text", help="vocabulary + encoded captions from a Karpathy JSON")
    text.add_argument("--karpathy-json", required=True)
    text.add_argument("--out-dir", required=True)
    text.add_argument("--min-word-count", type=int, default=5)
    text.add_argument("--max-caption-length", type=int, default=16)
    text.set_defaults(run=_prepare_text)

    train = sub.add_parser("train", help="train one model on cached features")
    train.add_argument("--model", required=True, help="sat_soft, sat_hard, m2_xe, m2_scst, or <name>_blind")
    train.add_argument("--features", required=True, help="feature store (.h5/.zarr)")
    train.add_argument("--captions", required=True)
    train.add_argument("--vocab", required=True)
    train.add_argument("--hparams", required=True, help="JSON object of hyper-parameters")
    train.add_argument("--out-dir", required=True)
    train.add_argument("--init", help="checkpoint to start from (m2_scst starts from m2_xe)")
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--device", default="auto")
    train.set_defaults(run=_train)

    dec = sub.add_parser("decode", help="beam-search a split with a trained model")
    dec.add_argument("--checkpoint", required=True)
    dec.add_argument("--features", required=True)
    dec.add_argument("--captions", required=True)
    dec.add_argument("--split", default="test")
    dec.add_argument("--beam-size", type=int, default=5)
    dec.add_argument("--max-length", type=int, default=20)
    dec.add_argument("--batch-size", type=int, default=50)
    dec.add_argument("--length-normalization", type=float, default=0.0,
                     help="rank finished beams by logprob / length**a (0: plain sum)")
    dec.add_argument("--out", required=True, help="predictions JSON (COCO results format)")
    dec.add_argument("--threads", type=int, default=1)
    dec.add_argument("--device", default="auto")
    dec.set_defaults(run=_decode)

    score = sub.add_parser("score", help="BLEU/METEOR/ROUGE-L/CIDEr-D with pycocoevalcap")
    score.add_argument("--predictions", required=True)
    score.add_argument("--captions", required=True)
    score.add_argument("--split", default="test")
    score.add_argument("--metrics", default="bleu,meteor,rouge,cider")
    score.add_argument("--out", required=True)
    score.set_defaults(run=_score)

    att = sub.add_parser("attention-maps", help="Show-Attend-Tell: per-word attention over test images (PNG)")
    att.add_argument("--checkpoint", required=True)
    att.add_argument("--features", required=True)
    att.add_argument("--captions", required=True)
    att.add_argument("--image-root", required=True)
    att.add_argument("--split", default="test")
    att.add_argument("--beam-size", type=int, default=5)
    att.add_argument("--max-length", type=int, default=20)
    att.add_argument("--threads", type=int, default=1)
    att.add_argument("--out", nargs="+", required=True, help="one PNG per image: the first len(out) images")
    att.set_defaults(run=_attention)

    cap = sub.add_parser("caption", help="caption your own images with a trained checkpoint")
    cap.add_argument("--model", required=True, help="checkpoint.pt of a trained model")
    cap.add_argument("images", nargs="+", help="image files or folders")
    cap.add_argument("--beam-size", type=int, default=5)
    cap.add_argument("--max-length", type=int, default=20)
    cap.add_argument("--boxes", help="for models trained on given boxes: JSON of boxes per image, in input order")
    cap.add_argument("--device", default="auto")
    cap.add_argument("--threads", type=int, default=1)
    cap.add_argument("--out", help="also write the captions as JSON here")
    cap.set_defaults(run=_caption)

    imp = sub.add_parser("import-m2", help="convert the M² authors' checkpoint + vocab.pkl into our checkpoint")
    imp.add_argument("checkpoint", help="meshed_memory_transformer.pth (trusted: loaded with weights_only=False)")
    imp.add_argument("vocab", help="the reference's vocab.pkl (read with a restricted unpickler)")
    imp.add_argument("out", help="our checkpoint path")
    imp.set_defaults(run=_import_m2)

    tab = sub.add_parser("tables", help="results tables from score files")
    tab.add_argument("--scores", nargs="+", required=True)
    tab.add_argument("--out-csv", required=True)
    tab.add_argument("--out-md", required=True)
    tab.add_argument("--title", default="")
    tab.add_argument("--published", action="store_true", help="add the papers' published COCO rows")
    tab.add_argument("--predictions", nargs="*", default=[], help="prediction files for samples.md")
    tab.add_argument("--captions", help="captions.json (references for samples.md)")
    tab.add_argument("--split", default="test")
    tab.add_argument("--samples", type=int, default=5)
    tab.add_argument("--out-samples", help="samples.md: a few images with every model's caption")
    tab.set_defaults(run=_tables)

    args = parser.parse_args(argv)
    return run_cleanly(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
