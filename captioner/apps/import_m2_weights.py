"""Import the M² authors' released weights (``meshed_memory_transformer.pth`` + ``vocab.pkl``).

- The checkpoint is a torch-1.1 pickle holding a train.py dict (numpy RNG state included), so it can only be
  read with ``weights_only=False``: that runs pickle code, so only do it for the file you downloaded from the
  authors. ``import_checkpoint`` says so before loading.
- ``vocab.pkl`` is a pickled object of the reference's own ``data.vocab.Vocab`` class. It is read with a
  restricted unpickler that maps exactly the classes it needs (the Vocab, its ``defaultdict`` default function,
  ``Counter``) and refuses everything else, so the reference's code is never imported.
- The reference vocabulary starts ``<unk> <pad> <bos> <eos>``; ours ``<pad> <bos> <eos> <unk>``: the embedding
  and output rows are permuted accordingly. The result decodes identically in ``reference_compat`` mode
  (padding not masked, the checkpoint's positional table).
"""

from __future__ import annotations

import argparse
import collections
import pickle
import re
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from captioner.data.vocab import SPECIALS
from captioner.models.checkpoint import CHECKPOINT_FORMAT, save_torch
from captioner.models.m2 import M2Config, MeshedMemoryTransformer
from features.config import ExtractorConfig
from pipeline.errors import InputError

# the extractor of the features the released weights were trained on: the bottom-up detector with MILVLG's rule (the
# schema's defaults: R101, 600/1000 px, 10-100 boxes), of which M² reads the 50 most confident; no weights recorded
BOTTOM_UP = ExtractorConfig(kind="regions", boxes="detector", backbone="resnet101", weights="", max_boxes=50)

REFERENCE_SPECIALS = ("<unk>", "<pad>", "<bos>", "<eos>")


class _ReferenceVocab:
    """Stand-in for ``data.vocab.Vocab``: unpickling only restores its attribute dict."""

    def __setstate__(self, state):
        self.__dict__.update(state)


def _default_unk_index():
    return 0


class _VocabUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("data.vocab", "Vocab"): _ReferenceVocab,
        ("data.vocab", "_default_unk_index"): _default_unk_index,
        ("collections", "defaultdict"): collections.defaultdict,
        ("collections", "Counter"): collections.Counter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"vocab.pkl refers to {module}.{name}, which is not part of the "
                                         "reference vocabulary format; refusing to load it") from None


class VocabRefused(InputError, pickle.UnpicklingError):
    """vocab.pkl is not the reference's vocabulary: damaged, or naming classes the format does not have."""


def load_reference_vocab(path: str | Path) -> list[str]:
    try:
        with open(path, "rb") as handle:
            vocab = _VocabUnpickler(handle).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as error:  # a truncated transfer, an HTML error page, a foreign class: one error naming it
        raise VocabRefused(f"{path}: not a readable vocab.pkl ({error})") from None
    itos = list(getattr(vocab, "itos", []))
    if tuple(itos[:4]) != REFERENCE_SPECIALS:
        raise InputError(f"{path}: expected the reference vocabulary to start with {REFERENCE_SPECIALS}")
    return itos


def _our_key(key: str) -> str | None:
    """Reference state_dict name -> ours (None: the reference's empty decoding-state buffers)."""
    if re.search(r"running_(keys|values|seq|mask_self_attention)$", key):
        return None
    rules = [
        (r"^encoder\.fc\.", "in_proj."),
        (r"^encoder\.layer_norm\.", "in_norm."),
        (r"^encoder\.layers\.(\d+)\.mhatt\.attention\.", r"encoder_layers.\1.mhatt."),
        (r"^encoder\.layers\.(\d+)\.", r"encoder_layers.\1."),
        (r"^decoder\.word_emb\.weight$", "word_emb.weight"),
        (r"^decoder\.pos_emb\.weight$", "pos_table"),
        (r"^decoder\.fc\.weight$", "out.weight"),
        (r"^decoder\.layers\.(\d+)\.(self_att|enc_att)\.attention\.", r"decoder_layers.\1.\2."),
        (r"^decoder\.layers\.(\d+)\.fc_alpha(\d)\.", None),
        (r"^decoder\.layers\.(\d+)\.", r"decoder_layers.\1."),
    ]
    for pattern, replacement in rules:
        match = re.match(pattern, key)
        if not match:
            continue
        if replacement is None:  # fc_alpha1..3 -> gates.0..2
            return f"decoder_layers.{match.group(1)}.gates.{int(match.group(2)) - 1}.{key[match.end():]}"
        return re.sub(pattern, replacement, key)
    raise InputError(f"unexpected key in the reference state_dict: {key}")


def vocabulary_permutation(reference_itos: list[str]) -> tuple[list[str], torch.Tensor]:
    """Our itos and, for each of our rows, the reference row it comes from."""
    order = [REFERENCE_SPECIALS.index(s) for s in SPECIALS] + list(range(4, len(reference_itos)))
    return [reference_itos[i] for i in order], torch.tensor(order)


def convert_state_dict(reference_state: dict, reference_itos: list[str]) -> tuple[dict, M2Config, list[str]]:
    itos, order = vocabulary_permutation(reference_itos)
    state = {}
    for key, value in reference_state.items():
        ours = _our_key(key)
        if ours is not None:
            state[ours] = torch.as_tensor(value).float()
    state["word_emb.weight"] = state["word_emb.weight"][order]
    state["out.weight"] = state["out.weight"][order]
    encoder_layers = len({k.split(".")[1] for k in state if k.startswith("encoder_layers.")})
    decoder_layers = len({k.split(".")[1] for k in state if k.startswith("decoder_layers.")})
    d_model = state["in_proj.weight"].shape[0]
    config = M2Config(
        vocab_size=len(itos), feature_dim=state["in_proj.weight"].shape[1], d_model=d_model,
        d_ff=state["encoder_layers.0.pwff.fc1.weight"].shape[0], encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, memory_slots=state["encoder_layers.0.mhatt.m_k"].shape[1],
        max_length=state["pos_table"].shape[0] - 1, reference_compat=True, heads=8, dropout=0.1)
    return state, config, itos


def read_reference_checkpoint(path: str | Path) -> tuple[dict, int]:
    """The reference state_dict and epoch of ``meshed_memory_transformer.pth`` (a damaged file: one error naming it)."""
    print(f"loading {path} with weights_only=False: this executes pickle code, so only use the "
          "file released by the M² authors", file=sys.stderr)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except Exception as error:  # truncated zip, not a pickle, a pickle of missing classes: all "not this checkpoint"
        raise InputError(f"{path}: not a readable M² checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or "decoder.word_emb.weight" not in state:
        raise InputError(f"{path}: no M² state_dict in it (expected the reference train.py's dict with "
                         "'state_dict' holding decoder.word_emb.weight)")
    epoch = raw.get("epoch", 0) if isinstance(raw, dict) else 0
    return state, epoch if isinstance(epoch, int) else 0  # (informational: the epoch the authors saved at)


def import_checkpoint(checkpoint_path: str | Path, vocab_path: str | Path, out: str | Path, name: str = "m2_released",
                      release: dict | None = None) -> Path:
    """Convert the reference checkpoint + vocab.pkl into our checkpoint ``out`` named ``name``; ``release``: which
    release it is (recorded in the checkpoint)."""
    reference_state, epoch = read_reference_checkpoint(checkpoint_path)
    itos = load_reference_vocab(vocab_path)
    rows = reference_state["decoder.word_emb.weight"].shape[0]
    if len(itos) != rows:
        raise InputError(f"{vocab_path}: {len(itos)} words, but {checkpoint_path} has {rows} word embeddings: "
                         "the vocabulary and the checkpoint do not belong together")
    try:
        state, config, our_itos = convert_state_dict(reference_state, itos)
        model = MeshedMemoryTransformer(config)
        model.load_state_dict(state, strict=True)  # every weight accounted for
    except (InputError, RuntimeError, KeyError, IndexError) as error:
        raise InputError(f"{checkpoint_path}: its weights are not the M² reference layout "
                         f"({str(error).splitlines()[0].strip()})") from None
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "name": name, "family": "m2", "blind": False,
        "model_config": asdict(config), "state_dict": model.state_dict(), "vocab": our_itos,
        # the reference feeds raw bottom-up features: identity standardisation
        "feature_norm": {"mean": torch.zeros(config.feature_dim), "std": torch.ones(config.feature_dim)},
        # what made the authors' features: the bottom-up detector (R101, 10-100 boxes, M² reads 50), so that
        # `caption --detector-weights` can caption new photos with it; the weights file is the user's
        "features": {"kind": "regions", "extractor": BOTTOM_UP.record(), "weights": None,
                     "note": "bottom-up-attention features as in coco_detections.hdf5"},
        "hparams": {"collapse_repeats": True, "imported_from": str(checkpoint_path)},
        "epoch": epoch, "step": 0, "best": {}, "history": [],
    }
    if release:
        checkpoint["release"] = dict(release)
    save_torch(out, checkpoint)
    return Path(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="meshed_memory_transformer.pth (trusted: loaded with weights_only=False)")
    parser.add_argument("vocab", help="the reference's vocab.pkl (read with a restricted unpickler)")
    parser.add_argument("out", help="our checkpoint path")
    parser.add_argument("--name", default="m2_released", help="the model name its decodes and scores carry")
    parser.add_argument("--release", help="the release it is (captioner/models/releases.py), recorded in the checkpoint")


def run(args) -> None:
    release = None
    if args.release:
        from captioner.models.releases import RELEASES

        if args.release not in RELEASES:
            raise InputError(f"--release {args.release}: unknown; known: {', '.join(RELEASES)}")
        release = {"id": args.release, "label": RELEASES[args.release].label}
    out = import_checkpoint(args.checkpoint, args.vocab, args.out, args.name, release)
    print(f"converted -> {out}", file=sys.stderr)
