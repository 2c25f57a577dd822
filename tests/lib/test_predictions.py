"""lib.predictions: the table, and what a re-run of inference skips."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lib.predictions import already_predicted, predictions_table, write_predictions
from lib.series import SeriesRef


def test_already_predicted_is_per_model_version(tmp_path: Path) -> None:
    refs = [SeriesRef(f"s{i}", f"h{i}", "video", f"/data/s{i}.mp4") for i in range(3)]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=np.float32)
    write_predictions(predictions_table(refs[:2], probs[:2], ["a", "b"], "m", "1", "r", "run1"), tmp_path / "m-v1.parquet")
    write_predictions(predictions_table(refs[2:], probs[2:], ["a", "b"], "m", "2", "r", "run2"), tmp_path / "m-v2.parquet")
    (tmp_path / "notes.parquet").write_bytes(b"not parquet at all")  # ignored, not fatal
    assert already_predicted(tmp_path, "m", "1") == {"h0", "h1"}
    assert already_predicted(tmp_path, "m", "2") == {"h2"}
    assert already_predicted(tmp_path, "other", "1") == set()
    assert already_predicted(tmp_path / "missing", "m", "1") == set()
