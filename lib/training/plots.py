"""Training artifacts as PNGs: a confusion matrix and learning curves.

Headless by construction: figures are made as `Figure` objects, never through pyplot,
so no GUI backend is ever chosen and a worker without a display (a Ray actor, a cron
job) can draw; savefig renders PNG with Agg. Nothing registers the figures globally,
so a nightly process that plots every run does not accumulate them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def confusion_matrix_png(cm: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """Counts in each cell, colour by row share (per-class recall): small classes stay readable."""
    cm = np.asarray(cm)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # (C, C)
    size = 1.2 + 0.6 * len(class_names)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(cm):
        color = "white" if shares[i, j] > 0.5 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=color)
    return _save(fig, path)


def learning_curves_png(
    history: Sequence[dict[str, float]], path: str | Path, best_epoch: int | None = None
) -> Path:
    """Losses on the left, validation accuracy and macro-F1
    on the right; FitResult's best_epoch marked."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [row["train_loss"] for row in history], label="train")
    left.plot(epochs, [row["val_loss"] for row in history], label="validation")
    left.set_ylabel("loss")
    right.plot(epochs, [row["val_accuracy"] for row in history], label="accuracy")
    right.plot(epochs, [row["val_macro_f1"] for row in history], label="macro-F1")
    right.set_ylabel("validation")
    right.set_ylim(0.0, 1.0)
    for ax in (left, right):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.legend()
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
