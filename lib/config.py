"""Typed, frozen configuration: one class per concern, defaults with units and reasons.

Precedence (SPEC §5): defaults < file (YAML or TOML) < environment (`LSTMPIPE_`
prefix) < command-line overrides. The caller passes the environment in as a
mapping: lib never reads `os.environ` itself. An unknown key or a value of the
wrong type is a `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lstmpipe.lib.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    fps: float | None = 8.0  # frames per second taken from a video; None = every frame
    num_frames: int | None = None  # N frames spread uniformly over the series instead of fps
    size: int = 224  # output frames are size x size px: shorter side resized, then center crop
    chunk_frames: int = 32  # frames decoded per chunk: bounds memory whatever the video length
    timeout_s: float = 60.0  # a decoder silent this long is killed: a bad file never hangs a run


@dataclass(frozen=True)
class SourcesConfig:
    """How non-video kinds become frames (lib/sources/kinds/); part of the feature recipe."""

    dicom_window: str | None = (
        None  # "CENTER,WIDTH" forces one window; None = the file's, else 1st-99th percentiles
    )
    nifti_view: str = (
        "middle"  # middle: the middle slice of the 3rd axis | mip: maximum-intensity projection
    )
    geotiff_mode: str = (
        "rgb"  # rgb: three bands as R, G, B | ndvi: (nir - red) / (nir + red) as grey
    )
    geotiff_bands: str | None = (
        None  # "b5,b4,b3" (or one band: grey); None = b5,b4,b3 when present, else the first three
    )
    geotiff_red: str = "b3"  # NDVI red band: Landsat 4-7 b3 (Landsat 8-9 b4, Sentinel-2 b04)
    geotiff_nir: str = (
        "b4"  # NDVI near-infrared band: Landsat 4-7 b4 (Landsat 8-9 b5, Sentinel-2 b08)
    )
    geotiff_mask_band: str = "fmask"  # band flagging cloud, shadow and fill (values 2, 4, 255)
    geotiff_max_masked_fraction: float = (
        1.0  # dates masked beyond this fraction are dropped; 1.0 keeps every date
    )
    geotiff_date_pattern: str | None = (
        None  # regex with groups year and (month, day) or doy, tried before the built-ins
    )
    cube_variables: str | None = (
        None  # "red,nir" as R, G(, B); None = the first three data variables with time
    )
    cube_time_dim: str | None = (
        None  # None = `time`, else the dimension whose coordinate holds dates
    )


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet18"  # any torchvision classification model; its head is removed
    weights: str = (
        "DEFAULT"  # torchvision weights name (local torch cache only), a .pth path, or "none"
    )
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto = bf16 where the CPU/GPU has it
    batch_size: int | None = (
        None  # frames per forward pass, across series; None = per device (CPU 32, GPU by memory)
    )
    feature_dtype: str = (
        "float32"  # float32 | float16: the cached features; float16 halves the disk, ~1e-3 error
    )
    # auto: TorchScript trace + freeze on CPU in fp32 (conv+BN folded: +10 % resnet18, +40 % efficientnet here,
    # about 1 s to build) | freeze | inductor: torch.compile (a minute of compiling; pays on GPU, long runs) | none
    optimize: str = "auto"
    seed: int = 0  # seeds the random init when weights = "none"


@dataclass(frozen=True)
class TrainConfig:
    """The sequence model, its data splits and its training loop (lib/training/model.py, lib/training/splits.py, lib/training/loop.py)."""

    cell: str = (
        "lstm"  # lstm | gru: a GRU has 3/4 of the weights and often matches an LSTM on short series
    )
    hidden_size: int = 128  # recurrent units per direction
    num_layers: int = 1  # stacked recurrent layers; 1 suffices for tens of frames
    bidirectional: bool = (
        False  # True doubles the head's input; the backward pass reads each series end to start
    )
    dropout: float = 0.2  # probability, on the pooled output and between layers
    # width of the per-frame Linear + GELU after the input LayerNorm; none = the normalised features go straight
    # into the recurrent layer. 128 = the hidden size's default, as before this option existed
    input_proj: int | None = 128
    pooling: str = "last"  # last: state after the last valid frame | attention: learned weights over valid frames
    # layer: LayerNorm per frame | series: each series minus its own mean, over the training set's scale. series
    # suits classes only change tells apart when the backbone's per-series level swamps the motion (lib/training/model.py)
    input_norm: str = "layer"
    # augmentation, training batches only (never validation, test or inference), seeded from `seed`:
    crop_fraction: float = (
        1.0  # a random contiguous crop keeps this fraction of each series' frames; 1.0 = off
    )
    frame_dropout: float = (
        0.0  # probability that each frame is dropped (one always stays); 0.0 = off
    )
    balance: str = "weights"  # weights: inverse-frequency class weights in the loss | sampler: class-balanced draws
    epochs: int = 100  # upper bound; early stopping usually ends sooner
    patience: int = (
        25  # epochs without a better validation macro-F1 before stopping (small val sets are noisy)
    )
    lr: float = 3e-3  # AdamW peak learning rate (OneCycle: 10 % warm-up, cosine decay to ~0)
    weight_decay: float = 1e-2  # AdamW, on weight matrices only
    grad_clip: float = 1.0  # max global grad norm: recurrent nets on long series occasionally spike
    batch_size: int = 16  # series per step
    val_fraction: float = (
        0.15  # of each class (of the official train part when split_lists is given)
    )
    test_fraction: float = (
        0.15  # of each class; ignored when split_lists is given (the lists name the test set)
    )
    # official split lists: a folder (or one file in it) of UCF101 trainlist0N.txt / testlist0N.txt or HMDB51
    # <class>_test_splitN.txt files; none = a stratified split by content hash. Relative to the working directory
    split_lists: str | None = None
    split_number: int = 1  # which official split (UCF101 and HMDB51 ship 1, 2 and 3)
    # an earlier run's split record (its split_records.json or splits.json): the series it names, matched by
    # content hash then id, keep their split, so adding series never moves one across splits; none = no pins
    split_record: str | None = None
    seed: int = 0  # splits, initialisation, batch order and augmentation

    def __post_init__(self) -> None:
        choices = {
            "cell": ("lstm", "gru"),
            "pooling": ("last", "attention"),
            "balance": ("weights", "sampler"),
            "input_norm": ("layer", "series"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"train.{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}"
                )
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ConfigError(
                f"train.crop_fraction: {self.crop_fraction} must be in (0, 1]; 1.0 turns cropping off"
            )
        if not 0.0 <= self.frame_dropout < 1.0:
            raise ConfigError(
                f"train.frame_dropout: {self.frame_dropout} must be in [0, 1); 0.0 turns it off"
            )
        if self.input_proj is not None and self.input_proj < 1:
            raise ConfigError(
                f"train.input_proj: {self.input_proj} must be >= 1, or none for no projection"
            )


@dataclass(frozen=True)
class PromoteConfig:
    """The promotion gate (lib/registry/promotion.py): every check must pass, on the challenger's frozen evaluation set."""

    margin: float = (
        0.0  # challenger macro-F1 must be >= champion's + margin on the same evaluation set
    )
    alias: str = "champion"
    # bootstrap: the one-sided (1 - alpha) lower bound of the paired-bootstrap macro-F1 gain must exceed margin |
    # mcnemar: exact one-sided McNemar p-value on per-series correctness < alpha | none: the point estimate alone
    test: str = "bootstrap"
    alpha: float = 0.05  # significance level of the test
    resamples: int = (
        1000  # paired bootstrap resamples of the evaluation series (1000: bound stable to ~0.01)
    )
    seed: int = 0  # bootstrap resampling seed: the same two models always get the same decision
    # A challenger predicting exactly what the champion predicts on every series takes over when margin <= 0
    # (a nightly retrain on unchanged data keeps the newest lineage; consumers see no change); false: refuse it.
    promote_identical: bool = True
    max_recall_drop: float | None = (
        0.10  # no class's recall may fall more than this; None = unchecked
    )
    # Parameter count and measured seconds per series, each <= ratio x the champion's; None = unchecked
    max_cost_ratio: float | None = 2.0
    cost_floor_ms: float = (
        1.0  # predict times per series below this count as this: timer noise, not cost
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where things run and live; chosen once, at the edge (flows/runtime.py)."""

    home: str = ".lstmpipe"  # state directory: cache, failures, runs, MLflow store, predictions
    mlflow_uri: str | None = None  # None = SQLite under home
    ray_address: str | None = None  # None = RAY_ADDRESS, else no cluster
    # auto: Ray when a cluster address is known, else in-process (Ray's ~10 s start-up buys nothing on one
    # machine: torch already uses every core) | local | ray (a local Ray, e.g. for several GPUs)
    executor: str = "auto"
    workers: int | None = (
        None  # Ray extraction actors; None = one per CPU Ray has, or per GPU share
    )
    gpus_per_worker: float = 1.0  # GPU share per actor: 0.5 puts two small backbones on each GPU
    decoders: int = 2  # series decoded at once per extractor: hides each series' decoder start-up
    # On Ray, where frames are decoded: auto = in Ray tasks when the cluster has GPUs (the CPUs are free for
    # it), else in the actor's own threads (a task would only compete for the actor's cores) | tasks | actor
    decode_on: str = "auto"
    decode_cpus: float = 1.0  # CPUs a decode task requests (ffmpeg decoding + resizing one series)
    shard_size: int = 64  # series per Prefect task: a task run costs tens of ms of API traffic
    # partitions a backfill or nightly run extracts at once. In-process, all share one backbone that already
    # uses every core, so 2 only overlaps one partition's discovery, decoder start-up and cache commits with
    # another's CNN work; on a Ray cluster raise it until the actors stay busy
    partition_concurrency: int = 2

    def __post_init__(self) -> None:
        if self.partition_concurrency < 1:
            raise ConfigError(
                f"runtime.partition_concurrency: {self.partition_concurrency} must be >= 1"
            )


@dataclass(frozen=True)
class NightlyConfig:
    """What `lstmpipe serve` schedules (flows/serve.py); `lstmpipe nightly` takes these on its command line."""

    cron: str = (
        "0 2 * * *"  # when the nightly deployment runs: 02:00, after the day's partition has landed
    )
    timezone: str = "UTC"  # of the cron string (IANA name, e.g. Europe/Paris)
    root: str | None = None  # the partitioned archive; required by serve
    model: str | None = None  # registered model name; required by serve
    labels: str | None = None  # manifest CSV/Parquet; None = labels from folder names
    infer_source: str | None = None  # what to predict; None = root


@dataclass(frozen=True)
class Config:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)


ENV_PREFIX = "LSTMPIPE_"
_SECTIONS: dict[str, type] = typing.get_type_hints(Config)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config from a file, `LSTMPIPE_SECTION_KEY` variables and `section.key` overrides."""
    values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    if path is not None:
        _merge(values, _read_file(Path(path)), origin=str(path))
    _merge(values, _from_env(env or {}), origin="environment")
    _merge(values, _nest(overrides or {}), origin="command line")
    return Config(**{name: _build(name, values[name]) for name in _SECTIONS})


def replace(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of `config` with some keys of some sections changed, validated like a file."""
    _merge(
        {name: {} for name in _SECTIONS}, sections, origin="replace"
    )  # an unknown section is a ConfigError
    changed = {
        name: _build(name, {**dataclasses.asdict(getattr(config, name)), **dict(keys)})
        for name, keys in sections.items()
    }
    return dataclasses.replace(config, **changed)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"config file {path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected sections such as 'sampling:', got {type(data).__name__}"
        )
    return data


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`LSTMPIPE_SAMPLING_FPS=4` -> {"sampling": {"fps": "4"}}; `LSTMPIPE_HOME` -> runtime.home."""
    nested: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest == "home":
            nested.setdefault("runtime", {})["home"] = value
            continue
        section, _, key = rest.partition("_")
        if section in _SECTIONS and key:
            nested.setdefault(section, {})[key] = value
            continue
        # Not a config variable (a wrapper's own LSTMPIPE_DATA, say) unless it looks like a misspelt one.
        near = difflib.get_close_matches(section, _SECTIONS, n=1, cutoff=0.75)
        if near:
            raise ConfigError(
                f"environment variable {name}: unknown section {section!r}; did you mean {near[0]}?"
            )
    return nested


def _nest(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r}: expected section.key, e.g. sampling.fps")
        nested.setdefault(section, {})[key] = value
    return nested


def _merge(values: dict[str, dict[str, Any]], layer: Mapping[str, Any], origin: str) -> None:
    for section, keys in layer.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{origin}: unknown section {section!r}; known: {', '.join(_SECTIONS)}"
            )
        if not isinstance(keys, Mapping):
            raise ConfigError(f"{origin}: section {section!r} must be a table of keys")
        values[section].update(keys)


def _build(section: str, keys: Mapping[str, Any]) -> Any:
    cls = _SECTIONS[section]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in keys:
        if key not in known:
            raise ConfigError(
                f"unknown key {section}.{key}; known keys: {', '.join(sorted(known))}"
            )
    return cls(
        **{key: _coerce(f"{section}.{key}", value, hints[key]) for key, value in keys.items()}
    )


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the annotation; strings (environment, flags) are parsed."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None or (isinstance(value, str) and value.lower() in {"none", "null", ""}):
        if type(None) in options:
            return None
        if str in options and value is not None:
            return value
        raise ConfigError(f"{key}: a value is required, got {value!r}")
    for kind in options:
        if kind is type(None):
            continue
        parsed = _parse(value, kind)
        if parsed is not _INVALID:
            return parsed
    names = " or ".join(getattr(k, "__name__", str(k)) for k in options if k is not type(None))
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


_INVALID = object()


def _parse(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return value.lower() in {"true", "1", "yes"}
        return _INVALID
    if kind in (int, float):
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, int) or (kind is float and isinstance(value, float)):
            return kind(value)
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                return _INVALID
        return _INVALID
    if kind is str:
        return value if isinstance(value, str) else _INVALID
    return _INVALID
