"""Training on cached features: cross-entropy (both models), REINFORCE for hard attention (inside the SAT
loss), and self-critical sequence training for M² (``m2_scst``, started from the best ``m2_xe`` weights).

Every epoch writes ``last.pt`` (model, optimiser, RNG states: enough to resume), a row of
``metrics.csv`` and ``curve.png``; the epoch with the best validation CIDEr-D (from real greedy
decodes, not teacher forcing) is copied to ``checkpoint.pt``. All files are written atomically.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel and every global batch
(``batch_size``, or ``scst_batch_images`` for SCST) is split across the processes: the sequence of global batches
and the gradient of each step are those of a single process. Rank 0 validates and writes every file; all ranks
resume from ``last.pt``, which holds each rank's RNG state.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from captioner import atomic, distributed
from captioner.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, FeatureNorm, ModelName, build_model,
                                  compute_feature_norm, load_checkpoint, model_inputs)
from captioner.decoding import beam_search, greedy
from captioner.karpathy import tokenize
from captioner.metrics.cider import CiderD
from captioner.text import Vocabulary, load_captions
from features.store import FeatureStore


class TrainingError(RuntimeError):
    pass


COMMON_DEFAULTS = {
    "epochs": 10, "batch_size": 64, "lr": 2e-4, "grad_clip": 5.0, "patience": 5, "seed": 0,
    "feature_norm_images": 5000, "val_max_length": 20, "collapse_repeats": False, "preload_features": True,
    "precision": "auto", "xe_batches": "shuffled_pairs",
}
PRECISIONS = ("auto", "fp32", "bf16")
XE_BATCHES = ("shuffled_pairs", "by_image")
FAMILY_DEFAULTS = {
    "sat": {"lr": 2e-4, "batch_size": 64},
    "m2": {"lr": 1.0, "batch_size": 50, "warmup": 10000, "grad_clip": 0.0, "collapse_repeats": True,
           "xe_batches": "by_image",
           "scst_lr": 5e-6, "scst_beam_size": 5, "scst_max_length": 20, "scst_batch_images": 10},
}


def file_stamp(path: str) -> list:
    """Size and modification time of a file, or of a directory store and its entries: cheap, and new whenever
    an upstream rule rewrites the file (outputs are written to a temporary path and renamed)."""
    path = Path(path)
    entries = [path] + (sorted(path.iterdir()) if path.is_dir() else [])
    return [[entry.name, entry.stat().st_size if entry.is_file() else 0, entry.stat().st_mtime_ns] for entry in entries]


def merged_hparams(name: ModelName, hparams: dict) -> dict:
    return {**COMMON_DEFAULTS, **FAMILY_DEFAULTS[name.family], **hparams}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states in types a ``weights_only`` load accepts (numpy's state as plain lists)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _LossStep(torch.nn.Module):
    """DDP synchronises gradients only for what runs inside its forward(), but the models train through other
    methods (``loss``; ``decoder`` + beam search for SCST). Wrapped in this module, the model keeps its own
    state_dict keys (checkpoints hold ``self.model``'s) and forward() runs whichever loss function it is given."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, function, *args, **kwargs):
        return function(*args, **kwargs)


def noam_factor(step: int, d_model: int, warmup: int) -> float:
    """The reference's warm-up schedule: d^-0.5 * min(s^-0.5, s * w^-1.5), s counted from 1."""
    step = max(step, 1)
    return d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


class Trainer:
    def __init__(self, name: str, features: str, captions: str, vocab: str, hparams: dict, out_dir: str,
                 init: str | None = None, device: str = "auto"):
        self.name = ModelName.parse(name)
        self.hp = merged_hparams(self.name, hparams)
        if self.hp["precision"] not in PRECISIONS:
            raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.hp['precision']!r}")
        if self.hp["xe_batches"] not in XE_BATCHES:
            raise TrainingError(f"xe_batches must be one of {', '.join(XE_BATCHES)}, not {self.hp['xe_batches']!r}")
        self.out_dir = Path(out_dir)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.ranks = distributed.Ranks.from_env()
        if self.ranks.enabled:
            self._check_global_batch()
            self.device = distributed.init_process_group(self.ranks, self.device)
        set_seed(int(self.hp["seed"]))  # the same seed everywhere: every rank builds the same initial model
        # which files this run learns from: a last.pt written from other ones (features re-extracted, captions
        # rebuilt, a new XE checkpoint) must not be resumed
        self.input_stamps = {role: file_stamp(path) for role, path in
                             (("features", features), ("captions", captions), ("vocab", vocab), ("init", init))
                             if path}
        self.vocab = Vocabulary.load(vocab)
        data = load_captions(captions)
        self.train_images = data["splits"]["train"]
        self.val_images = data["splits"]["val"]
        if not self.train_images or not self.val_images:
            raise TrainingError(f"{captions}: the train and val splits must not be empty")
        self.store = FeatureStore(features, preload=bool(self.hp["preload_features"]))
        expected_kind = "grid" if self.name.family == "sat" else "regions"
        if self.store.kind != expected_kind:
            raise TrainingError(f"{features}: {self.name.family} needs a {expected_kind} store, got {self.store.kind}")
        # every id must be present before the first step, not discovered hours later
        self.store.check_ids([i["image_id"] for i in self.train_images + self.val_images])

        init_checkpoint = load_checkpoint(init) if init else None
        if self.name.variant == "scst" and init_checkpoint is None:
            raise TrainingError(f"{name} starts from a cross-entropy checkpoint: pass --init")
        if init_checkpoint is not None:
            self.norm = FeatureNorm(init_checkpoint["feature_norm"]["mean"], init_checkpoint["feature_norm"]["std"])
            model_config = init_checkpoint["model_config"]
        else:
            self.norm = compute_feature_norm(self.store, [i["image_id"] for i in self.train_images],
                                             int(self.hp["feature_norm_images"]), int(self.hp["seed"]))
            model_config = {**self.hp.get("model", {}), "vocab_size": len(self.vocab),
                            "feature_dim": self.store.feature_dim, "pad_id": self.vocab.pad_id,
                            "bos_id": self.vocab.bos_id, "eos_id": self.vocab.eos_id}
            if self.name.family == "sat":
                model_config["attention"] = self.name.variant
        self.model, self.model_config = build_model(self.name.family, model_config)
        if init_checkpoint is not None:
            self.model.load_state_dict(init_checkpoint["state_dict"])
        self.model.to(self.device)
        if self.name.variant == "scst":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(self.hp["scst_lr"]))
            self.train_refs = [[" ".join(tokenize(r)) for r in image["refs"]] for image in self.train_images]
            self.reward_cider = CiderD(self.train_refs)  # document frequencies of the *training* references
        elif self.name.family == "m2":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(self.hp["lr"]), betas=(0.9, 0.98))
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(self.hp["lr"]))
        self.step = 0
        self.epoch = 0
        self.best = {"val_cider": -math.inf, "epoch": 0}
        self.history: list[dict] = []
        self.val_refs = [[" ".join(tokenize(r)) for r in image["refs"]] for image in self.val_images]
        self.val_cider = CiderD(self.val_refs)  # corpus df of the val references, as pycocoevalcap
        if self.ranks.enabled:
            self._seed_rank_streams()  # from here on (dropout, hard attention) each rank draws its own numbers
        self._resume_if_possible()
        # what a training step calls: DDP all-reduces the gradients of work done inside its forward()
        self.train_module: torch.nn.Module = self.model
        if self.ranks.enabled:
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                _LossStep(self.model), device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # --------------------------------------------------------------------------------- data parallelism
    def _check_global_batch(self) -> None:
        key = "scst_batch_images" if self.name.variant == "scst" else "batch_size"
        if int(self.hp[key]) % self.ranks.world_size:
            raise TrainingError(f"{key} {self.hp[key]} is the global batch and must be divisible by the number of "
                                f"processes ({self.ranks.world_size}); change it or torchrun --nproc-per-node")

    def _seed_rank_streams(self) -> None:
        """Deterministic, different random numbers per rank (epoch mixed in so a re-seed does not replay them)."""
        set_seed(int(self.hp["seed"]) + self.ranks.rank + 1000 * self.epoch)

    def _log(self, message: str) -> None:
        if self.ranks.is_main:
            print(message, file=sys.stderr)

    def _global_loss(self, loss: torch.Tensor, count: float, sums: dict) -> tuple[torch.Tensor, float, dict]:
        """(loss to back-propagate, loss of the global batch, global means of ``sums``: name -> (sum, count)).

        Each rank's ``loss`` is a mean over its ``count`` units (``model.loss_normalisation``: captions for SAT,
        target tokens for M2; images for SCST), and ranks may hold different numbers of them. DDP averages the
        gradients over the W ranks, so rank r back-propagates loss_r * count_r * W / sum(count): the average is
        sum_r count_r * loss_r / sum(count), the single-process loss of the global batch.
        """
        if not self.ranks.enabled:
            return loss, float(loss.detach()), {k: s / c if c else 0.0 for k, (s, c) in sums.items()}
        keys = sorted(sums)
        local = [float(loss.detach()) * count, count] + [x for k in keys for x in sums[k]]
        total = distributed.all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=self.device)).tolist()
        weight = count * self.ranks.world_size / total[1]
        extra = {k: total[2 + 2 * n] / total[3 + 2 * n] if total[3 + 2 * n] else 0.0 for n, k in enumerate(keys)}
        return loss * weight, total[0] / total[1], extra

    # --------------------------------------------------------------------------------- bookkeeping
    def _resume_if_possible(self) -> None:
        last = self.out_dir / "last.pt"
        if not last.exists():
            return
        try:
            checkpoint = load_checkpoint(last)
        except CheckpointError as error:  # never half-load; never silently overwrite what may be weeks of work
            raise CheckpointError(f"{error}. Refusing to resume from it or overwrite it; move it away to "
                                  f"train {self.name.name} from scratch") from None
        if checkpoint.get("hparams") != self.hp or checkpoint.get("name") != self.name.name:
            self._log(f"warning: {last} was written with other settings; starting afresh")
            return
        if checkpoint.get("input_stamps") != self.input_stamps:
            changed = sorted(role for role in {**self.input_stamps, **checkpoint.get("input_stamps", {})}
                             if self.input_stamps.get(role) != checkpoint.get("input_stamps", {}).get(role))
            self._log(f"warning: {last} was trained on other input files ({', '.join(changed)} changed since); "
                      "starting afresh")
            return
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step, self.epoch = checkpoint["step"], checkpoint["epoch"]
        self.best, self.history = checkpoint["best"], checkpoint["history"]
        per_rank = checkpoint.get("rng_ranks", [])
        if not self.ranks.enabled:
            restore_rng(checkpoint["rng"])
        elif len(per_rank) == self.ranks.world_size:
            restore_rng(per_rank[self.ranks.rank])
        else:  # written by another number of processes: no stream to continue for every rank
            self._log(f"warning: {last} holds no random states for {self.ranks.world_size} processes; re-seeding")
            self._seed_rank_streams()
        self._log(f"resuming {self.name.name} from {last} after epoch {self.epoch}")

    def _checkpoint(self, with_optimizer: bool, rng_ranks: list | None = None) -> dict:
        checkpoint = {
            "format": CHECKPOINT_FORMAT, "name": self.name.name, "family": self.name.family,
            "blind": self.name.blind, "model_config": asdict(self.model_config),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "vocab": self.vocab.itos, "feature_norm": {"mean": self.norm.mean, "std": self.norm.std},
            "features": {"kind": self.store.kind, "extractor": self.store.meta.get("extractor"),
                         "weights": self.store.meta.get("weights_record")},
            "hparams": self.hp, "input_stamps": self.input_stamps, "epoch": self.epoch, "step": self.step,
            "best": self.best,
            "history": self.history,
        }
        if with_optimizer:
            checkpoint["optimizer"] = self.optimizer.state_dict()
            checkpoint["rng"] = rng_state()
            if rng_ranks is not None:
                checkpoint["rng_ranks"] = rng_ranks  # each rank's, to resume every stream
        return checkpoint

    def _inputs(self, image_ids) -> dict:
        return model_inputs(self.name.family, self.store.gather(image_ids), self.norm, self.name.blind, self.device)

    # --------------------------------------------------------------------------------- epochs
    def _xe_batches(self, generator: torch.Generator):
        """Batches of (image, caption) pairs in a seeded random order; the last partial batch is dropped.

        ``shuffled_pairs``: ``batch_size`` pairs drawn from all of them. ``by_image``: images in random order, each
        with all its captions, batch_size / (mean captions per image) images per batch; every pair is still seen
        once an epoch, and each image is encoded once for all its captions."""
        bs = int(self.hp["batch_size"])
        if self.hp["xe_batches"] == "by_image":
            order = torch.randperm(len(self.train_images), generator=generator).tolist()
            mean_captions = sum(len(image["captions"]) for image in self.train_images) / len(self.train_images)
            per_batch = min(max(1, round(bs / mean_captions)), len(order))
            for start in range(0, len(order) - per_batch + 1, per_batch):
                images = order[start:start + per_batch]
                yield [(i, j) for i in images for j in range(len(self.train_images[i]["captions"]))]
            return
        pairs = [(i, j) for i, image in enumerate(self.train_images) for j in range(len(image["captions"]))]
        order = torch.randperm(len(pairs), generator=generator).tolist()
        bs = min(bs, len(order))
        for start in range(0, len(order) - bs + 1, bs):
            yield [pairs[k] for k in order[start:start + bs]]

    def _pad(self, sequences: list[list[int]]) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        out = torch.full((len(sequences), width), self.vocab.pad_id, dtype=torch.long)
        for i, s in enumerate(sequences):
            out[i, : len(s)] = torch.tensor(s)
        return out.to(self.device)

    def _autocast(self):
        """bf16 autocast (no loss scaling needed) on GPUs by default, on CPUs when asked: matrix products
        run 3-4x faster on CPUs with bf16 units (AVX512-BF16, AMX); "auto" keeps the CPU in fp32."""
        precision = self.hp["precision"]
        enabled = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _lr_for_step(self) -> float | None:
        if self.name.family == "m2" and self.name.variant == "xe":
            return float(self.hp["lr"]) * noam_factor(self.step + 1, self.model_config.d_model, int(self.hp["warmup"]))
        return None

    def _apply_update(self, loss: torch.Tensor, global_loss: float) -> None:
        # global_loss is the same on every rank, so under torchrun all of them stop here, before any collective
        if not math.isfinite(global_loss):
            raise TrainingError(f"non-finite loss ({global_loss}) at epoch {self.epoch + 1}, "
                                f"step {self.step + 1}; the last good checkpoint is {self.out_dir / 'last.pt'}")
        lr = self._lr_for_step()
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if float(self.hp["grad_clip"]) > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.hp["grad_clip"]))
        self.optimizer.step()
        self.step += 1

    def train_epoch(self) -> dict:
        self.train_module.train()
        generator = torch.Generator().manual_seed(int(self.hp["seed"]) * 1000 + self.epoch)
        totals = {"loss": 0.0, "batches": 0, "load_s": 0.0, "step_s": 0.0}
        if self.name.variant == "scst":
            batches = self._scst_batches(generator)
        else:
            batches = self._xe_batches(generator)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            local = distributed.shard(batch, self.ranks)  # all of it in a single process
            if self.name.variant == "scst":
                # the last, partial batch may leave a rank without an image: it still has to join the
                # gradient all-reduce, so it computes on one image and weighs it 0
                idle = not local
                local = local or batch[:1]
                inputs = self._inputs([self.train_images[i]["image_id"] for i in local])
                t1 = time.perf_counter()
                with self._autocast():
                    loss, sums = self._train_forward(self._scst_loss, inputs, local)
                count = 0.0 if idle else float(len(local))
                if idle:
                    sums = {k: (0.0, 0.0) for k in sums}
            else:
                if not local:
                    raise TrainingError(f"{len(batch)} training captions cannot be shared by "
                                        f"{self.ranks.world_size} processes")
                # each distinct image is read and encoded once; image_index sends its encoding to its captions
                images = list(dict.fromkeys(i for i, _ in local))
                row = {image: r for r, image in enumerate(images)}
                inputs = self._inputs([self.train_images[i]["image_id"] for i in images])
                inputs["image_index"] = torch.tensor([row[i] for i, _ in local], device=self.device)
                captions = self._pad([self.train_images[i]["captions"][j] for i, j in local])
                t1 = time.perf_counter()
                with self._autocast():
                    out = self._train_forward(self.model.loss, captions=captions, **inputs)
                loss, tokens = out["loss"].float(), float(out["tokens"])
                count = tokens if self.model.loss_normalisation == "token" else float(len(local))
                sums = {"nll_per_token": (out["nll_per_token"] * tokens, tokens)}
            loss, global_loss, extra = self._global_loss(loss, count, sums)
            self._apply_update(loss, global_loss)
            t2 = time.perf_counter()
            totals["loss"] += global_loss
            totals["batches"] += 1
            totals["load_s"] += t1 - t0
            totals["step_s"] += t2 - t0
            for key, value in extra.items():
                totals[key] = totals.get(key, 0.0) + value
        n = max(totals["batches"], 1)
        result = {"train_loss": totals["loss"] / n, "loader_share": totals["load_s"] / max(totals["step_s"], 1e-9),
                  "epoch_s": totals["step_s"]}
        for key in ("nll_per_token", "reward"):
            if key in totals:
                result[f"train_{key}"] = totals[key] / n
        return result

    def _train_forward(self, function, *args, **kwargs):
        if self.train_module is self.model:
            return function(*args, **kwargs)
        return self.train_module(function, *args, **kwargs)

    def _scst_batches(self, generator):
        order = torch.randperm(len(self.train_images), generator=generator).tolist()
        bs = int(self.hp["scst_batch_images"])
        for start in range(0, len(order), bs):
            yield order[start:start + bs]

    def _scst_loss(self, inputs: dict, image_indices: list[int]):
        k = int(self.hp["scst_beam_size"])
        state, step = self.model.decoder(**inputs)
        result = beam_search(state, step, len(image_indices), k, int(self.hp["scst_max_length"]), self.vocab.bos_id,
                             self.vocab.eos_id, self.vocab.pad_id, n_best=k, stop_when_done=False)
        hyps, refs = [], []
        for b, i in enumerate(image_indices):
            image_refs = self.train_refs[i]
            for beam in range(k):
                hyps.append(self.vocab.decode(result.tokens[b, beam].tolist()))
                refs.append(image_refs)
        rewards = torch.tensor(self.reward_cider.score(hyps, refs), dtype=torch.float32,
                               device=self.device).view(len(image_indices), k)
        return scst_loss(result.token_logprobs, rewards), {"reward": (float(rewards.sum()), rewards.numel())}

    @torch.no_grad()
    def validate(self) -> dict:
        self.model.eval()
        hyps = []
        ids = [image["image_id"] for image in self.val_images]
        for start in range(0, len(ids), 100):
            state, step = self.model.decoder(**self._inputs(ids[start:start + 100]))
            tokens = greedy(state, step, int(self.hp["val_max_length"]), self.vocab.bos_id, self.vocab.eos_id,
                            self.vocab.pad_id)
            hyps += [self.vocab.decode(row.tolist()) for row in tokens]
        cider = float(self.val_cider.score(hyps, self.val_refs).mean())
        return {"val_cider": cider, "val_sample": hyps[0]}

    def _validate_everywhere(self) -> dict:
        """Rank 0 validates; the others receive its result, so that every rank keeps the same history and best
        epoch and takes the same early-stopping decision."""
        return distributed.broadcast_object(self.validate() if self.ranks.is_main else None)

    def run(self) -> Path:
        epochs = int(self.hp["scst_epochs"] if self.name.variant == "scst" else self.hp["epochs"])
        patience = int(self.hp["patience"])
        if self.name.variant == "scst" and self.epoch == 0 and not self.history:
            # the XE weights are the starting point and the bar SCST has to beat
            start = self._validate_everywhere()
            self.best = {"val_cider": start["val_cider"], "epoch": 0}
            self._save(best=True)
            self.history.append({"epoch": 0, **start, "stage": "init"})
        while self.epoch < epochs:
            if self.epoch - self.best["epoch"] >= patience and self.epoch > 0:
                self._log(f"early stop: no val CIDEr-D gain for {patience} epochs")
                break
            stats = self.train_epoch()
            self.epoch += 1
            val = self._validate_everywhere()
            row = {"epoch": self.epoch, "step": self.step, **stats, **val,
                   "stage": "scst" if self.name.variant == "scst" else "xe"}
            self.history.append(row)
            improved = val["val_cider"] >= self.best["val_cider"]
            if improved:
                self.best = {"val_cider": val["val_cider"], "epoch": self.epoch}
            self._save(best=improved)
            self._log(f"{self.name.name} epoch {self.epoch}: loss {stats['train_loss']:.3f} val CIDEr-D "
                      f"{val['val_cider']:.3f} ({stats['epoch_s']:.0f} s, loader {100 * stats['loader_share']:.0f}%) "
                      f"e.g. {val['val_sample']!r}")
        # rank 0's view: another rank could look before rank 0 has renamed its last save into place
        if distributed.broadcast_object(not (self.out_dir / "checkpoint.pt").exists()):
            self._save(best=True)
        return self.out_dir / "checkpoint.pt"

    def _save(self, best: bool) -> None:
        """Called on every rank (they hand their RNG states to rank 0); only rank 0 writes."""
        rng_ranks = distributed.all_gather_object(rng_state()) if self.ranks.enabled else None
        if not self.ranks.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic.save_torch(self.out_dir / "last.pt", self._checkpoint(with_optimizer=True, rng_ranks=rng_ranks))
        if best:
            atomic.save_torch(self.out_dir / "checkpoint.pt", self._checkpoint(with_optimizer=False))
        write_metrics(self.history, self.out_dir / "metrics.csv", self.out_dir / "curve.png", self.name.name)


def write_metrics(history: list[dict], csv_path: Path, png_path: Path, title: str) -> None:
    columns = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic.write_text(csv_path, buffer.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(6, 3.5))
    epochs = [r["epoch"] for r in history if "train_loss" in r]
    left.plot(epochs, [r["train_loss"] for r in history if "train_loss" in r], "o-", color="tab:blue")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss", color="tab:blue")
    right = left.twinx()
    right.plot([r["epoch"] for r in history], [r["val_cider"] for r in history], "s-", color="tab:red")
    right.set_ylabel("val CIDEr-D (greedy)", color="tab:red")
    left.set_title(title)
    fig.tight_layout()
    with atomic.atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def scst_loss(token_logprobs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Self-critical loss over (images, beams, steps) log-probs: the baseline of each beam is the mean reward of
    its image's beams; log-probs are averaged over all steps (zeros after <eos> included), as the reference."""
    advantage = rewards - rewards.mean(dim=1, keepdim=True)
    return -(advantage * token_logprobs.mean(dim=-1)).mean()


def train_from_cli(args) -> None:
    torch.set_num_threads(args.threads)
    try:
        hparams = json.loads(args.hparams)
    except json.JSONDecodeError as error:
        raise ValueError(f"--hparams is not valid JSON: {error}") from None
    try:
        trainer = Trainer(args.model, args.features, args.captions, args.vocab, hparams, args.out_dir,
                          init=args.init, device=args.device)
        trainer.run()
    finally:
        distributed.shutdown()
