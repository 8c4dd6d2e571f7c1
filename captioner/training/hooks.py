"""Rooms in the training loop (as detectron2's hooks): what runs before training, after each optimizer step, after
each epoch and when training ends, without editing the loop. A hook overrides what it needs; hooks run in the order
given. Built in: :class:`captioner.training.ema.WeightAverage` (``train.ema_decay``) and
:class:`captioner.training.tensorboard_log.TensorBoardLog` (when the tensorboard package is installed)."""

from __future__ import annotations

import contextlib


class Hook:
    name = ""  # the key of its state in last.pt, for a hook that has one

    def before_train(self, trainer) -> None:
        """After set-up and resume, before the first epoch (``trainer.state`` says where training stands)."""

    def after_step(self, trainer, loss: float) -> None:
        """After each optimizer step; ``loss`` is the global batch's (``trainer.state.step`` counts the step)."""

    def after_epoch(self, trainer, row: dict) -> None:
        """After each epoch's validation, with the epoch's row of metrics.csv."""

    def after_train(self, trainer) -> None:
        """When training ends: finished, stopped by a signal, or failed."""

    def evaluation_weights(self, trainer) -> contextlib.AbstractContextManager:
        """A context in which the model holds the weights to validate (EMA: the averaged ones)."""
        return contextlib.nullcontext()

    def best_weights(self, trainer) -> dict | None:
        """The state_dict to keep as a best epoch's weights, or None for the model's own."""
        return None

    def state_dict(self) -> dict | None:
        """What last.pt must hold to resume this hook exactly (None: nothing)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class Hooks:
    """The hooks of a training, called in order."""

    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)

    def before_train(self, trainer) -> None:
        for hook in self.hooks:
            hook.before_train(trainer)

    def after_step(self, trainer, loss: float) -> None:
        for hook in self.hooks:
            hook.after_step(trainer, loss)

    def after_epoch(self, trainer, row: dict) -> None:
        for hook in self.hooks:
            hook.after_epoch(trainer, row)

    def after_train(self, trainer) -> None:
        for hook in self.hooks:
            hook.after_train(trainer)

    @contextlib.contextmanager
    def evaluation_weights(self, trainer):
        with contextlib.ExitStack() as stack:
            for hook in self.hooks:
                stack.enter_context(hook.evaluation_weights(trainer))
            yield

    def best_weights(self, trainer) -> dict | None:
        return next((w for w in (hook.best_weights(trainer) for hook in self.hooks) if w is not None), None)

    def state_dict(self) -> dict:
        return {hook.name: state for hook in self.hooks if (state := hook.state_dict()) is not None}

    def load_state_dict(self, states: dict) -> None:
        for hook in self.hooks:
            if hook.name in states:
                hook.load_state_dict(states[hook.name])
