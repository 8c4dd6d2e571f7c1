"""``python -m captioner train``: train one model on cached features with the objective the registry names for it
(cross-entropy, hard-attention REINFORCE, or self-critical training started from the best cross-entropy weights).
The trainer is model-agnostic: the model contract is in ``captioner/models/__init__.py``, the objective contract in
:mod:`captioner.training.objective`.

Every epoch writes ``last.pt`` (model, optimiser, RNG states: enough to resume), a row of
``metrics.csv`` and ``curve.png``; the epoch with the best validation CIDEr-D (from real greedy
decodes, not teacher forcing) is copied to ``checkpoint.pt``. All files are written atomically.

Inside an epoch, ``last.pt`` is also written every ``--checkpoint-minutes`` and when the process gets SIGTERM or
SIGUSR1 (what SLURM sends before a time limit or a preemption): it then holds the position in the epoch (how many of
this epoch's batches are done, and the epoch's running sums), so a resumed run skips exactly those batches of the
same order and continues with the same random states: the losses of an uninterrupted run. After such a signal the
current step finishes, ``last.pt`` is written and the process exits with status 75 (``EXIT_INTERRUPTED``); a second
signal exits at once. Under torchrun every rank stops at the same step and rank 0 writes the one checkpoint.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the objective is wrapped in DistributedDataParallel and every global batch
(``batch_size``, or ``scst_batch_images`` for SCST) is split across the processes: the sequence of global batches
and the gradient of each step are those of a single process. Rank 0 validates and writes every file; all ranks
resume from ``last.pt``, which holds each rank's RNG state.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import math
import os
import random
import shutil
import signal
import socket
import sys
import time
import weakref
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from captioner.data.karpathy import tokenize
from captioner.data.vocab import Vocabulary, load_captions
from captioner.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    FeatureNorm,
    build_model,
    compute_feature_norm,
    load_checkpoint,
    save_torch,
)
from captioner.models.greedy import greedy
from captioner.models.registry import ModelName, objective_module
from captioner.training import distributed
from captioner.training.cider import CiderD
from captioner.training.objective import Objective, TrainData
from features.store.reader import FeatureStore
from pipeline import atomic
from pipeline.config import defaults
from pipeline.errors import InputError, PipelineError


class TrainingError(PipelineError, RuntimeError):
    """Training cannot start or go on (bad settings, inputs that do not fit, a non-finite loss)."""


class TrainingInterrupted(Exception):
    """A stop signal arrived; ``last.pt`` holds the position to continue from."""


BEST_COPY = "best.pt"  # the best epoch's weights again, beside last.pt (what checkpoint.pt is restored from)
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: not done, try again (Snakemake's retry or SLURM's requeue resumes)
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
# every attempt's log lines, timestamped, beside last.pt: Snakemake deletes the rule's log before each retry
HISTORY = "history.log"


PRECISIONS = ("auto", "fp32", "bf16")
XE_BATCHES = ("shuffled_pairs", "by_image")


def file_stamp(path: str) -> list:
    """Size and modification time of a file, or of a directory store and its entries: cheap, and new whenever
    an upstream rule rewrites the file (outputs are written to a temporary path and renamed)."""
    path = Path(path)
    entries = [path] + (sorted(path.iterdir()) if path.is_dir() else [])
    return [[entry.name, entry.stat().st_size if entry.is_file() else 0, entry.stat().st_mtime_ns] for entry in entries]


def merged_hparams(name: ModelName, hparams: dict) -> dict:
    """The family's defaults (from the config schema), overridden by ``hparams``."""
    return {**defaults(name.family), **hparams}


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


class Trainer:
    def __init__(self, name: str, features: str, captions: str, vocab: str, hparams: dict, out_dir: str,
                 init: str | None = None, device: str = "auto", outputs: dict | None = None,
                 checkpoint_minutes: float = 0.0):
        """``out_dir`` holds ``last.pt`` and, unless ``outputs`` names them (keys checkpoint, metrics, curve),
        ``checkpoint.pt``, ``metrics.csv`` and ``curve.png``."""
        self.name = ModelName.parse(name)
        self.hp = merged_hparams(self.name, hparams)
        if self.hp["precision"] not in PRECISIONS:
            raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.hp['precision']!r}")
        if self.hp["xe_batches"] not in XE_BATCHES:
            raise TrainingError(f"xe_batches must be one of {', '.join(XE_BATCHES)}, not {self.hp['xe_batches']!r}")
        self.out_dir = Path(out_dir)
        names = {"checkpoint": "checkpoint.pt", "metrics": "metrics.csv", "curve": "curve.png"}
        self.outputs = {key: Path((outputs or {}).get(key) or self.out_dir / name) for key, name in names.items()}
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        objective_class = importlib.import_module(objective_module(name)).OBJECTIVE  # by name: see the registry
        self.ranks = distributed.Ranks.from_env()
        if self.ranks.enabled:
            self._check_global_batch(objective_class)
            self.device = distributed.init_process_group(self.ranks, self.device)
        set_seed(int(self.hp["seed"]))  # the same seed everywhere: every rank builds the same initial model
        # which files this run learns from: a last.pt written from other ones (features re-extracted, captions
        # rebuilt, a new XE checkpoint) must not be resumed
        self.input_stamps = {role: file_stamp(path) for role, path in
                             (("features", features), ("captions", captions), ("vocab", vocab), ("init", init))
                             if path}
        self.vocab = Vocabulary.load(vocab)
        data = load_captions(captions)
        train_images = data["splits"]["train"]
        self.val_images = data["splits"]["val"]
        if not train_images or not self.val_images:
            raise TrainingError(f"{captions}: the train and val splits must not be empty")
        self.store = FeatureStore(features, preload=bool(self.hp["preload_features"]))
        if self.store.kind != self.name.features:
            raise TrainingError(f"{features}: {self.name.family} needs a {self.name.features} store, "
                                f"got {self.store.kind}")
        # every id must be present before the first step, not discovered hours later
        self.store.check_ids([i["image_id"] for i in train_images + self.val_images])

        init_checkpoint = load_checkpoint(init) if init else None
        if self.name.init_from and init_checkpoint is None:
            raise TrainingError(f"{name} starts from the best weights of {self.name.init_from}: pass --init")
        if init_checkpoint is not None:
            self.norm = FeatureNorm(init_checkpoint["feature_norm"]["mean"], init_checkpoint["feature_norm"]["std"])
            model_config = init_checkpoint["model_config"]
        else:
            self.norm = compute_feature_norm(self.store, [i["image_id"] for i in train_images],
                                             int(self.hp["feature_norm_images"]), int(self.hp["seed"]))
            model_config = {**self.hp.get("model", {}), "vocab_size": len(self.vocab),
                            "feature_dim": self.store.feature_dim, "pad_id": self.vocab.pad_id,
                            "bos_id": self.vocab.bos_id, "eos_id": self.vocab.eos_id}
            model_config.update(self.name.spec.variants[self.name.variant].config)  # e.g. SAT's attention: hard
        try:
            self.model, self.model_config = build_model(self.name.family, model_config)
        except ValueError as error:  # the model config's own checks (e.g. d_model not divisible by heads)
            raise TrainingError(f"{self.name.family}.model: {error}") from None
        if init_checkpoint is not None:
            self.model.load_state_dict(init_checkpoint["state_dict"])
        self.model.to(self.device)
        self.data = TrainData(train_images, self.store, self.norm, self.name.features, self.name.blind, self.vocab,
                              self.device)
        self.objective: Objective = objective_class(self.model, self.data, self.hp).to(self.device)
        self.optimizer = self.objective.optimizer()
        self.step = 0
        self.epoch = 0
        self.batches_done = 0  # of the current epoch (a mid-epoch last.pt sets it)
        self.epoch_totals: dict | None = None  # the running sums of a resumed, part-done epoch
        self.checkpoint_seconds = 60.0 * checkpoint_minutes  # 0: at epoch ends only
        self.stop_signal: str | None = None
        self.saved_after_stop = False
        self.best = {"val_cider": -math.inf, "epoch": 0}
        self.history: list[dict] = []
        self.val_refs = [[" ".join(tokenize(r)) for r in image["refs"]] for image in self.val_images]
        self.val_cider = CiderD(self.val_refs)  # corpus df of the val references, as pycocoevalcap
        if self.ranks.enabled:
            self._seed_rank_streams()  # from here on (dropout, hard attention) each rank draws its own numbers
        resumed = self._resume_if_possible()
        if not resumed and self.ranks.is_main:
            (self.out_dir / BEST_COPY).unlink(missing_ok=True)  # another run's best weights: never handed on
        self._log_start(resumed)
        # what a training step calls: DDP all-reduces the gradients of the work done inside the objective's forward
        self.train_module: torch.nn.Module = self.objective
        if self.ranks.enabled:
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # --------------------------------------------------------------------------------- data parallelism
    def _check_global_batch(self, objective_class) -> None:
        key = objective_class.batch_key
        if int(self.hp[key]) % self.ranks.world_size:
            raise TrainingError(f"{key} {self.hp[key]} is the global batch and must be divisible by the number of "
                                f"processes ({self.ranks.world_size}); change it or torchrun --nproc-per-node")

    def _seed_rank_streams(self) -> None:
        """Deterministic, different random numbers per rank (epoch mixed in so a re-seed does not replay them)."""
        set_seed(int(self.hp["seed"]) + self.ranks.rank + 1000 * self.epoch)

    def _log(self, message: str, every_rank: bool = False) -> None:
        if self.ranks.is_main or every_rank:
            print(message, file=sys.stderr, flush=True)
        if self.ranks.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / HISTORY, "a") as handle:
                handle.write(f"{datetime.now().isoformat(timespec='seconds')} {message}\n")

    def _log_start(self, resumed: bool) -> None:
        if not resumed and self.ranks.is_main:
            (self.out_dir / HISTORY).unlink(missing_ok=True)  # another run's history
        job = os.environ.get("SLURM_JOB_ID")
        where = socket.gethostname() + (f", SLURM job {job}" if job else "")
        self._log(f"{self.name.name}: {'resumed' if resumed else 'started'} on {where} "
                  f"({self.ranks.world_size} process{'es' if self.ranks.world_size > 1 else ''})")

    def _global_loss(self, loss: torch.Tensor, count: float, sums: dict) -> tuple[torch.Tensor, float, dict]:
        """(loss to back-propagate, loss of the global batch, global means of ``sums``: name -> (sum, count)).

        Each rank's ``loss`` is a mean over its ``count`` units (captions or target tokens for cross-entropy,
        images for SCST), and ranks may hold different numbers of them. DDP averages the gradients over the W
        ranks, so rank r back-propagates loss_r * count_r * W / sum(count): the average is
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
    def _objective_state(self) -> dict:
        """The objective's own buffers (e.g. a REINFORCE baseline), without the model's."""
        return {k: v.detach().cpu() for k, v in self.objective.state_dict().items() if not k.startswith("model.")}

    def _resume_if_possible(self) -> bool:
        last = self.out_dir / "last.pt"
        if not last.exists():
            return False
        try:
            checkpoint = load_checkpoint(last)
        except CheckpointError as error:  # never half-load; never silently overwrite what may be weeks of work
            raise CheckpointError(f"{error}. Refusing to resume from it or overwrite it; move it away to "
                                  f"train {self.name.name} from scratch") from None
        if checkpoint.get("hparams") != self.hp or checkpoint.get("name") != self.name.name:
            self._log(f"warning: {last} was written with other settings; starting afresh")
            return False
        if checkpoint.get("input_stamps") != self.input_stamps:
            changed = sorted(role for role in {**self.input_stamps, **checkpoint.get("input_stamps", {})}
                             if self.input_stamps.get(role) != checkpoint.get("input_stamps", {}).get(role))
            self._log(f"warning: {last} was trained on other input files ({', '.join(changed)} changed since); "
                      "starting afresh")
            return False
        state = {f"model.{k}": v for k, v in checkpoint["state_dict"].items()}
        self.objective.load_state_dict({**state, **checkpoint.get("objective_state", {})})
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step, self.epoch = checkpoint["step"], checkpoint["epoch"]
        self.best, self.history = checkpoint["best"], checkpoint["history"]
        position = checkpoint.get("position") or {}
        self.batches_done, self.epoch_totals = position.get("batches_done", 0), position.get("totals")
        per_rank = checkpoint.get("rng_ranks", [])
        if not self.ranks.enabled:
            restore_rng(checkpoint["rng"])
        elif len(per_rank) == self.ranks.world_size:
            restore_rng(per_rank[self.ranks.rank])
        else:  # written by another number of processes: no stream to continue for every rank
            self._log(f"warning: {last} holds no random states for {self.ranks.world_size} processes; re-seeding")
            self._seed_rank_streams()
        where = f", batch {self.batches_done} of epoch {self.epoch + 1}" if self.batches_done else ""
        self._log(f"resuming {self.name.name} from {last} after epoch {self.epoch}{where} (step {self.step})")
        return True

    def _checkpoint(self, with_optimizer: bool, rng_ranks: list | None = None, position: dict | None = None) -> dict:
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
            checkpoint["objective_state"] = self._objective_state()
            checkpoint["rng"] = rng_state()
            if rng_ranks is not None:
                checkpoint["rng_ranks"] = rng_ranks  # each rank's, to resume every stream
            if position is not None:
                checkpoint["position"] = position  # mid-epoch: batches done of this epoch, its running sums
        return checkpoint

    # --------------------------------------------------------------------------------- epochs
    def _autocast(self):
        """bf16 autocast (no loss scaling needed) on GPUs by default, on CPUs when asked: matrix products
        run 3-4x faster on CPUs with bf16 units (AVX512-BF16, AMX); "auto" keeps the CPU in fp32."""
        precision = self.hp["precision"]
        enabled = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _apply_update(self, loss: torch.Tensor, global_loss: float) -> None:
        # global_loss is the same on every rank, so under torchrun all of them stop here, before any collective
        if not math.isfinite(global_loss):
            raise TrainingError(f"non-finite loss ({global_loss}) at epoch {self.epoch + 1}, "
                                f"step {self.step + 1}; the last good checkpoint is {self.out_dir / 'last.pt'}")
        lr = self.objective.learning_rate(self.step)
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
        skip, self.batches_done = self.batches_done, 0
        totals = self.epoch_totals or {"loss": 0.0, "batches": 0, "step_s": 0.0, "load_s": 0.0}
        self.epoch_totals = None
        self.data.load_seconds = 0.0
        last_save = time.monotonic()
        batches = list(self.objective.batches(generator))  # index lists: cheap, and their count gives the ETA
        progress = tqdm(total=len(batches), initial=skip, unit="batch", file=sys.stderr, mininterval=10,
                        desc=f"{self.name.name} training, epoch {self.epoch + 1}/{self.hp[self.objective.epochs_key]}",
                        disable=not self.ranks.is_main)
        for index, batch in enumerate(batches):
            if index < skip:  # done before the interruption: the same order, so the same batches
                continue
            started = time.perf_counter()
            local = distributed.shard(batch, self.ranks)  # all of it in a single process
            # the last, partial batch may leave a rank without an item: it still has to join the gradient
            # all-reduce, so it computes on one item and weighs it 0
            idle = not local
            with self._autocast():
                step = self.train_module(local or batch[:1])
            count, sums = (0.0, {k: (0.0, 0.0) for k in step.sums}) if idle else (step.count, step.sums)
            loss, global_loss, extra = self._global_loss(step.loss, count, sums)
            self._apply_update(loss, global_loss)
            totals["step_s"] += time.perf_counter() - started
            totals["loss"] += global_loss
            totals["batches"] += 1
            for key, value in extra.items():
                totals[key] = totals.get(key, 0.0) + value
            self.batches_done = index + 1
            progress.update()
            due = self.checkpoint_seconds > 0 and time.monotonic() - last_save >= self.checkpoint_seconds
            stop, due = self._agree(self.stop_signal is not None, due)
            if stop or due:
                totals["load_s"] += self.data.load_seconds
                self.data.load_seconds = 0.0
                self._save(best=False, position={"batches_done": self.batches_done, "totals": dict(totals)})
                last_save = time.monotonic()
                if stop:
                    # no rank leaves before rank 0's last.pt is on disk: torchrun stops the other workers as soon
                    # as one exits, and a stop that came too early would lose the checkpoint
                    distributed.barrier()
                    self.saved_after_stop = True
                    progress.close()
                    raise TrainingInterrupted(f"{self.stop_signal or 'a stop signal'} (on some rank)")
        progress.close()
        self.batches_done = 0
        n = max(totals["batches"], 1)
        load_s = totals["load_s"] + self.data.load_seconds
        result = {"train_loss": totals["loss"] / n, "loader_share": load_s / max(totals["step_s"], 1e-9),
                  "epoch_s": totals["step_s"]}
        for key in sorted(set(totals) - {"loss", "batches", "step_s", "load_s"}):
            result[f"train_{key}"] = totals[key] / n
        return result

    def _agree(self, stop: bool, due: bool) -> tuple[bool, bool]:
        """Whether any rank was signalled, and whether rank 0's clock says a checkpoint is due: every rank takes the
        same decision at the same step (one tiny all-reduce per step under torchrun; a GPU sync there)."""
        if not self.ranks.enabled:
            return stop, due
        flags = torch.tensor([float(stop), float(due and self.ranks.is_main)], dtype=torch.float64)
        total = distributed.all_reduce_sum(flags.to(self.device)).tolist()
        return total[0] > 0, total[1] > 0

    def _install_stop_handlers(self) -> None:
        """SIGTERM / SIGUSR1: finish the step, write last.pt, exit 75. A second signal exits at once."""

        # the handlers stay installed after the run: held weakly, the trainer (its DDP wrapper, which holds the
        # process group) can be freed before the process exits
        trainer = weakref.ref(self)

        def handler(signum, _frame):
            self = trainer()
            if self is None:  # the training is over and torn down: the process is about to exit 0
                return
            if self.stop_signal is not None:  # the second signal: at once (75 if last.pt is already written)
                os._exit(EXIT_INTERRUPTED if self.saved_after_stop else 128 + signum)
            self.stop_signal = signal.Signals(signum).name
            self._log(f"note: {self.stop_signal}: stopping after this step", every_rank=True)

        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), handler)

    @torch.no_grad()
    def validate(self) -> dict:
        self.model.eval()
        hyps = []
        ids = [image["image_id"] for image in self.val_images]
        for start in range(0, len(ids), 100):
            state, step = self.model.decoder(**self.data.inputs_for_ids(ids[start:start + 100]))
            tokens = greedy(state, step, int(self.hp["val_max_length"]), self.vocab.bos_id, self.vocab.eos_id,
                            self.vocab.pad_id)
            hyps += [self.vocab.decode(row) for row in tokens.tolist()]
        cider = float(self.val_cider.score(hyps, self.val_refs).mean())
        return {"val_cider": cider, "val_sample": hyps[0]}

    def _validate_everywhere(self) -> dict:
        """Rank 0 validates; the others receive its result, so that every rank keeps the same history and best
        epoch and takes the same early-stopping decision."""
        return distributed.broadcast_object(self.validate() if self.ranks.is_main else None)

    def run(self) -> Path:
        self._install_stop_handlers()
        epochs = int(self.hp[self.objective.epochs_key])
        patience = int(self.hp["patience"])
        if self.objective.validate_start and self.epoch == 0 and not self.history:
            # the initial weights are the starting point and the bar training has to beat
            start = self._validate_everywhere()
            self.best = {"val_cider": start["val_cider"], "epoch": 0}
            self._save(best=True)
            self.history.append({"epoch": 0, **start, "stage": "init"})
        while self.epoch < epochs:
            if self.epoch - self.best["epoch"] >= patience and self.epoch > 0:
                self._log(f"early stop: no val CIDEr-D gain for {patience} epochs")
                break
            epoch_started = time.monotonic()
            stats = self.train_epoch()
            self.epoch += 1
            val = self._validate_everywhere()
            epoch_wall = time.monotonic() - epoch_started  # training and validation
            row = {"epoch": self.epoch, "step": self.step, **stats, **val, "stage": self.name.objective}
            self.history.append(row)
            improved = val["val_cider"] >= self.best["val_cider"]
            if improved:
                self.best = {"val_cider": val["val_cider"], "epoch": self.epoch}
            self._save(best=improved)
            reward = f", mean reward {stats['train_reward']:.3f}" if "train_reward" in stats else ""
            left = f"; at most ~{(epochs - self.epoch) * epoch_wall / 60:.1f} min more" if self.epoch < epochs else ""
            self._log(f"{self.name.name} epoch {self.epoch}/{epochs}: loss {stats['train_loss']:.3f}{reward} val "
                      f"CIDEr-D {val['val_cider']:.3f} ({stats['epoch_s']:.0f} s, loader "
                      f"{100 * stats['loader_share']:.0f}%{left}) e.g. {val['val_sample']!r}")
        # Snakemake deletes a failed job's outputs before its retry resumes from last.pt, even when the job failed
        # after the last epoch was saved (a stop signal that killed the job's Snakemake as training ended): the
        # retry then trains nothing, and must put back all three. (rank 0's view: another rank could look before
        # rank 0 has renamed its last save into place)
        missing = distributed.broadcast_object([key for key, path in self.outputs.items() if not path.exists()])
        best_copy = self.out_dir / BEST_COPY
        if "checkpoint" in missing and not distributed.broadcast_object(best_copy.exists()):
            self._save(best=True)  # (every rank: it gathers their random states)
        elif self.ranks.is_main and missing:
            if "checkpoint" in missing:  # the best epoch's weights come back from their copy beside last.pt
                with atomic.atomic_path(self.outputs["checkpoint"]) as tmp:
                    shutil.copyfile(best_copy, tmp)
            write_metrics(self.history, self.outputs["metrics"], self.outputs["curve"], self.name.name)
        return self.outputs["checkpoint"]

    def _save(self, best: bool, position: dict | None = None) -> None:
        """Called on every rank (they hand their RNG states to rank 0); only rank 0 writes. ``position``: a
        mid-epoch save (last.pt only)."""
        rng_ranks = distributed.all_gather_object(rng_state()) if self.ranks.enabled else None
        if not self.ranks.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_torch(self.out_dir / "last.pt", self._checkpoint(with_optimizer=True, rng_ranks=rng_ranks,
                                                              position=position))
        if position is not None:
            self._log(f"{self.name.name}: saved {self.out_dir / 'last.pt'} at batch {position['batches_done']} of "
                      f"epoch {self.epoch + 1} (step {self.step})")
            return
        if best:
            best_weights = self._checkpoint(with_optimizer=False)
            save_torch(self.out_dir / BEST_COPY, best_weights)  # not a Snakemake output: survives a retry
            save_torch(self.outputs["checkpoint"], best_weights)
        write_metrics(self.history, self.outputs["metrics"], self.outputs["curve"], self.name.name)


def training_series(history: list[dict]) -> tuple[str, list[int], list[float]]:
    """The curve's left axis: (label, epochs, values). SCST's loss sits near zero whatever happens (its baseline is
    the beams' own mean reward), so an SCST run shows its mean reward instead."""
    key, label = (("train_reward", "mean reward (CIDEr-D of the sampled beams)")
                  if any("train_reward" in row for row in history) else ("train_loss", "training loss"))
    rows = [row for row in history if key in row]
    return label, [row["epoch"] for row in rows], [row[key] for row in rows]


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

    from matplotlib.ticker import MaxNLocator

    fig, left = plt.subplots(figsize=(6, 3.5))
    label, epochs, values = training_series(history)
    left.plot(epochs, values, "o-", color="tab:blue")
    left.set_xlabel("epoch")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    left.set_ylabel(label, color="tab:blue")
    right = left.twinx()
    right.plot([r["epoch"] for r in history], [r["val_cider"] for r in history], "s-", color="tab:red")
    right.set_ylabel("val CIDEr-D (greedy)", color="tab:red")
    left.set_title(title)
    fig.tight_layout()
    with atomic.atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a registered model name, e.g. sat_soft or m2_xe_blind")
    parser.add_argument("--features", required=True, help="feature store (.h5/.zarr)")
    parser.add_argument("--captions", required=True)
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--hparams", required=True, help="JSON object of hyper-parameters (absent ones: the "
                                                         "family's defaults in the config schema)")
    parser.add_argument("--out-dir", required=True, help="folder of last.pt (the resume point) and, by default, "
                                                         "of the three outputs below")
    parser.add_argument("--checkpoint", help="best checkpoint (default: OUT_DIR/checkpoint.pt)")
    parser.add_argument("--metrics", help="per-epoch metrics CSV (default: OUT_DIR/metrics.csv)")
    parser.add_argument("--curve", help="training curve PNG (default: OUT_DIR/curve.png)")
    parser.add_argument("--init", help="checkpoint to start from (m2_scst starts from m2_xe)")
    parser.add_argument("--threads", type=int, default=defaults("train")["threads"])
    parser.add_argument("--device", default=defaults("train")["device"])
    parser.add_argument("--checkpoint-minutes", type=float, default=defaults("train")["checkpoint_minutes"],
                        help="also write last.pt inside an epoch every N minutes (0: at epoch ends only)")


def run(args) -> int:
    torch.set_num_threads(args.threads)
    try:
        hparams = json.loads(args.hparams)
    except json.JSONDecodeError as error:
        raise InputError(f"--hparams is not valid JSON: {error}") from None
    trainer, finished, status = None, False, 0
    try:
        trainer = Trainer(args.model, args.features, args.captions, args.vocab, hparams, args.out_dir,
                          init=args.init, device=args.device,
                          outputs={"checkpoint": args.checkpoint, "metrics": args.metrics, "curve": args.curve},
                          checkpoint_minutes=args.checkpoint_minutes)
        trainer.run()
        finished = True
    except TrainingInterrupted as stop:
        trainer._log(f"stopped by {stop}: {Path(args.out_dir) / 'last.pt'} holds the position; rerun to continue "
                     f"(exit {EXIT_INTERRUPTED})", every_rank=True)
        finished, status = True, EXIT_INTERRUPTED
    finally:
        # the DDP wrapper holds the process group: dropped here, the group is destroyed inside shutdown(), while
        # the interpreter is whole, and not by a garbage collection at exit
        trainer = None
        # finished: every rank ran the same collectives and meets the others at shutdown's barrier; after an error
        # the others may be inside another collective (torchrun stops them)
        distributed.shutdown(together=finished)
    return status
