"""One-shot GPU check: extraction and model throughput beside their FLOP bounds, and the detector's precision modes.

Run at once on any GPU machine (``bash benchmarks/gpu_check.sh``, <= 8 minutes on one GPU): no downloads,
synthetic JPEGs at COCO sizes, random weights (``--detector-weights`` takes a real bottom-up checkpoint, which makes
the box-agreement rows meaningful: random detectors score every class alike, so tiny differences reorder them).
Its rows are appended to benchmarks/RESULTS.md. ``--smoke`` runs the same code on the CPU at toy sizes, which is
what the test suite does so that the script works the day a GPU is lent.

A FLOP bound is the model's FLOPs (counted by ``torch.utils.flop_counter`` on one item) divided by the dense
matrix-product rate measured here in the same precision: the rate the GPU would reach if every FLOP ran as a big
matmul does. The goals on an H100-class GPU are grid >= 2,000 img/s, regions >= 60 img/s, M² XE at batch 50 <= 4 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_models import VOCAB, captions, time_beam, time_training  # noqa: E402
from benchmarks.common import RESULTS, append_results  # noqa: E402
from captioner.data.vocab import Vocabulary  # noqa: E402
from captioner.models.beam_search import beam_search  # noqa: E402
from captioner.models.m2 import M2Config, MeshedMemoryTransformer  # noqa: E402
from captioner.models.sat import SATConfig, ShowAttendTell  # noqa: E402
from captioner.training.scst import SelfCritical  # noqa: E402
from features import detector as detector_module  # noqa: E402
from features.config import ExtractorConfig, TimmGridConfig  # noqa: E402
from features.extract import ImageDataset, RunOptions, build_extractor, extract  # noqa: E402
from pipeline.config import defaults  # noqa: E402
from pipeline.manifest import ManifestImage, write_manifest  # noqa: E402

COCO_SIZES = [(480, 640), (640, 480), (427, 640), (640, 427), (375, 500), (500, 375), (612, 612), (333, 500)]


@dataclass
class Scale:
    """How big each measurement is: the GPU run, or ``--smoke`` (CPU, toy sizes, seconds)."""
    files: int = 256  # distinct JPEGs; the manifest lists them several times over
    grid_images: int = 4096
    grid_batch: int = 128
    grid_backbone: str = "resnet101"
    grid_size: int = 448
    timm_model: str = "vit_base_patch16_clip_224.openai"  # config/coco-clip.yaml's grid (random weights here)
    timm_size: int = 224
    region_images: int = 160
    region_backbone: str = "resnet101"
    region_min_size: int = 600
    region_max_size: int = 1000
    region_proposals: tuple[int, int] = (6000, 300)  # RPN top-n before / after NMS (BUTD's)
    region_boxes: tuple[int, int] = (10, 100)
    agreement_images: int = 100
    caption_features: int = 2048
    m2: dict | None = None  # M2Config overrides (None: the paper's size)
    sat: dict | None = None
    vocab: int = VOCAB
    beam_batch: int = 50
    matmul: int = 8192


SMOKE = Scale(files=4, grid_images=12, grid_batch=4, grid_backbone="resnet18", grid_size=64, timm_model="test_vit",
              timm_size=64, region_images=4,
              region_backbone="resnet50", region_min_size=96, region_max_size=128, region_proposals=(100, 12),
              region_boxes=(2, 6), agreement_images=2,
              caption_features=64, m2=dict(d_model=32, heads=2, d_ff=64, memory_slots=4, encoder_layers=1,
                                           decoder_layers=1),
              sat=dict(embed_dim=16, hidden_dim=32, attention_dim=16), vocab=60, beam_batch=4, matmul=256)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # a GPU sync: timings must include the queued kernels


def count_flops(function, grad: bool = False) -> float:
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(grad):
        function()
    return float(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Dense n x n x n matrix products per second, in FLOP/s (IEEE fp32 for float32: TF32 off)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    with detector_module.strict_fp32():
        for _ in range(3):
            a @ b
        synchronize(device)
        repeats, start = 10, time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def bound(flops: float, rate: float) -> str:
    return f"{rate / flops:,.0f}" if flops > 0 else "n/a"


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Textured JPEGs at COCO's common sizes (shapes over gradients and noise: they compress and decode like
    photographs, unlike flat colour or pure noise)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        height, width = COCO_SIZES[index % len(COCO_SIZES)]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([(xx / width) * 255, (yy / height) * 255, ((xx + yy) / (width + height)) * 255], -1)
        base += rng.normal(0, 12, base.shape)
        image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
            x1, y1 = x0 + rng.integers(10, width // 2), y0 + rng.integers(10, height // 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(1))
        path = folder / f"synthetic_{index:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def manifest(folder: Path, files: list[Path], count: int) -> Path:
    """``count`` manifest entries cycling over ``files`` (page-cached reads, real decoding every time)."""
    path = folder / f"manifest_{count}.json"
    write_manifest(path, [ManifestImage(i, files[i % len(files)].name, "train") for i in range(count)])
    return path


def region_config(scale: Scale, weights: str, precision: str) -> ExtractorConfig:
    return ExtractorConfig(kind="regions", boxes="detector", backbone=scale.region_backbone,
                           min_size=scale.region_min_size, max_size=scale.region_max_size, weights=weights,
                           precision=precision, pre_nms_top_n=scale.region_proposals[0],
                           post_nms_top_n=scale.region_proposals[1], min_boxes=scale.region_boxes[0],
                           max_boxes=scale.region_boxes[1])


def steady_rate(run, small: int, large: int) -> tuple[float, float]:
    """Images/s without the fixed costs (model build, workers' start): from the times of two run sizes."""
    start = time.perf_counter()
    run(small)
    small_s = time.perf_counter() - start
    start = time.perf_counter()
    run(large)
    large_s = time.perf_counter() - start
    if large_s <= small_s:  # noise beat the difference (toy sizes): only the whole-run rate means anything
        return large / large_s, large / large_s
    return (large - small) / (large_s - small_s), large / large_s


# ------------------------------------------------------------------------------------------------ extraction
def check_extraction(folder: Path, files: list[Path], scale: Scale, device: torch.device, workers: int,
                     peak: dict, weights: str, rows: list[str]) -> None:
    out = folder / "stores"
    out.mkdir(exist_ok=True)
    grid = ExtractorConfig(kind="grid", backbone=scale.grid_backbone, image_size=scale.grid_size,
                           grid_size=scale.grid_size // 32)
    options = RunOptions(batch_size=scale.grid_batch, num_workers=workers, device=str(device), dtype="float16")

    def grid_run(count: int) -> None:
        target = out / f"grid_{count}.h5"
        extract(manifest(folder, files, count), folder / "images", target, grid, options)
        target.unlink()

    small = max(scale.grid_images // 4, scale.grid_batch)
    steady, overall = steady_rate(grid_run, small, scale.grid_images)
    extractor = build_extractor(grid, device)
    probe = torch.zeros(1, 3, scale.grid_size, scale.grid_size, dtype=torch.uint8)
    flops = count_flops(lambda: extractor({"images": probe}))
    rows.append(f"| grid {scale.grid_backbone}@{scale.grid_size}, bf16 on GPUs, channels_last, batch "
                f"{scale.grid_batch}, {workers} decode workers | {steady:,.0f} (whole run {overall:,.0f}) | "
                f"{flops / 1e9:,.1f} GFLOP | {bound(flops, peak['bf16'])} |")
    print(rows[-1], flush=True)

    # a timm backbone's grid (features.backbones): one forward of the tower, bf16 autocast on GPUs
    backbone = TimmGridConfig(model=scale.timm_model, weights="none", image_size=scale.timm_size)

    def timm_run(count: int) -> None:
        target = out / f"timm_{count}.h5"
        extract(manifest(folder, files, count), folder / "images", target, backbone, options)
        target.unlink()

    steady_timm, overall_timm = steady_rate(timm_run, small, scale.grid_images)
    tower = build_extractor(backbone, device)
    probe_float = torch.zeros(1, 3, scale.timm_size, scale.timm_size)
    timm_flops = count_flops(lambda: tower({"images": probe_float}))
    rows.append(f"| grid timm {scale.timm_model}@{scale.timm_size} ({tower.rows} x {tower.feature_dim}), bf16 autocast "
                f"on GPUs, batch {scale.grid_batch}, {workers} decode workers | {steady_timm:,.0f} (whole run "
                f"{overall_timm:,.0f}) | {timm_flops / 1e9:,.1f} GFLOP | {bound(timm_flops, peak['bf16'])} |")
    print(rows[-1], flush=True)

    # what the CPU side alone delivers: decode + resize in the loader workers, no model
    dataset = ImageDataset([(i, files[i % len(files)]) for i in range(scale.grid_images)], extractor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=scale.grid_batch, num_workers=workers,
                                         collate_fn=dataset.collate)
    start = time.perf_counter()
    for _ in loader:
        pass
    decode = scale.grid_images / (time.perf_counter() - start)
    rows.append(f"| grid input alone: JPEG decode + resize to {scale.grid_size} in {workers} workers (PIL) | "
                f"{decode:,.0f} | – | – |")
    print(rows[-1], flush=True)
    if device.type == "cuda":
        from torchvision.io import decode_jpeg, read_file

        data = [read_file(str(p)) for p in files]
        decode_jpeg(data[:8], device=device)
        synchronize(device)
        start = time.perf_counter()
        decoded = 0
        while decoded < scale.grid_images:
            decode_jpeg(data, device=device)
            decoded += len(data)
        synchronize(device)
        rows.append(f"| JPEG decode on the GPU (torchvision.io.decode_jpeg, batches of {len(data)}; not yet in the "
                    f"extractor) | {decoded / (time.perf_counter() - start):,.0f} | – | – |")
        print(rows[-1], flush=True)

    for precision in ("fp32", "bf16"):
        regions = region_config(scale, weights, precision)
        region_options = RunOptions(batch_size=8, num_workers=min(workers, 4), device=str(device), dtype="float16")

        def region_run(count: int) -> None:
            target = out / f"regions_{count}.h5"
            extract(manifest(folder, files, count), folder / "images", target, regions, region_options)
            target.unlink()

        steady, overall = steady_rate(region_run, max(scale.region_images // 4, 2), scale.region_images)
        model = build_extractor(regions, device).model
        image, factor = model.preprocess(np.asarray(Image.open(files[0]).convert("RGB")))
        image = image.to(device)
        flops = count_flops(lambda: model.detect(image, factor, COCO_SIZES[0]))
        rate = peak["bf16"] if precision == "bf16" else peak["fp32"]
        rows.append(f"| regions: bottom-up detector {scale.region_backbone}, {scale.region_min_size}/"
                    f"{scale.region_max_size} px, trunk {precision} (box path fp32) | {steady:,.1f} (whole run "
                    f"{overall:,.1f}) | {flops / 1e9:,.0f} GFLOP | {bound(flops, rate)} |")
        print(rows[-1], flush=True)


@torch.no_grad()
def calibrate_random_detector(model, rgb: np.ndarray, device: torch.device) -> None:
    """Make a randomly initialised detector's activations those of a trained one: random ResNet activations grow
    layer by layer until the RPN scores every box alike; each frozen BatchNorm takes the statistics of its input on
    one calibration image. Its class scores stay near uniform (nothing reaches the 0.2 confidence), so the
    selection falls to the 10-box minimum by tiny margins: a worst case for box agreement. Real weights
    (``--detector-weights``) give the figure that decides whether a bf16 trunk is faithful enough.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def take_statistics(module, inputs):
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) + module.eps)

    hooks = [m.register_forward_pre_hook(take_statistics) for m in norms]
    image, factor = model.preprocess(rgb)
    image = image.to(device)
    try:
        model.detect(image, factor, rgb.shape[:2])  # one pass: each norm is set before it normalises
    finally:
        for hook in hooks:
            hook.remove()


def check_precision_modes(files: list[Path], scale: Scale, device: torch.device, weights: str,
                          rows: list[str]) -> None:
    """Which boxes each precision mode selects, against IEEE fp32 on the same device."""
    model = build_extractor(region_config(scale, weights, "fp32"), device).model
    images = [np.asarray(Image.open(p).convert("RGB")) for p in files[: scale.agreement_images + 1]]
    if weights == "none":
        calibrate_random_detector(model, images.pop(), device)
    else:
        images.pop()

    def run(mode: str) -> list[dict]:
        model.config.trunk_precision = "bf16" if mode == "bf16 trunk" else "fp32"
        # TF32 is PyTorch's default for fp32 convolutions on GPUs; the detector turns it off unless patched out
        patch = contextlib.nullcontext if mode == "tf32 (PyTorch's GPU default)" else detector_module.strict_fp32
        saved, detector_module.strict_fp32 = detector_module.strict_fp32, patch
        out = []
        try:
            if mode.startswith("tf32"):
                torch.backends.cudnn.allow_tf32 = True
            for rgb in images:
                tensor, factor = model.preprocess(rgb)
                found = model.detect(tensor.to(device), factor, rgb.shape[:2])
                out.append({k: v.float().cpu() for k, v in found.items()})
        finally:
            detector_module.strict_fp32 = saved
        return out

    reference = run("fp32")
    for mode in ("fp32", "tf32 (PyTorch's GPU default)", "bf16 trunk"):
        if mode.startswith("tf32") and device.type != "cuda":
            continue
        found = reference if mode == "fp32" else run(mode)
        same, max_box, feature_diffs = 0, 0.0, []
        for ours, ref in zip(found, reference):
            if ours["boxes"].shape == ref["boxes"].shape:
                order_a, order_b = sort_boxes(ours["boxes"]), sort_boxes(ref["boxes"])
                if torch.equal(ours["boxes"][order_a], ref["boxes"][order_b]):
                    same += 1
                    if len(order_a):
                        diff = (ours["features"][order_a] - ref["features"][order_b]).abs()
                        feature_diffs.append(float(diff.max() / ref["features"].abs().max().clamp_min(1e-12)))
                if len(order_a):
                    max_box = max(max_box, float((ours["boxes"][order_a] - ref["boxes"][order_b]).abs().max()))
            else:
                max_box = float("inf")
        features = f"{max(feature_diffs):.1e}" if feature_diffs else "–"
        rows.append(f"| {mode} | {len(images)} | {100 * same / len(images):.1f}% | {max_box:.2f} | {features} |")
        print(rows[-1], flush=True)


def sort_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """A canonical order of a box set (lexicographic over x1, y1, x2, y2)."""
    keys = [tuple(b) for b in boxes.tolist()]
    return torch.tensor(sorted(range(len(keys)), key=keys.__getitem__), dtype=torch.long)


# ------------------------------------------------------------------------------------------------ models
class SyntheticData:
    """What the SCST objective reads from TrainData, on synthetic features and references."""

    def __init__(self, images: int, regions: int, dim: int, vocab: int, device: torch.device):
        rng = np.random.default_rng(0)
        self.vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(vocab - 4)])
        words = self.vocab.itos[4:]
        self.images = [{"image_id": i, "refs": [" ".join(rng.choice(words, rng.integers(8, 14))) for _ in range(5)]}
                       for i in range(images)]
        self.regions, self.dim, self.device = regions, dim, device

    def inputs(self, indices: list[int]) -> dict:
        return {"features": torch.randn(len(indices), self.regions, self.dim, device=self.device),
                "num_boxes": torch.randint(10, self.regions + 1, (len(indices),), device=self.device)}


def check_models(scale: Scale, device: torch.device, peak: dict, rows: list[str]) -> None:
    dim = scale.caption_features
    torch.manual_seed(0)
    vocab = scale.vocab
    m2 = MeshedMemoryTransformer(M2Config(vocab_size=vocab, feature_dim=dim, **(scale.m2 or {}))).to(device)
    bf16 = device.type == "cuda"  # train.precision auto

    def m2_inputs(batch):
        return {"features": torch.randn(batch, 50, dim, device=device),
                "num_boxes": torch.randint(10, 51, (batch,), device=device), "captions": captions(batch, 14, device, vocab)}

    def one_step(model, inputs) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(**inputs).loss
        loss.float().backward()

    for batch in (50, 100):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        rate = time_training(m2, m2_inputs, batch, 5 if device.type == "cuda" else 1, device, bf16)
        memory = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB" if device.type == "cuda" else "n/a (CPU)"
        flops = count_flops(lambda: one_step(m2, m2_inputs(1)), grad=True)
        m2.zero_grad(set_to_none=True)
        rows.append(f"| M² XE training, batch {batch} (captions of 12 words) | {rate:,.0f} samples/s | {memory} | "
                    f"{flops / 1e9:,.1f} GFLOP | {bound(flops, peak['bf16' if bf16 else 'fp32'])} |")
        print(rows[-1], flush=True)

    hp = dict(defaults("m2"))
    data = SyntheticData(hp["scst_batch_images"] * 4, 50, dim, vocab, device)
    objective = SelfCritical(m2, data, hp)
    optimizer = objective.optimizer()
    items = list(range(hp["scst_batch_images"]))
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for repeat in range(4 if device.type == "cuda" else 2):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            step = objective(items)
        optimizer.zero_grad(set_to_none=True)
        step.loss.float().backward()
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    memory = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB" if device.type == "cuda" else "n/a (CPU)"
    rows.append(f"| M² SCST step: {len(items)} images x beam {hp['scst_beam_size']}, length "
                f"{hp['scst_max_length']}, CIDEr-D rewards | {1000 * min(times[1:]):,.0f} ms/step | {memory} | – | – |")
    print(rows[-1], flush=True)

    sat_size = scale.sat or dict(embed_dim=512, hidden_dim=1800, attention_dim=512)
    sat = ShowAttendTell(SATConfig(vocab_size=vocab, feature_dim=dim, attention_layers=2, init_layers=2,
                                   **sat_size)).to(device)

    def sat_inputs(batch):
        return {"features": torch.randn(batch, 196, dim, device=device),
                "captions": captions(batch, 14, device, vocab)}

    for name, model, make in (("M²", m2, m2_inputs), ("SAT soft", sat, sat_inputs)):
        rate = time_beam(model, make, scale.beam_batch, 3 if device.type == "cuda" else 1, 5, 20, device, bf16)

        def one_search(model=model, make=make):
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                inputs = make(1)
                inputs.pop("captions")
                state, step = model.decoder(**inputs)
                beam_search(state, step, 1, 5, 20, 1, 2, 0, stop_when_done=False)

        flops = count_flops(one_search)
        rows.append(f"| {name} beam search, beam 5, batch {scale.beam_batch}, 20 steps | {rate:,.0f} img/s | – | "
                    f"{flops / 1e9:,.2f} GFLOP | {bound(flops, peak['bf16' if bf16 else 'fp32'])} |")
        print(rows[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="image decode workers")
    parser.add_argument("--detector-weights", default="none", help="a bottom-up checkpoint (default: random)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (the test suite's run)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the rows go")
    parser.add_argument("--skip", nargs="*", default=[], choices=["extraction", "precision", "models"])
    parser.add_argument("--agreement-images", type=int, help="images of the precision-mode comparison")
    args = parser.parse_args()
    scale = SMOKE if args.smoke else Scale()
    if args.agreement_images:
        scale.agreement_images = args.agreement_images
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    started = time.perf_counter()
    if device.type == "cpu":
        scale.matmul = min(scale.matmul, 1024)  # an 8192^3 product takes minutes on a CPU
    peak = {"bf16": matmul_rate(device, torch.bfloat16, scale.matmul),
            "fp32": matmul_rate(device, torch.float32, scale.matmul)}
    lines = [f"device {device}; measured dense matmul ({scale.matmul}^3): bf16 {peak['bf16'] / 1e12:,.2f} TFLOP/s, "
             f"IEEE fp32 {peak['fp32'] / 1e12:,.2f} TFLOP/s; FLOP bound = that rate / the FLOPs of one item "
             f"(torch.utils.flop_counter); random weights unless stated (the precision rows calibrate a random detector: see calibrate_random_detector); "
             f"detector weights: {args.detector_weights}",
             ""]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_jpegs(folder / "images", max(scale.files, scale.agreement_images + 1))
        if "extraction" not in args.skip:
            rows = ["| extraction | img/s (steady) | FLOPs / image | FLOP-bound img/s |", "|---|---:|---:|---:|"]
            check_extraction(folder, files, scale, device, args.workers, peak, args.detector_weights, rows)
            lines += rows + [""]
        if "precision" not in args.skip:
            rows = ["| detector mode vs IEEE fp32 | images | same box set | max box Δ (px) | max feature Δ "
                    "(rel. to max, same-set images) |", "|---|---:|---:|---:|---:|"]
            check_precision_modes(files, scale, device, args.detector_weights, rows)
            lines += rows + [""]
    if "models" not in args.skip:
        rows = ["| model | rate | peak GPU memory | FLOPs / item | FLOP-bound rate |", "|---|---:|---:|---:|---:|"]
        check_models(scale, device, peak, rows)
        lines += rows + [""]
    lines.append(f"whole check: {time.perf_counter() - started:,.0f} s")
    append_results("GPU check" if not args.smoke else "GPU check (smoke run on the CPU)", lines, args.results)


if __name__ == "__main__":
    main()
