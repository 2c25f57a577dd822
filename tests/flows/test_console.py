"""The one-screen summary: each thing is said once (pure: result dicts in, text out)."""

from __future__ import annotations

from lstmpipe.flows.console import render

EXTRACT = {
    "series": 8,
    "cached": 8,
    "extracted": 0,
    "failed": 0,
    "frames": 96,
    "recipe_id": "r1",
    "per_series": [],
    "failures_file": None,
}
PARTITIONS = {
    "done": [],
    "selected": 2,
    "already_done": 2,
    "recipe_id": "r1",
    "series": 0,
    "cached": 0,
    "extracted": 0,
    "failed": 0,
    "failed_series": [],
}
INFER = {
    "extract": EXTRACT,
    "predicted": 8,
    "model": "m",
    "version": "2",
    "predictions": "p.parquet",
}
PROMOTE = {
    "model": "m",
    "challenger": "2",
    "promoted": True,
    "alias": "champion",
    "reason": "passed",
    "report": "reports/run.html",
}


def nightly(train: dict | None, promote: dict | None, reason: str) -> dict:
    return {
        "command": "nightly",
        "run_id": "run",
        "seconds": 1.0,
        "partitions": PARTITIONS,
        "train": train,
        "promote": promote,
        "infer": INFER,
        "train_reason": reason,
        "failed": 0,
    }


def test_a_trained_night_names_its_report_once() -> None:
    trained = {
        "extract": EXTRACT,
        "train": {
            "model": "m",
            "version": "2",
            "test": {"accuracy": 1.0, "macro_f1": 1.0},
            "baseline_test": {"macro_f1": 0.2},
            "splits": {},
        },
        "report": "reports/run.html",
    }
    text = render(nightly(trained, PROMOTE, "1 partition(s) done since v1"))
    assert text.count("reports/run.html") == 1 and "promote   m v2 promoted to @champion" in text


def test_a_night_that_promotes_an_undecided_version_says_so() -> None:
    text = render(nightly(None, PROMOTE, "skipped: no partition done since the newest version"))
    assert "train     skipped" in text and "promote   m v2 promoted to @champion: passed" in text


def test_ignored_files_are_counted_and_listed_up_to_the_limit() -> None:
    entries = [{"path": f"notes/{i:02d}.txt", "reason": "not a media file"} for i in range(25)]
    extract = EXTRACT | {"ignored": 25, "ignored_files": entries}
    text = render({"command": "extract", "run_id": "run", "seconds": 1.0, **extract})
    assert "  ignored   25 files, neither series nor failures:" in text
    assert "    IGNORED notes/19.txt: not a media file" in text and "notes/20.txt" not in text
    assert "    ... and 5 more (--json lists every one)" in text
    assert "ignored" not in render(nightly(None, None, "skipped"))  # none: not a word
