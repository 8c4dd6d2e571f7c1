import itertools

import pytest
import torch

from captioner.models.beam_search import beam_search
from captioner.models.m2 import M2Config, MeshedMemoryTransformer
from captioner.models.sat import SATConfig, ShowAttendTell

V = 7  # pad, bos, eos + 4 words


def sat_model(**overrides):
    torch.manual_seed(0)
    config = SATConfig(vocab_size=V, feature_dim=6, embed_dim=5, hidden_dim=8, attention_dim=4, **overrides)
    return ShowAttendTell(config)


def m2_model(**overrides):
    torch.manual_seed(0)
    config = M2Config(vocab_size=V, feature_dim=6, d_model=8, heads=2, d_ff=16, encoder_layers=2,
                      decoder_layers=2, memory_slots=3, **overrides)
    return MeshedMemoryTransformer(config).eval()


def captions():
    return torch.tensor([[1, 3, 4, 5, 2, 0], [1, 6, 2, 0, 0, 0]])


def test_sat_shapes_and_scalar_gate():
    model = sat_model().eval()
    out = model(torch.randn(2, 9, 6), captions())
    assert out["logits"].shape == (2, 5, V) and out["alphas"].shape == (2, 5, 9)
    assert torch.allclose(out["alphas"].sum(-1), torch.ones(2, 5))
    assert model.gate.out_features == 1  # beta_t is a scalar per step
    assert sat_model(gate="vector").gate.out_features == 6


def test_doubly_stochastic_penalty_matches_hand_computation():
    model = sat_model()
    alphas = torch.tensor([[[0.5, 0.5, 0.0], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the last step is padding
    # location sums over the two real steps: 0.7, 0.7, 0.6 -> (0.3^2 + 0.3^2 + 0.4^2)
    expected = 0.3 ** 2 + 0.3 ** 2 + 0.4 ** 2
    assert model.doubly_stochastic_penalty(alphas, mask).item() == pytest.approx(expected)


def exhaustive_best(step_fn, state, max_length, eos):
    """Every word sequence that ends in <eos> within max_length, or runs to max_length without it."""
    best = (None, float("-inf"))
    words = range(2, V)  # eos and the four words; pad and bos are forbidden by the step function
    for length in range(1, max_length + 1):
        for seq in itertools.product(words, repeat=length):
            if eos in seq[:-1] or (length < max_length and seq[-1] != eos):
                continue
            s, total, prev = state, 0.0, torch.tensor([1])
            for w in seq:
                log_probs, s, _ = step_fn(prev, s)
                total += float(log_probs[0, w])
                prev = torch.tensor([w])
            if total > best[1]:
                best = (list(seq), total)
    return best


@pytest.mark.parametrize("family", ["sat", "m2"])
@pytest.mark.parametrize("beam_size, max_length", [(V, 2), (V * V, 3)])
def test_beam_wide_enough_equals_exhaustive_search(family, beam_size, max_length):
    """k = |V| keeps every prefix for two steps (and |V|^2 for three), so nothing optimal is pruned."""
    model = sat_model().eval() if family == "sat" else m2_model()
    feats = torch.randn(1, 4, 6)

    def start():
        return model.decoder(feats) if family == "sat" else model.decoder(feats, torch.tensor([4]))

    def only_words(step):
        def masked(tokens, s):
            log_probs, s, extra = step(tokens, s)
            return log_probs.index_fill(1, torch.tensor([0, 1]), float("-inf")), s, extra
        return masked

    with torch.no_grad():
        state, step = start()
        result = beam_search(state, only_words(step), 1, beam_size, max_length, 1, 2, 0)
        state, step = start()
        best_seq, best_logprob = exhaustive_best(only_words(step), state, max_length, 2)
    got = result.tokens[0, 0].tolist()
    got = got[: got.index(2) + 1] if 2 in got else got
    assert got == best_seq
    assert result.logprob[0, 0].item() == pytest.approx(best_logprob, abs=1e-5)


@pytest.mark.parametrize("family", ["sat", "m2"])
def test_batched_beam_equals_per_image(family):
    model = sat_model().eval() if family == "sat" else m2_model()
    feats = torch.randn(4, 5, 6)
    num_boxes = torch.tensor([5, 3, 1, 4])

    def run(f, nb):
        state, step = model.decoder(f) if family == "sat" else model.decoder(f, nb)
        return beam_search(state, step, len(f), 3, 6, 1, 2, 0, n_best=3)

    with torch.no_grad():
        batched = run(feats, num_boxes)
        for i in range(4):
            single = run(feats[i:i + 1], num_boxes[i:i + 1])
            assert torch.equal(single.tokens[0], batched.tokens[i])
            assert torch.allclose(single.logprob[0], batched.logprob[i], atol=1e-5)


def test_m2_cached_steps_equal_teacher_forcing_and_padding_is_masked():
    model = m2_model()
    feats, num_boxes = torch.randn(2, 5, 6), torch.tensor([5, 2])
    caps = torch.tensor([[1, 3, 4, 5, 6], [1, 6, 3, 3, 4]])
    with torch.no_grad():
        full = model(feats, num_boxes, caps)
        state, step = model.decoder(feats, num_boxes)
        steps = []
        for t in range(caps.shape[1]):
            log_probs, state, _ = step(caps[:, t], state)
            steps.append(log_probs)
        assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
        changed = feats.clone()
        changed[1, 2:] = 50.0  # padded regions of image 1
        assert torch.allclose(model(changed, num_boxes, caps), full, atol=1e-6)
        compat = m2_model(reference_compat=True)
        assert not torch.allclose(compat(changed, num_boxes, caps), compat(feats, num_boxes, caps))


def test_m2_loss_ignores_pad():
    model = m2_model()
    loss = model.loss(torch.randn(2, 3, 6), torch.tensor([3, 2]), captions())
    assert loss.tokens.item() == 6 and torch.isfinite(loss.loss)


def test_m2_loss_and_gradients_do_not_depend_on_padding():
    """Teacher forcing skips padded positions and padded regions (it computes only what predicts a real token): in
    float64, more pad columns and more padded regions change neither the loss nor any gradient."""
    model = m2_model(dropout=0.0).double()
    feats, num_boxes = torch.randn(2, 3, 6, dtype=torch.float64), torch.tensor([3, 2])
    caps = captions()

    def loss_and_grads(features, caps):
        model.zero_grad()
        loss = model.loss(features, num_boxes, caps).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads(feats, caps)
    wider = torch.cat([feats, torch.randn(2, 4, 6, dtype=torch.float64)], 1)  # 4 more regions, all padding
    longer = torch.cat([caps, torch.zeros(2, 5, dtype=torch.long)], 1)  # 5 more pad columns
    padded_loss, padded_grads = loss_and_grads(wider, longer)
    torch.testing.assert_close(padded_loss, loss, rtol=0, atol=1e-12)
    for grad, padded in zip(grads, padded_grads):
        torch.testing.assert_close(padded, grad, rtol=0, atol=1e-12)


def test_dropout_keeps_each_element_with_probability_one_minus_p_and_repeats_with_the_seed():
    from captioner.models.dropout import Dropout

    dropout = Dropout(0.3).train()
    x = torch.ones(400_000)
    torch.manual_seed(1)
    out = dropout(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 3 standard deviations: ~0.0022
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.7))  # the expectation stays x
    torch.manual_seed(1)
    assert torch.equal(dropout(x), out)
    assert torch.equal(dropout.eval()(x), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dropout.train()(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["sat", "m2"])
def test_captions_sharing_an_image_equal_repeated_features(family):
    """``image_index`` (each image encoded once, its encoding sent to each of its captions) gives the loss and the
    gradients of feeding every caption its own copy of the features."""
    model = sat_model() if family == "sat" else m2_model()
    model.eval()  # no dropout: both ways must then agree to rounding
    feats = torch.randn(3, 5, 6)
    num_boxes = torch.tensor([5, 2, 4])
    caps = torch.tensor([[1, 3, 4, 5, 2, 0], [1, 6, 2, 0, 0, 0], [1, 4, 4, 2, 0, 0], [1, 5, 3, 6, 3, 2],
                         [1, 3, 2, 0, 0, 0]])
    image_index = torch.tensor([2, 0, 0, 1, 2])

    def loss_and_grads(rows, image_index=None):
        model.zero_grad()
        inputs = {"features": feats[rows], "captions": caps, "image_index": image_index}
        if family == "m2":
            inputs["num_boxes"] = num_boxes[rows]
        loss = model.loss(**inputs).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    every_image = torch.arange(3)
    shared, shared_grads = loss_and_grads(every_image, image_index)
    repeated, repeated_grads = loss_and_grads(image_index)  # one copy of the features per caption
    assert torch.allclose(shared, repeated, atol=1e-6)
    assert len(shared_grads) == len(repeated_grads)
    for a, b in zip(shared_grads, repeated_grads):
        assert torch.allclose(a, b, atol=1e-5)
    swapped, _ = loss_and_grads(every_image, image_index.flip(0))
    assert not torch.allclose(swapped, shared)  # the index really routes images to captions
