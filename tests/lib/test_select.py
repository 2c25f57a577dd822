"""train.select: the motion candidate is fitted beside the configured LSTM and kept only when it
scores higher on validation (lib/training/experiment.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lstmpipe.lib.config import TrainConfig
from lstmpipe.lib.training.experiment import MOTION, candidates, fit_selected
from lstmpipe.lib.training.loop import SequenceSet, evaluate
from lstmpipe.lib.training.splits import stratified_split

pytestmark = pytest.mark.usefixtures("one_thread")
F = 16
CONFIG = TrainConfig(hidden_size=32, input_proj=32, epochs=30, patience=10, batch_size=16, seed=0)


def test_candidates_are_the_configured_then_motion_scaled_from_it() -> None:
    both = candidates(CONFIG)
    assert list(both) == ["configured", "motion"] and both["configured"] == CONFIG
    motion = both["motion"]
    assert {k: getattr(motion, k) for k in MOTION} == MOTION
    assert (motion.epochs, motion.patience) == (45, 16)  # 1.5x and 1.6x the configured
    assert motion.hidden_size == CONFIG.hidden_size and motion.seed == CONFIG.seed
    assert list(candidates(CONFIG.model_copy(update={"select": "none"}))) == ["configured"]


def _moving_dot(n: int, seed: int, level: float, noise: float = 0.3) -> SequenceSet:
    """A dot's position along one feature direction, rising (class 0) or falling (class 1), under
    a per-series level `level` times its size: what a backbone's view of a scene looks like."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=F) / np.sqrt(F)
    features, labels = [], []
    for i in range(n):
        label, steps = i % 2, int(rng.integers(10, 20))
        ramp = np.linspace(-1.0, 1.0, steps) * (1.0 if label == 0 else -1.0)
        frames = level * rng.normal(size=F) + noise * rng.normal(size=(steps, F))
        features.append((frames + ramp[:, None] * direction).astype(np.float32))
        labels.append(label)
    return SequenceSet(features, np.array(labels), [f"s{i:03d}" for i in range(n)])


def _parts(data: SequenceSet) -> dict[str, SequenceSet]:
    labels = [str(y) for y in data.labels]
    splits = stratified_split(data.series_ids, labels, 0.25, 0.3, seed=0)
    return {name: data.select(ids) for name, ids in splits.items()}


def test_the_motion_candidate_is_kept_where_the_level_swamps_the_motion() -> None:
    parts = _parts(_moving_dot(80, seed=0, level=8.0))
    selected = fit_selected(CONFIG, parts["train"], parts["val"], F, 2)
    assert selected.name == "motion", selected.scores
    assert selected.scores["motion"] > selected.scores["configured"]
    assert selected.config == candidates(CONFIG)["motion"]
    assert evaluate(selected.fit.model, parts["test"], ["up", "down"])["accuracy"] >= 0.9


def test_on_a_tie_the_configured_model_stays() -> None:
    # no level, little noise: either reads the motion
    parts = _parts(_moving_dot(80, seed=1, level=0.0, noise=0.05))
    selected = fit_selected(CONFIG, parts["train"], parts["val"], F, 2)
    assert selected.scores["configured"] == selected.scores["motion"] == 1.0
    assert selected.name == "configured" and selected.config == CONFIG
