"""lib.inference.predictions: the table, and what a re-run of inference skips."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lstmpipe.lib.features.cache import SeriesFeatures
from lstmpipe.lib.inference.predictions import (
    already_predicted,
    frames_key,
    frames_table,
    predictions_table,
    target_of,
    write_predictions,
)
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.state.store import LocalStore


def test_already_predicted_is_per_model_version(tmp_path: Path) -> None:
    refs = [SeriesRef(f"s{i}", f"h{i}", "video", f"/data/s{i}.mp4") for i in range(3)]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=np.float32)
    store = LocalStore(tmp_path)
    write_predictions(
        predictions_table(refs[:2], probs[:2], ["a", "b"], "m", "1", "r", "run1"),
        store,
        "predictions/m-v1.parquet",
    )
    write_predictions(
        predictions_table(refs[2:], probs[2:], ["a", "b"], "m", "2", "r", "run2"),
        store,
        "predictions/m-v2.parquet",
    )
    # ignored, not fatal
    (tmp_path / "predictions" / "notes.parquet").write_bytes(b"not parquet at all")
    assert already_predicted(store, "predictions", "m", "1") == {"h0", "h1"}
    assert already_predicted(store, "predictions", "m", "2") == {"h2"}
    assert already_predicted(store, "predictions", "other", "1") == set()
    assert already_predicted(store, "missing", "m", "1") == set()


def test_already_predicted_reads_only_the_folder_itself(tmp_path: Path) -> None:
    """A user's `--out` folder may be their home directory: its subfolders are not read."""
    refs = [SeriesRef("s0", "h0", "video", "/data/s0.mp4")]
    table = predictions_table(refs, np.array([[0.9, 0.1]]), ["a", "b"], "m", "1", "r", "run1")
    store, key = target_of(str(tmp_path / "out.parquet"))
    assert (store.local_path(key), key) == (tmp_path / "out.parquet", "out.parquet")
    write_predictions(table, store, "deeper/elsewhere.parquet")
    assert already_predicted(store, "", "m", "1") == set()
    write_predictions(table, store, key)
    assert already_predicted(store, "", "m", "1") == {"h0"}


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
    store = LocalStore(tmp_path)
    key = frames_key("predictions/m-v1.parquet")
    assert key == "predictions/m-v1.frames.parquet"
    write_predictions(
        frames_table(refs, series, steps, ["a", "b"], "m", "1", "r", "run"), store, key
    )
    assert already_predicted(store, "predictions", "m", "1") == set()
