"""Training curves live in TensorBoard, when the ``tensorboard`` package is installed: every step's loss and learning
rate, every epoch's metrics row, as event files in ``<out_dir>/tensorboard/`` (``tensorboard --logdir
results/<run>/models`` shows every model and seed). Rank 0 only. A resumed run purges the events logged after the
step it resumes from, so a chunked SLURM training reads as one curve."""

from __future__ import annotations

import numbers

from captioner.training.hooks import Hook
from captioner.training.metrics import on_table_scale

SUBDIR = "tensorboard"


def available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        return False
    return True


class TensorBoardLog(Hook):
    def __init__(self):
        self.writer = None

    def before_train(self, trainer) -> None:
        if not trainer.ranks.is_main or not available():
            return
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run: the steps after last.pt's (logged before an interruption) are done again, so TensorBoard
        # drops those of the earlier run
        resumed = trainer.state.step > 0
        self.writer = SummaryWriter(str(trainer.checkpoints.out_dir / SUBDIR),
                                    purge_step=trainer.state.step + 1 if resumed else None)

    def after_step(self, trainer, loss: float) -> None:
        if self.writer is not None:
            step = trainer.state.step
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", trainer.optimizer.param_groups[0]["lr"], step)

    def after_epoch(self, trainer, row: dict) -> None:
        if self.writer is None:
            return
        for key, value in on_table_scale(row).items():
            if isinstance(value, numbers.Real) and key not in ("epoch", "step"):
                self.writer.add_scalar(f"epoch/{key}", value, trainer.state.step)
        self.writer.flush()  # a live run shows each epoch as it ends

    def after_train(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
