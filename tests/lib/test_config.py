"""lib.config: defaults, file < environment < overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lstmpipe.lib.config import (
    BackboneConfig,
    Config,
    PromoteConfig,
    RuntimeConfig,
    SamplingConfig,
    TrainConfig,
    load_config,
    replace,
)
from lstmpipe.lib.errors import ConfigError

YAML = """
sampling:
  fps: 2
  size: 96
backbone:
  name: resnet34
runtime:
  home: /from/file
"""

TOML = """
[sampling]
fps = 2
size = 96

[backbone]
name = "resnet34"

[runtime]
home = "/from/file"
"""


@pytest.fixture(params=["yaml", "toml"])
def config_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"lstmpipe.{request.param}"
    path.write_text(YAML if request.param == "yaml" else TOML)
    return path


def test_defaults_are_the_dataclass_defaults() -> None:
    config = load_config()
    assert config == Config(
        SamplingConfig(), BackboneConfig(), TrainConfig(), PromoteConfig(), RuntimeConfig()
    )
    assert (config.sampling.fps, config.sampling.size, config.sampling.num_frames) == (
        8.0,
        224,
        None,
    )
    assert (config.backbone.name, config.backbone.weights, config.backbone.precision) == (
        "resnet18",
        "DEFAULT",
        "auto",
    )
    assert (config.runtime.home, config.runtime.mlflow_uri, config.promote.alias) == (
        ".lstmpipe",
        None,
        "champion",
    )


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        load_config().sampling.fps = 1.0  # type: ignore[misc]


def test_file_sets_keys_and_leaves_the_rest_default(config_file: Path) -> None:
    config = load_config(config_file)
    assert (config.sampling.fps, config.sampling.size, config.backbone.name) == (
        2.0,
        96,
        "resnet34",
    )
    assert isinstance(config.sampling.fps, float)  # an int in the file becomes the declared float
    assert config.runtime.home == "/from/file"
    assert config.sampling.chunk_frames == SamplingConfig.chunk_frames
    assert config.train == TrainConfig()


def test_environment_beats_file_and_overrides_beat_both(config_file: Path) -> None:
    env = {
        "LSTMPIPE_SAMPLING_FPS": "3",
        "LSTMPIPE_HOME": "/from/env",
        "PATH": "/usr/bin",
        "OTHER_SAMPLING_FPS": "9",
    }
    from_env = load_config(config_file, env)
    assert (from_env.sampling.fps, from_env.runtime.home) == (3.0, "/from/env")
    assert (
        from_env.sampling.size == 96
    )  # the file still wins over the default where env says nothing

    flags = load_config(config_file, env, {"sampling.fps": "5", "runtime.home": "/from/flags"})
    assert (flags.sampling.fps, flags.runtime.home, flags.sampling.size) == (5.0, "/from/flags", 96)


def test_environment_reaches_keys_with_underscores() -> None:
    env = {
        "LSTMPIPE_SAMPLING_CHUNK_FRAMES": "12",
        "LSTMPIPE_RUNTIME_MLFLOW_URI": "http://localhost:5000",
    }
    config = load_config(env=env)
    assert config.sampling.chunk_frames == 12
    assert config.runtime.mlflow_uri == "http://localhost:5000"


@pytest.mark.parametrize(
    "text, suffix, key",
    [
        ("sampling:\n  fsp: 2\n", ".yaml", "sampling.fsp"),
        ("[backbone]\nwieghts = 'none'\n", ".toml", "backbone.wieghts"),
        ("sampler:\n  fps: 2\n", ".yaml", "sampler"),
    ],
)
def test_unknown_key_or_section_in_a_file_is_named(
    tmp_path: Path, text: str, suffix: str, key: str
) -> None:
    path = tmp_path / f"config{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_config(path)


def test_unknown_environment_section_and_override_key_are_named() -> None:
    with pytest.raises(ConfigError, match="LSTMPIPE_SAMPLNG_FPS"):
        load_config(env={"LSTMPIPE_SAMPLNG_FPS": "4"})
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(overrides={"train.epoch": 3})
    with pytest.raises(ConfigError, match="'epochs'"):
        load_config(overrides={"epochs": 3})  # not section.key


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("sampling.size", "big", "expected int"),
        ("sampling.size", 64.5, "expected int"),
        (
            "sampling.size",
            True,
            "expected int",
        ),  # a bool is not a number here, though Python says it is an int
        ("sampling.fps", "fast", "expected float"),
        ("train.bidirectional", "maybe", "expected bool"),
        ("train.bidirectional", 1, "expected bool"),
        ("backbone.name", 18, "expected str"),
        ("sampling.size", None, "a value is required"),
        ("backbone.weights", None, "a value is required"),
    ],
)
def test_wrong_type_names_the_key_and_the_value(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(overrides={key: value})
    assert str(caught.value).startswith(f"{key}:")
    assert repr(value) in str(caught.value)


def test_wrong_type_in_a_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 'many'\n")
    with pytest.raises(ConfigError, match="train.epochs: expected int, got 'many'"):
        load_config(path)


@pytest.mark.parametrize(
    "text, truth",
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("NO", False),
    ],
)
def test_bools_parse_from_strings(text: str, truth: bool) -> None:
    assert load_config(env={"LSTMPIPE_TRAIN_BIDIRECTIONAL": text}).train.bidirectional is truth


def test_numbers_and_none_parse_from_strings() -> None:
    config = load_config(
        env={
            "LSTMPIPE_SAMPLING_SIZE": "112",
            "LSTMPIPE_SAMPLING_FPS": "2.5",
            "LSTMPIPE_SAMPLING_NUM_FRAMES": "none",
            "LSTMPIPE_RUNTIME_WORKERS": "3",
            "LSTMPIPE_TRAIN_LR": "1e-3",
        }
    )
    assert (config.sampling.size, config.sampling.fps, config.train.lr, config.runtime.workers) == (
        112,
        2.5,
        1e-3,
        3,
    )
    assert type(config.sampling.size) is int and type(config.train.lr) is float
    assert config.sampling.num_frames is None
    assert load_config(env={"LSTMPIPE_SAMPLING_FPS": "null"}).sampling.fps is None  # every frame
    assert load_config(overrides={"sampling.fps": None}).sampling.fps is None
    assert load_config(overrides={"runtime.mlflow_uri": ""}).runtime.mlflow_uri is None
    # A string key keeps the word: weights "none" means random init, not a missing value.
    assert load_config(env={"LSTMPIPE_BACKBONE_WEIGHTS": "none"}).backbone.weights == "none"
    with pytest.raises(ConfigError, match="sampling.num_frames: expected int, got '2.5'"):
        load_config(env={"LSTMPIPE_SAMPLING_NUM_FRAMES": "2.5"})


def test_unreadable_or_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sampling\nfps = 2\n")
    with pytest.raises(ConfigError, match="not valid toml"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- fps\n- size\n")
    with pytest.raises(ConfigError, match="expected sections"):
        load_config(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == load_config()


def test_replace_changes_only_the_named_keys_and_validates() -> None:
    base = load_config(overrides={"sampling.size": 64, "backbone.weights": "none"})
    changed = replace(base, sampling={"fps": "2"}, train={"epochs": 3})
    assert (changed.sampling.fps, changed.sampling.size, changed.train.epochs) == (2.0, 64, 3)
    assert changed.backbone == base.backbone and changed.runtime == base.runtime
    assert base.sampling.fps == 8.0  # the original is untouched
    with pytest.raises(ConfigError, match="sampling.sise"):
        replace(base, sampling={"sise": 32})
    with pytest.raises(ConfigError, match="train.epochs"):
        replace(base, train={"epochs": "lots"})


def test_replace_with_an_unknown_section_names_it() -> None:
    with pytest.raises(ConfigError, match="sampler"):
        replace(load_config(), sampler={"fps": 2})


def test_other_lstmpipe_variables_are_left_alone() -> None:
    """A wrapper's own LSTMPIPE_DATA must not break every run; only near-misses of a section fail."""
    assert load_config(env={"LSTMPIPE_DATA": "/data", "LSTMPIPE_REPO_DIR": "/src"}) == load_config()
