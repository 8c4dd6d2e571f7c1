"""Captioning pipeline, stages 0 and 2-3 and the applications: ``python -m captioner COMMAND ...``."""

from __future__ import annotations

import sys

from pipeline.cli import main as run_commands

COMMANDS = {  # what people type
    "download": ("captioner.data.download", "fetch one file with resume, size and SHA-256 checks"),
    "torchvision-weights": ("captioner.data.torchvision_weights", "fetch torchvision's weights of a backbone "
                                                                  "(torch.hub's hash check)"),
    "unpack": ("captioner.data.unpack", "unpack one folder or file of a zip atomically, checking its file count"),
    "estimate": ("captioner.apps.estimate", "roughly how long make demo takes on this machine (two short probes)"),
    "caption": ("captioner.apps.caption", "caption your own images with a trained checkpoint"),
    "import-m2-weights": ("captioner.apps.import_m2_weights", "convert the M² authors' checkpoint + vocab.pkl into our checkpoint"),
}

JOBS = {  # what the workflow's rules run: python -m captioner job NAME (settings in --spec where a rule has any)
    "demo-data": ("captioner.data.demo", "generate the embedded shapes dataset (Karpathy format)"),
    "demo-nocaps": ("captioner.data.demo_nocaps",
                    "generate the demo's nocaps-like evaluation set (official nocaps format)"),
    "image-manifest": ("captioner.data.manifest", "the image list (id, path, split) the feature stage reads"),
    "split-manifest": ("captioner.data.split_manifest", "the manifest's images in (or outside) some splits"),
    "prepare-nocaps": ("captioner.data.nocaps", "the nocaps evaluation set + image manifest from the official JSON"),
    "nocaps-images": ("captioner.data.nocaps_images", "fetch the nocaps images from their per-image URLs"),
    "prepare-text": ("captioner.data.text", "vocabulary + encoded captions from a Karpathy JSON"),
    "prepare-eval-set": ("captioner.data.eval_set", "one split of a Karpathy JSON as an evaluation set (evaluate.sets)"),
    "import-m2-weights": ("captioner.apps.import_m2_weights", "released M² weights as our checkpoint (models with "
                                                              "release: m2_cornia2020)"),
    "train": ("captioner.training.trainer", "train one model on cached features"),
    "decode": ("captioner.evaluation.decode", "beam-search a split with a trained model"),
    "score": ("captioner.evaluation.scoring", "BLEU/METEOR/ROUGE-L/CIDEr-D with pycocoevalcap"),
    "attention-maps": ("captioner.evaluation.attention_maps", "Show-Attend-Tell: per-word attention over images"),
    "score-nocaps": ("captioner.evaluation.nocaps_scoring", "nocaps: scores per domain (in/near/out/entire)"),
    "nocaps-tables": ("captioner.evaluation.nocaps_tables", "the nocaps table from the per-domain score files"),
    "set-tables": ("captioner.evaluation.set_tables", "the evaluation sets' table (evaluate.sets) from their score files"),
    "significance": ("captioner.evaluation.significance", "paired tests between models (approximate randomisation)"),
    "tables": ("captioner.evaluation.tables", "results tables from score files"),
    "costs": ("captioner.evaluation.costs", "what each stage and model cost, from the jobs' benchmark files"),
}


def main(argv: list[str] | None = None) -> int:
    return run_commands("python -m captioner", __doc__, COMMANDS, argv, JOBS)


if __name__ == "__main__":
    sys.exit(main())
