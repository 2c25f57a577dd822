"""Two `lstmpipe extract` processes at once on the same source and state directory (issue 8, SPEC
§6: two runs at once do not corrupt the cache). Real CLI processes, started together, each with its
own Ray, both talking to one Prefect server (as a team's runs do): both finish with exit 0, every
series is indexed once, and every indexed entry reads back complete from the rows the index names.

Each with its own embedded Prefect API, two runs on a fresh state directory used to race to migrate
the same Prefect database; flows/startup.py now makes those boots take turns
(tests/integration/test_standalone.py checks it). The shared server keeps this test on the cache."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.sources.discover import discover
from tests.cache_files import features_dir, index_file

pytestmark = pytest.mark.slow
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")
TIMEOUT_S = 240  # one run takes ~12 s alone on 2 idle cores, ~40 s beside another
TINY = ["--set=sampling.size=64", "--set=sampling.fps=4.0", "--set=backbone.weights=none", "--json"]


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def spawn(source: Path, home: Path, prefect_api: str) -> subprocess.Popen:
    env = {**os.environ, "LSTMPIPE_HOME": str(home), "PREFECT_API_URL": prefect_api}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):  # each run with its own local Ray
        env.pop(name, None)
    return subprocess.Popen(
        [LSTMPIPE, "extract", str(source), *TINY],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_two_extracts_at_once_index_each_series_once_and_completely(
    tmp_path: Path, prefect_api: str
) -> None:
    source = generate_archive(
        tmp_path / "source", SampleSpec(clips_per_class=3, size=32, min_frames=8, max_frames=12)
    )
    home = tmp_path / "home"
    runs = [spawn(source, home, prefect_api), spawn(source, home, prefect_api)]
    try:
        outputs = [run.communicate(timeout=TIMEOUT_S) for run in runs]
    finally:
        # a hung run is killed with its Ray and Prefect children, never left behind
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
    for run, (_, err) in zip(runs, outputs, strict=False):
        assert run.returncode == 0, f"exit {run.returncode}:\n{err[-4000:]}"
    summaries = [json.loads(out) for out, _ in outputs]
    refs = discover(source).refs
    assert len(refs) == 12
    for summary in summaries:
        assert (summary["series"], summary["failed"]) == (12, 0)
        assert summary["cached"] + summary["extracted"] == 12
    [recipe_id] = {s["recipe_id"] for s in summaries}

    cache = FeatureCache.local(home / "cache")
    with sqlite3.connect(index_file(cache)) as db:
        rows = db.execute(
            "SELECT content_hash, recipe_id, series_id, file, n_frames, row_offset FROM entries"
        ).fetchall()
    keys = [(h, r) for h, r, *_ in rows]
    assert len(keys) == len(set(keys)) == 12, "a series is indexed twice, or one is missing"
    assert set(keys) == {(ref.content_hash, recipe_id) for ref in refs}
    found = cache.read(keys)
    for content_hash, recipe, series_id, name, n_frames, offset in rows:
        entry = found[(content_hash, recipe)]
        assert entry.series_id == series_id and entry.features.shape == (n_frames, 512)
        assert np.isfinite(entry.features).all() and (np.diff(entry.t) > 0).all()
        table = pq.read_table(
            features_dir(cache) / name, columns=["content_hash", "recipe_id", "frame_index"]
        )
        mine = [
            i
            for i, (h, r) in enumerate(
                zip(table["content_hash"].to_pylist(), table["recipe_id"].to_pylist(), strict=False)
            )
            if (h, r) == (content_hash, recipe)
        ]
        assert mine == list(range(offset, offset + n_frames)), (
            f"{series_id}: torn or duplicated rows in {name}"
        )
        assert table["frame_index"].to_pylist()[offset : offset + n_frames] == list(range(n_frames))

    # The run that lost a race wrote rows nobody indexes: invisible, and compaction takes them away.
    cache.compact(orphan_grace_s=0)
    with sqlite3.connect(index_file(cache)) as db:
        referenced = {name for (name,) in db.execute("SELECT DISTINCT file FROM entries")}
    assert {p.name for p in features_dir(cache).iterdir()} == referenced
    after = cache.read(keys)
    for key in keys:
        np.testing.assert_array_equal(after[key].features, found[key].features)
