"""Training artifacts as PNGs: a confusion matrix and learning curves.

Headless by construction: the Agg backend is chosen before pyplot is imported, so a
worker without a display (a Ray actor, a cron job) can draw. Figures are closed after
saving: a nightly process that plots every run must not accumulate them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402


def confusion_matrix_png(cm: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """Counts in each cell, colour by row share (per-class recall), so small classes stay readable."""
    cm = np.asarray(cm)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # (C, C)
    size = 1.2 + 0.6 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    try:
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, label="share of true class")
        ticks = range(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=45, ha="right")
        ax.set_yticks(ticks, class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (i, j), count in np.ndenumerate(cm):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
            )
        return _save(fig, path)
    finally:
        plt.close(fig)


def learning_curves_png(
    history: Sequence[dict[str, float]], path: str | Path, best_epoch: int | None = None
) -> Path:
    """Losses on the left, validation accuracy and macro-F1 on the right; best_epoch (FitResult's) marked."""
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        left.plot(epochs, [row["train_loss"] for row in history], label="train")
        left.plot(epochs, [row["val_loss"] for row in history], label="validation")
        left.set_ylabel("loss")
        right.plot(epochs, [row["val_accuracy"] for row in history], label="accuracy")
        right.plot(epochs, [row["val_macro_f1"] for row in history], label="macro-F1")
        right.set_ylabel("validation")
        right.set_ylim(0.0, 1.0)
        for ax in (left, right):
            if best_epoch is not None:
                ax.axvline(
                    best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}"
                )
            ax.set_xlabel("epoch")
            ax.legend()
        return _save(fig, path)
    finally:
        plt.close(fig)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
