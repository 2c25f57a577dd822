"""What the model options buy on generated features: order-only classes, one-frame classes,
reproducibility.

Features are made directly as numpy arrays from a seeded generator (8 dims, 8-20 frames),
so each fit takes seconds on one core. The real-frames counterpart is
tests/lib/test_training_real_frames.py (and the slow tests/lib/test_uses_time.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstmpipe.lib.config import TrainConfig
from lstmpipe.lib.training import loop
from lstmpipe.lib.training.loop import (
    SequenceSet,
    augment,
    evaluate,
    fit,
    model_spec,
    predict_proba,
)
from lstmpipe.lib.training.splits import stratified_split

F = 8
ORDER_CLASSES = ["rise", "fall", "peak", "valley"]
# Shrunk for a 2-core laptop: a few seconds per fit.
CONFIG = TrainConfig(
    hidden_size=32, input_proj=32, dropout=0.1, epochs=40, patience=15, lr=1e-2, seed=0
)
# as lib/training/experiment.py: the linear baseline needs larger steps to converge
BASELINE_LR_FACTOR = 5.0


# tests/lib/conftest.py: tiny networks, one thread
pytestmark = pytest.mark.usefixtures("one_thread")


def _reorder(label: int, steps: int) -> np.ndarray:
    """Each class's frame order over frames sorted by level: rise, fall, peak (up, down), valley."""
    up = np.arange(steps)
    down = up[::-1]
    return [up, down, np.r_[up[0::2], up[1::2][::-1]], np.r_[down[0::2], down[1::2][::-1]]][label]


def order_only_task(n: int, seed: int) -> SequenceSet:
    """4 classes made of the same frames in different orders: frame averages carry no signal at all.

    Each series draws noise frames plus a level in [-1, 1] along one direction, sorted by level;
    the class only permutes those frames. So a series' frame set (and mean) is independent of
    its class: only the order tells rise, fall, peak and valley apart.
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=F)
    direction /= np.linalg.norm(direction)
    features, labels = [], []
    for i in range(n):
        label, steps = i % 4, int(rng.integers(8, 21))
        # (T, F)
        frames = (
            rng.normal(size=(steps, F)) + 3.0 * np.linspace(-1.0, 1.0, steps)[:, None] * direction
        )
        features.append(frames[_reorder(label, steps)].astype(np.float32))
        labels.append(label)
    return SequenceSet(
        features, np.array(labels), [f"{ORDER_CLASSES[y]}/s{i:03d}" for i, y in enumerate(labels)]
    )


def static_task(n: int, seed: int, classes: int = 4) -> SequenceSet:
    """Each class has its own mean frame; every frame is
    that plus noise, shuffled: any one frame suffices."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(classes, F)) * 1.5
    features, labels = [], []
    for i in range(n):
        label, steps = i % classes, int(rng.integers(8, 21))
        features.append((prototypes[label] + rng.normal(size=(steps, F))).astype(np.float32))
        labels.append(label)
    return SequenceSet(features, np.array(labels), [f"c{y}/s{i:03d}" for i, y in enumerate(labels)])


def _split(data: SequenceSet) -> dict[str, SequenceSet]:
    names = [sid.split("/")[0] for sid in data.series_ids]
    return {
        name: data.select(ids)
        for name, ids in stratified_split(data.series_ids, names, 0.15, 0.3, 0).items()
    }


def _fit_both(parts: dict[str, SequenceSet], config: TrainConfig) -> tuple[dict, dict]:
    classes = sorted({sid.split("/")[0] for sid in parts["train"].series_ids})
    n = len(classes)
    lstm = fit(model_spec(config, F, n, "lstm"), parts["train"], parts["val"], config)
    base_config = config.model_copy(update={"lr": config.lr * BASELINE_LR_FACTOR})
    base = fit(model_spec(base_config, F, n, "mean"), parts["train"], parts["val"], base_config)
    return evaluate(lstm.model, parts["test"], classes), evaluate(
        base.model, parts["test"], classes
    )


@pytest.fixture(scope="module")
def order_parts() -> dict[str, SequenceSet]:
    return _split(order_only_task(480, seed=0))


@pytest.mark.slow  # trains two models per case: 5-6 s each on 2 cores
@pytest.mark.parametrize(
    "options",
    [{}, {"cell": "gru", "pooling": "attention"}],
    ids=["lstm-last", "gru-attention"],
)
def test_only_the_recurrent_model_tells_classes_apart_by_order(
    order_parts: dict, options: dict
) -> None:
    lstm, baseline = _fit_both(order_parts, CONFIG.model_copy(update=options))
    assert len(order_parts["test"]) == 144
    assert lstm["accuracy"] >= 0.95, lstm
    assert abs(baseline["accuracy"] - 1 / len(ORDER_CLASSES)) <= 0.10, baseline


def test_when_one_frame_suffices_both_models_do_well() -> None:
    lstm, baseline = _fit_both(_split(static_task(240, seed=1)), CONFIG)
    assert lstm["accuracy"] >= 0.9, lstm
    assert baseline["accuracy"] >= 0.9, baseline


EVERYTHING_ON = CONFIG.model_copy(
    update={
        "epochs": 4,
        "cell": "gru",
        "pooling": "attention",
        "bidirectional": True,
        "num_layers": 2,
        "crop_fraction": 0.8,
        "frame_dropout": 0.1,
        "balance": "sampler",
    }
)


@pytest.mark.slow  # three trainings per case: 3-7 s each on 2 cores
@pytest.mark.parametrize(
    "config", [CONFIG.model_copy(update={"epochs": 4}), EVERYTHING_ON], ids=["default", "all-on"]
)
def test_same_seed_gives_bit_identical_metrics_and_another_seed_does_not(
    order_parts: dict, config: TrainConfig
) -> None:
    def run(seed: int) -> tuple[list[dict], dict, np.ndarray]:
        c = config.model_copy(update={"seed": seed})
        result = fit(model_spec(c, F, 4, "lstm"), order_parts["train"], order_parts["val"], c)
        return (
            result.history,
            evaluate(result.model, order_parts["test"], ORDER_CLASSES),
            predict_proba(result.model, order_parts["test"].features),
        )

    first, second, other = run(0), run(0), run(1)
    # ==, not approx: every float bit-identical
    assert first[0] == second[0] and first[1] == second[1]
    assert np.array_equal(first[2], second[2])
    assert first[0] != other[0] and not np.array_equal(first[2], other[2])


def test_augment_is_seeded_bounded_and_off_by_default() -> None:
    frames = torch.arange(40, dtype=torch.float32).reshape(20, 2)  # (T, F): frame t holds 2t, 2t+1
    # off: untouched, no draw
    assert augment(frames, TrainConfig(), torch.Generator().manual_seed(0)) is frames
    crop = TrainConfig(crop_fraction=0.5)
    a = augment(frames, crop, torch.Generator().manual_seed(0))
    b = augment(frames, crop, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(a) == 10
    start = int(a[0, 0]) // 2
    assert torch.equal(a, frames[start : start + 10])  # contiguous, in order
    dropped = augment(frames, TrainConfig(frame_dropout=0.5), torch.Generator().manual_seed(3))
    assert 1 <= len(dropped) < 20
    assert (torch.diff(dropped[:, 0]) > 0).all()  # dropping keeps the order of what remains
    one = augment(frames[:1], TrainConfig(frame_dropout=0.99), torch.Generator().manual_seed(0))
    assert len(one) == 1  # a series always keeps a frame


def test_augmentation_touches_training_series_only(
    order_parts: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit calls augment on training series (as views of their arrays), never on validation ones."""
    seen: list[int] = []

    def spy(frames: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
        seen.append(frames.data_ptr())
        return augment(frames, config, generator)

    monkeypatch.setattr(loop, "augment", spy)
    config = CONFIG.model_copy(
        update={"epochs": 2, "patience": 5, "crop_fraction": 0.7, "frame_dropout": 0.2}
    )
    result = fit(model_spec(config, F, 4, "lstm"), order_parts["train"], order_parts["val"], config)
    train_ptrs = {f.ctypes.data for f in order_parts["train"].features}
    val_ptrs = {f.ctypes.data for f in order_parts["val"].features}
    assert len(seen) == 2 * len(order_parts["train"])
    assert set(seen) == train_ptrs and not set(seen) & val_ptrs
    # Validation saw whole series: the best epoch's logged accuracy is what evaluate() finds on
    # them.
    best = result.history[result.best_epoch - 1]
    assert evaluate(result.model, order_parts["val"], ORDER_CLASSES)["accuracy"] == pytest.approx(
        best["val_accuracy"]
    )
    probs = predict_proba(result.model, order_parts["test"].features)
    assert np.array_equal(probs, predict_proba(result.model, order_parts["test"].features))


def test_balanced_sampler_draws_each_class_about_equally_often() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    draws = loop._balanced_draw(labels, 2, torch.Generator().manual_seed(0))
    assert len(draws) == 100
    counts = np.bincount(labels[draws], minlength=2)
    assert 35 <= counts[1] <= 65, counts  # 10 % of the data, about half of the draws


def test_sampler_learns_an_imbalanced_task() -> None:
    data = static_task(200, seed=2, classes=2)
    # 100 : 25
    keep = [
        sid
        for sid, y in zip(data.series_ids, data.labels, strict=False)
        if y == 0 or int(sid[-3:]) % 8 == 1
    ]
    parts = _split(data.select(keep))
    config = CONFIG.model_copy(update={"balance": "sampler", "epochs": 15})
    result = fit(model_spec(config, F, 2, "lstm"), parts["train"], parts["val"], config)
    metrics = evaluate(result.model, parts["test"], ["c0", "c1"])
    assert metrics["macro_f1"] >= 0.9, metrics


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "options", [{}, {"cell": "gru", "pooling": "attention", "bidirectional": True}]
)
def test_bf16_autocast_on_gpu_learns_order_too(order_parts: dict, options: dict) -> None:
    """The GPU twin of test_only_the_recurrent_model_tells_classes_apart_by_order, bf16 autocast."""
    config = CONFIG.model_copy(update=options)
    result = fit(
        model_spec(config, F, 4, "lstm"),
        order_parts["train"],
        order_parts["val"],
        config,
        device="cuda",
    )
    assert next(result.model.parameters()).is_cuda
    assert evaluate(result.model, order_parts["test"], ORDER_CLASSES)["accuracy"] >= 0.95
