"""lib.config: defaults, file < environment < overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lstmpipe.lib.config import (
    BackboneConfig,
    Config,
    PromoteConfig,
    RuntimeConfig,
    SamplingConfig,
    SourcesConfig,
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


def test_defaults_are_the_models_defaults() -> None:
    config = load_config()
    assert config == Config(
        sampling=SamplingConfig(),
        backbone=BackboneConfig(),
        train=TrainConfig(),
        promote=PromoteConfig(),
        runtime=RuntimeConfig(),
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


def test_config_is_frozen_and_hashable() -> None:
    config = load_config(overrides={"sources.geotiff_bands": "b4"})
    with pytest.raises(ValidationError, match="frozen"):
        config.sampling.fps = 1.0
    with pytest.raises(ValidationError, match="frozen"):
        config.sampling = SamplingConfig()
    assert hash(config) == hash(load_config(overrides={"sources.geotiff_bands": ["b4"]}))


def test_file_sets_keys_and_leaves_the_rest_default(config_file: Path) -> None:
    config = load_config(config_file)
    assert (config.sampling.fps, config.sampling.size, config.backbone.name) == (
        2.0,
        96,
        "resnet34",
    )
    assert isinstance(config.sampling.fps, float)  # an int in the file becomes the declared float
    assert config.runtime.home == "/from/file"
    assert config.sampling.chunk_frames == SamplingConfig().chunk_frames
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
        # a bool is not a number here, though Python says it is an int
        ("sampling.size", True, "expected int"),
        ("sampling.fps", "fast", "expected float"),
        ("train.bidirectional", "maybe", "expected bool"),
        ("train.bidirectional", 1, "expected bool"),
        ("backbone.name", 18, "expected str"),
        ("sampling.size", None, "a value is required"),
        ("backbone.weights", None, "a value is required"),
        ("sampling.size", 0, "greater than or equal to 1"),
        ("train.dropout", "1.5", "less than 1"),
        ("runtime.gpus_per_worker", 1.5, "less than or equal to 1"),
        ("sources.geotiff_bands", "b5,b4", "three band names"),
        ("sources.cube_variables", "a,b,c,d", "one variable"),
        ("sources.dicom_window", "wide", "40,400"),
        ("sources.dicom_window", "40,-1", "positive WIDTH"),
        ("sources.geotiff_date_pattern", r"(?P<y>\d{4})", "named groups year"),
    ],
)
def test_wrong_value_names_the_key_the_value_and_what_is_expected(
    key: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(overrides={key: value})
    assert str(caught.value).startswith(f"{key}:")
    assert "\n" not in str(caught.value)  # one line, as the CLI prints it


@pytest.mark.parametrize(
    "key, typo, allowed",
    [
        ("promote.test", "ttest", "'bootstrap', 'mcnemar' or 'none'"),
        ("train.cell", "lstn", "'lstm' or 'gru'"),
        ("train.pooling", "mean", "'last' or 'attention'"),
        ("train.balance", "oversample", "'weights' or 'sampler'"),
        ("train.input_norm", "batch", "'layer', 'series' or 'split'"),
        ("backbone.precision", "fp8", "'auto', 'fp32', 'bf16' or 'fp16'"),
        ("backbone.feature_dtype", "int8", "'float32' or 'float16'"),
        ("backbone.optimize", "fast", "'auto', 'freeze', 'inductor' or 'none'"),
        ("runtime.executor", "k8s", "'auto', 'local' or 'ray'"),
        ("runtime.decode_on", "gpu", "'auto', 'tasks' or 'actor'"),
        ("sources.nifti_view", "axial", "'middle' or 'mip'"),
        ("sources.geotiff_mode", "sepia", "'rgb' or 'ndvi'"),
    ],
)
def test_a_choice_typo_fails_at_load_naming_key_value_and_choices(
    tmp_path: Path, key: str, typo: str, allowed: str
) -> None:
    """Not after extraction, training and registration, where the value is first used."""
    section, _, name = key.partition(".")
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: {typo}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{key}: {typo!r}; expected one of {allowed}"
    with pytest.raises(ConfigError, match=key):
        load_config(env={f"LSTMPIPE_{section.upper()}_{name.upper()}": typo})


def test_models_built_directly_are_validated_too() -> None:
    typo: Any = "ttest"  # what a caller building the model from its own data might pass
    with pytest.raises(ConfigError, match="promote.test: 'ttest'"):
        PromoteConfig(test=typo)
    with pytest.raises(ConfigError, match="train: val_fraction 0.6 \\+ test_fraction 0.5"):
        TrainConfig(val_fraction=0.6, test_fraction=0.5)


def test_unknown_key_suggests_the_near_one_and_lists_them_all() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"sampling.fsp": 2})
    assert str(caught.value) == (
        "unknown key sampling.fsp (did you mean fps?); "
        "known keys: chunk_frames, fps, num_frames, size, timeout_s"
    )


def test_wrong_type_in_a_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 'many'\n")
    with pytest.raises(ConfigError, match="train.epochs: 'many'; expected int"):
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
    with pytest.raises(ConfigError, match="sampling.num_frames: '2.5'; expected int"):
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
    """A wrapper's own LSTMPIPE_DATA must not break every run; only near-misses of a section
    fail."""
    assert load_config(env={"LSTMPIPE_DATA": "/data", "LSTMPIPE_REPO_DIR": "/src"}) == load_config()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("b5,b4,b3", ("b5", "b4", "b3")),
        (" b5, b4 ,b3 ", ("b5", "b4", "b3")),
        ("b4", ("b4",)),
        ("none", None),
        ("", None),
    ],
)
def test_lists_parse_from_environment_strings(text: str, expected: object) -> None:
    env = {"LSTMPIPE_SOURCES_GEOTIFF_BANDS": text}
    assert load_config(env=env).sources.geotiff_bands == expected


def test_lists_from_files_flags_and_environment_are_the_same_value(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  dicom_window: [40, 400]\n  cube_variables: [red, nir]\n")
    from_file = load_config(path).sources
    from_env = load_config(
        env={
            "LSTMPIPE_SOURCES_DICOM_WINDOW": "40,400",
            "LSTMPIPE_SOURCES_CUBE_VARIABLES": "red,nir",
        }
    ).sources
    from_flags = load_config(
        overrides={"sources.dicom_window": "40, 400", "sources.cube_variables": "red,nir"}
    ).sources
    assert from_file == from_env == from_flags
    assert from_file.dicom_window == (40.0, 400.0) and from_file.cube_variables == ("red", "nir")
    # the comma form recipes hash, and the loader takes back
    assert from_file.model_dump(mode="json")["dicom_window"] == "40,400"
    assert SourcesConfig(**from_file.model_dump(mode="json")) == from_file


def test_choices_and_lists_in_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[sources]\ngeotiff_bands = ["b4", "b3", "b2"]\ngeotiff_mode = "rgb"\n'
        '[promote]\ntest = "mcnemar"\n'
    )
    config = load_config(path)
    assert config.sources.geotiff_bands == ("b4", "b3", "b2") and config.promote.test == "mcnemar"


def test_extra_keys_are_rejected_wherever_they_come_from(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("promote:\n  tests: mcnemar\n")
    with pytest.raises(ConfigError, match="unknown key promote.tests \\(did you mean test\\?\\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key train.epoch "):
        load_config(env={"LSTMPIPE_TRAIN_EPOCH": "3"})
    with pytest.raises(ConfigError, match="unknown key sampling.rate"):
        SamplingConfig(**{"rate": 2})


def test_precedence_file_then_environment_then_overrides_for_every_kind_of_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "promote: {test: mcnemar}\nsources: {geotiff_bands: [b1, b2, b3]}\ntrain: {lr: 0.01}\n"
    )
    env = {"LSTMPIPE_PROMOTE_TEST": "none", "LSTMPIPE_SOURCES_GEOTIFF_BANDS": "b4"}
    assert load_config(path).promote.test == "mcnemar"
    layered = load_config(path, env)
    assert (layered.promote.test, layered.sources.geotiff_bands, layered.train.lr) == (
        "none",
        ("b4",),
        0.01,
    )
    flags = load_config(path, env, {"promote.test": "bootstrap", "train.lr": 0.5})
    assert (flags.promote.test, flags.sources.geotiff_bands, flags.train.lr) == (
        "bootstrap",
        ("b4",),
        0.5,
    )


def test_state_urls_load_from_the_environment_and_a_password_in_the_url_is_refused(
    tmp_path: Path,
) -> None:
    env = {
        "LSTMPIPE_STATE_DATABASE": "postgresql://lstmpipe_state@db:5432/state",
        "LSTMPIPE_STATE_STORE": "s3://archive/lstmpipe",
    }
    state = load_config(env=env).state
    assert (state.database, state.store) == (
        env["LSTMPIPE_STATE_DATABASE"],
        "s3://archive/lstmpipe",
    )
    assert load_config().state.database is None  # the local deployment by default
    path = tmp_path / "c.yaml"
    path.write_text("state: {database: 'postgresql://lstmpipe_state:hunter2@db/state'}\n")
    with pytest.raises(ConfigError, match="state.database: .*PGPASSWORD") as refused:
        load_config(path)
    assert "hunter2" not in str(refused.value)
