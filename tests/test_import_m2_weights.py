"""Import of the M² reference checkpoint layout and its pickled vocabulary."""

import collections
import pickle
import sys
import types

import pytest
import torch

from captioner.apps.import_m2_weights import REFERENCE_SPECIALS, import_checkpoint, load_reference_vocab
from captioner.models.beam_search import beam_search
from captioner.models.checkpoint import load_for_inference
from captioner.models.m2 import M2Config, MeshedMemoryTransformer

WORDS = ["a", "dog", "cat", "on", "the", "mat", "runs"]


def reference_layout(model: MeshedMemoryTransformer, our_itos, reference_itos) -> dict:
    """Our weights written under the reference's names and vocabulary order (what its train.py saves)."""
    order = torch.tensor([our_itos.index(w) for w in reference_itos])
    out = {}
    for key, value in model.state_dict().items():
        if key == "pos_table":
            out["decoder.pos_emb.weight"] = value
            continue
        name = key.replace("in_proj.", "encoder.fc.").replace("in_norm.", "encoder.layer_norm.")
        name = name.replace("word_emb.", "decoder.word_emb.").replace("out.weight", "decoder.fc.weight")
        if name.startswith("encoder_layers."):
            name = "encoder.layers." + name[len("encoder_layers."):]
            name = name.replace(".mhatt.", ".mhatt.attention.").replace(".mhatt.attention.layer_norm.",
                                                                         ".mhatt.layer_norm.")
        if name.startswith("decoder_layers."):
            name = "decoder.layers." + name[len("decoder_layers."):]
            for att in ("self_att", "enc_att"):
                name = name.replace(f".{att}.", f".{att}.attention.").replace(f".{att}.attention.layer_norm.",
                                                                              f".{att}.layer_norm.")
            for k in range(3):
                name = name.replace(f".gates.{k}.", f".fc_alpha{k + 1}.")
        if name in ("decoder.word_emb.weight", "decoder.fc.weight"):
            value = value[order]
        out[name] = value
    out["decoder.running_seq"] = torch.zeros(1, dtype=torch.long)
    out["decoder.layers.0.self_att.running_keys"] = torch.zeros(0, 16)
    return out


def pickle_reference_vocab(path, itos):
    """Write vocab.pkl as the reference does: an object of a class living in a module named data.vocab."""
    package, module = types.ModuleType("data"), types.ModuleType("data.vocab")

    class Vocab:
        pass

    def _default_unk_index():
        return 0

    for obj, name in ((Vocab, "Vocab"), (_default_unk_index, "_default_unk_index")):
        obj.__module__, obj.__qualname__ = module.__name__, name
    module.Vocab, module._default_unk_index = Vocab, _default_unk_index
    sys.modules.update({"data": package, "data.vocab": module})
    try:
        vocab = Vocab()
        vocab.itos = list(itos)
        vocab.stoi = collections.defaultdict(_default_unk_index, {w: i for i, w in enumerate(itos)})
        vocab.freqs = collections.Counter(itos)
        vocab.vectors = None
        path.write_bytes(pickle.dumps(vocab))
    finally:
        del sys.modules["data"], sys.modules["data.vocab"]


def test_reference_checkpoint_imports_and_decodes_identically(tmp_path):
    our_itos = ["<pad>", "<bos>", "<eos>", "<unk>"] + WORDS
    reference_itos = list(REFERENCE_SPECIALS) + WORDS
    torch.manual_seed(0)
    config = M2Config(vocab_size=len(our_itos), feature_dim=12, d_model=16, heads=8, d_ff=32, memory_slots=4,
                      max_length=20, reference_compat=True)
    original = MeshedMemoryTransformer(config).eval()
    torch.save({"state_dict": reference_layout(original, our_itos, reference_itos), "epoch": 7},
               tmp_path / "meshed_memory_transformer.pth")
    pickle_reference_vocab(tmp_path / "vocab.pkl", reference_itos)
    assert "data.vocab" not in sys.modules

    import_checkpoint(tmp_path / "meshed_memory_transformer.pth", tmp_path / "vocab.pkl", tmp_path / "ours.pt")
    bundle = load_for_inference(tmp_path / "ours.pt", torch.device("cpu"))
    assert bundle.vocab.itos == our_itos and bundle.epoch == 7
    features = torch.randn(3, 5, 12)
    features[2, 3:] = 0.0  # zero-padded regions, attended as in the reference
    with torch.no_grad():
        a = beam_search(*original.decoder(features, torch.tensor([5, 5, 3])), 3, 3, 10, 1, 2, 0)
        inputs = bundle.inputs({"features": features.numpy(), "num_boxes": torch.tensor([5, 5, 3]).numpy()})
        b = beam_search(*bundle.model.decoder(**inputs), 3, 3, 10, 1, 2, 0)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.logprob, b.logprob, atol=1e-5)


def test_vocab_unpickler_refuses_foreign_classes(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_reference_vocab(tmp_path / "evil.pkl")


def test_imported_weights_record_the_bottom_up_extractor_and_caption_asks_for_its_weights(tmp_path):
    """The released weights were trained on bottom-up regions: the import records that extractor (MILVLG's rule, 50
    regions), so `caption` knows what to run on a new photo and asks only for the detector's weights file."""
    import json
    import subprocess

    from features.config import recorded_extractor
    from tests.workflow_helpers import PROJECT

    our_itos = ["<pad>", "<bos>", "<eos>", "<unk>"] + WORDS
    config = M2Config(vocab_size=len(our_itos), feature_dim=2048, d_model=16, heads=8, d_ff=32, memory_slots=4,
                      reference_compat=True)
    torch.manual_seed(0)
    model = MeshedMemoryTransformer(config)
    torch.save({"state_dict": reference_layout(model, our_itos, list(REFERENCE_SPECIALS) + WORDS), "epoch": 3},
               tmp_path / "m2.pth")
    pickle_reference_vocab(tmp_path / "vocab.pkl", list(REFERENCE_SPECIALS) + WORDS)
    import_checkpoint(tmp_path / "m2.pth", tmp_path / "vocab.pkl", tmp_path / "ours.pt")
    recorded = torch.load(tmp_path / "ours.pt", weights_only=False)["features"]["extractor"]
    extractor = recorded_extractor(recorded)
    assert (extractor.kind, extractor.boxes, extractor.backbone, extractor.max_boxes, extractor.min_boxes,
            extractor.min_size, extractor.max_size) == ("regions", "detector", "resnet101", 50, 10, 600, 1000)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8")  # never read: the missing weights are named first
    result = subprocess.run([sys.executable, "-m", "captioner", "caption", "--model", str(tmp_path / "ours.pt"),
                             str(photo)], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'ours.pt'} reads bottom-up detector regions and records no detector weights (imported "
        "weights): pass --detector-weights, e.g. MILVLG's bua-caffe-frcn-r101-k10-100.pth")
    assert json.dumps(recorded)  # (the record is plain JSON data)


def test_caption_arguments_are_checked_before_any_model_loads(tmp_path):
    import subprocess

    from tests.workflow_helpers import PROJECT

    result = subprocess.run([sys.executable, "-m", "captioner", "caption", "--model", str(tmp_path / "missing.pt"),
                             str(tmp_path), "--beam-size", "-1"], cwd=PROJECT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --beam-size and --max-length must be at least 1 (got -1 and 20)"]
