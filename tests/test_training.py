"""Training loop: resume after a real SIGKILL continues exactly; tiny batches can be overfitted; bad input stops
early with a clear error."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from captioner.decoding import greedy
from captioner.models.sat import SATConfig, ShowAttendTell
from captioner.text import prepare
from captioner.training import Trainer, TrainingError
from features.store import StoreWriter

HPARAMS = {"epochs": 4, "batch_size": 16, "lr": 0.003, "patience": 10, "feature_norm_images": 50,
           "model": {"embed_dim": 16, "hidden_dim": 32, "attention_dim": 16, "init_layers": 1}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny captioning set whose captions depend on the (random) grid features."""
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue", "white"]
    images, feats = [], []
    for i in range(60):
        colour = colours[i % 4]
        split = "train" if i < 48 else ("val" if i < 54 else "test")
        images.append({"filepath": "", "filename": f"{i}.jpg", "cocoid": i, "split": split,
                       "sentences": [{"raw": f"a {colour} shape"}, {"raw": f"one {colour} thing here"}]})
        f = rng.normal(size=(4, 8)).astype(np.float32)
        f[:, i % 4] += 3.0
        feats.append(f)
    (root / "d.json").write_text(json.dumps({"images": images}))
    prepare(root / "d.json", root / "text", 1, 10)
    with StoreWriter(root / "grid.h5", "grid", list(range(60)), 4, 8, dtype="float32") as writer:
        writer.write(list(range(60)), np.stack(feats))
    return root


def train_command(data, out_dir, hparams, model="sat_soft"):
    return [sys.executable, "-m", "captioner", "train", "--model", model, "--features", str(data / "grid.h5"),
            "--captions", str(data / "text/captions.json"), "--vocab", str(data / "text/vocab.json"),
            "--hparams", json.dumps(hparams), "--out-dir", str(out_dir), "--device", "cpu"]


def losses(out_dir):
    with open(out_dir / "metrics.csv") as handle:
        return [float(row["train_loss"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("model", ["sat_soft", "sat_hard"])
def test_resume_after_sigkill_continues_exactly(data, tmp_path, model):
    hparams = dict(HPARAMS, epochs=6)
    subprocess.run(train_command(data, tmp_path / "straight", hparams, model), check=True, capture_output=True)
    expected = losses(tmp_path / "straight")

    process = subprocess.Popen(train_command(data, tmp_path / "killed", hparams, model), stderr=subprocess.DEVNULL)
    last = tmp_path / "killed/last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    from captioner.checkpoint import load_checkpoint

    done_before = load_checkpoint(last)["epoch"]
    assert 1 <= done_before < 6, "the kill did not land between the first and the last epoch"
    resumed = subprocess.run(train_command(data, tmp_path / "killed", hparams, model), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    np.testing.assert_allclose(losses(tmp_path / "killed"), expected, rtol=1e-6)


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_tiny_batch_can_be_overfitted(attention):
    torch.manual_seed(0)
    model = ShowAttendTell(SATConfig(vocab_size=9, feature_dim=6, embed_dim=16, hidden_dim=32, attention_dim=16,
                                     dropout=0.0, attention=attention, doubly_stochastic=0.0))
    feats = torch.randn(4, 5, 6)
    captions = torch.tensor([[1, 3, 4, 5, 2], [1, 6, 7, 2, 0], [1, 8, 3, 3, 2], [1, 5, 2, 0, 0]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(300):
        out = model.loss(feats, captions)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        state, step = model.decoder(feats)
        decoded = greedy(state, step, 6, 1, 2, 0)
    for row, caption in zip(decoded.tolist(), captions.tolist()):
        target = caption[1:caption.index(2) + 1]
        assert row[: len(target)] == target


def test_missing_store_id_fails_before_training(data, tmp_path):
    captions = json.loads((data / "text/captions.json").read_text())
    captions["splits"]["train"][3]["image_id"] = 4242
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    with pytest.raises(KeyError, match="image id 4242"):
        Trainer("sat_soft", str(data / "grid.h5"), str(tmp_path / "captions.json"), str(data / "text/vocab.json"),
                HPARAMS, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(data, tmp_path):
    trainer = Trainer("sat_soft", str(data / "grid.h5"), str(data / "text/captions.json"),
                      str(data / "text/vocab.json"), dict(HPARAMS, epochs=3), str(tmp_path / "out"))
    trainer.run()
    good = (tmp_path / "out/last.pt").read_bytes()
    trainer = Trainer("sat_soft", str(data / "grid.h5"), str(data / "text/captions.json"),
                      str(data / "text/vocab.json"), dict(HPARAMS, epochs=3), str(tmp_path / "out"))
    with torch.no_grad():
        trainer.model.init_h[0].weight.fill_(float("nan"))
    trainer.hp["epochs"] = 4
    with pytest.raises(TrainingError, match=r"non-finite loss .* epoch 4, step \d+"):
        trainer.run()
    assert (tmp_path / "out/last.pt").read_bytes() == good


def test_blind_inputs_hide_features_and_region_count():
    from captioner.checkpoint import FeatureNorm, model_inputs

    data = {"features": np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32),
            "num_boxes": np.array([2, 4])}
    norm = FeatureNorm(torch.zeros(3), torch.ones(3))
    sighted = model_inputs("m2", data, norm, blind=False, device="cpu")
    assert sighted["num_boxes"].tolist() == [2, 4] and not torch.all(sighted["features"][0, 2:] != 0)
    blind = model_inputs("m2", data, norm, blind=True, device="cpu")
    assert blind["num_boxes"].tolist() == [5, 5] and not blind["features"].any()


def test_scst_gradient_follows_the_reward():
    """The SCST loss has the gradient of the reward-weighted log-likelihood of the beams, and a small step along
    it moves probability towards the beams with above-average reward."""
    from captioner.decoding import beam_search
    from captioner.models.m2 import M2Config, MeshedMemoryTransformer
    from captioner.training import scst_loss

    torch.manual_seed(0)
    model = MeshedMemoryTransformer(M2Config(vocab_size=12, feature_dim=6, d_model=16, heads=2, d_ff=32,
                                             encoder_layers=1, decoder_layers=1, memory_slots=2, dropout=0.0))
    feats, num_boxes = torch.randn(1, 4, 6), torch.tensor([4])

    def sequence_logprob(tokens):
        """log p of each returned beam by teacher forcing (B, k)."""
        b, k, t = tokens.shape
        caps = torch.cat([torch.ones(b * k, 1, dtype=torch.long), tokens.reshape(b * k, t)], 1)
        log_probs = model(feats.repeat_interleave(k, 0), num_boxes.repeat_interleave(k), caps[:, :-1])
        mask = (caps[:, 1:] != 0).float()
        return (log_probs.gather(2, caps[:, 1:, None])[..., 0] * mask).sum(1).view(b, k)

    result = beam_search(*model.decoder(feats, num_boxes), 1, 3, 6, 1, 2, 0, n_best=3, stop_when_done=False)
    rewards = torch.tensor([[1.0, 0.0, -1.0]])
    advantage = rewards - rewards.mean(1, keepdim=True)
    loss = scst_loss(result.token_logprobs, rewards)
    # the beam's log-probs carry the gradient of the teacher-forced reward-weighted objective
    steps = result.tokens.shape[-1]
    objective = -(advantage * sequence_logprob(result.tokens) / steps).mean()
    weights = model.word_emb.weight
    grad_beam = torch.autograd.grad(loss, weights, retain_graph=True)[0]
    torch.testing.assert_close(grad_beam, torch.autograd.grad(objective, weights)[0], atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        before = sequence_logprob(result.tokens)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)  # a small step: first-order behaviour
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        change = sequence_logprob(result.tokens) - before
    assert (change * advantage).sum() > 0  # better-than-average beams gained probability mass
