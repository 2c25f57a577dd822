"""Hyperparameter search, the pure parts: the space, the trials, a trial's training, the best pick.

No Ray here (tasks/tune.py runs the trials on Ray Tune and reports through the
`report` callback of `train_trial`). The trials are drawn here, seeded, instead of
by Tune's samplers, so the same seed and space give the same trials on any
cluster, and the search always includes the base configuration itself: a search
never registers something worse than `train` would have on its own trials' data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstmpipe.lib.config import TrainConfig
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.training.experiment import load_sequences, make_splits
from lstmpipe.lib.training.loop import FitResult, SequenceSet, fit, model_spec
from lstmpipe.lib.training.splits import split_hash

# the TrainConfig keys a search varies
TUNED = ("hidden_size", "num_layers", "dropout", "lr", "bidirectional")
# what ASHA compares trials on, per epoch (the metric fit's early stopping uses)
METRIC = "val_macro_f1"
# one row of fit's history
EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr")


@dataclass(frozen=True)
class SearchSpace:
    """Where the search looks; defaults span what has worked on CNN features of 512-2048 dims."""

    hidden_size: tuple[int, ...] = (32, 64, 128, 256)  # LSTM units per direction, one of
    num_layers: tuple[int, ...] = (1, 2)  # one of
    dropout: tuple[float, float] = (0.0, 0.5)  # uniform in [low, high]
    # log-uniform in [low, high]: learning rates matter by ratio
    lr: tuple[float, float] = (3e-4, 1e-2)
    bidirectional: tuple[bool, ...] = (False, True)  # one of

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "bidirectional"):
            if not getattr(self, name):
                raise ValueError(
                    f"search space {name}: needs at least one choice, got {getattr(self, name)!r}"
                )
        for name in ("dropout", "lr"):
            low, high = getattr(self, name)
            if not 0 <= low <= high or (name == "lr" and low <= 0):
                raise ValueError(
                    f"search space {name}: ({low}, {high}) is not a range low <= high (lr > 0)"
                )
        if not self.dropout[1] < 1:
            raise ValueError(f"search space dropout: {self.dropout[1]} must stay below 1")


@dataclass
class SearchData:
    """A search's data, made once and shared by every trial (through Ray's object store)."""

    labels: list[str]  # class names, in logit order
    splits: dict[str, list[str]]  # split -> series ids, exactly as run_experiment splits them
    train: SequenceSet
    val: SequenceSet
    input_dim: int

    @property
    def split_hash(self) -> str:
        return split_hash(self.splits)


@dataclass(frozen=True)
class TrialRecord:
    """What one trial did: its hyperparameters and the per-epoch rows it reported."""

    trial_id: str
    index: int  # position in sample_trials' list: the tie-breaker, so picks are deterministic
    hp: dict[str, Any]
    history: list[dict[str, float]]
    # completed (ran to its end or its own early stopping) | stopped (by the scheduler) | error
    status: str

    @property
    def best(self) -> dict[str, float] | None:
        """The epoch fit keeps: highest val macro-F1, ties to the lower val loss, then earlier."""
        if not self.history:
            return None
        return max(self.history, key=lambda row: (row[METRIC], -row["val_loss"], -row["epoch"]))

    def summary(self) -> dict[str, Any]:
        best = self.best or {}
        return {
            "trial_id": self.trial_id,
            "index": self.index,
            "status": self.status,
            "epochs": len(self.history),
            **{f"hp.{k}": v for k, v in self.hp.items()},
            "best_epoch": best.get("epoch"),
            "best_val_macro_f1": best.get(METRIC),
            "best_val_loss": best.get("val_loss"),
        }


def sample_trials(
    base: TrainConfig, space: SearchSpace, count: int, seed: int
) -> list[dict[str, Any]]:
    """`count` hyperparameter sets, no repeats: the base
    config's own first, then seeded draws from `space`."""
    if count < 1:
        raise ValueError(f"trials: {count}; a search needs at least 1")
    rng = np.random.default_rng(seed)
    trials = [{key: getattr(base, key) for key in TUNED}]
    seen = {_key(trials[0])}
    # bounded: a space of few discrete points cannot give `count` distinct sets
    for _ in range(100 * count):
        if len(trials) == count:
            break
        hp = {
            "hidden_size": int(rng.choice(space.hidden_size)),
            "num_layers": int(rng.choice(space.num_layers)),
            "dropout": round(float(rng.uniform(*space.dropout)), 4),
            "lr": float(
                f"{math.exp(rng.uniform(math.log(space.lr[0]), math.log(space.lr[1]))):.3g}"
            ),
            "bidirectional": bool(rng.choice(space.bidirectional)),
        }
        if _key(hp) not in seen:
            seen.add(_key(hp))
            trials.append(hp)
    return trials


def trial_config(base: TrainConfig, hp: dict[str, Any]) -> TrainConfig:
    """The base training config with one trial's hyperparameters."""
    unknown = set(hp) - set(TUNED)
    if unknown:
        raise ValueError(
            f"trial hyperparameters {sorted(unknown)}: not tunable; tunable are {', '.join(TUNED)}"
        )
    # the search chose these settings: no second candidate beside them (train.select)
    return base.model_copy(update={**hp, "select": "none"})


def prepare(
    cache: FeatureCache, recipe_id: str, input_dim: int, refs: list[SeriesRef], config: TrainConfig
) -> SearchData:
    """Read the labelled series' features once; split them as run_experiment does (seed, ids)."""
    labelled = [r for r in refs if r.label is not None]
    labels = sorted({r.label for r in refs if r.label is not None})
    if len(labels) < 2:
        raise ValueError(
            f"a search needs at least 2 classes with cached features; found {labels or 'none'}"
        )
    data = load_sequences(cache, recipe_id, labelled, labels)
    by_id = {r.series_id: r for r in labelled}
    splits, _ = make_splits(
        data.series_ids,
        [labels[y] for y in data.labels],
        [by_id[s].content_hash for s in data.series_ids],
        config,
    )
    return SearchData(
        labels, splits, data.select(splits["train"]), data.select(splits["val"]), input_dim
    )


def train_trial(
    data: SearchData,
    config: TrainConfig,
    report: Callable[[dict[str, float]], None],
    device: str = "cpu",
) -> FitResult:
    """Fit one trial's LSTM on the train split, `report`ing each epoch's row to the scheduler."""
    spec = model_spec(config, data.input_dim, len(data.labels), "lstm")
    return fit(
        spec,
        data.train,
        data.val,
        config,
        on_epoch=lambda row: report(_epoch_row(row)),
        device=device,
    )


def pick_best(trials: list[TrialRecord]) -> TrialRecord:
    """Highest best-epoch val macro-F1; ties to the lower
    val loss at that epoch, then the earlier trial."""
    scored = [(best, t) for t in trials if (best := t.best) is not None]
    if not scored:
        raise ValueError(f"none of {len(trials)} trials reported an epoch; see their errors above")
    return max(scored, key=lambda s: (s[0][METRIC], -s[0]["val_loss"], -s[1].index))[1]


def _epoch_row(row: dict[str, Any]) -> dict[str, float]:
    return {key: float(row[key]) for key in EPOCH_KEYS if key in row}


def _key(hp: dict[str, Any]) -> tuple:
    return tuple(hp[k] for k in TUNED)
