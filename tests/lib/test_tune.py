"""lib/training/tune.py: the search's pure parts (space,
trials, best pick, one trial's reports), no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from lstmpipe.lib.config import TrainConfig
from lstmpipe.lib.training.loop import SequenceSet
from lstmpipe.lib.training.tune import (
    TUNED,
    SearchData,
    SearchSpace,
    TrialRecord,
    pick_best,
    sample_trials,
    train_trial,
    trial_config,
)


def test_trials_start_with_the_base_config_and_are_seeded_distinct_and_in_range() -> None:
    base, space = TrainConfig(), SearchSpace()
    trials = sample_trials(base, space, 8, seed=0)
    assert len(trials) == 8 and trials[0] == {k: getattr(base, k) for k in TUNED}
    assert trials == sample_trials(base, space, 8, seed=0) != sample_trials(base, space, 8, seed=1)
    assert len({tuple(t.values()) for t in trials}) == 8
    for t in trials[1:]:
        assert t["hidden_size"] in space.hidden_size and t["num_layers"] in space.num_layers
        assert space.dropout[0] <= t["dropout"] <= space.dropout[1]
        assert space.lr[0] * 0.99 <= t["lr"] <= space.lr[1] * 1.01
        assert isinstance(t["bidirectional"], bool)


def test_a_small_space_gives_fewer_trials_not_a_hang() -> None:
    space = SearchSpace(
        hidden_size=(32,),
        num_layers=(1,),
        dropout=(0.1, 0.1),
        lr=(1e-3, 1e-3),
        bidirectional=(False,),
    )
    # the base config and the one point
    assert len(sample_trials(TrainConfig(), space, 5, seed=0)) == 2


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"hidden_size": ()}, "hidden_size"),
        ({"lr": (0.0, 1e-3)}, "lr"),
        ({"dropout": (0.5, 0.1)}, "dropout"),
        ({"dropout": (0.0, 1.0)}, "dropout"),
    ],
)
def test_bad_spaces_name_the_key(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SearchSpace(**kwargs)


def test_trial_config_replaces_only_tunable_keys() -> None:
    config = trial_config(TrainConfig(epochs=7), {"hidden_size": 8, "lr": 0.01})
    assert (config.hidden_size, config.lr, config.epochs) == (8, 0.01, 7)
    with pytest.raises(ValueError, match="epochs"):
        trial_config(TrainConfig(), {"epochs": 3})
    with pytest.raises(ValueError, match="at least 1"):
        sample_trials(TrainConfig(), SearchSpace(), 0, seed=0)


def row(epoch: int, f1: float, loss: float) -> dict:
    return {"epoch": epoch, "val_macro_f1": f1, "val_loss": loss}


def test_pick_best_by_best_epoch_f1_then_loss_then_trial_order() -> None:
    a = TrialRecord("a", 0, {}, [row(1, 0.5, 1.0), row(2, 0.9, 0.5)], "completed")
    b = TrialRecord("b", 1, {}, [row(1, 0.9, 0.4)], "stopped")  # same F1, lower loss: better
    # a tie with b: the earlier trial wins
    c = TrialRecord("c", 2, {}, [row(1, 0.9, 0.4)], "completed")
    dead = TrialRecord("d", 3, {}, [], "error")
    assert a.best == row(2, 0.9, 0.5)
    assert pick_best([a, b, c, dead]).trial_id == "b"
    assert pick_best([c, b]).trial_id == "b"
    assert pick_best([a, dead]).trial_id == "a"
    with pytest.raises(ValueError, match="none of 1 trials"):
        pick_best([dead])
    assert b.summary()["best_val_macro_f1"] == 0.9 and dead.summary()["best_epoch"] is None


def test_train_trial_reports_every_epoch_through_the_callback() -> None:
    rng = np.random.default_rng(0)

    def part(n: int) -> SequenceSet:
        return SequenceSet(
            [rng.normal(size=(int(rng.integers(3, 6)), 4)).astype(np.float32) for _ in range(n)],
            np.arange(n) % 2,
            [f"s{i}" for i in range(n)],
        )

    data = SearchData(
        ["a", "b"], {"train": [], "val": [], "test": []}, part(6), part(4), input_dim=4
    )
    reports: list[dict] = []
    result = train_trial(data, TrainConfig(epochs=3, patience=3, hidden_size=8), reports.append)
    assert [r["epoch"] for r in reports] == [1.0, 2.0, 3.0] and len(result.history) == 3
    assert set(reports[0]) == {
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_macro_f1",
        "lr",
    }
