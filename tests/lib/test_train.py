"""Training: the LSTM learns frame order that a frame average cannot see; runs are reproducible."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lstmpipe.lib.config import TrainConfig
from lstmpipe.lib.training.loop import (
    FitResult,
    SequenceSet,
    collate,
    evaluate,
    fit,
    model_spec,
    predict_proba,
)
from lstmpipe.lib.training.model import SeriesCentring
from lstmpipe.lib.training.plots import confusion_matrix_png, learning_curves_png
from lstmpipe.lib.training.splits import stratified_split

F = 16
CLASSES = ["ramp_up", "ramp_down"]
# Shrunk for a 2-core laptop: a few seconds per fit.
CONFIG = TrainConfig(
    hidden_size=32, dropout=0.1, epochs=25, patience=8, lr=1e-2, batch_size=16, seed=0
)


# tests/lib/conftest.py: tiny networks, one thread
pytestmark = pytest.mark.usefixtures("one_thread")


def order_only_task(n: int, seed: int) -> SequenceSet:
    """Noise frames plus a direction scaled by a ramp: up for class 0, down for class 1.

    Every frame of either class comes from the same distribution and each series'
    ramp averages to exactly 0, so frame means carry no signal: only order does.
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=F)
    direction /= np.linalg.norm(direction)
    features, labels = [], []
    for i in range(n):
        label, steps = i % 2, int(rng.integers(8, 25))
        ramp = np.linspace(-1.0, 1.0, steps) * (1.0 if label == 0 else -1.0)  # (T,)
        frames = rng.normal(size=(steps, F)) + 1.5 * ramp[:, None] * direction[None, :]  # (T, F)
        features.append(frames.astype(np.float32))
        labels.append(label)
    return SequenceSet(
        features, np.array(labels), [f"{CLASSES[y]}/series_{i:03d}" for i, y in enumerate(labels)]
    )


@pytest.fixture(scope="module")
def data() -> dict[str, SequenceSet]:
    everything = order_only_task(360, seed=0)
    splits = stratified_split(
        everything.series_ids, [CLASSES[y] for y in everything.labels], 0.15, 0.4, seed=0
    )
    return {name: everything.select(ids) for name, ids in splits.items()}


@pytest.fixture(scope="module")
def lstm(data: dict[str, SequenceSet]) -> FitResult:
    return fit(model_spec(CONFIG, F, 2, "lstm"), data["train"], data["val"], CONFIG)


def test_lstm_learns_order_that_a_frame_average_cannot_see(
    data: dict[str, SequenceSet], lstm: FitResult
) -> None:
    mean = fit(model_spec(CONFIG, F, 2, "mean"), data["train"], data["val"], CONFIG)
    lstm_test = evaluate(lstm.model, data["test"], CLASSES)
    mean_test = evaluate(mean.model, data["test"], CLASSES)
    assert len(data["test"]) == 144
    assert lstm_test["accuracy"] >= 0.9, lstm_test
    assert mean_test["accuracy"] <= 0.7, mean_test
    assert np.array(lstm_test["confusion"]).sum() == len(data["test"])


def test_series_centring_fits_its_scale_and_reads_order_under_a_per_series_level(
    data: dict[str, SequenceSet],
) -> None:
    """Each series sits at its own level, ten times the ramp:
    what a backbone's anatomy and contrast look like."""
    rng = np.random.default_rng(1)
    shifted = {
        name: SequenceSet(
            [f + 15.0 * rng.normal(size=F).astype(np.float32) for f in part.features],
            part.labels,
            part.series_ids,
        )
        for name, part in data.items()
    }
    config = CONFIG.model_copy(update={"input_norm": "series"})
    result = fit(model_spec(config, F, 2, "lstm"), shifted["train"], shifted["val"], config)
    centred = np.concatenate([f - f.mean(axis=0) for f in shifted["train"].features])
    norm = result.model.norm
    assert isinstance(norm, SeriesCentring) and isinstance(norm.scale, torch.Tensor)
    assert norm.scale.item() == pytest.approx(
        float(np.sqrt(np.mean(centred.astype(np.float64) ** 2))), rel=1e-5
    )
    assert "norm.scale" in result.model.state_dict()
    assert evaluate(result.model, shifted["test"], CLASSES)["accuracy"] >= 0.9


def test_the_returned_model_is_the_best_epoch(
    data: dict[str, SequenceSet], lstm: FitResult
) -> None:
    assert [row["epoch"] for row in lstm.history] == list(range(1, len(lstm.history) + 1))
    assert set(lstm.history[0]) == {
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_macro_f1",
        "lr",
    }
    assert lstm.stopped_early == (len(lstm.history) < CONFIG.epochs)
    best = lstm.history[lstm.best_epoch - 1]
    assert best["val_macro_f1"] == max(row["val_macro_f1"] for row in lstm.history)
    val = evaluate(lstm.model, data["val"], CLASSES)
    assert val["accuracy"] == pytest.approx(best["val_accuracy"])
    assert not lstm.model.training


def test_same_seed_same_history_and_on_epoch_sees_every_row(data: dict[str, SequenceSet]) -> None:
    config = CONFIG.model_copy(update={"epochs": 3})
    spec = model_spec(config, F, 2, "lstm")
    seen: list[dict[str, float]] = []
    first = fit(spec, data["train"], data["val"], config, on_epoch=seen.append)
    second = fit(spec, data["train"], data["val"], config)
    assert first.history == second.history
    assert seen == first.history
    for name, weights in first.model.state_dict().items():
        assert torch.equal(weights, second.model.state_dict()[name]), name


def test_predict_proba_keeps_input_order_whatever_the_batch_size(
    data: dict[str, SequenceSet], lstm: FitResult
) -> None:
    features = data["test"].features[:20]
    probs = predict_proba(lstm.model, features, batch_size=64)
    assert probs.shape == (20, 2)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    one_by_one = np.concatenate([predict_proba(lstm.model, [f]) for f in features])
    assert np.allclose(probs, one_by_one, atol=1e-5)
    assert np.allclose(predict_proba(lstm.model, features, batch_size=3), probs, atol=1e-5)


def test_collate_pads_with_zeros_and_keeps_lengths() -> None:
    x, lengths, y = collate([(np.ones((2, 3), np.float32), 1), (np.ones((4, 3), np.float32), 0)])
    assert x.shape == (2, 4, 3) and x.dtype == torch.float32
    assert lengths.tolist() == [2, 4] and lengths.dtype == torch.int64
    assert y.tolist() == [1, 0]
    assert x[0, 2:].abs().sum() == 0


def test_sequence_set_checks_its_inputs_and_selects_by_id() -> None:
    data = order_only_task(6, seed=1)
    picked = data.select([data.series_ids[4], data.series_ids[1]])
    assert picked.series_ids == [data.series_ids[4], data.series_ids[1]]
    assert picked.labels.tolist() == [data.labels[4], data.labels[1]]
    with pytest.raises(KeyError, match="nope"):
        data.select(["nope"])
    with pytest.raises(ValueError, match="2 labels"):
        SequenceSet(data.features, data.labels[:2], data.series_ids)
    with pytest.raises(ValueError, match="empty/1"):
        SequenceSet([np.zeros((0, F), np.float32)], np.array([0]), ["empty/1"])


def test_fit_without_validation_data_says_how_to_fix_it(data: dict[str, SequenceSet]) -> None:
    empty = data["val"].select([])
    with pytest.raises(ValueError, match="val_fraction"):
        fit(model_spec(CONFIG, F, 2, "lstm"), data["train"], empty, CONFIG)


def test_plots_write_png_files(tmp_path, data: dict[str, SequenceSet], lstm: FitResult) -> None:
    confusion = np.array(evaluate(lstm.model, data["test"], CLASSES)["confusion"])
    paths = [
        confusion_matrix_png(confusion, CLASSES, tmp_path / "confusion.png"),
        learning_curves_png(
            lstm.history, tmp_path / "plots" / "curves.png", best_epoch=lstm.best_epoch
        ),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 1000


def test_lr_warms_up_to_its_peak_then_decays_and_gradients_are_clipped(
    data: dict[str, SequenceSet], monkeypatch: pytest.MonkeyPatch
) -> None:
    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils,
        "clip_grad_norm_",
        lambda params, max_norm: norms.append(max_norm) or clip(params, max_norm),
    )
    config = CONFIG.model_copy(update={"epochs": 20, "patience": 20, "grad_clip": 0.5})
    result = fit(model_spec(config, F, 2, "lstm"), data["train"], data["val"], config)
    lrs = [row["lr"] for row in result.history]
    peak = int(np.argmax(lrs))
    # OneCycle: 10 % warm-up (2 of 20 epochs), then decay
    assert peak == 1 and lrs[0] < lrs[1] <= config.lr
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lrs[-1] < 0.01 * config.lr
    assert norms and set(norms) == {0.5}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cell", "rnn"),
        ("pooling", "max"),
        ("balance", "oversample"),
        ("crop_fraction", 0.0),
        ("frame_dropout", 1.0),
        ("input_proj", 0),
        ("input_norm", "batch"),
    ],
)
def test_bad_training_options_name_the_key(key: str, value: Any) -> None:
    from lstmpipe.lib.errors import ConfigError

    with pytest.raises(ConfigError, match=f"train.{key}"):
        TrainConfig(**{key: value})
