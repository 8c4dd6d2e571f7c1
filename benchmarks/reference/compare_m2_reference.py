"""Our M² against the authors' implementation on the same random weights and inputs.

Needs a checkout of https://github.com/aimagelab/meshed-memory-transformer kept *outside* this repository
(never committed here), given with --reference-repo. Its ``models``, ``utils`` and ``evaluation`` packages are copied
to a temporary folder and patched for current PyTorch (integer division of beam indices, boolean attention masks);
nothing of it is imported by the project itself.

1. Build the reference Transformer (MemoryAugmentedEncoder 3 layers, m=40; MeshedDecoder 3 layers) with its own
   random initialisation, convert its state_dict with ``captioner.apps.import_m2_weights.convert_state_dict`` and load it into
   our model in ``reference_compat`` mode.
2. Beam search (beam 5, batch 50, max length 20) on random region features, zero-padded like the reference's
   detections file: the beams must be the same words, the sequence log-probs equal within 1e-4.
3. Throughput on this machine: beam search images/s and cross-entropy training samples/s (batch 50) of both,
   in fp32 and under bf16 autocast (our ``precision: bf16``; the reference has no such option, so it is also
   shown wrapped in autocast from outside). Our XE step is timed on the reference's kind of batch (50 shuffled
   pairs) and on our default kind (``xe_batches: by_image``: 10 images x 5 captions, each image encoded once),
   with the converted weights as it trains (padded regions masked: its encoder skips them) and in ``reference_compat``
   mode (padded regions attended, the reference's function exactly). Each figure is the median of ``--repeats`` calls.
4. One SCST step of each (10 images, beam 5 in training mode, CIDEr-D rewards against each image's references, the
   mean of its beams as baseline, backward, Adam): the reference's ``train_scst`` body with its own PTB tokenizer (two
   Java runs in a process pool) and CIDEr-D scorer, against our ``SelfCritical`` objective.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import multiprocessing
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import append_results, timed, under_bf16  # noqa: E402
from captioner.apps.import_m2_weights import REFERENCE_SPECIALS, convert_state_dict  # noqa: E402
from captioner.models.beam_search import beam_search  # noqa: E402
from captioner.models.m2 import MeshedMemoryTransformer  # noqa: E402

PATCHES = {  # file -> (pattern, replacement): what current PyTorch needs, nothing else
    "models/beam_search/beam_search.py": [(r"selected_idx / candidate_logprob", "selected_idx // candidate_logprob")],
    "models/transformer/attention.py": [(r"masked_fill\(attention_mask,", "masked_fill(attention_mask.bool(),")],
    "models/transformer/decoders.py": [(r"torch\.zeros\(\(1, 1, 0\)\)\.byte\(\)", "torch.zeros((1, 1, 0)).bool()")],
}


def import_reference(repo: Path, workdir: Path):
    for package in ("models", "utils", "evaluation"):
        shutil.copytree(repo / package, workdir / package, ignore=shutil.ignore_patterns("*.jar"))
    # its PTB tokenizer's jar: the same release (Stanford CoreNLP 3.4.1) that pycocoevalcap ships
    from pycocoevalcap.tokenizer import ptbtokenizer

    shutil.copy(Path(ptbtokenizer.__file__).with_name("stanford-corenlp-3.4.1.jar"), workdir / "evaluation")
    for name, patches in PATCHES.items():
        path = workdir / name
        text = path.read_text()
        for pattern, replacement in patches:
            text, count = re.subn(pattern, replacement, text)
            if not count:
                raise SystemExit(f"{name}: {pattern!r} not found; is this the reference repository?")
        path.write_text(text)
    sys.path.insert(0, str(workdir))
    from models.transformer import MemoryAugmentedEncoder, MeshedDecoder, ScaledDotProductAttentionMemory, Transformer

    return Transformer, MemoryAugmentedEncoder, MeshedDecoder, ScaledDotProductAttentionMemory


class SyntheticTrainData:
    """What our SCST objective reads of its training data: the images' references, the vocabulary and the model
    inputs of a batch of images."""

    def __init__(self, references: list[list[str]], vocab, features, num_boxes):
        self.images = [{"image_id": i, "refs": refs} for i, refs in enumerate(references)]
        self.vocab, self.features, self.num_boxes = vocab, features, num_boxes

    def inputs(self, indices: list[int]) -> dict:
        rows = torch.tensor(indices, device=self.features.device)
        return {"features": self.features[rows], "num_boxes": self.num_boxes[rows]}


def profile_steps(title: str, steps: dict, repeats: int, precisions=("fp32", "bf16"), top: int = 14) -> list[str]:
    """Where a training step's time goes, per implementation: self CPU time of the heaviest aten operators
    (torch.profiler), and the FLOPs of one step (torch.utils.flop_counter)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    lines = []
    for precision in precisions:
        shares, totals, step_flops = {}, {}, {}
        for name, step in steps.items():
            run = step if precision == "fp32" else under_bf16(step)
            counter = FlopCounterMode(display=False)
            with counter:
                run()
            step_flops[name] = counter.get_total_flops()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(repeats):
                    run()
            events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
            totals[name] = sum(e.self_cpu_time_total for e in events) / repeats
            shares[name] = {e.key: (e.self_cpu_time_total / repeats, e.count // repeats) for e in events}
        names = list(steps)
        lines += [f"#### Where {title}'s time goes, {precision}", "",
                  "aten operators' self CPU time per step (torch.profiler; ms, calls), FLOPs of one step (forward + "
                  "backward + optimizer) from torch.utils.flop_counter: "
                  + ", ".join(f"{name} {step_flops[name] / 1e9:.1f} GFLOP in {totals[name] / 1e3:.0f} ms"
                              for name in names), "",
                  "| operator | " + " | ".join(f"{name} ms | calls" for name in names) + " |",
                  "|---|" + "---:|---:|" * len(names)]
        heaviest = sorted({key for name in names for key in shares[name]},
                          key=lambda key: -max(shares[name].get(key, (0, 0))[0] for name in names))[:top]
        for key in heaviest:
            cells = []
            for name in names:
                ms, calls = shares[name].get(key, (0.0, 0))
                cells.append(f"{ms / 1e3:.1f} | {calls}")
            lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", type=Path, required=True)
    parser.add_argument("--vocab", type=int, default=10201, help="vocabulary size (COCO: 10201)")
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--scst-images", type=int, default=10, help="images of an SCST batch")
    parser.add_argument("--scst-corpus", type=int, default=1000, help="training images for CIDEr-D's frequencies")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true",
                        help="also write where the steps' time goes (same-batch XE, default-batch XE, SCST)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="m2-reference-") as workdir:
        Transformer, Encoder, Decoder, MemoryAttention = import_reference(args.reference_repo, Path(workdir))
        torch.manual_seed(0)
        reference_itos = list(REFERENCE_SPECIALS) + [f"w{i}" for i in range(args.vocab - 4)]
        encoder = Encoder(3, 0, attention_module=MemoryAttention, attention_module_kwargs={"m": 40})
        decoder = Decoder(len(reference_itos), 54, 3, reference_itos.index("<pad>"))
        reference = Transformer(reference_itos.index("<bos>"), encoder, decoder).to(device).eval()
        state, config, our_itos = convert_state_dict(reference.state_dict(), reference_itos)
        ours = MeshedMemoryTransformer(config)
        ours.load_state_dict(state, strict=True)
        ours.to(device).eval()

        features = torch.randn(args.batch, args.regions, 2048, device=device)
        num_boxes = torch.randint(10, args.regions + 1, (args.batch,), device=device)
        features[torch.arange(args.regions, device=device)[None] >= num_boxes[:, None]] = 0.0  # zero padding
        eos_ref, eos_ours = reference_itos.index("<eos>"), our_itos.index("<eos>")

        def reference_beams():
            with torch.no_grad():
                return reference.beam_search(features, args.max_length, eos_ref, args.beam, out_size=1)

        def our_beams():
            with torch.no_grad():
                return beam_search(*ours.decoder(features, num_boxes), args.batch, args.beam, args.max_length,
                                   our_itos.index("<bos>"), eos_ours, our_itos.index("<pad>"))

        ref_tokens, ref_logprobs = reference_beams()
        result = our_beams()
        same, worst = 0, 0.0
        for i in range(args.batch):
            words_ref = []
            for t in ref_tokens[i].tolist():
                words_ref.append(reference_itos[t])
                if t == eos_ref:
                    break
            words_ours = []
            for t in result.tokens[i, 0].tolist():
                words_ours.append(our_itos[t])
                if t == eos_ours:
                    break
            same += words_ref == words_ours
            worst = max(worst, abs(float(ref_logprobs[i].sum()) - float(result.logprob[i, 0])))
        print(f"identical beams: {same}/{args.batch}; max |log-prob difference| {worst:.2e}")
        if same != args.batch or worst > 1e-4:
            raise SystemExit("the implementations disagree")

        beam_ref = timed(reference_beams, args.repeats)
        beam_ours = timed(our_beams, args.repeats)

        # COCO-like caption lengths (Karpathy train: mean ~10.5 words), padded to the longest of the batch
        generator = torch.Generator().manual_seed(0)
        lengths = (torch.randn(args.batch, generator=generator) * 2.4 + 10.5).round().clamp(6, 20).long()
        words = torch.randint(4, args.vocab, (args.batch, int(lengths.max()) + 2), generator=generator)
        position = torch.arange(words.shape[1])[None]
        captions = words.clone()
        captions[:, 0] = reference_itos.index("<bos>")
        captions[position == lengths[:, None] + 1] = eos_ref
        captions[position > lengths[:, None] + 1] = reference_itos.index("<pad>")
        captions_ours = words.clone()  # word ids >= 4 are the same words in both vocabularies
        captions_ours[:, 0] = our_itos.index("<bos>")
        captions_ours[position == lengths[:, None] + 1] = eos_ours
        captions_ours[position > lengths[:, None] + 1] = our_itos.index("<pad>")
        captions, captions_ours = captions.to(device), captions_ours.to(device)
        reference.train()
        ours.train()
        # ours as it trains (no reference_compat): padded regions masked, so its encoder skips them
        trained = MeshedMemoryTransformer(dataclasses.replace(config, reference_compat=False))
        trained.load_state_dict(ours.state_dict())
        trained.to(device).train()
        compat, ours = ours, trained
        compat_optimizer = torch.optim.Adam(compat.parameters(), lr=1e-5, betas=(0.9, 0.98))
        ref_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-5, betas=(0.9, 0.98))
        our_optimizer = torch.optim.Adam(ours.parameters(), lr=1e-5, betas=(0.9, 0.98))

        def reference_step():
            log_probs = reference(features, captions[:, :-1])
            loss = F.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), captions[:, 1:].reshape(-1),
                              ignore_index=reference_itos.index("<pad>"))
            ref_optimizer.zero_grad()
            loss.backward()
            ref_optimizer.step()

        def our_step():
            loss = ours.loss(features, num_boxes, captions_ours).loss
            our_optimizer.zero_grad()
            loss.backward()
            our_optimizer.step()

        def compat_step():  # the reference's function exactly: padded regions attended
            loss = compat.loss(features, num_boxes, captions_ours).loss
            compat_optimizer.zero_grad()
            loss.backward()
            compat_optimizer.step()

        # xe_batches: by_image (the M² default): the same number of captions, all captions of batch/5 images
        per_image = 5
        image_index = torch.arange(args.batch, device=device) // per_image
        image_rows = torch.arange(0, args.batch, per_image, device=device)

        def our_step_by_image():
            loss = ours.loss(features[image_rows], num_boxes[image_rows], captions_ours, image_index).loss
            our_optimizer.zero_grad()
            loss.backward()
            our_optimizer.step()

        def bf16(step):
            return under_bf16(step, device.type)

        profile_lines = profile_steps("a same-batch XE step", {"reference": reference_step, "ours": our_step},
                                      args.repeats) if args.profile else []
        xe_ref = timed(reference_step, args.repeats)
        xe_ours = timed(our_step, args.repeats)
        xe_compat = timed(compat_step, args.repeats)
        xe_ours_bf16 = timed(bf16(our_step), args.repeats)
        xe_ref_bf16 = timed(bf16(reference_step), args.repeats)
        xe_ours_by_image = timed(our_step_by_image, args.repeats)
        xe_ours_by_image_bf16 = timed(bf16(our_step_by_image), args.repeats)

        # SCST: one step on scst_images images, each implementation with its own beam search and CIDEr-D; the
        # document frequencies of a training corpus of random-word references (5 per image), as both compute them
        import evaluation  # the reference's: its PTB tokenizer (Java) and CIDEr-D scorer

        from captioner.data.vocab import Vocabulary
        from captioner.training.scst import SelfCritical

        words_of = torch.Generator().manual_seed(1)
        corpus = [[" ".join(f"w{int(w)}" for w in torch.randint(0, args.vocab - 4, (int(n),), generator=words_of))
                   for n in torch.randint(8, 15, (5,), generator=words_of)] for _ in range(args.scst_corpus)]
        batch_images = list(range(args.scst_images))
        pool = multiprocessing.Pool()  # as the reference's train_scst: one per epoch, two tokenizer runs per step
        cider_train = evaluation.Cider(evaluation.PTBTokenizer.tokenize(corpus))
        scst_features = features[:args.scst_images]

        def reference_scst_step():  # train.py's train_scst for one batch
            outs, log_probs = reference.beam_search(scst_features, args.max_length, eos_ref, args.beam,
                                                    out_size=args.beam)
            ref_optimizer.zero_grad()
            caps_gen = []  # TextField.decode: the words up to <eos>
            for row in outs.view(-1, args.max_length).tolist():
                caption = []
                for index in row:
                    if reference_itos[index] == "<eos>":
                        break
                    caption.append(reference_itos[index])
                caps_gen.append(" ".join(caption))
            caps_gt = list(itertools.chain(*([corpus[i]] * args.beam for i in batch_images)))
            caps_gen, caps_gt = pool.map(evaluation.PTBTokenizer.tokenize, [caps_gen, caps_gt])
            reward = cider_train.compute_score(caps_gt, caps_gen)[1].astype(np.float32)
            reward = torch.from_numpy(reward).to(device).view(args.scst_images, args.beam)
            baseline = torch.mean(reward, -1, keepdim=True)
            loss = (-torch.mean(log_probs, -1) * (reward - baseline)).mean()
            loss.backward()
            ref_optimizer.step()

        vocab = Vocabulary(list(our_itos))
        hp = {"scst_beam_size": args.beam, "scst_max_length": args.max_length, "scst_batch_images": args.scst_images}
        scst = SelfCritical(ours, SyntheticTrainData(corpus, vocab, features, num_boxes), hp)

        def our_scst_step():
            step = scst(batch_images)
            our_optimizer.zero_grad()
            step.loss.backward()
            our_optimizer.step()

        scst_ref = timed(reference_scst_step, args.repeats)
        scst_ours = timed(our_scst_step, args.repeats)
        if args.profile:  # the two rows with the largest gaps to their goals
            profile_lines += profile_steps("an XE step as each trains by default (ours by_image)",
                                           {"reference": reference_step, "ours": our_step_by_image}, args.repeats,
                                           precisions=("fp32",))
            profile_lines += profile_steps("an SCST step (the reference's Java tokenizer runs outside torch)",
                                           {"reference": reference_scst_step, "ours": our_scst_step}, args.repeats,
                                           precisions=("fp32",))
        pool.close()

    append_results("M2: ours vs the reference implementation (same weights, same inputs)", [
        f"random reference weights converted with `captioner.apps.import_m2_weights`; {args.regions} regions (10-{args.regions} "
        f"real, zero-padded), vocabulary {args.vocab}, d=512, 3+3 layers, m=40, {args.threads} threads on "
        f"{args.device}; reference = aimagelab/meshed-memory-transformer with the PyTorch fixes listed in the "
        "script (`PATCHES`)", "",
        f"- beams: {same}/{args.batch} identical, max |sequence log-prob difference| {worst:.1e} (reference_compat)",
        "",
        "| measure | reference | ours | speed-up |", "|---|---:|---:|---:|",
        f"| beam search (beam {args.beam}, batch {args.batch}, max length {args.max_length}), images/s | "
        f"{args.batch / beam_ref:.1f} | {args.batch / beam_ours:.1f} | {beam_ref / beam_ours:.2f}x |",
        f"| XE training, same batches (batch {args.batch}, COCO-like caption lengths {int(lengths.min())}-"
        f"{int(lengths.max())} words, mean {lengths.float().mean():.1f}, padded), ours as it trains (padded regions "
        f"masked), samples/s | "
        f"{args.batch / xe_ref:.1f} | {args.batch / xe_ours:.1f} | {xe_ref / xe_ours:.2f}x |",
        f"| the same, ours in `reference_compat` mode (the reference's function exactly: padded regions attended, "
        f"not skipped), samples/s | {args.batch / xe_ref:.1f} | {args.batch / xe_compat:.1f} | "
        f"{xe_ref / xe_compat:.2f}x |",
        f"| XE training, ours with `precision: bf16` vs the reference as it ships (fp32: it has no mixed-precision "
        f"option), samples/s | {args.batch / xe_ref:.1f} | {args.batch / xe_ours_bf16:.1f} | "
        f"{xe_ref / xe_ours_bf16:.2f}x |",
        f"| XE training, both under bf16 autocast (the reference wrapped from outside), samples/s | "
        f"{args.batch / xe_ref_bf16:.1f} | {args.batch / xe_ours_bf16:.1f} | {xe_ref_bf16 / xe_ours_bf16:.2f}x |",
        f"| XE training as each trains by default: the reference's shuffled pairs vs our `xe_batches: by_image` "
        f"({args.batch // per_image} images x {per_image} captions, each image encoded once), fp32, samples/s | "
        f"{args.batch / xe_ref:.1f} | {args.batch / xe_ours_by_image:.1f} | {xe_ref / xe_ours_by_image:.2f}x |",
        f"| the same, both under bf16 autocast, samples/s | {args.batch / xe_ref_bf16:.1f} | "
        f"{args.batch / xe_ours_by_image_bf16:.1f} | {xe_ref_bf16 / xe_ours_by_image_bf16:.2f}x |",
        f"| SCST step ({args.scst_images} images, beam {args.beam} in training mode, max length {args.max_length}, "
        f"CIDEr-D rewards against 5 references each with the document frequencies of {args.scst_corpus} images, "
        f"mean baseline, backward, Adam), fp32, images/s | {args.scst_images / scst_ref:.2f} | "
        f"{args.scst_images / scst_ours:.2f} | {scst_ref / scst_ours:.2f}x |", "", *profile_lines])


if __name__ == "__main__":
    main()
