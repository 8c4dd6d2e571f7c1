"""Feature store arrays -> model inputs: the one path by which training, validation, decoding, attention maps and
``caption`` feed a model. Per-channel standardisation learnt on the training split (``FeatureNorm``), padded region
rows zeroed, blind models given nothing of the image, captions padded into a batch.

A store is anything with ``gather(ids) -> {"features": (N, rows, dim), ["num_boxes": (N,)]}`` (the feature stores of
:mod:`features.store.reader`, or an extractor's output).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FeatureNorm:
    """Per-channel standardisation learnt on the training split (vital for random-init features)."""

    mean: torch.Tensor
    std: torch.Tensor


def compute_feature_norm(store, image_ids, max_images: int, seed: int) -> FeatureNorm:
    """Mean and std of every channel over the valid rows of up to ``max_images`` images (a seeded sample)."""
    rng = np.random.default_rng(seed)
    ids = list(image_ids)
    if len(ids) > max_images:
        ids = rng.choice(ids, size=max_images, replace=False).tolist()
    total = None
    total_sq = None
    count = 0
    for start in range(0, len(ids), 256):
        data = store.gather(ids[start:start + 256])
        feats = data["features"].astype(np.float64)
        if "num_boxes" in data:
            valid = np.arange(feats.shape[1])[None, :] < data["num_boxes"][:, None]
            rows = feats[valid]
        else:
            rows = feats.reshape(-1, feats.shape[-1])
        total = rows.sum(0) if total is None else total + rows.sum(0)
        total_sq = (rows ** 2).sum(0) if total_sq is None else total_sq + (rows ** 2).sum(0)
        count += len(rows)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0)) + 1e-5
    return FeatureNorm(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))


def model_inputs(kind: str, data: dict, norm: FeatureNorm, blind: bool, device) -> dict:
    """Store arrays of a ``kind`` (grid | regions) store -> keyword arguments of the model's ``loss``/``decoder``.
    ``data["features"]`` may be an array or a tensor (a prefetched batch, pinned on CUDA)."""
    # one float32 copy of the stored features (fp16 by default), standardised in place: (x - mean) / std without
    # two more temporary copies (a batch of 64 COCO grids is 100 MB in float32)
    features = torch.as_tensor(data["features"]).to(device, non_blocking=True).to(torch.float32, copy=True)
    features.sub_(norm.mean.to(features.device)).div_(norm.std.to(features.device))
    if "num_boxes" in data:  # zero the padded rows after standardisation
        valid = torch.arange(features.shape[1])[None, :] < torch.as_tensor(data["num_boxes"]).long()[:, None]
        features.mul_(valid[..., None].to(features.device))
    full = np.full(len(features), features.shape[1])
    num_boxes = np.asarray(data.get("num_boxes", full))
    if blind:  # nothing of the image may leak: neither features nor how many regions it has
        features = torch.zeros_like(features)
        num_boxes = full
    if kind == "regions":
        return {"features": features, "num_boxes": torch.from_numpy(num_boxes).long().to(device)}
    return {"features": features}


@dataclass
class ModelInputs:
    """What turns store arrays into one model's inputs: its store kind, its norm, blind or not, its device."""

    kind: str
    norm: FeatureNorm
    blind: bool
    device: torch.device

    def __call__(self, data: dict) -> dict:
        return model_inputs(self.kind, data, self.norm, self.blind, self.device)


def pad_captions(sequences: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """Token id lists -> one (N, longest) tensor, ``pad_id`` after each end."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.tensor(s)
    return out.to(device)


class Prefetcher:
    """Reads the store arrays of the coming batches in a background thread while the current one trains: for stores
    read from disk (``preload_features: false``), whose reads would otherwise stall every step. ``plan`` lists each
    batch's image ids in the order they will be asked for; at most ``depth`` batches wait in memory. ``prepare``
    turns a batch's arrays into what :meth:`take` hands out, in the same thread (on the CPU: the model inputs
    themselves, their conversion and standardisation off the training thread; on CUDA: the features in pinned
    memory, so that their copy to the GPU runs asynchronously)."""

    def __init__(self, store, plan: list[list], depth: int = 2, prepare=None):
        self.store, self.plan, self.prepare = store, [list(ids) for ids in plan], prepare
        self.next = 0  # the position in the plan of the next batch to hand out
        self.ready: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, name="batch-prefetch", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for ids in self.plan:
            if self.stopping.is_set():
                return
            try:
                arrays = self.store.gather(ids)
                item = (ids, arrays if self.prepare is None else self.prepare(arrays), None)
            except Exception as error:  # raised in the training thread, where the batch is asked for
                item = (ids, None, error)
            while not self.stopping.is_set():
                try:
                    self.ready.put(item, timeout=0.1)
                    break
                except queue.Full:  # the training thread is busy with earlier batches
                    continue

    def take(self, ids: list) -> dict | None:
        """The prepared arrays of ``ids`` if they are the next planned batch (waiting for them if need be), else
        None."""
        if self.next >= len(self.plan) or self.plan[self.next] != list(ids):
            return None
        self.next += 1
        _, arrays, error = self.ready.get()
        if error is not None:
            raise error
        return arrays

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()


def pinned(arrays: dict) -> dict:
    """The features in page-locked host memory: their copy to the GPU can overlap compute."""
    return dict(arrays, features=torch.from_numpy(arrays["features"]).pin_memory())


class TrainData:
    """The training images and what turns them into model inputs on the device (what the objectives read)."""

    def __init__(self, images: list[dict], store, inputs: ModelInputs, vocab):
        self.images, self.store, self.to_inputs, self.vocab = images, store, inputs, vocab
        self.device = inputs.device
        self.load_seconds = 0.0  # spent reading features or waiting for them (the loader share of an epoch)
        self.prefetcher: Prefetcher | None = None
        # read ahead, the background thread makes the model inputs themselves on the CPU; on CUDA it pins the
        # features, and their copy to the GPU is left to the training thread
        on_cpu = self.device.type == "cpu"
        self.read_ahead = self.to_inputs if on_cpu else pinned
        self.after_read_ahead = (lambda inputs: inputs) if on_cpu else self.to_inputs

    def inputs_for_ids(self, image_ids) -> dict:
        started = time.perf_counter()
        ready = self.prefetcher.take(image_ids) if self.prefetcher is not None else None
        if ready is None:
            inputs = self.to_inputs(self.store.gather(image_ids))
        else:
            inputs = self.after_read_ahead(ready)
        self.load_seconds += time.perf_counter() - started
        return inputs

    def inputs(self, indices: list[int]) -> dict:
        """Model inputs of training images ``indices`` (positions in ``images``), in that order."""
        return self.inputs_for_ids(self.ids_of(indices))

    def ids_of(self, indices: list[int]) -> list:
        return [self.images[i]["image_id"] for i in indices]

    def prefetch(self, plan: list[list[int]]) -> None:
        """Read the batches of ``plan`` (lists of image positions, in the order they will be asked for) ahead, in a
        background thread, until :meth:`stop_prefetch`."""
        self.stop_prefetch()
        self.prefetcher = Prefetcher(self.store, [self.ids_of(indices) for indices in plan], prepare=self.read_ahead)

    def stop_prefetch(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None

    def pad(self, sequences: list[list[int]]) -> torch.Tensor:
        return pad_captions(sequences, self.vocab.pad_id, self.device)
