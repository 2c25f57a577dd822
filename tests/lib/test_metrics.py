"""Metrics against values computed by hand, including classes that never occur."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lstmpipe.lib.training.metrics import classification_metrics, confusion_matrix

NAMES = ["walk", "run", "jump", "swim"]  # swim occurs in neither y_true nor y_pred


def test_confusion_matrix_rows_are_true_columns_predicted() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 2]), 4)
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_metrics_match_hand_computed_values_with_an_absent_class() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(
            np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 2]), NAMES
        )
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert (m["precision/walk"], m["recall/walk"], m["f1/walk"]) == pytest.approx(
        (1 / 2, 1 / 2, 1 / 2)
    )
    assert (m["precision/run"], m["recall/run"], m["f1/run"]) == pytest.approx(
        (2 / 3, 2 / 3, 2 / 3)
    )
    assert (m["precision/jump"], m["recall/jump"], m["f1/jump"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (m["precision/swim"], m["recall/swim"], m["f1/swim"], m["support/swim"]) == (
        0.0,
        0.0,
        0.0,
        0,
    )
    assert [m[f"support/{n}"] for n in NAMES] == [2, 3, 1, 0]
    # swim is in neither y_true nor y_pred: it says nothing about the model, so it is not averaged
    # in.
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 1.0) / 3)


def test_a_class_only_predicted_counts_as_a_zero_in_macro_f1() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(np.array([0, 0]), np.array([0, 1]), ["a", "b"])
    assert (m["precision/b"], m["recall/b"], m["f1/b"], m["support/b"]) == (0.0, 0.0, 0.0, 0)
    assert m["f1/a"] == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert m["macro_f1"] == pytest.approx(1 / 3)


def test_empty_input_gives_zeros_not_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(
            np.array([], dtype=np.int64), np.array([], dtype=np.int64), ["a", "b"]
        )
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())


def test_bad_labels_are_named() -> None:
    with pytest.raises(ValueError, match="class index 5"):
        confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="3 labels but y_pred has 2"):
        confusion_matrix(np.array([0, 1, 1]), np.array([0, 1]), 3)


def test_top_k_accuracy_by_hand_and_only_beyond_five_classes() -> None:
    from lstmpipe.lib.training.metrics import per_class_report, top_k_accuracy

    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    y = np.array([1, 2, 0])  # ranks of the true class: 2nd, 3rd, 2nd (tied with class 1)
    assert top_k_accuracy(y, probs, 1) == 0.0
    assert top_k_accuracy(y, probs, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(y, probs, 3) == 1.0
    with pytest.raises(ValueError, match="class index 3"):
        top_k_accuracy(np.array([3, 0, 0]), probs, 1)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        top_k_accuracy(np.array([0, 0]), probs, 1)

    names6 = [f"c{i}" for i in range(6)]
    rng = np.random.default_rng(0)
    p6 = rng.dirichlet(np.ones(6), size=20)
    y6 = rng.integers(0, 6, size=20)
    m6 = classification_metrics(y6, p6.argmax(axis=1), names6, probabilities=p6)
    assert m6["top3_accuracy"] == top_k_accuracy(y6, p6, 3) and m6[
        "top5_accuracy"
    ] == top_k_accuracy(y6, p6, 5)
    assert m6["top3_accuracy"] >= m6["accuracy"]
    m3 = classification_metrics(y, probs.argmax(axis=1), ["a", "b", "c"], probabilities=probs)
    assert "top3_accuracy" not in m3  # 3 classes: top-3 is always 1, so it is left out

    rows = per_class_report({"lstm": {"test": m3}}, ["a", "b", "c"])
    assert [r["class"] for r in rows] == ["a", "b", "c"]
    assert rows[0] == {
        "model": "lstm",
        "split": "test",
        "class": "a",
        "precision": m3["precision/a"],
        "recall": m3["recall/a"],
        "f1": m3["f1/a"],
        "support": 1,
    }
