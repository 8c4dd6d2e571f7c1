"""A training's per-epoch record: ``metrics.csv`` (one row per epoch, every key any row has) and ``curve.png``
(the training loss, or SCST's mean reward, beside the validation CIDEr-D), both written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pipeline import atomic


# CIDEr-D values of a training's record, kept on the scorer's 0-10 scale while training (the best epoch is chosen on
# them as computed) and shown on the tables' 0-100 scale: metrics.csv, the curve, the log, TensorBoard
CIDER_KEYS = ("val_cider", "train_reward")


def on_table_scale(row: dict) -> dict:
    """A history row as it is shown: its CIDEr-D values x100 (the tables' scale)."""
    return {key: value * 100 if key in CIDER_KEYS and isinstance(value, (int, float)) else value
            for key, value in row.items()}


def training_series(history: list[dict]) -> tuple[str, list[int], list[float]]:
    """The curve's left axis: (label, epochs, values). SCST's loss sits near zero whatever happens (its baseline is
    the beams' own mean reward), so an SCST run shows its mean reward instead."""
    key, label = (("train_reward", "mean reward (CIDEr-D of the sampled beams, 0-100)")
                  if any("train_reward" in row for row in history) else ("train_loss", "training loss"))
    rows = [row for row in history if key in row]
    return label, [row["epoch"] for row in rows], [row[key] for row in rows]


def write_metrics(history: list[dict], csv_path: Path, png_path: Path, title: str) -> None:
    history = [on_table_scale(row) for row in history]
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
    right.set_ylabel("val CIDEr-D (greedy, 0-100)", color="tab:red")
    left.set_title(title)
    fig.tight_layout()
    with atomic.atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
