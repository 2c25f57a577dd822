"""Deterministic, stratified train/val/test splits keyed on series (content hash or id), not rows.

How a split is made, per class:
  1. order the class' series by blake2b(f"{seed}:{key}"), where key is the series'
     content hash when given (else its series_id); ties by series_id. Series sharing a
     key (the same bytes under two names) are one unit and always share a split;
  2. cut that order at c1 and c2 (`_cuts`): ranks [0, c1) are test, [c1, c2) val,
     [c2, n) train;
  3. with `pinned` (an earlier run's assignments, see `pins_from_record`), pinned series
     keep their split and only the others are placed: in rank order, into test, then
     val, up to the sizes the whole class calls for (c1, c2 - c1), the rest into train.

What holds (the tests check each):
  - A series' split depends only on the seed, its key, and the set of keys in its class:
    not on input order, not on other classes, not on the machine. Keyed by content
    hash, a renamed series (same bytes, new id) keeps its split.
  - Every split is non-empty for every class of >= 3 series (when its fraction is > 0).
    A class of 2 gives one to val and one to train; a class of 1 goes to train.
  - Stability without a record: c1 and c2 never shrink and grow by at most 1 when a
    class gains one series, and existing series keep their relative order. So adding
    one series to a class moves at most one existing series across each cut: at most
    2 moves, each between neighbours in hash order (test<->val or val<->train). Adding
    m series moves at most m existing series across each cut. Other classes never
    move. Removing series is the same statement read backwards.
  - With the earlier run's record pinned, no recorded series moves at all; new series
    fill whatever the class' test and val parts lack.

Official split lists (`read_split_lists`: UCF101 and HMDB51 formats) name the test
set instead; validation is then carved from their train part as above.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lstmpipe.lib.errors import BadInput

SPLITS = ("train", "val", "test")


def stratified_split(
    series_ids: list[str],
    labels: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    keys: Sequence[str] | None = None,
    pinned: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """{"train", "val", "test"} -> sorted series ids, stratified by label; see the module docstring.

    keys: one per series, what ranks it (content hashes); None = the series ids.
    pinned: series_id -> split for series that must stay where an earlier run put them.
    """
    keys = list(series_ids) if keys is None else list(keys)
    _check(series_ids, labels, val_fraction, test_fraction, keys)
    pinned = dict(pinned or {})
    bad = sorted({split for split in pinned.values() if split not in SPLITS})
    if bad:
        raise ValueError(f"stratified_split: pinned splits {bad} are not among {', '.join(SPLITS)}")
    # label -> key -> ids
    by_class: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for series_id, label, key in zip(series_ids, labels, keys, strict=False):
        by_class[label][key].append(series_id)
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for units in by_class.values():
        ordered = sorted(units, key=lambda key: (_rank_key(seed, key), min(units[key])))
        c1, c2 = _cuts(len(ordered), test_fraction, val_fraction)
        # A unit (one content, perhaps under several ids) follows its first pinned id.
        held = {
            key: next(pinned[sid] for sid in sorted(units[key]) if sid in pinned)
            for key in ordered
            if any(sid in pinned for sid in units[key])
        }
        room = Counter({"test": c1, "val": c2 - c1})
        room.subtract(held.values())
        for key in ordered:
            split = held.get(key)
            if split is None:
                split = next((name for name in ("test", "val") if room[name] > 0), "train")
                room[split] -= 1
            splits[split] += units[key]
    return {name: sorted(ids) for name, ids in splits.items()}


def split_records(
    splits: Mapping[str, list[str]], content_hashes: Mapping[str, str]
) -> dict[str, list[dict]]:
    """split -> [{"series_id", "content_hash"}]: what a later run pins its splits with."""
    return {
        name: [{"series_id": sid, "content_hash": content_hashes.get(sid)} for sid in sorted(ids)]
        for name, ids in splits.items()
    }


def pins_from_record(
    record: Mapping[str, list[Any]], series_ids: Sequence[str], content_hashes: Sequence[str]
) -> dict[str, str]:
    """series_id -> split for the series an earlier run's record names: by content hash, then id.

    `record` is `split_records` output, or a plain {split: [series ids]} (an older run's
    splits.json).
    """
    by_hash: dict[str, str] = {}
    by_id: dict[str, str] = {}
    for split, entries in record.items():
        if split not in SPLITS:
            raise ValueError(f"split record: unknown split {split!r}; expected {', '.join(SPLITS)}")
        for entry in entries:
            entry = entry if isinstance(entry, Mapping) else {"series_id": entry}
            if entry.get("content_hash"):
                by_hash[entry["content_hash"]] = split
            if entry.get("series_id"):
                by_id[entry["series_id"]] = split
    pins = {}
    for series_id, content_hash in zip(series_ids, content_hashes, strict=False):
        split = by_hash.get(content_hash) or by_id.get(series_id)
        if split is not None:
            pins[series_id] = split
    return pins


def read_split_lists(path: str | Path, split_number: int) -> dict[str, str]:
    """Official split lists -> {relative path: "train" | "test" | "unused"}.

    `path` is a folder holding the lists, or one file in that folder. Understood:
      UCF101  trainlist0N.txt (`Class/v_X.avi 1`) and testlist0N.txt (`Class/v_X.avi`);
      HMDB51  <class>_test_splitN.txt (`video.avi 0|1|2`: 1 train, 2 test, 0 unused),
              read as `<class>/video.avi`.
    """
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    if not folder.is_dir():
        raise BadInput(str(path), "split lists: no such folder or file (train.split_lists)")
    ucf = [folder / f"{name}list{split_number:02d}.txt" for name in ("train", "test")]
    hmdb = sorted(folder.glob(f"*_test_split{split_number}.txt"))
    entries: dict[str, str] = {}
    if any(p.exists() for p in ucf):
        for list_path, split in zip(ucf, ("train", "test"), strict=False):
            for rel, _ in _lines(list_path) if list_path.exists() else []:
                _enter(entries, rel, split, list_path)
    elif hmdb:
        codes = {"0": "unused", "1": "train", "2": "test"}
        for list_path in hmdb:
            label = list_path.name[: -len(f"_test_split{split_number}.txt")]
            for name, code in _lines(list_path):
                if code not in codes:
                    raise BadInput(
                        str(list_path), f"line {name!r}: expected 0, 1 or 2 after the file name"
                    )
                _enter(entries, f"{label}/{name}", codes[code], list_path)
    else:
        raise BadInput(
            str(folder),
            f"no split lists for split {split_number}: looked for "
            f"trainlist{split_number:02d}.txt / testlist{split_number:02d}.txt (UCF101) and "
            f"*_test_split{split_number}.txt (HMDB51); check train.split_lists and "
            "train.split_number",
        )
    return entries


def match_split_lists(
    entries: Mapping[str, str], series_ids: Sequence[str]
) -> tuple[dict[str, str], list[str]]:
    """Listed paths onto series ids -> ({series_id: split}, sorted ids the lists do not name).

    A series matches a listed path when its id ends with that path (`x.zip/Class/v_X.avi`
    matches `Class/v_X.avi`), else when the file names agree and only one listed path has
    that name. Case-insensitive: UCF101's lists spell some names differently from its
    folders (`HandStandPushups` vs `HandstandPushups`).
    """
    by_path = {rel.casefold(): split for rel, split in entries.items()}
    names = Counter(rel.rsplit("/", 1)[-1] for rel in by_path)
    by_name = {
        rel.rsplit("/", 1)[-1]: split
        for rel, split in by_path.items()
        if names[rel.rsplit("/", 1)[-1]] == 1
    }
    assigned: dict[str, str] = {}
    unlisted: list[str] = []
    for series_id in series_ids:
        parts = series_id.casefold().split("/")
        suffixes = ["/".join(parts[i:]) for i in range(len(parts))]  # longest first
        split = next((by_path[s] for s in suffixes if s in by_path), None) or by_name.get(parts[-1])
        if split is None:
            unlisted.append(series_id)
        else:
            assigned[series_id] = split
    return assigned, sorted(unlisted)


def _lines(path: Path) -> list[tuple[str, str]]:
    """(first field, with / separators; the rest) of each non-blank line."""
    rows = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields:
            rows.append((fields[0].replace("\\", "/"), " ".join(fields[1:])))
    return rows


def _enter(entries: dict[str, str], rel: str, split: str, source: Path) -> None:
    if entries.get(rel, split) != split:
        raise BadInput(str(source), f"{rel!r} is listed as both {entries[rel]} and {split}")
    entries[rel] = split


def split_hash(splits: dict[str, list[str]]) -> str:
    """A short fingerprint of who is in which split, to log beside a model and compare runs."""
    canonical = json.dumps({name: sorted(ids) for name, ids in splits.items()}, sort_keys=True)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def _rank_key(seed: int, series_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{series_id}".encode(), digest_size=16).digest()


def _cuts(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    """Cut points (c1, c2) for a class of n series; both non-decreasing in n with steps of 0 or 1.

    That monotonicity is the whole stability guarantee, so each bound is a min/max of
    such step functions: round-half-up(n * f), small constants, and n - 1.
    """
    want_test, want_val = int(test_fraction > 0), int(val_fraction > 0)
    # train keeps >= 1
    c2 = min(max(_round(n * (test_fraction + val_fraction)), want_test + want_val), n - 1)
    c1 = min(max(_round(n * test_fraction), want_test), c2 - want_val)  # val keeps >= 1 when wanted
    return max(c1, 0), max(c2, 0)


def _round(x: float) -> int:
    """Half up, the rule people check by hand (round() rounds half to even)."""
    return math.floor(x + 0.5)


def _check(
    series_ids: list[str],
    labels: list[str],
    val_fraction: float,
    test_fraction: float,
    keys: list[str],
) -> None:
    if len(series_ids) != len(labels) or len(keys) != len(labels):
        raise ValueError(
            f"stratified_split: {len(series_ids)} series ids but {len(labels)} labels "
            f"and {len(keys)} keys"
        )
    duplicates = sorted(series_id for series_id, count in Counter(series_ids).items() if count > 1)
    if duplicates:
        raise ValueError(
            f"stratified_split: series ids {duplicates[:5]} appear more than once; "
            "ids must be unique"
        )
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"stratified_split: val_fraction={val_fraction} and test_fraction={test_fraction} "
            "must each be in [0, 1) and sum to less than 1, so that training keeps some series"
        )
