"""The training loop's rooms: the weight average (EMA), TensorBoard event files, and batches read ahead from a store
on disk. Each extension changes nothing when it is off; on, it does what it says, and survives a resume."""

from __future__ import annotations

import csv
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from captioner.data.model_inputs import Prefetcher
from captioner.models.checkpoint import load_checkpoint
from captioner.training.ema import WeightAverage
from captioner.training.hooks import Hook
from captioner.training.preemption import EXIT_INTERRUPTED
from captioner.training.trainer import Trainer
from features.store.reader import FeatureStore
from tests.faults.test_kills import wait_for
from tests.training_helpers import HPARAMS, losses, train_command

SAT = dict(HPARAMS, epochs=3, model=dict(HPARAMS["model"], dropout=0.0))


def trainer(data, out, hparams, hooks=None, **options):
    return Trainer("sat_soft", str(data / "grid.h5"), str(data / "text/captions.json"), str(data / "text/vocab.json"),
                   hparams, str(out), device="cpu", hooks=hooks, **options)


class Recorder(Hook):
    """The raw weights before training, after every step, and at every epoch end."""

    def __init__(self):
        self.start, self.steps, self.epochs = None, [], []

    def before_train(self, trainer):
        self.start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def after_step(self, trainer, loss):
        self.steps.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    def after_epoch(self, trainer, row):
        self.epochs.append(len(self.steps))


def averaged(start: dict, steps: list[dict], decay: float) -> dict:
    average = {k: v.double() for k, v in start.items()}
    for weights in steps:
        average = {k: decay * average[k] + (1 - decay) * weights[k].double() for k in average}
    return average


def test_the_weight_average_is_what_validation_and_the_best_checkpoint_use(caption_set, tmp_path):
    decay = 0.9
    recorder = Recorder()
    run = trainer(caption_set, tmp_path / "ema", dict(SAT, ema_decay=decay), hooks=[recorder, WeightAverage(decay)])
    run.run()
    best = load_checkpoint(tmp_path / "ema/checkpoint.pt")
    # the best epoch's weights are the average after that epoch's last step, not the raw weights
    expected = averaged(recorder.start, recorder.steps[: recorder.epochs[best["epoch"] - 1]], decay)
    for key, value in best["state_dict"].items():
        if value.dtype.is_floating_point:
            np.testing.assert_allclose(value.numpy(), expected[key].numpy(), rtol=1e-4, atol=1e-6)
    raw = recorder.steps[recorder.epochs[best["epoch"] - 1] - 1]
    assert any(not torch.allclose(best["state_dict"][k], raw[k]) for k in raw if raw[k].dtype.is_floating_point)
    # the val CIDEr-D of each epoch is that of the averaged weights: decode them again, same score
    run.model.load_state_dict(best["state_dict"])
    assert run.validator(run.model, run.data.inputs_for_ids)["val_cider"] == pytest.approx(best["best"]["val_cider"])
    # training itself went on from the raw weights, which last.pt holds beside the average
    last = load_checkpoint(tmp_path / "ema/last.pt")
    assert all(torch.equal(last["state_dict"][k], recorder.steps[-1][k]) for k in raw)
    assert set(last["hooks"]["ema"]["average"]) == set(raw)


def test_off_by_default_and_then_nothing_changes(caption_set, tmp_path):
    plain = trainer(caption_set, tmp_path / "plain", SAT)
    assert not [hook for hook in plain.hooks.hooks if isinstance(hook, WeightAverage)]
    plain.run()
    zero = trainer(caption_set, tmp_path / "zero", dict(SAT, ema_decay=0.0))
    zero.run()
    assert losses(tmp_path / "plain") == losses(tmp_path / "zero")
    assert "hooks" not in load_checkpoint(tmp_path / "plain/last.pt") or \
        "ema" not in load_checkpoint(tmp_path / "plain/last.pt")["hooks"]


def test_a_stopped_and_resumed_run_continues_the_same_average(caption_set, tmp_path):
    hparams = dict(SAT, epochs=3, batch_size=4, ema_decay=0.95)
    reference = trainer(caption_set, tmp_path / "straight", hparams)
    reference.run()
    out = tmp_path / "stopped"
    command = train_command(caption_set, out, hparams)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.csv").exists() and "\n1," in (out / "metrics.csv").read_text(), process, 120,
             "the first epoch")
    process.send_signal(signal.SIGUSR1)
    process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED
    subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    ours, theirs = load_checkpoint(out / "last.pt"), load_checkpoint(tmp_path / "straight/last.pt")
    for key, value in theirs["hooks"]["ema"]["average"].items():
        np.testing.assert_allclose(ours["hooks"]["ema"]["average"][key].numpy(), value.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(losses(out), losses(tmp_path / "straight"), rtol=1e-6)


class Crash(Hook):
    def __init__(self, at_step):
        self.at_step = at_step

    def after_step(self, trainer, loss):
        if trainer.state.step == self.at_step:
            raise KeyboardInterrupt("the node went down")


def test_tensorboard_events_hold_every_step_and_epoch_once_across_a_crash_and_resume(caption_set, tmp_path):
    """A run dies mid-epoch 2, steps after its last save already logged; the resumed run logs them again, and
    TensorBoard's purge leaves each step once."""
    pytest.importorskip("tensorboard", reason="the TensorBoard hook writes events only with tensorboard installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from captioner.training.tensorboard_log import TensorBoardLog

    hparams = dict(SAT, epochs=3, batch_size=4)  # 24 steps an epoch
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        trainer(caption_set, out, hparams, hooks=[TensorBoardLog(), Crash(at_step=30)]).run()
    assert load_checkpoint(out / "last.pt")["step"] == 24  # the last save: epoch 1's end
    # a resumed job starts seconds later, in another process; here, in this one, it must at least open its event file
    # in a later second: TensorBoard reads a folder's files in name order, and a name is the second it was opened,
    # then the process and a per-process counter (".10" sorts before ".9")
    time.sleep(1.01 - time.time() % 1)
    trainer(caption_set, out, hparams).run()  # the default hooks: TensorBoard among them
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [event.step for event in events.Scalars("train/loss")] == list(range(1, int(rows[-1]["step"]) + 1))
    val = events.Scalars("epoch/val_cider")
    assert [event.step for event in val] == [int(row["step"]) for row in rows]
    assert [event.value for event in val] == pytest.approx([float(row["val_cider"]) for row in rows])
    np.testing.assert_allclose([event.value for event in events.Scalars("epoch/train_loss")], losses(out), rtol=1e-6)


class CountingStore:
    """A store whose reads are counted (and can fail), around a real one."""

    def __init__(self, store, fail_on=None):
        self.store, self.fail_on, self.reads = store, fail_on, 0

    def gather(self, ids):
        self.reads += 1
        if self.fail_on is not None and list(ids) == self.fail_on:
            raise OSError(f"cannot read {ids}")
        return self.store.gather(ids)


def test_the_prefetcher_hands_out_the_planned_batches_in_order(caption_set):
    store = FeatureStore(caption_set / "grid.h5")
    plan = [[0, 1, 2], [5, 4], [7, 8, 9, 10]]
    counting = CountingStore(store)
    prefetcher = Prefetcher(counting, plan, depth=1)
    try:
        assert prefetcher.take([5, 4]) is None  # not the next planned batch: the caller reads it itself
        for ids in plan:
            got = prefetcher.take(ids)
            np.testing.assert_array_equal(got["features"], store.gather(ids)["features"])
        assert prefetcher.take([0]) is None  # past the plan
    finally:
        prefetcher.close()
    assert counting.reads == len(plan)


def test_a_failed_read_ahead_is_raised_where_the_batch_is_asked_for(caption_set):
    store = CountingStore(FeatureStore(caption_set / "grid.h5"), fail_on=[3, 4])
    prefetcher = Prefetcher(store, [[1, 2], [3, 4], [5]], depth=1)
    try:
        prefetcher.take([1, 2])
        with pytest.raises(OSError, match=r"cannot read \[3, 4\]"):
            prefetcher.take([3, 4])
    finally:
        prefetcher.close()  # stops the thread even with a batch left unread


def test_training_from_disk_reads_ahead_and_learns_exactly_what_it_learns_from_ram(caption_set, tmp_path):
    ram = trainer(caption_set, tmp_path / "ram", dict(SAT, preload_features=True))
    ram.run()
    disk = trainer(caption_set, tmp_path / "disk", dict(SAT, preload_features=False))
    disk._read_ahead = lambda: True  # whatever this machine's cores: the read-ahead path is the one under test
    reads = []
    original = disk.data.prefetch
    disk.data.prefetch = lambda plan: (reads.append(len(plan)), original(plan))
    disk.run()
    assert reads and all(count > 0 for count in reads)  # every epoch planned its batches ahead
    assert losses(tmp_path / "disk") == losses(tmp_path / "ram")
    for key, value in load_checkpoint(tmp_path / "ram/checkpoint.pt")["state_dict"].items():
        assert torch.equal(load_checkpoint(tmp_path / "disk/checkpoint.pt")["state_dict"][key], value)


def test_batches_are_read_ahead_where_the_host_has_time_to_spare(caption_set, tmp_path, monkeypatch):
    """A GPU computing the steps, or a CPU core left free by torch's threads; never for a store in RAM."""
    import os

    run = trainer(caption_set, tmp_path / "rule", dict(SAT, preload_features=False))
    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
        torch.set_num_threads(2)
        assert run._read_ahead()  # 2 of 4 cores compute
        torch.set_num_threads(4)
        assert not run._read_ahead()  # every core computes: the reads would only move to another thread
        run.device = torch.device("cuda")  # (only asked, nothing runs on it)
        assert run._read_ahead()
        run.recipe.preload_features = True
        assert not run._read_ahead()
    finally:
        torch.set_num_threads(threads)
