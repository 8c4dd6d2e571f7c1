"""Stop when validation has not improved for ``patience`` epochs (ties count as improvements, as in the M²
reference)."""

from __future__ import annotations


class EarlyStopping:
    def __init__(self, patience: int):
        self.patience = patience

    def should_stop(self, state) -> bool:
        return state.epoch > 0 and state.epoch - state.best["epoch"] >= self.patience

    @staticmethod
    def improved(state, val_cider: float) -> bool:
        return val_cider >= state.best["val_cider"]
