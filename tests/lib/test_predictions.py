"""lib.inference.predictions: the table, and what a re-run of inference skips."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lstmpipe.lib.features.cache import SeriesFeatures
from lstmpipe.lib.inference.predictions import (
    already_predicted,
    frames_path,
    frames_table,
    predictions_table,
    write_predictions,
)
from lstmpipe.lib.series import SeriesRef


def test_already_predicted_is_per_model_version(tmp_path: Path) -> None:
    refs = [SeriesRef(f"s{i}", f"h{i}", "video", f"/data/s{i}.mp4") for i in range(3)]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=np.float32)
    write_predictions(
        predictions_table(refs[:2], probs[:2], ["a", "b"], "m", "1", "r", "run1"),
        tmp_path / "m-v1.parquet",
    )
    write_predictions(
        predictions_table(refs[2:], probs[2:], ["a", "b"], "m", "2", "r", "run2"),
        tmp_path / "m-v2.parquet",
    )
    (tmp_path / "notes.parquet").write_bytes(b"not parquet at all")  # ignored, not fatal
    assert already_predicted(tmp_path, "m", "1") == {"h0", "h1"}
    assert already_predicted(tmp_path, "m", "2") == {"h2"}
    assert already_predicted(tmp_path, "other", "1") == set()
    assert already_predicted(tmp_path / "missing", "m", "1") == set()


def test_frames_table_has_a_row_per_frame_with_times_scores_and_states(tmp_path: Path) -> None:
    refs = [SeriesRef(f"s{i}", f"h{i}", "dicom", f"/data/s{i}") for i in range(2)]
    series = [
        SeriesFeatures(f"cached-{i}", f"h{i}", np.zeros((n, 4), np.float32), np.arange(n) * 0.5)
        for i, n in enumerate((3, 2))
    ]
    steps = [
        (
            np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]),
            np.arange(9, dtype=np.float32).reshape(3, 3),
        ),
        (np.array([[0.3, 0.7], [0.5, 0.5]]), np.ones((2, 3), np.float32)),
    ]
    table = frames_table(refs, series, steps, ["a", "b"], "m", "4", "r", "run")
    assert table.num_rows == 5
    # the refs' ids, not the cache's
    assert table["series_id"].to_pylist() == ["s0", "s0", "s0", "s1", "s1"]
    assert table["frame"].to_pylist() == [0, 1, 2, 0, 1]
    assert table["t"].to_pylist() == [0, 0.5, 1.0, 0, 0.5]
    assert table["predicted_label"].to_pylist() == ["a", "a", "b", "b", "a"]
    assert table["state"].to_pylist()[2] == [6.0, 7.0, 8.0]
    assert set(table["model_version"].to_pylist()) == {"4"}
    baseline = frames_table(
        refs[:1],
        series[:1],
        [(steps[0][0], np.zeros((3, 0), np.float32))],
        ["a", "b"],
        "m",
        "4",
        "r",
        "run",
    )
    assert "state" not in baseline.column_names and baseline.num_rows == 3


def test_a_frames_file_alone_does_not_count_as_predicted(tmp_path: Path) -> None:
    refs = [SeriesRef("s0", "h0", "video", "/data/s0.mp4")]
    series = [SeriesFeatures("s0", "h0", np.zeros((2, 4), np.float32), np.arange(2.0))]
    steps = [(np.array([[0.9, 0.1], [0.6, 0.4]]), np.zeros((2, 3), np.float32))]
    target = tmp_path / "m-v1.parquet"
    write_predictions(
        frames_table(refs, series, steps, ["a", "b"], "m", "1", "r", "run"), frames_path(target)
    )
    assert frames_path(target).name == "m-v1.frames.parquet"
    assert already_predicted(tmp_path, "m", "1") == set()
