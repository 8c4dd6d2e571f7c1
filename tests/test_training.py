"""Training: tiny batches can be overfitted, blind inputs hide the image, the SCST gradient follows the reward.
(Resume after SIGKILL, non-finite losses and missing ids are in tests/faults/.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captioner.models.greedy import greedy
from captioner.models.sat import SATConfig, ShowAttendTell
from captioner.training.reinforce import HardAttention
from captioner.training.xe import CrossEntropy
from pipeline.config import defaults
from pipeline.errors import InputError


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_tiny_batch_can_be_overfitted(attention):
    torch.manual_seed(0)
    model = ShowAttendTell(SATConfig(vocab_size=9, feature_dim=6, embed_dim=16, hidden_dim=32, attention_dim=16,
                                     dropout=0.0, attention=attention, doubly_stochastic=0.0))
    feats = torch.randn(4, 5, 6)
    captions = torch.tensor([[1, 3, 4, 5, 2], [1, 6, 7, 2, 0], [1, 8, 3, 3, 2], [1, 5, 2, 0, 0]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    # hard attention trains with its REINFORCE objective (sampled locations on half of the batches)
    objective = HardAttention(model, None, defaults("sat")) if attention == "hard" else CrossEntropy(model, None, {})
    for _ in range(300):
        out = objective.loss(captions, {"features": feats})
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        state, step = model.decoder(feats)
        decoded = greedy(state, step, 6, 1, 2, 0)
    for row, caption in zip(decoded.tolist(), captions.tolist()):
        target = caption[1:caption.index(2) + 1]
        assert row[: len(target)] == target


def test_hard_attention_gets_reinforce_gradient():
    model = ShowAttendTell(SATConfig(vocab_size=7, feature_dim=6, embed_dim=5, hidden_dim=8, attention_dim=4,
                                     attention="hard")).train()
    objective = HardAttention(model, None, dict(defaults("sat"), expected_context_p=0.0))  # always sampled
    loss = objective.loss(torch.tensor([[1, 3, 4, 5, 2, 0], [1, 6, 2, 0, 0, 0]]), {"features": torch.randn(2, 9, 6)})
    loss.loss.backward()
    assert model.att_score.weight.grad.abs().sum() > 0
    assert objective.baseline.item() != 0.0


def test_blind_inputs_hide_features_and_region_count():
    from captioner.data.model_inputs import FeatureNorm, model_inputs

    data = {"features": np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32),
            "num_boxes": np.array([2, 4])}
    norm = FeatureNorm(torch.zeros(3), torch.ones(3))
    sighted = model_inputs("regions", data, norm, blind=False, device="cpu")
    assert sighted["num_boxes"].tolist() == [2, 4] and not torch.all(sighted["features"][0, 2:] != 0)
    blind = model_inputs("regions", data, norm, blind=True, device="cpu")
    assert blind["num_boxes"].tolist() == [5, 5] and not blind["features"].any()


def test_scst_gradient_follows_the_reward():
    """The SCST loss has the gradient of the reward-weighted log-likelihood of the beams, and a small step along
    it moves probability towards the beams with above-average reward."""
    from captioner.models.beam_search import beam_search
    from captioner.models.m2 import M2Config, MeshedMemoryTransformer
    from captioner.training.scst import scst_loss

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


def test_bf16_precision_trains_on_the_cpu_close_to_fp32(caption_set, tmp_path):
    """``precision: bf16`` really autocasts on the CPU (losses differ from fp32 in the low digits) and trains
    as well: per-epoch losses within 2 % of the fp32 run, falling; an unknown precision is refused."""
    from captioner.training.trainer import Trainer
    from tests.training_helpers import HPARAMS, losses

    def run(precision: str):
        hparams = dict(HPARAMS, epochs=3, precision=precision, model=dict(HPARAMS["model"], dropout=0.0))
        out = tmp_path / precision
        Trainer("sat_soft", str(caption_set / "grid.h5"), str(caption_set / "text/captions.json"),
                str(caption_set / "text/vocab.json"), hparams, str(out), device="cpu").run()
        return losses(out)

    full, half = run("fp32"), run("bf16")
    assert full != half
    assert np.allclose(half, full, rtol=0.02)
    assert half[-1] < half[0]
    with pytest.raises(InputError, match=r"--hparams.precision: 'fp16' is not one of 'auto', 'fp32', 'bf16'"):
        Trainer("sat_soft", str(caption_set / "grid.h5"), str(caption_set / "text/captions.json"),
                str(caption_set / "text/vocab.json"), dict(HPARAMS, precision="fp16"), str(tmp_path / "x"),
                device="cpu")


def test_by_image_batches_hold_whole_images_and_every_pair_once(caption_set, tmp_path):
    """``xe_batches: by_image``: each batch is whole images (all their captions), batch_size / captions-per-image
    images of them, every (image, caption) pair once an epoch, a new order each epoch; training on them learns."""
    from captioner.training.trainer import Trainer
    from tests.training_helpers import HPARAMS, losses

    def trainer(out, **overrides):
        return Trainer("sat_soft", str(caption_set / "grid.h5"), str(caption_set / "text/captions.json"),
                       str(caption_set / "text/vocab.json"), dict(HPARAMS, **overrides), str(tmp_path / out),
                       device="cpu")

    by_image = trainer("by_image", xe_batches="by_image", epochs=3)
    captions_of = {i: len(image["captions"]) for i, image in enumerate(by_image.data.images)}
    epochs = [list(by_image.objective.batches(torch.Generator().manual_seed(seed))) for seed in (0, 1)]
    for batches in epochs:
        pairs = [pair for batch in batches for pair in batch]
        assert sorted(pairs) == sorted((i, j) for i, n in captions_of.items() for j in range(n))
        for batch in batches:
            images = {i for i, _ in batch}
            assert len(images) == HPARAMS["batch_size"] // 2  # 2 captions per image in this set
            assert sorted(batch) == sorted((i, j) for i in images for j in range(captions_of[i]))
    assert epochs[0] != epochs[1]
    by_image.run()
    trace = losses(tmp_path / "by_image")
    assert trace[-1] < trace[0]
    with pytest.raises(InputError, match=r"--hparams.xe_batches: 'grouped' is not one of"):
        trainer("bad", xe_batches="grouped")


def test_last_checkpoint_of_other_input_files_is_not_resumed(caption_set, tmp_path, capsys):
    """A rerun after an upstream rule rewrote the features (same settings) trains afresh instead of resuming the
    stale ``last.pt``; with the same files it resumes."""
    import shutil

    from captioner.training.trainer import Trainer
    from features.store.reader import FeatureStore
    from features.store.writer import StoreWriter
    from tests.training_helpers import HPARAMS, losses

    data = tmp_path / "data"
    shutil.copytree(caption_set, data)
    hparams = dict(HPARAMS, epochs=2)

    def train():
        Trainer("sat_soft", str(data / "grid.h5"), str(data / "text/captions.json"), str(data / "text/vocab.json"),
                hparams, str(tmp_path / "model"), device="cpu").run()
        return losses(tmp_path / "model")

    first = train()
    capsys.readouterr()
    assert train() == first  # nothing left to do
    assert "resuming sat_soft" in capsys.readouterr().err
    store = FeatureStore(data / "grid.h5")
    ids = [int(i) for i in store.image_ids]
    features = store.gather(ids)["features"]
    (data / "grid.h5").unlink()
    with StoreWriter(data / "grid.h5", "grid", ids, features.shape[1], features.shape[2], dtype="float32") as writer:
        writer.write(ids, features[:, :, ::-1].copy())  # re-extracted: other features, same ids and shape
    retrained = train()
    err = capsys.readouterr().err
    assert "trained on other input files (features changed since); starting afresh" in err
    assert "resuming" not in err
    assert len(retrained) == 2 and retrained != first


def test_the_curve_shows_scst_runs_by_their_mean_reward():
    from captioner.training.metrics import training_series

    xe = [{"epoch": 1, "train_loss": 3.0, "val_cider": 1.0}, {"epoch": 2, "train_loss": 2.0, "val_cider": 1.5}]
    assert training_series(xe) == ("training loss", [1, 2], [3.0, 2.0])
    scst = [{"epoch": 0, "val_cider": 2.5, "stage": "init"},  # the starting point: validated, never trained
            {"epoch": 1, "train_loss": -0.004, "train_reward": 2.6, "val_cider": 2.6},
            {"epoch": 2, "train_loss": -0.003, "train_reward": 2.7, "val_cider": 2.7}]
    label, epochs, values = training_series(scst)
    assert label.startswith("mean reward") and epochs == [1, 2] and values == [2.6, 2.7]


def test_rmsprop_is_the_papers_flickr8k_optimizer_and_trains(caption_set, tmp_path):
    """``sat.optimizer: rmsprop`` (the SAT paper's Flickr8k setting): arctic-captions' centred RMSProp with momentum
    0.9 and decay 0.95 at the recipe's lr; it learns (losses fall) and differs from Adam's run; other values are
    refused, naming the key."""
    from captioner.training.trainer import Trainer
    from tests.training_helpers import HPARAMS, losses

    def run(optimizer: str, lr: float):
        hparams = dict(HPARAMS, epochs=3, lr=lr, optimizer=optimizer, model=dict(HPARAMS["model"], dropout=0.0))
        out = tmp_path / optimizer
        trainer = Trainer("sat_soft", str(caption_set / "grid.h5"), str(caption_set / "text/captions.json"),
                          str(caption_set / "text/vocab.json"), hparams, str(out), device="cpu")
        built = trainer.optimizer
        trainer.run()
        return built, losses(out)

    rmsprop, rms_losses = run("rmsprop", 1e-3)
    assert isinstance(rmsprop, torch.optim.RMSprop)
    group = rmsprop.param_groups[0]
    assert (group["lr"], group["alpha"], group["momentum"], group["centered"]) == (1e-3, 0.95, 0.9, True)
    adam, adam_losses = run("adam", 1e-3)
    assert isinstance(adam, torch.optim.Adam)
    assert rms_losses[-1] < rms_losses[0] and rms_losses != adam_losses
    with pytest.raises(InputError, match=r"--hparams.optimizer: 'sgd' is not one of 'adam', 'rmsprop'"):
        Trainer("sat_soft", str(caption_set / "grid.h5"), str(caption_set / "text/captions.json"),
                str(caption_set / "text/vocab.json"), dict(HPARAMS, optimizer="sgd"), str(tmp_path / "x"),
                device="cpu")
