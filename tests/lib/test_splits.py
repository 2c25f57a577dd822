"""Splits: deterministic, disjoint, stratified, and stable when series are added."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lstmpipe.lib.config import TrainConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.training.experiment import make_splits
from lstmpipe.lib.training.splits import (
    SPLITS,
    match_split_lists,
    pins_from_record,
    read_split_lists,
    split_hash,
    split_records,
    stratified_split,
)


def _data(counts: dict[str, int]) -> tuple[list[str], list[str]]:
    ids = [f"{label}/clip_{i:03d}.mp4" for label, n in counts.items() for i in range(n)]
    return ids, [sid.split("/")[0] for sid in ids]


def _where(splits: dict[str, list[str]]) -> dict[str, str]:
    return {sid: name for name, ids in splits.items() for sid in ids}


def test_same_inputs_in_any_order_give_the_same_split() -> None:
    ids, labels = _data({"walk": 40, "run": 25})
    first = stratified_split(ids, labels, 0.15, 0.15, seed=7)
    pairs = list(zip(ids, labels, strict=False))
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
        "train": [
            "a/clip_000.mp4",
            "a/clip_001.mp4",
            "a/clip_003.mp4",
            "b/clip_000.mp4",
            "b/clip_001.mp4",
        ],
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
        after = _where(
            stratified_split(
                other + grown, ["other"] * 12 + ["grow"] * len(grown), 0.15, 0.2, seed=3
            )
        )
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


def _hash(series_id: str) -> str:
    """A stand-in content hash: what the bytes of `series_id` would hash to."""
    return f"h-{series_id.rsplit('/', 1)[-1]}-{series_id.split('/')[0]}"


def test_a_renamed_series_with_the_same_bytes_keeps_its_split() -> None:
    ids, labels = _data({"walk": 30, "run": 30})
    hashes = [_hash(s) for s in ids]
    before = _where(stratified_split(ids, labels, 0.2, 0.2, seed=0, keys=hashes))
    renamed = [f"moved/{s}" for s in ids]  # every id changes; no byte does
    after = _where(stratified_split(renamed, labels, 0.2, 0.2, seed=0, keys=hashes))
    assert all(before[s] == after[f"moved/{s}"] for s in ids)


def test_the_same_bytes_under_two_names_never_straddle_splits() -> None:
    ids, labels = _data({"walk": 40})
    copies = [f"copy/{s}" for s in ids[:10]]
    keys = [_hash(s) for s in ids] + [_hash(s) for s in ids[:10]]
    where = _where(
        stratified_split(ids + copies, labels + ["walk"] * 10, 0.2, 0.2, seed=0, keys=keys)
    )
    assert all(where[s] == where[f"copy/{s}"] for s in ids[:10])


def test_with_the_earlier_record_no_series_crosses_splits_when_series_are_added() -> None:
    ids, labels = _data({"walk": 30, "run": 12, "jump": 3})
    hashes = {s: _hash(s) for s in ids}
    first = stratified_split(ids, labels, 0.15, 0.2, seed=0, keys=[hashes[s] for s in ids])
    record = json.loads(json.dumps(split_records(first, hashes)))  # as logged
    assert record["test"][0] == {
        "series_id": first["test"][0],
        "content_hash": hashes[first["test"][0]],
    }
    before = _where(first)
    grown_ids, grown_labels = list(ids), list(labels)
    for step in range(1, 41):  # one new series at a time, in every class
        label = ("walk", "run", "jump")[step % 3]
        grown_ids.append(f"{label}/new_{step:03d}.mp4")
        grown_labels.append(label)
        keys = [_hash(s) for s in grown_ids]
        pins = pins_from_record(record, grown_ids, keys)
        after = _where(
            stratified_split(grown_ids, grown_labels, 0.15, 0.2, seed=0, keys=keys, pinned=pins)
        )
        assert {s: after[s] for s in ids} == before
    # Still stratified: the new series went where their class was short.
    sizes = {
        name: sum(after[s] == name for s in grown_ids if s.startswith("jump")) for name in SPLITS
    }
    # 16 jump series: round(16 * .2) = 3, round(16 * .35) = 6
    assert sizes["test"] >= 3 and sizes["val"] >= 2


def test_a_plain_id_record_from_an_older_run_pins_by_id_and_a_hash_wins_over_an_id() -> None:
    pins = pins_from_record(
        {"test": ["a/1.mp4"], "train": [{"series_id": "b/2.mp4", "content_hash": "h2"}]},
        ["a/1.mp4", "renamed/2.mp4", "c/3.mp4"],
        ["h1", "h2", "h3"],
    )
    assert pins == {"a/1.mp4": "test", "renamed/2.mp4": "train"}
    with pytest.raises(ValueError, match="'holdout'"):
        pins_from_record({"holdout": []}, [], [])


def _ucf(tmp_path: Path) -> Path:
    """UCF101-style lists for split 1 (and a split 2 that
    must be ignored); Windows separators in one line."""
    folder = tmp_path / "ucfTrainTestlist"
    folder.mkdir()
    (folder / "classInd.txt").write_text("1 Archery\n2 Bowling\n")
    train = [f"Archery/v_Archery_g{g:02d}_c01.avi {1}" for g in range(1, 9)]
    train += [f"Bowling/v_Bowling_g{g:02d}_c01.avi {2}" for g in range(1, 9)]
    train[0] = train[0].replace("/", "\\")
    (folder / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")
    test = [f"Archery/v_Archery_g{g:02d}_c01.avi" for g in (9, 10)] + [
        "Bowling/v_Bowling_g09_c01.avi"
    ]
    (folder / "testlist01.txt").write_text("\n".join(test) + "\n\n")
    (folder / "testlist02.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    return folder


def _hmdb(tmp_path: Path) -> Path:
    folder = tmp_path / "testTrainMulti_7030_splits"
    folder.mkdir()
    for label in ("brush_hair", "cartwheel"):
        lines = [f"{label}_clip{i}.avi {1 if i < 7 else 2 if i < 9 else 0} " for i in range(10)]
        (folder / f"{label}_test_split1.txt").write_text("\n".join(lines) + "\n")
        (folder / f"{label}_test_split2.txt").write_text(f"{label}_clip0.avi 2\n")
    return folder


def test_ucf101_lists_are_read_for_the_chosen_split(tmp_path: Path) -> None:
    folder = _ucf(tmp_path)
    entries = read_split_lists(folder, 1)
    assert entries["Archery/v_Archery_g01_c01.avi"] == "train"
    assert entries["Bowling/v_Bowling_g09_c01.avi"] == "test"
    assert sorted(set(entries.values())) == ["test", "train"] and len(entries) == 19
    # a file in the folder works too
    assert read_split_lists(folder / "trainlist01.txt", 1) == entries
    assert read_split_lists(folder, 2) == {"Archery/v_Archery_g01_c01.avi": "test"}


def test_hmdb51_lists_name_class_and_video(tmp_path: Path) -> None:
    entries = read_split_lists(_hmdb(tmp_path), 1)
    assert entries["brush_hair/brush_hair_clip0.avi"] == "train"
    assert entries["cartwheel/cartwheel_clip7.avi"] == "test"
    assert entries["cartwheel/cartwheel_clip9.avi"] == "unused"
    assert len(entries) == 20


def test_bad_split_lists_are_named(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="trainlist03.txt"):
        read_split_lists(_ucf(tmp_path), 3)
    with pytest.raises(BadInput, match="nowhere"):
        read_split_lists(tmp_path / "nowhere", 1)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "run_test_split1.txt").write_text("a.avi 7\n")
    with pytest.raises(BadInput, match="run_test_split1.txt"):
        read_split_lists(folder, 1)
    (folder / "run_test_split1.txt").write_text("a.avi 1\n")
    (folder / "run2_test_split1.txt").write_text("")
    (folder / "trainlist01.txt").write_text("x/a.avi 1\n")
    (folder / "testlist01.txt").write_text("x/a.avi\n")
    with pytest.raises(BadInput, match="both train and test"):
        read_split_lists(folder, 1)


def test_listed_paths_match_series_ids_by_path_then_by_file_name(tmp_path: Path) -> None:
    entries = read_split_lists(_ucf(tmp_path), 1)
    ids = [
        "UCF101.zip/UCF-101/Archery/v_Archery_g01_c01.avi",  # by relative path, inside an archive
        "archery/v_archery_g09_c01.avi",  # case differs (UCF101's own lists do that)
        "elsewhere/v_Bowling_g02_c01.avi",  # only the file name matches
        "Bowling/v_Bowling_g99_c01.avi",  # not listed
    ]
    assigned, unlisted = match_split_lists(entries, ids)
    assert assigned == {ids[0]: "train", ids[1]: "test", ids[2]: "train"}
    assert unlisted == [ids[3]]


def _series_for(entries: dict[str, str], extra: int = 0) -> tuple[list[str], list[str], list[str]]:
    ids = [f"2026-11-19/{rel}" for rel in sorted(entries)] + [
        f"new/v_extra_{i}.avi" for i in range(extra)
    ]
    labels = [sid.split("/")[1] if not sid.startswith("new/") else "Archery" for sid in ids]
    return ids, labels, [_hash(s) for s in ids]


@pytest.mark.parametrize("make", [_ucf, _hmdb], ids=["ucf101", "hmdb51"])
def test_official_lists_decide_test_and_validation_comes_from_their_train_part(
    tmp_path: Path, make
) -> None:
    folder = make(tmp_path)
    entries = read_split_lists(folder, 1)
    ids, labels, hashes = _series_for(entries, extra=2)
    config = TrainConfig(split_lists=str(folder), split_number=1, val_fraction=0.25, seed=0)
    splits, excluded = make_splits(ids, labels, hashes, config)
    where = _where(splits)
    for sid in ids:
        listed = entries.get(sid.split("/", 1)[1])
        if listed == "test":
            assert where[sid] == "test", sid
        elif listed == "train":
            assert where[sid] in ("train", "val"), sid
        else:
            assert sid not in where, sid
    assert excluded["unlisted"] == ["new/v_extra_0.avi", "new/v_extra_1.avi"]
    # HMDB51's code 0: one per class here
    assert len(excluded["unused"]) == (2 if make is _hmdb else 0)
    # stratified: every class gives validation series
    for label in {rel.split("/")[0] for rel in entries}:
        assert any(labels[ids.index(s)] == label for s in splits["val"]), label
    assert make_splits(ids, labels, hashes, config) == (splits, excluded)  # deterministic


def test_official_lists_with_a_record_keep_validation_stable(tmp_path: Path) -> None:
    folder = _ucf(tmp_path)
    entries = read_split_lists(folder, 1)
    ids, labels, hashes = _series_for(entries)
    config = TrainConfig(split_lists=str(folder), val_fraction=0.25)
    first, _ = make_splits(ids, labels, hashes, config)
    record = tmp_path / "split_records.json"
    record.write_text(json.dumps(split_records(first, dict(zip(ids, hashes, strict=False)))))
    more = [f"2026-11-19/Archery/v_Archery_g{g:02d}_c02.avi" for g in range(1, 9)]
    (folder / "trainlist01.txt").write_text(
        (folder / "trainlist01.txt").read_text()
        + "".join(f"{m.split('/', 1)[1]} 1\n" for m in more)
    )
    ids2, labels2 = ids + more, labels + ["Archery"] * len(more)
    second, _ = make_splits(
        ids2,
        labels2,
        [_hash(s) for s in ids2],
        TrainConfig(split_lists=str(folder), val_fraction=0.25, split_record=str(record)),
    )
    assert {s: n for s, n in _where(second).items() if s in ids} == _where(first)
