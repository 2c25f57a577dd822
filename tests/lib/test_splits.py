"""Splits: deterministic, disjoint, stratified, and stable when series are added."""

from __future__ import annotations

import random

import pytest

from lib.splits import SPLITS, split_hash, stratified_split


def _data(counts: dict[str, int]) -> tuple[list[str], list[str]]:
    ids = [f"{label}/clip_{i:03d}.mp4" for label, n in counts.items() for i in range(n)]
    return ids, [sid.split("/")[0] for sid in ids]


def _where(splits: dict[str, list[str]]) -> dict[str, str]:
    return {sid: name for name, ids in splits.items() for sid in ids}


def test_same_inputs_in_any_order_give_the_same_split() -> None:
    ids, labels = _data({"walk": 40, "run": 25})
    first = stratified_split(ids, labels, 0.15, 0.15, seed=7)
    pairs = list(zip(ids, labels))
    random.Random(0).shuffle(pairs)
    shuffled = stratified_split([p[0] for p in pairs], [p[1] for p in pairs], 0.15, 0.15, seed=7)
    assert first == shuffled
    assert first != stratified_split(ids, labels, 0.15, 0.15, seed=8)


def test_splits_are_disjoint_cover_everything_and_are_stratified() -> None:
    ids, labels = _data({"walk": 100, "run": 20, "jump": 3})
    splits = stratified_split(ids, labels, 0.15, 0.15, seed=0)
    assert sorted(sid for name in SPLITS for sid in splits[name]) == sorted(ids)
    assert len(_where(splits)) == len(ids)
    sizes = {
        (name, label): sum(s.startswith(label) for s in splits[name])
        for name in SPLITS
        for label in ("walk", "run", "jump")
    }
    assert (sizes["test", "walk"], sizes["val", "walk"], sizes["train", "walk"]) == (15, 15, 70)
    assert (sizes["test", "run"], sizes["val", "run"], sizes["train", "run"]) == (3, 3, 14)
    assert (sizes["test", "jump"], sizes["val", "jump"], sizes["train", "jump"]) == (1, 1, 1)


def test_tiny_classes_keep_a_training_example_and_zero_fractions_are_respected() -> None:
    ids, labels = _data({"one": 1, "two": 2})
    where = _where(stratified_split(ids, labels, 0.15, 0.15, seed=0))
    assert where["one/clip_000.mp4"] == "train"
    assert sorted(where[s] for s in ids if s.startswith("two")) == ["train", "val"]
    ids, labels = _data({"a": 30})
    assert stratified_split(ids, labels, 0.2, 0.0, seed=0)["test"] == []


def test_a_split_is_pinned_so_a_refactor_cannot_silently_reshuffle_it() -> None:
    ids, labels = _data({"a": 5, "b": 4})
    splits = stratified_split(ids, labels, 0.2, 0.2, seed=0)
    assert splits == {
        "train": ["a/clip_000.mp4", "a/clip_001.mp4", "a/clip_003.mp4", "b/clip_000.mp4", "b/clip_001.mp4"],
        "val": ["a/clip_002.mp4", "b/clip_002.mp4"],
        "test": ["a/clip_004.mp4", "b/clip_003.mp4"],
    }
    assert split_hash(splits) == "3f84d11e30fc81f4825896d367d5023e"


def test_adding_one_series_moves_at_most_one_existing_series_across_each_cut() -> None:
    other = [f"other/{i}" for i in range(12)]
    grown: list[str] = []
    before = None
    for i in range(60):
        grown.append(f"grow/{random.Random(i).random()}")
        after = _where(stratified_split(other + grown, ["other"] * 12 + ["grow"] * len(grown), 0.15, 0.2, seed=3))
        if len(grown) >= 3:
            assert set(after[s] for s in grown) == set(SPLITS)
        if before is not None:
            moved = [(before[s], after[s]) for s in before if before[s] != after[s]]
            assert all(before[s] == after[s] for s in other)
            assert len(moved) <= 2
            assert all({a, b} in ({"test", "val"}, {"val", "train"}) for a, b in moved)
        before = after


def test_adding_many_series_moves_few_existing_ones() -> None:
    ids, labels = _data({"walk": 200, "run": 80})
    before = _where(stratified_split(ids, labels, 0.15, 0.15, seed=1))
    new_ids, new_labels = _data({"walk_new": 20})
    after = _where(stratified_split(ids + new_ids, labels + ["walk"] * 20, 0.15, 0.15, seed=1))
    moved = [s for s in before if before[s] != after[s]]
    assert len(moved) <= 2 * 20
    assert not [s for s in moved if s.startswith("run")]


def test_split_hash_ignores_list_order_and_sees_a_move() -> None:
    ids, labels = _data({"walk": 10, "run": 10})
    splits = stratified_split(ids, labels, 0.2, 0.2, seed=0)
    reordered = {name: list(reversed(splits[name])) for name in reversed(SPLITS)}
    assert split_hash(reordered) == split_hash(splits)
    moved = {**splits, "train": splits["train"][1:], "test": splits["test"] + splits["train"][:1]}
    assert split_hash(moved) != split_hash(splits)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="'a'"):
        stratified_split(["a", "a", "b"], ["x", "x", "y"], 0.1, 0.1, seed=0)
    with pytest.raises(ValueError, match="2 labels"):
        stratified_split(["a", "b", "c"], ["x", "y"], 0.1, 0.1, seed=0)
    with pytest.raises(ValueError, match="val_fraction=0.6"):
        stratified_split(["a", "b"], ["x", "y"], 0.6, 0.5, seed=0)
