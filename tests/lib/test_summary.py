"""Extraction summaries: counts by status, outcomes by series id, the JSON the CLI prints, and the
failures that feed the failures table."""

from __future__ import annotations

from pathlib import Path

from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.outcomes import SeriesOutcome, SeriesStatus
from lstmpipe.lib.ops.failures import read_failures, record_failures
from lstmpipe.lib.ops.summary import extraction_summary
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import Ignored
from lstmpipe.lib.state.store import LocalStore

BAD_CLIP = Failure("c.mp4", "/data/c.mp4", "decode", "moov atom not found")
REFUSED = Failure("z.tar/evil.mp4", "/data/z.tar", "discover", "absolute path")
OUTCOMES = [
    SeriesOutcome("b.mp4", SeriesStatus.EXTRACTED, 10),
    SeriesOutcome("a.mp4", SeriesStatus.CACHED, 7),
    SeriesOutcome.failed(BAD_CLIP),
]


def test_summary_counts_and_its_failures_feed_the_table(tmp_path: Path) -> None:
    summary = extraction_summary(OUTCOMES, [REFUSED], compute_seconds=1.234)
    counts = (summary.series, summary.cached, summary.extracted, summary.failed, summary.frames)
    assert counts == (4, 1, 1, 2, 17)
    assert (summary.compute.frames, summary.compute.seconds) == (10, 1.23)
    assert [r.series_id for r in summary.per_series] == [
        "a.mp4",
        "b.mp4",
        "c.mp4",
        "z.tar/evil.mp4",
    ]
    refs = [SeriesRef(s, f"h-{s}", "video", f"/data/{s}") for s in ("a.mp4", "b.mp4", "c.mp4")]
    assert [r.series_id for r in summary.usable(refs)] == ["a.mp4", "b.mp4"]

    record_failures(LocalStore(tmp_path), "run-9", summary.failures())
    table = read_failures(LocalStore(tmp_path))
    assert sorted(zip(table["series_id"].to_pylist(), table["stage"].to_pylist(), strict=True)) == [
        ("c.mp4", "decode"),
        ("z.tar/evil.mp4", "discover"),
    ]


def test_the_json_of_a_summary_is_what_the_cli_has_always_printed() -> None:
    """The keys it always had, in order, then the files discovery ignored (issue 16: added)."""
    ignored = [Ignored("README.txt", "not a media file lstmpipe reads: text")]
    summary = extraction_summary(OUTCOMES, [REFUSED], compute_seconds=2.0, ignored=ignored)
    document = summary.to_json()
    assert list(document) == [
        "series",
        "cached",
        "extracted",
        "failed",
        "frames",
        "compute",
        "per_series",
        "failures_file",
        "recipe_id",
        "skipped",
        "ignored",
        "ignored_files",
    ]
    assert document["ignored"] == 1
    assert document["ignored_files"] == [
        {"path": "README.txt", "reason": "not a media file lstmpipe reads: text"}
    ]
    assert document["compute"] == {"frames": 10, "seconds": 2.0}
    assert document["per_series"][0] == {"series_id": "a.mp4", "status": "cached", "frames": 7}
    assert document["per_series"][2] == {
        "series_id": "c.mp4",
        "status": "failed",
        "frames": 0,
        "stage": "decode",
        "reason": "moov atom not found",
        "path": "/data/c.mp4",
    }
    assert type(document["per_series"][0]["status"]) is str  # the word, not the Enum member
