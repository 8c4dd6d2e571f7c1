"""Data-parallel training under ``torchrun``: process-group set-up, batch sharding, and the few collectives the
trainer and the models need.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here starts a process group and every collective helper
returns its input, so single-process training runs exactly the code it ran before.
"""

from __future__ import annotations

import gc
import importlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Validation runs on rank 0 while the other ranks wait in a broadcast; NCCL's default 10 minutes could
# kill a job whose validation is merely slow. (torchrun stops every worker as soon as one fails, so a
# real failure does not wait for this.)
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Ranks:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Ranks:
        """What torchrun tells each worker through its environment."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(world_size, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def init_process_group(ranks: Ranks, device: torch.device) -> torch.device:
    """Join torchrun's process group (NCCL on GPUs, gloo on the CPU); returns this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)  # one GPU per local rank, whatever index was asked for
        torch.cuda.set_device(device)  # object collectives on NCCL use the current device
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        # torch.distributed.nn takes the default group as a default argument value when it is first imported; first
        # imported after the group exists (DDP imports torch._dynamo, which imports it), it would hold the group
        # for the life of the process, and gloo would tear it down while the interpreter exits (see shutdown)
        importlib.import_module("torch.distributed.nn")  # (an import statement here would make `torch` local)

        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size, timeout=COLLECTIVE_TIMEOUT)
    return device


def shutdown(together: bool = True) -> None:
    """Leave the process group, the last thing a worker does with it.

    ``together`` (a training that finished or stopped on every rank): the ranks first meet at a barrier, so none
    tears its connections down while a peer is still inside a collective or about to start one, then each destroys
    its group. With nothing else holding the group (the trainer and its DDP wrapper are freed first, and see
    init_process_group), the group's threads are joined here, not while the interpreter exits, where gloo's
    teardown raced with the peer's and could abort the worker ("terminate called without an active exception",
    exit -6) after a finished training. Without ``together`` (an error on this rank) there is no barrier: the other ranks
    may be waiting in another collective, and torchrun stops them anyway.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if together and dist.get_world_size() > 1:
        dist.barrier()
    gc.collect()  # the DDP reducer's reference to the group, if a cycle still holds it
    dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard(batch: list, ranks: Ranks) -> list:
    """This rank's contiguous slice of a global batch; slices differ by at most one item (the last, partial
    batch of an epoch may not divide evenly) and concatenated in rank order they give the batch back."""
    base, extra = divmod(len(batch), ranks.world_size)
    start = ranks.rank * base + min(ranks.rank, extra)
    return batch[start:start + base + (ranks.rank < extra)]


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if active():
        reduced = values.to(_collective_device(), copy=True)  # NCCL reduces GPU tensors only, gloo CPU ones
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        values = reduced.to(values.device)
    return values


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over every rank's elements (ranks may hold different numbers of them)."""
    if not active():
        return values.mean()
    total = all_reduce_sum(torch.stack([values.sum().double(), torch.tensor(values.numel(), dtype=torch.float64,
                                                                             device=values.device)]))
    return (total[0] / total[1]).to(values.dtype)


def broadcast_from_main(value: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``value`` on every rank: for random decisions that must be the same everywhere."""
    if active():
        shared = value.to(_collective_device(), copy=True)
        dist.broadcast(shared, src=0)
        value = shared.to(value.device)
    return value


def broadcast_object(obj):
    """Rank 0's picklable ``obj`` on every rank."""
    if not active():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others must not exit before)."""
    if active():
        dist.barrier()


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
