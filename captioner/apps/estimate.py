"""``python -m captioner estimate``: roughly how long ``make demo`` will take on this machine, printed before it starts.

Two short probes (about two seconds) time the demo's two kinds of work here: convolutions (the trunk's
pre-training and the feature extraction, on all cores) and small recurrent steps on one thread (training and
decoding the eight captioners, one job per core). Each measured stage time of the reference machine is scaled by
how much slower or faster its kind of work runs here. The reference is a 2-core AVX2 CPU in fp32
(``benchmarks/RESULTS.md``, "make demo"); the estimate is for the whole DAG from scratch, so a rerun that has
little left to do ends sooner. With a GPU the feature and training jobs run there, and sooner.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from features.backbones import trunk as backbone_trunk

# the reference machine (2 cores, AVX2, fp32): probe seconds, and the demo's wall seconds by kind of work
# (benchmarks/RESULTS.md: costs.md of `time make demo`, and this module's probes, on the same machine)
REFERENCE_CONV_PROBE_S = 0.28
REFERENCE_STEP_PROBE_S = 0.064
REFERENCE_CONV_WORK_S = 180.0  # pretrain_backbone + extract_features (grid, regions, nocaps): one after the other
REFERENCE_STEP_WORK_S = 400.0  # the rest, wall time with two jobs side by side (training, decoding, scoring, report)
REFERENCE_CORES = 2


def _best_of(fn, repeats: int = 3) -> float:
    fn()  # warm-up: first-call allocation and kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def conv_probe(threads: int) -> float:
    """Seconds of one forward + backward of ResNet-18 up to res4 on 16 images of 128 px (the demo's trunk)."""
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    trunk = backbone_trunk(torchvision.models.resnet18(weights=None), "layer3")
    images = torch.randn(16, 3, 128, 128)

    def step():
        trunk.zero_grad(set_to_none=True)
        trunk(images).square().mean().backward()

    return _best_of(step)


def step_probe() -> float:
    """Seconds of 20 LSTM steps with attention-sized inputs, batch 64, forward + backward, on one thread."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cell, out = torch.nn.LSTMCell(384, 256), torch.nn.Linear(256, 200)
    inputs = torch.randn(20, 64, 384)

    def step():
        h = c = torch.zeros(64, 256)
        loss = 0.0
        for x in inputs:
            h, c = cell(x, (h, c))
            loss = loss + out(h).logsumexp(-1).mean()
        loss.backward()

    return _best_of(step)


def estimate(cores: int) -> dict:
    conv = conv_probe(min(cores, 2))  # the demo's feature jobs use 2 threads
    steps = step_probe()
    conv_factor = conv / REFERENCE_CONV_PROBE_S
    step_factor = steps / REFERENCE_STEP_PROBE_S
    side_by_side = min(max(cores, 1), 4) / REFERENCE_CORES  # the DAG rarely has more than 4 training jobs ready
    seconds = REFERENCE_CONV_WORK_S * conv_factor + REFERENCE_STEP_WORK_S * step_factor / side_by_side
    return {"seconds": seconds, "conv_factor": conv_factor, "step_factor": step_factor, "cores": cores}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores the run may use")


def run(args) -> None:
    result = estimate(args.cores)
    reference = (REFERENCE_CONV_WORK_S + REFERENCE_STEP_WORK_S) / 60
    gpu = " A GPU is present: its jobs will finish sooner." if torch.cuda.is_available() else ""
    print(f"make demo: about {result['seconds'] / 60:.0f} min from scratch on this machine ({args.cores} cores; "
          f"convolutions {1 / result['conv_factor']:.1f}x and one-thread training steps "
          f"{1 / result['step_factor']:.1f}x the speed of the reference, 2 AVX2 cores in fp32, where it takes "
          f"{reference:.0f} min: benchmarks/RESULTS.md).{gpu}", file=sys.stderr)
