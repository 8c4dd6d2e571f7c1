"""``python -m captioner job train``: train one model on cached features with the objective the registry names for it
(cross-entropy, hard-attention REINFORCE, or self-critical training started from the best cross-entropy weights).

The loop is model-agnostic (the model contract: ``captioner/models/__init__.py``; the objective contract:
:mod:`captioner.training.objective`) and reads top to bottom: set-up (:mod:`~captioner.training.setup`), resume
(:mod:`~captioner.training.checkpointing`, :mod:`~captioner.training.state`), then epochs of steps, each epoch
validated (:mod:`~captioner.training.validation`), recorded (:mod:`~captioner.training.metrics`) and saved, until
the epochs run out or early stopping (:mod:`~captioner.training.early_stopping`). Extensions hook in
(:mod:`~captioner.training.hooks`: an EMA of the weights, TensorBoard) without editing the loop.

Every epoch writes ``last.pt`` (enough to resume), a row of ``metrics.csv`` and ``curve.png``; the epoch with the best
validation CIDEr-D is copied to ``checkpoint.pt``. Inside an epoch, ``last.pt`` is also written every
``--checkpoint-minutes`` and on SIGTERM/SIGUSR1 (:mod:`~captioner.training.preemption`): it then holds the position
in the epoch, so a resumed run skips exactly those batches of the same order and continues with the same random
states: the losses of an uninterrupted run.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the objective is wrapped in DistributedDataParallel and every global batch
(``batch_size``, or ``scst_batch_images`` for SCST) is split across the processes: the sequence of global batches
and the gradient of each step are those of a single process. Rank 0 validates and writes every file; all ranks
resume from ``last.pt``, which holds each rank's RNG state.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from captioner.models.checkpoint import CHECKPOINT_FORMAT
from captioner.models.registry import ModelName
from captioner.training import distributed
from captioner.training.checkpointing import Checkpoints, file_stamp
from captioner.training.early_stopping import EarlyStopping
from captioner.training.ema import WeightAverage
from captioner.training.hooks import Hook, Hooks
from captioner.training.metrics import on_table_scale, write_metrics
from captioner.training.objective import Objective
from captioner.training.recipes import parse_recipe
from captioner.training.preemption import (
    EXIT_INTERRUPTED,
    SaveClock,
    StopRequests,
    TrainingInterrupted,
    agree,
)
from captioner.training.run_log import RunLog
from captioner.training.setup import TrainingError, build
from captioner.training.state import TrainState, restore_rng, rng_state, set_seed
from captioner.training.tensorboard_log import TensorBoardLog
from captioner.training.validation import Validator
from pipeline.config import defaults
from pipeline.device import pick_device
from pipeline.errors import InputError



def merged_hparams(name: ModelName, hparams: dict) -> dict:
    """The family's defaults (from the config schema), overridden by ``hparams``."""
    return {**defaults(name.family), **hparams}


def default_hooks(hp: dict) -> list[Hook]:
    """The hooks every training runs: the weight average when ``ema_decay`` is set, TensorBoard (when installed)."""
    hooks: list[Hook] = []
    if float(hp.get("ema_decay", 0.0)) > 0:
        hooks.append(WeightAverage(float(hp["ema_decay"])))
    hooks.append(TensorBoardLog())
    return hooks


class Trainer:
    def __init__(self, name: str, features: str, captions: str, vocab: str, hparams: dict, out_dir: str,
                 init: str | None = None, device: str = "auto", outputs: dict | None = None,
                 checkpoint_minutes: float = 0.0, hooks: list[Hook] | None = None, recipe: str | None = None):
        """``out_dir`` holds ``last.pt`` and, unless ``outputs`` names them (keys checkpoint, metrics, curve),
        ``checkpoint.pt``, ``metrics.csv`` and ``curve.png``. ``hooks``: default :func:`default_hooks`."""
        self.name = ModelName.parse(name, recipe)  # recipe: the registered model a named experiment varies
        self.hp = merged_hparams(self.name, hparams)  # as given: recorded in the checkpoints, read by the objective
        self.recipe = parse_recipe(self.name.family, self.hp)  # typed: each key's type and allowed values checked
        self.checkpoints = Checkpoints(out_dir, outputs)
        self.device = pick_device(device)
        objective_class = importlib.import_module(self.name.objective_module).OBJECTIVE  # by name: see the registry
        self.ranks = distributed.Ranks.from_env()
        if self.ranks.enabled:
            key = self.name.batch_key
            if self.hp[key] % self.ranks.world_size:
                raise TrainingError(f"{key} {self.hp[key]} is the global batch and must be divisible by the number "
                                    f"of processes ({self.ranks.world_size}); change it or torchrun --nproc-per-node")
            self.device = distributed.init_process_group(self.ranks, self.device)
        self.log = RunLog(self.checkpoints.out_dir, self.ranks.is_main)
        set_seed(self.recipe.seed)  # the same seed everywhere: every rank builds the same initial model
        # which files this run learns from: a last.pt written from other ones (features re-extracted, captions
        # rebuilt, a new XE checkpoint) must not be resumed
        self.input_stamps = {role: file_stamp(path) for role, path in
                             (("features", features), ("captions", captions), ("vocab", vocab), ("init", init))
                             if path}
        parts = build(self.name, self.hp, features, captions, vocab, init, self.device)
        self.vocab, self.store, self.norm, self.data = parts.vocab, parts.store, parts.norm, parts.data
        self.model, self.model_config = parts.model, parts.model_config
        self.started_from = parts.started_from
        self.objective: Objective = objective_class(self.model, self.data, self.hp).to(self.device)
        self.optimizer = self.objective.optimizer()
        self.validator = Validator(parts.val_images, self.vocab, self.recipe.val_max_length)
        self.early_stopping = EarlyStopping(self.recipe.patience)
        self.hooks = Hooks(default_hooks(self.hp) if hooks is None else hooks)
        self.state = TrainState()
        self.stops = StopRequests(self.log)
        self.save_clock = SaveClock(checkpoint_minutes)
        if self.ranks.enabled:
            self._seed_rank_streams()  # from here on (dropout, hard attention) each rank draws its own numbers
        last = self.checkpoints.read_last(self.name.name, self.hp, self.input_stamps, self.log)
        if last is not None:
            self.load_state_dict(last)
        elif self.ranks.is_main:
            self.checkpoints.forget_best()  # another run's best weights: never handed on
        self.log.start(self.name.name, last is not None, self.ranks.world_size)
        # what a training step calls: DDP all-reduces the gradients of the work done inside the objective's forward
        self.train_module: torch.nn.Module = self.objective
        if self.ranks.enabled:
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ------------------------------------------------------------------------------------------ the loop
    def run(self) -> Path:
        self.stops.install()
        epochs = getattr(self.recipe, self.objective.epochs_key)
        self.hooks.before_train(self)
        try:
            if self.objective.validate_start and self.state.epoch == 0 and not self.state.history:
                # the initial weights are the starting point and the bar training has to beat
                start = self._validate_everywhere()
                self.state.best = {"val_cider": start["val_cider"], "epoch": 0}
                self._save(best=True)
                self.state.history.append({"epoch": 0, **start, "stage": "init"})
            while self.state.epoch < epochs:
                if self.early_stopping.should_stop(self.state):
                    self.log(f"early stop: no val CIDEr-D gain for {self.early_stopping.patience} epochs")
                    break
                self._epoch(epochs)
            self._restore_outputs()
        finally:
            self.hooks.after_train(self)
        return self.checkpoints.outputs["checkpoint"]

    def _epoch(self, epochs: int) -> None:
        epoch_started = time.monotonic()
        stats = self.train_epoch()
        self.state.epoch += 1
        val = self._validate_everywhere()
        epoch_wall = time.monotonic() - epoch_started  # training and validation
        row = {"epoch": self.state.epoch, "step": self.state.step, **stats, **val, "stage": self.name.objective}
        self.state.history.append(row)
        improved = EarlyStopping.improved(self.state, val["val_cider"])
        if improved:
            self.state.best = {"val_cider": val["val_cider"], "epoch": self.state.epoch}
        self._save(best=improved)
        self.hooks.after_epoch(self, row)
        shown = on_table_scale({**stats, **val})  # CIDEr-D on the tables' 0-100 scale
        reward = f", mean reward {shown['train_reward']:.1f}" if "train_reward" in stats else ""
        left = f"; at most ~{(epochs - self.state.epoch) * epoch_wall / 60:.1f} min more" \
            if self.state.epoch < epochs else ""
        self.log(f"{self.name.name} epoch {self.state.epoch}/{epochs}: loss {stats['train_loss']:.3f}{reward} val "
                 f"CIDEr-D {shown['val_cider']:.1f} ({stats['epoch_s']:.0f} s, loader "
                 f"{100 * stats['loader_share']:.0f}%{left}) e.g. {val['val_sample']!r}")

    def train_epoch(self) -> dict:
        self.train_module.train()
        generator = torch.Generator().manual_seed(self.recipe.seed * 1000 + self.state.epoch)
        skip, self.state.batches_done = self.state.batches_done, 0
        totals = self.state.epoch_totals or {"loss": 0.0, "batches": 0, "step_s": 0.0, "load_s": 0.0}
        self.state.epoch_totals = None
        self.data.load_seconds = 0.0
        self.save_clock.saved()
        batches = list(self.objective.batches(generator))  # index lists: cheap, and their count gives the ETA
        if self._read_ahead():  # a store read from disk: the next batches' reads overlap this step
            self.data.prefetch([self.objective.images_of(self._share(batch)) for batch in batches[skip:]])
        progress = tqdm(total=len(batches), initial=skip, unit="batch", file=sys.stderr, mininterval=10,
                        desc=f"{self.name.name} training, epoch {self.state.epoch + 1}/"
                             f"{getattr(self.recipe, self.objective.epochs_key)}", disable=not self.ranks.is_main)
        try:
            for index, batch in enumerate(batches):
                if index < skip:  # done before the interruption: the same order, so the same batches
                    continue
                global_loss, extra, seconds = self._step(batch)
                totals["step_s"] += seconds
                totals["loss"] += global_loss
                totals["batches"] += 1
                for key, value in extra.items():
                    totals[key] = totals.get(key, 0.0) + value
                self.state.batches_done = index + 1
                progress.update()
                self.hooks.after_step(self, global_loss)
                self._maybe_stop(totals, progress)
        finally:
            self.data.stop_prefetch()
        progress.close()
        self.state.batches_done = 0
        n = max(totals["batches"], 1)
        load_s = totals["load_s"] + self.data.load_seconds
        result = {"train_loss": totals["loss"] / n, "loader_share": load_s / max(totals["step_s"], 1e-9),
                  "epoch_s": totals["step_s"]}
        for key in sorted(set(totals) - {"loss", "batches", "step_s", "load_s"}):
            result[f"train_{key}"] = totals[key] / n
        return result

    def _read_ahead(self) -> bool:
        """Whether to read the next batches in a background thread: for a store on disk, where the host has time to
        spare for it (a GPU computes the steps, or torch's threads leave a CPU core free). On a CPU whose cores all
        compute, the reads only move to another thread (benchmarks/bench_prefetch.py)."""
        if self.recipe.preload_features:
            return False
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self.device.type == "cuda" or torch.get_num_threads() < cores

    def _share(self, batch: list) -> list:
        """This rank's part of a global batch. The last, partial batch may leave a rank without an item: it still
        has to join the gradient all-reduce, so it computes on one item (weighed 0)."""
        return distributed.shard(batch, self.ranks) or batch[:1]

    def _step(self, batch: list) -> tuple[float, dict, float]:
        """One optimizer step on a global batch: (the batch's loss, its other metrics, seconds)."""
        started = time.perf_counter()
        idle = not distributed.shard(batch, self.ranks)  # all of it in a single process
        with self._autocast():
            step = self.train_module(self._share(batch))
        count, sums = (0.0, {k: (0.0, 0.0) for k in step.sums}) if idle else (step.count, step.sums)
        loss, global_loss, extra = self._global_loss(step.loss, count, sums)
        self._apply_update(loss, global_loss)
        return global_loss, extra, time.perf_counter() - started

    def _maybe_stop(self, totals: dict, progress) -> None:
        """A mid-epoch last.pt when the clock says so or a stop signal came (then exit: TrainingInterrupted)."""
        stop, due = agree(self.ranks, self.device, self.stops.signal is not None, self.save_clock.due())
        if not (stop or due):
            return
        totals["load_s"] += self.data.load_seconds
        self.data.load_seconds = 0.0
        self._save(best=False, position={"batches_done": self.state.batches_done, "totals": dict(totals)})
        self.save_clock.saved()
        if stop:
            # no rank leaves before rank 0's last.pt is on disk: torchrun stops the other workers as soon as one
            # exits, and a stop that came too early would lose the checkpoint
            distributed.barrier()
            self.stops.saved = True
            progress.close()
            raise TrainingInterrupted(f"{self.stops.signal or 'a stop signal'} (on some rank)")

    # ------------------------------------------------------------------------------------------ one step
    def _autocast(self):
        """bf16 autocast (no loss scaling needed) on GPUs by default, on CPUs when asked: matrix products
        run 3-4x faster on CPUs with bf16 units (AVX512-BF16, AMX); "auto" keeps the CPU in fp32."""
        precision = self.recipe.precision
        enabled = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

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

    def _apply_update(self, loss: torch.Tensor, global_loss: float) -> None:
        # global_loss is the same on every rank, so under torchrun all of them stop here, before any collective
        if not math.isfinite(global_loss):
            raise TrainingError(f"non-finite loss ({global_loss}) at epoch {self.state.epoch + 1}, step "
                                f"{self.state.step + 1}; the last good checkpoint is {self.checkpoints.last}")
        lr = self.objective.learning_rate(self.state.step)  # the objective's schedule (None: the optimizer's lr)
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.recipe.grad_clip))
        self.optimizer.step()
        self.state.step += 1

    # ------------------------------------------------------------------------------------------ validation
    def _validate_everywhere(self) -> dict:
        """Rank 0 validates (with the hooks' evaluation weights); the others receive its result, so that every rank
        keeps the same history and best epoch and takes the same early-stopping decision."""
        if not self.ranks.is_main:
            return distributed.broadcast_object(None)
        with self.hooks.evaluation_weights(self):
            return distributed.broadcast_object(self.validator(self.model, self.data.inputs_for_ids))

    # ------------------------------------------------------------------------------------------ saving, resuming
    def _seed_rank_streams(self) -> None:
        """Deterministic, different random numbers per rank (epoch mixed in so a re-seed does not replay them)."""
        set_seed(self.recipe.seed + self.ranks.rank + 1000 * self.state.epoch)

    def state_dict(self, with_optimizer: bool, rng_ranks: list | None = None, position: dict | None = None,
                   weights: dict | None = None) -> dict:
        """A checkpoint of this training: the model's weights (or ``weights``: a hook's best weights) and what runs
        them; ``with_optimizer``: also everything a resume needs (last.pt)."""
        checkpoint = {
            "format": CHECKPOINT_FORMAT, "name": self.name.name, "family": self.name.family,
            "blind": self.name.blind, "model_config": asdict(self.model_config),
            "state_dict": {k: v.detach().cpu() for k, v in (weights or self.model.state_dict()).items()},
            "vocab": self.vocab.itos, "feature_norm": {"mean": self.norm.mean, "std": self.norm.std},
            "features": {"kind": self.store.kind, "extractor": self.store.meta.get("extractor"),
                         "weights": self.store.meta.get("weights_record")},
            "hparams": self.hp, "input_stamps": self.input_stamps,
            **self.state.to_checkpoint(position if with_optimizer else None),
        }
        if self.started_from:
            checkpoint["started_from"] = self.started_from
        if with_optimizer:
            checkpoint["optimizer"] = self.optimizer.state_dict()
            # the objective's own buffers (a REINFORCE baseline), without the model's
            checkpoint["objective_state"] = {k: v.detach().cpu() for k, v in self.objective.state_dict().items()
                                             if not k.startswith("model.")}
            checkpoint["rng"] = rng_state()
            if rng_ranks is not None:
                checkpoint["rng_ranks"] = rng_ranks  # each rank's, to resume every stream
            hook_states = self.hooks.state_dict()
            if hook_states:
                checkpoint["hooks"] = hook_states
        return checkpoint

    def load_state_dict(self, checkpoint: dict) -> None:
        """Continue from a last.pt written by :meth:`state_dict` (with its optimizer)."""
        state = {f"model.{k}": v for k, v in checkpoint["state_dict"].items()}
        self.objective.load_state_dict({**state, **checkpoint.get("objective_state", {})})
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state = TrainState.from_checkpoint(checkpoint)
        self.hooks.load_state_dict(checkpoint.get("hooks", {}))
        per_rank = checkpoint.get("rng_ranks", [])
        if not self.ranks.enabled:
            restore_rng(checkpoint["rng"])
        elif len(per_rank) == self.ranks.world_size:
            restore_rng(per_rank[self.ranks.rank])
        else:  # written by another number of processes: no stream to continue for every rank
            self.log(f"warning: {self.checkpoints.last} holds no random states for {self.ranks.world_size} "
                     "processes; re-seeding")
            self._seed_rank_streams()
        where = f", batch {self.state.batches_done} of epoch {self.state.epoch + 1}" if self.state.batches_done else ""
        self.log(f"resuming {self.name.name} from {self.checkpoints.last} after epoch {self.state.epoch}{where} "
                 f"(step {self.state.step})")

    def _save(self, best: bool, position: dict | None = None) -> None:
        """Called on every rank (they hand their RNG states to rank 0); only rank 0 writes. ``position``: a
        mid-epoch save (last.pt only)."""
        rng_ranks = distributed.all_gather_object(rng_state()) if self.ranks.enabled else None
        if not self.ranks.is_main:
            return
        last = self.state_dict(with_optimizer=True, rng_ranks=rng_ranks, position=position)
        if position is not None:
            self.checkpoints.write(last)
            self.log(f"{self.name.name}: saved {self.checkpoints.last} at batch {position['batches_done']} of epoch "
                     f"{self.state.epoch + 1} (step {self.state.step})")
            return
        weights = self.state_dict(with_optimizer=False, weights=self.hooks.best_weights(self)) if best else None
        self.checkpoints.write(last, weights)
        outputs = self.checkpoints.outputs
        write_metrics(self.state.history, outputs["metrics"], outputs["curve"], self.name.name)

    def _restore_outputs(self) -> None:
        """Snakemake deletes a failed job's outputs before its retry resumes from last.pt, even when the job failed
        after the last epoch was saved (a stop signal that killed the job's Snakemake as training ended): the retry
        then trains nothing, and must put back all three. (rank 0's view: another rank could look before rank 0
        has renamed its last save into place)"""
        missing = distributed.broadcast_object(self.checkpoints.missing_outputs())
        if "checkpoint" in missing and not distributed.broadcast_object(self.checkpoints.best_copy.exists()):
            self._save(best=True)  # (every rank: it gathers their random states)
        elif self.ranks.is_main and missing:
            if "checkpoint" in missing:  # the best epoch's weights come back from their copy beside last.pt
                self.checkpoints.restore_checkpoint_output()
            outputs = self.checkpoints.outputs
            write_metrics(self.state.history, outputs["metrics"], outputs["curve"], self.name.name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the model's name: a registered one (sat_soft, m2_xe_blind) or "
                                                       "a named experiment's (with --recipe)")
    parser.add_argument("--recipe", help="the registered model a named experiment varies (m2_xe for m2_xe_clip)")
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
                          checkpoint_minutes=args.checkpoint_minutes, recipe=args.recipe)
        trainer.run()
        finished = True
    except TrainingInterrupted as stop:
        trainer.log(f"stopped by {stop}: {trainer.checkpoints.last} holds the position; rerun to continue "
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
