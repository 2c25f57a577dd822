"""Classification metrics in plain numpy: flat, JSON-able dicts a registry can log as they are.

Classes absent from y_true and y_pred are reported as 0 (never NaN, never a warning)
and left out of macro-F1, as scikit-learn does by default: a class with no examples
in an evaluation set says nothing about the model, so it must not drag the mean to 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# top-k accuracies reported when there are more than 5 classes (below that they say little)
TOP_K = (3, 5)
PER_CLASS = ("precision", "recall", "f1", "support")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    y_true, y_pred = _as_labels(y_true, y_pred, num_classes)
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: list[str],
    probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """accuracy, macro_f1 and `precision/<class>`, `recall/<class>`, `f1/<class>`,
    `support/<class>`; with class `probabilities` (N, C) and more than 5 classes, also
    `top3_accuracy` and `top5_accuracy`."""
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    hits = np.diag(cm).astype(np.float64)  # (C,)
    support = cm.sum(axis=1)  # (C,) true examples per class
    predicted = cm.sum(axis=0)  # (C,) predictions per class
    precision = _safe_divide(hits, predicted)
    recall = _safe_divide(hits, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    seen = (support + predicted) > 0  # classes in y_true or y_pred
    metrics: dict[str, Any] = {
        "accuracy": float(hits.sum() / cm.sum()) if cm.sum() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
    }
    for i, name in enumerate(class_names):
        metrics[f"precision/{name}"] = float(precision[i])
        metrics[f"recall/{name}"] = float(recall[i])
        metrics[f"f1/{name}"] = float(f1[i])
        metrics[f"support/{name}"] = int(support[i])
    if probabilities is not None and len(class_names) > max(TOP_K):
        for k in TOP_K:
            metrics[f"top{k}_accuracy"] = top_k_accuracy(y_true, probabilities, k)
    return metrics


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k most probable (ties do not push it out)."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != y_true.size:
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not match {y_true.size} labels; "
            "expected (N, C)"
        )
    _as_labels(y_true, y_true, probabilities.shape[1])  # names a class index outside [0, C)
    if not y_true.size:
        return 0.0
    true_p = probabilities[np.arange(y_true.size), y_true]  # (N,)
    higher = (probabilities > true_p[:, None]).sum(axis=1)  # (N,) classes strictly more probable
    return float((higher < k).mean())


def per_class_report(
    metrics_by_model: dict[str, dict[str, dict[str, Any]]], class_names: list[str]
) -> list[dict[str, Any]]:
    """Rows model, split, class, precision, recall, f1, support from
    {model: {split: classification_metrics}}."""
    return [
        {
            "model": model,
            "split": split,
            "class": name,
            **{key: values.get(f"{key}/{name}") for key in PER_CLASS},
        }
        for model, splits in metrics_by_model.items()
        for split, values in splits.items()
        for name in class_names
    ]


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0, without numpy's divide-by-zero warning."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _as_labels(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        outside = y[(y < 0) | (y >= num_classes)]
        if outside.size:
            raise ValueError(f"{name} holds class index {outside[0]}, outside [0, {num_classes})")
    return y_true, y_pred
