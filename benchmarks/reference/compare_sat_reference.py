"""Our Show, Attend and Tell training step against the most used PyTorch implementation, on equal work.

Needs a checkout of https://github.com/sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning kept *outside* this repository
(never committed here), given with --reference-repo; its ``models.py`` is imported from there unchanged.

Equal work: the tutorial's decoder (LSTMCell, additive attention, a vector gate, a linear initial state, one output
layer after dropout) at its sizes (embedding, hidden and attention 512; 196 cells of 2048; batch 64) against ours
configured to the same layers (``gate: vector``, ``deep_output: false``, ``init_layers: 1``, no projection); FLOPs of
one forward + backward of each are counted and printed, so any extra work of either side shows. Both train on the same
precomputed grid (the tutorial's encoder is frozen by default: ``fine_tune_encoder = False``), COCO-like caption
lengths, the doubly stochastic penalty (the tutorial's ``alpha_c = 1``), Adam. The tutorial steps only the captions
still running at each time step (it sorts the batch by length); its loss is the mean over words, ours the paper's sum
over words averaged over captions: the same arithmetic apart from one scalar.

Rows: training samples/s in fp32 and both under bf16 autocast, and our hard-attention step (REINFORCE over sampled
locations, ``attention: hard``) beside our soft one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import append_results, timed, under_bf16  # noqa: E402
from captioner.models.sat import SATConfig, ShowAttendTell  # noqa: E402
from captioner.training.reinforce import HardAttention  # noqa: E402
from pipeline.config import defaults  # noqa: E402


def flops(function) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        function()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True)
    parser.add_argument("--vocab", type=int, default=10000, help="vocabulary size (COCO, words seen 5 times: ~10k)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cells", type=int, default=196, help="annotation vectors per image (14 x 14)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(args.reference_repo))
    from models import DecoderWithAttention  # the tutorial's models.py

    torch.manual_seed(0)
    reference = DecoderWithAttention(attention_dim=512, embed_dim=512, decoder_dim=512, vocab_size=args.vocab,
                                     encoder_dim=2048, dropout=0.5).train()
    config = SATConfig(vocab_size=args.vocab, feature_dim=2048, embed_dim=512, hidden_dim=512, attention_dim=512,
                       init_layers=1, gate="vector", deep_output=False, dropout=0.5, doubly_stochastic=1.0)
    ours = ShowAttendTell(config).train()
    hard = ShowAttendTell(SATConfig(**{**config.__dict__, "attention": "hard"})).train()

    side = int(round(args.cells ** 0.5))
    features = torch.randn(args.batch, side, side, 2048).relu()  # a ResNet grid after its last ReLU
    generator = torch.Generator().manual_seed(0)
    # COCO-like: Karpathy train captions have ~10.5 words on average; + <start>/<end>
    words = (torch.randn(args.batch, generator=generator) * 2.4 + 10.5).round().clamp(6, 20).long()
    lengths = words + 2
    captions = torch.randint(4, args.vocab, (args.batch, int(lengths.max())), generator=generator)
    position = torch.arange(captions.shape[1])[None]
    captions[:, 0] = config.bos_id
    captions[position == lengths[:, None] - 1] = config.eos_id
    captions[position >= lengths[:, None]] = config.pad_id

    ref_optimizer = torch.optim.Adam(reference.parameters(), lr=4e-4)
    our_optimizer = torch.optim.Adam(ours.parameters(), lr=4e-4)
    hard_optimizer = torch.optim.Adam(hard.parameters(), lr=4e-4)
    grid = features.view(args.batch, -1, 2048)
    # the schema's recipe, every batch sampled (expected_context_p 0): the step the hard model adds over soft's
    hard_objective = HardAttention(hard, None, {**defaults("sat"), "expected_context_p": 0.0})

    def reference_loss():  # the tutorial's train() for one batch, encoder frozen
        scores, caps_sorted, decode_lengths, alphas, _ = reference(features, captions, lengths[:, None])
        targets = caps_sorted[:, 1:]
        scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
        targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
        return F.cross_entropy(scores, targets) + 1.0 * ((1.0 - alphas.sum(dim=1)) ** 2).mean()

    def reference_step():
        loss = reference_loss()
        ref_optimizer.zero_grad()
        loss.backward()
        ref_optimizer.step()

    def our_step():
        loss = ours.loss(grid, captions).loss
        our_optimizer.zero_grad()
        loss.backward()
        our_optimizer.step()

    def hard_step():  # the hard-attention objective on a sampled batch: REINFORCE with its baseline and entropy
        loss = hard_objective.loss(captions, {"features": grid}).loss
        hard_optimizer.zero_grad()
        loss.backward()
        hard_optimizer.step()

    flops_ref = flops(lambda: reference_loss().backward())
    flops_ours = flops(lambda: ours.loss(grid, captions).loss.backward())
    ref_s, ours_s = timed(reference_step, args.repeats), timed(our_step, args.repeats)
    ref_bf16, ours_bf16 = timed(under_bf16(reference_step), args.repeats), timed(under_bf16(our_step), args.repeats)
    hard_s = timed(hard_step, args.repeats)

    append_results("SAT: our training step vs sgrvinod's tutorial (equal layers and sizes)", [
        f"hidden/attention/embedding 512, {args.cells} cells x 2048, batch {args.batch}, vocabulary {args.vocab}, "
        f"caption lengths {int(words.min())}-{int(words.max())} words (mean {words.float().mean():.1f}), "
        f"{args.threads} threads on the CPU; reference = sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning's "
        "DecoderWithAttention, ours = ShowAttendTell with gate vector, deep_output false, init_layers 1", "",
        f"- forward + backward FLOPs: reference {flops_ref / 1e9:.1f} G, ours {flops_ours / 1e9:.1f} G "
        f"({flops_ours / flops_ref:.2f}x)", "",
        "| training step | reference | ours | speed-up |", "|---|---:|---:|---:|",
        f"| soft attention, fp32, samples/s | {args.batch / ref_s:.1f} | {args.batch / ours_s:.1f} | "
        f"{ref_s / ours_s:.2f}x |",
        f"| soft attention, both under bf16 autocast, samples/s | {args.batch / ref_bf16:.1f} | "
        f"{args.batch / ours_bf16:.1f} | {ref_bf16 / ours_bf16:.2f}x |",
        f"| ours: hard attention (REINFORCE) vs soft, fp32, samples/s | soft {args.batch / ours_s:.1f} | "
        f"hard {args.batch / hard_s:.1f} | hard costs {hard_s / ours_s:.2f}x soft |"])


if __name__ == "__main__":
    main()
