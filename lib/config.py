"""Typed, frozen configuration: one model per concern, each default stated once with its reason.

Precedence (SPEC §5): defaults < file (YAML or TOML) < environment (`LSTMPIPE_`
prefix) < command-line overrides. The caller passes the environment in as a
mapping: lib never reads `os.environ` itself. Everything is validated when loaded:
an unknown key, a value of the wrong type, a choice outside its `Literal` or a
number out of range is a `ConfigError` naming `section.key`, the value and what is
expected. Each field's `description` is also its command-line help (flows/cli.py).
"""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from lstmpipe.lib.errors import ConfigError

NiftiView = Literal["middle", "mip"]
GeoTiffMode = Literal["rgb", "ndvi"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
FeatureDtype = Literal["float32", "float16"]
Optimize = Literal["auto", "freeze", "inductor", "none"]
Cell = Literal["lstm", "gru"]
Pooling = Literal["last", "attention"]
InputNorm = Literal["layer", "series", "split"]
Select = Literal["motion", "none"]
Balance = Literal["weights", "sampler"]
PromoteTest = Literal["bootstrap", "mcnemar", "none"]
Executor = Literal["auto", "local", "ray"]
DecodeOn = Literal["auto", "tasks", "actor"]

# Text that means "no value" for a key that may have none; a key that must hold text keeps the
# word (backbone.weights "none" means a random init, not a missing value).
NONE_WORDS = {"none", "null", ""}


class _Model(BaseModel):
    """A section: frozen, closed to unknown keys, strict about types; its errors are ConfigErrors.

    Strict, so a bool is never taken for a number (nor 1 for true) and 64.5 never becomes an
    int; text from the environment, flags and `--set` is parsed into the declared type first.
    Every construction (load_config, replace, a model built directly, a recipe read back)
    raises lstmpipe's ConfigError, which the CLI turns into exit code 2.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            prefix = next((name for name, cls in SECTIONS.items() if cls is type(self)), "")
            raise ConfigError(_describe(prefix, type(self), exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        """Each value through `_parse`, before the strict validation of its field."""
        if not isinstance(data, Mapping):
            return data
        fields = cls.model_fields
        return {
            key: _parse(value, fields[key].annotation) if key in fields else value
            for key, value in data.items()
        }


class SamplingConfig(_Model):
    """Which frames are taken from each series, at what size; part of the feature recipe."""

    fps: float | None = Field(
        default=8.0, gt=0, description="frames per second taken from a video; none = every frame"
    )
    num_frames: int | None = Field(
        default=None, ge=1, description="N frames spread uniformly over the series instead of fps"
    )
    size: int = Field(
        default=224,
        ge=1,
        description="output frames are size x size px: shorter side resized, then center crop",
    )
    chunk_frames: int = Field(
        default=32,
        ge=1,
        description="frames decoded per chunk: bounds memory whatever the video length",
    )
    timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="a decoder silent this many seconds is killed: a bad file never hangs a run",
    )


class SourcesConfig(_Model):
    """How non-video kinds become frames (lib/sources/kinds/); part of the feature recipe.

    Lists are written `[b5, b4, b3]` in a file, `b5,b4,b3` in the environment and flags;
    `mode="json"` dumps them in that comma form, the one feature recipes hash.
    """

    dicom_window: tuple[float, float] | None = Field(
        default=None,
        examples=["40,400"],
        description="CENTER,WIDTH forces one window on every grey DICOM series; "
        "none = the file's, else its 1st-99th percentiles",
    )
    nifti_view: NiftiView = Field(
        default="middle",
        description="middle: the middle slice of the 3rd axis | mip: maximum-intensity projection",
    )
    geotiff_mode: GeoTiffMode = Field(
        default="rgb",
        description="rgb: three bands as R, G, B | ndvi: (nir - red) / (nir + red) as grey",
    )
    geotiff_bands: tuple[str, ...] | None = Field(
        default=None,
        examples=["b5,b4,b3"],
        description="bands as R, G, B (or one band: grey); "
        "none = b5,b4,b3 when present, else the first three",
    )
    geotiff_red: str = Field(
        default="b3", description="NDVI red band: Landsat 4-7 b3 (Landsat 8-9 b4, Sentinel-2 b04)"
    )
    geotiff_nir: str = Field(
        default="b4",
        description="NDVI near-infrared band: Landsat 4-7 b4 (Landsat 8-9 b5, Sentinel-2 b08)",
    )
    geotiff_mask_band: str = Field(
        default="fmask", description="band flagging cloud, shadow and fill (values 2, 4, 255)"
    )
    geotiff_max_masked_fraction: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="dates masked beyond this fraction are dropped; 1.0 keeps every date",
    )
    geotiff_date_pattern: str | None = Field(
        default=None,
        description="regex with groups year and (month, day) or doy, tried before the built-ins",
    )
    cube_variables: tuple[str, ...] | None = Field(
        default=None,
        examples=["red,nir"],
        description="NetCDF/Zarr variables as R, G(, B); "
        "none = the first three data variables with time",
    )
    cube_time_dim: str | None = Field(
        default=None, description="none = `time`, else the dimension whose coordinate holds dates"
    )

    @field_serializer("dicom_window", "geotiff_bands", "cube_variables", when_used="json")
    def _comma_text(self, items: tuple[float | str, ...] | None) -> str | None:
        """The comma form recipes were first stored with: their ids stay as they were."""
        return None if items is None else as_text(items)

    @field_validator("dicom_window")
    @classmethod
    def _positive_width(cls, window: tuple[float, float] | None) -> tuple[float, float] | None:
        if window is not None and window[1] <= 0:
            raise ValueError("expected CENTER,WIDTH with a positive WIDTH, such as 40,400")
        return window

    @field_validator("geotiff_bands")
    @classmethod
    def _one_or_three_bands(cls, bands: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if bands is not None and len(bands) not in (1, 3):
            raise ValueError("expected three band names (R, G, B) or one (grey)")
        return bands

    @field_validator("cube_variables")
    @classmethod
    def _one_to_three_variables(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if names is not None and not 1 <= len(names) <= 3:
            raise ValueError("expected one variable (grey), two or three (R, G, B)")
        return names

    @field_validator("geotiff_date_pattern")
    @classmethod
    def _date_groups(cls, pattern: str | None) -> str | None:
        if pattern is None:
            return None
        try:
            groups = set(re.compile(pattern).groupindex)
        except re.error as exc:
            raise ValueError(f"expected a regular expression ({exc})") from None
        if "year" not in groups or not ({"month", "day"} <= groups or "doy" in groups):
            raise ValueError("expected named groups year and (month, day) or doy")
        return pattern


class BackboneConfig(_Model):
    """The CNN that turns frames into features; name, weights and precision are in the recipe."""

    name: str = Field(
        default="resnet18",
        description="a torchvision classification model (its head is removed); an entry point "
        "package.module:callable whose callable returns an nn.Module mapping ImageNet-normalised "
        "(N, 3, H, W) frames to (N, D) vectors; or a TorchScript file (a name with a / or a .). "
        "The latter two take weights DEFAULT (their own) or, for an entry point, a .pth",
    )
    weights: str = Field(
        default="DEFAULT",
        description="torchvision weights name (from the local torch cache, downloaded there on "
        "first use unless offline), a .pth path, or none",
    )
    precision: Precision = Field(
        default="auto",
        description="auto = bf16 where the hardware runs it fast (AMX or AVX512-BF16 CPUs, most "
        "GPUs), else fp16 on GPU and fp32 on CPU",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="frames per forward pass, across series; none = per device "
        "(CPU 32, GPU by free memory)",
    )
    feature_dtype: FeatureDtype = Field(
        default="float32", description="the cached features; float16 halves the disk, ~1e-3 error"
    )
    optimize: Optimize = Field(
        default="auto",
        description="auto: TorchScript trace + freeze on CPU in fp32 (conv+BN folded: +10 % "
        "resnet18, +40 % efficientnet here, about 1 s to build) | freeze | inductor: "
        "torch.compile (a minute of compiling; pays on GPU, long runs) | none",
    )
    pool: Literal["global", "grid2", "grid3", "grid4"] = Field(
        default="global",
        description="global: the final feature map averaged over the frame (C features) | gridk: "
        "over k x k cells (C*k*k features), so where things are survives (left vs right motion); "
        "torchvision models with an avgpool module (resnet, mobilenet_v3, efficientnet, convnext)",
    )
    seed: int = Field(default=0, ge=0, description='seeds the random init when weights = "none"')
    offline: bool = Field(
        default=False,
        description="true: torchvision weights missing from the local torch cache are an error, "
        "not a download (air-gapped hosts, tests; also LSTMPIPE_OFFLINE=1)",
    )
    weights_mirror: str | None = Field(
        default=None,
        description="base URL that replaces https://download.pytorch.org/models/ when "
        "torchvision weights are downloaded (a proxy, an internal copy, file:///dir/); none = "
        "torchvision's own",
    )


class TrainConfig(_Model):
    """The sequence model, its data splits and its training loop (lib/training/)."""

    cell: Cell = Field(
        default="lstm",
        description="a GRU has 3/4 of the weights and often matches an LSTM on short series",
    )
    hidden_size: int = Field(default=128, ge=1, description="recurrent units per direction")
    num_layers: int = Field(
        default=1, ge=1, description="stacked recurrent layers; 1 suffices for tens of frames"
    )
    bidirectional: bool = Field(
        default=False,
        description="true doubles the head's input; the backward pass reads each series end "
        "to start",
    )
    dropout: float = Field(
        default=0.2, ge=0, lt=1, description="probability, on the pooled output and between layers"
    )
    input_proj: int | None = Field(
        default=128,
        ge=1,
        description="width of the per-frame Linear + GELU after the input LayerNorm; none = "
        "the normalised features go straight into the recurrent layer (128: the hidden size's "
        "default, as before this option existed)",
    )
    pooling: Pooling = Field(
        default="last",
        description="last: state after the last valid frame | attention: learned weights over "
        "valid frames",
    )
    input_norm: InputNorm = Field(
        default="layer",
        description="layer: LayerNorm per frame | series: each series minus its own mean, over "
        "the training set's scale; series suits classes only change tells apart when the "
        "backbone's per-series level swamps the motion | split: series beside the series' "
        "LayerNorm'd mean (the level), so what is seen and how it moves both reach the network",
    )
    select: Select = Field(
        default="motion",
        description="motion: also fit a candidate for classes told apart by how things move "
        "(input_norm split, crop_fraction 0.7, frame_dropout 0.3, lr 1e-3, 1.5x the epochs, 1.6x "
        "the patience) and keep whichever scores the "
        "higher validation macro-F1, ties to the configured one | none: the configured model only",
    )
    crop_fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="augmentation (training batches only, seeded): a random contiguous crop "
        "keeps this fraction of each series' frames; 1.0 = off",
    )
    frame_dropout: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="augmentation (training batches only, seeded): probability that each frame "
        "is dropped (one always stays); 0.0 = off",
    )
    balance: Balance = Field(
        default="weights",
        description="weights: inverse-frequency class weights in the loss | sampler: "
        "class-balanced draws",
    )
    epochs: int = Field(
        default=100, ge=1, description="upper bound; early stopping usually ends sooner"
    )
    patience: int = Field(
        default=25,
        ge=1,
        description="epochs without a better validation macro-F1 before stopping (small "
        "validation sets are noisy)",
    )
    lr: float = Field(
        default=3e-3,
        gt=0,
        description="AdamW peak learning rate (OneCycle: 10 % warm-up, cosine decay to ~0)",
    )
    weight_decay: float = Field(default=1e-2, ge=0, description="AdamW, on weight matrices only")
    grad_clip: float = Field(
        default=1.0,
        gt=0,
        description="max global grad norm: recurrent nets on long series occasionally spike",
    )
    batch_size: int = Field(default=16, ge=1, description="series per step")
    val_fraction: float = Field(
        default=0.15,
        ge=0,
        lt=1,
        description="of each class (of the official train part when split_lists is given)",
    )
    test_fraction: float = Field(
        default=0.15,
        ge=0,
        lt=1,
        description="of each class; ignored when split_lists is given (the lists name the test "
        "set)",
    )
    split_lists: str | None = Field(
        default=None,
        description="official split lists: a folder (or one file in it) of UCF101 "
        "trainlist0N.txt / testlist0N.txt or HMDB51 <class>_test_splitN.txt files, relative to "
        "the working directory; none = a stratified split by content hash",
    )
    split_number: int = Field(
        default=1, ge=1, description="which official split (UCF101 and HMDB51 ship 1, 2 and 3)"
    )
    split_record: str | None = Field(
        default=None,
        description="an earlier run's split record (its split_records.json or splits.json): "
        "the series it names, matched by content hash then id, keep their split, so adding "
        "series never moves one across splits; none = no pins",
    )
    seed: int = Field(
        default=0, ge=0, description="splits, initialisation, batch order and augmentation"
    )

    @model_validator(mode="after")
    def _leaves_training_series(self) -> Self:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} leave "
                "no training series; expected a sum below 1"
            )
        return self


class PromoteConfig(_Model):
    """The promotion gate (lib/registry/gate.py): every check must pass, on the
    challenger's frozen evaluation set."""

    margin: float = Field(
        default=0.0,
        description="challenger macro-F1 must be >= champion's + margin on the same evaluation set",
    )
    alias: str = Field(default="champion", description="the registry alias the gate moves")
    test: PromoteTest = Field(
        default="bootstrap",
        description="bootstrap: the one-sided (1 - alpha) lower bound of the paired-bootstrap "
        "macro-F1 gain must exceed margin | mcnemar: exact one-sided McNemar p-value on "
        "per-series correctness < alpha | none: the point estimate alone",
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="significance level of the test")
    resamples: int = Field(
        default=1000,
        ge=1,
        description="paired bootstrap resamples of the evaluation series (1000: bound stable "
        "to ~0.01)",
    )
    seed: int = Field(
        default=0,
        ge=0,
        description="bootstrap resampling seed: the same two models always get the same decision",
    )
    promote_identical: bool = Field(
        default=True,
        description="a challenger predicting exactly what the champion predicts on every "
        "series takes over when margin <= 0 (a nightly retrain on unchanged data keeps the "
        "newest lineage; consumers see no change); false: refuse it",
    )
    max_recall_drop: float | None = Field(
        default=0.10,
        ge=0,
        description="no class's recall may fall more than this; none = unchecked",
    )
    max_cost_ratio: float | None = Field(
        default=2.0,
        gt=0,
        description="parameter count and measured seconds per series, each <= ratio x the "
        "champion's; none = unchecked",
    )
    cost_floor_ms: float = Field(
        default=1.0,
        ge=0,
        description="predict times per series below this count as this: timer noise, not cost",
    )


class RuntimeConfig(_Model):
    """Where things run and live; chosen once, at the edge (flows/runtime.py)."""

    home: str = Field(
        default=".lstmpipe",
        description="state directory: cache, failures, runs, MLflow store, predictions",
    )
    mlflow_uri: str | None = Field(
        default=None, description="none = MLFLOW_TRACKING_URI, else SQLite under home"
    )
    ray_address: str | None = Field(default=None, description="none = RAY_ADDRESS, else no cluster")
    executor: Executor = Field(
        default="auto",
        description="auto: Ray when a cluster address is known, else in-process (Ray's ~10 s "
        "start-up buys nothing on one machine: torch already uses every core) | local | ray "
        "(a local Ray, e.g. for several GPUs)",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description="Ray extraction actors; none = one per CPU Ray has, or per GPU share",
    )
    gpus_per_worker: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="GPU share per actor: 0.5 puts two small backbones on each GPU",
    )
    decoders: int = Field(
        default=2,
        ge=1,
        description="series decoded at once per extractor: hides each series' decoder start-up",
    )
    decode_on: DecodeOn = Field(
        default="auto",
        description="on Ray, where frames are decoded: auto = in Ray tasks when the cluster has "
        "GPUs (the CPUs are free for it), else in the actor's own threads (a task would only "
        "compete for the actor's cores) | tasks | actor",
    )
    decode_cpus: float = Field(
        default=1.0,
        gt=0,
        description="CPUs a decode task requests (ffmpeg decoding + resizing one series)",
    )
    shard_size: int = Field(
        default=64,
        ge=1,
        description="series per Prefect task: a task run costs tens of ms of API traffic",
    )
    api_idle_s: float = Field(
        default=600.0,
        ge=0,
        description="seconds the local Prefect API stays up after the last command using it "
        "(started by the first command when no PREFECT_API_URL is set): later commands skip "
        "its 5-15 s boot; 0 = stop it with the command",
    )
    partition_concurrency: int = Field(
        default=2,
        ge=1,
        description="partitions a backfill or nightly run extracts at once; in-process all share "
        "one backbone that already uses every core, so 2 only overlaps one partition's "
        "discovery, decoder start-up and cache commits with another's CNN work; on a Ray "
        "cluster raise it until the actors stay busy",
    )


class NightlyConfig(_Model):
    """What `lstmpipe serve` schedules (flows/serve.py); `lstmpipe nightly` takes these on its
    command line."""

    cron: str = Field(
        default="0 2 * * *",
        description="when the nightly deployment runs: 02:00, after the day's partition has landed",
    )
    timezone: str = Field(
        default="UTC", description="of the cron string (IANA name, e.g. Europe/Paris)"
    )
    root: str | None = Field(default=None, description="the partitioned archive; required by serve")
    model: str | None = Field(default=None, description="registered model name; required by serve")
    labels: str | None = Field(
        default=None, description="manifest CSV/Parquet; none = labels from folder names"
    )
    infer_source: str | None = Field(default=None, description="what to predict; none = the root")


class StateConfig(_Model):
    """Where the pipeline's state lives: files and SQLite under home (local), or a team's
    PostgreSQL and object store. Credentials never go here: PGPASSWORD / PGPASSFILE and the
    standard AWS variables (or their *_FILE twins) are read by the clients."""

    database: str | None = Field(
        default=None,
        description="none = SQLite files under home; else a PostgreSQL URL "
        "(postgresql://user@host:5432/db) for the cache index, hash memo, partition records, "
        "promotion history and locks",
    )
    store: str | None = Field(
        default=None,
        description="none = files under home; else s3://bucket/prefix for feature files, "
        "failures, predictions, per-frame tables, reports and run summaries "
        "(endpoint from AWS_ENDPOINT_URL)",
    )
    retry_s: float = Field(
        default=120.0,
        gt=0,
        description="how long an unreachable database or object store is retried, with "
        "back-off, before the run stops with an error naming it",
    )

    @field_validator("database")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is not None and re.match(r"^[a-z0-9+]+://[^/@]*:[^/@]*@", value):
            raise ValueError(
                "a password in the URL would end up in config files and logs; give it as "
                "PGPASSWORD, PGPASSWORD_FILE or a PGPASSFILE instead"
            )
        return value


class Config(_Model):
    """The whole configuration: one section per concern."""

    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    nightly: NightlyConfig = Field(default_factory=NightlyConfig)
    state: StateConfig = Field(default_factory=StateConfig)


ENV_PREFIX = "LSTMPIPE_"
# section name -> its model, e.g. "sampling" -> SamplingConfig
SECTIONS: dict[str, type[_Model]] = {
    name: typing.cast(type[_Model], field.annotation) for name, field in Config.model_fields.items()
}


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config from a file, `LSTMPIPE_SECTION_KEY` variables and `section.key` overrides."""
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    if path is not None:
        _merge(values, _read_file(Path(path)), origin=str(path))
    _merge(values, _from_env(env or {}), origin="environment")
    _merge(values, _nest(overrides or {}), origin="command line")
    sections: dict[str, Any] = {name: SECTIONS[name](**keys) for name, keys in values.items()}
    return Config(**sections)


def replace(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of `config` with some keys of some sections changed, validated like a file."""
    _merge({name: {} for name in SECTIONS}, sections, origin="replace")  # unknown section: error
    changed = {
        name: SECTIONS[name](**{**getattr(config, name).model_dump(), **keys})
        for name, keys in sections.items()
    }
    return config.model_copy(update=changed)


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
        if section in SECTIONS and key:
            nested.setdefault(section, {})[key] = value
            continue
        # Not a config variable (a wrapper's own LSTMPIPE_DATA, say) unless it looks like a
        # misspelt one.
        near = difflib.get_close_matches(section, SECTIONS, n=1, cutoff=0.75)
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
        if section not in SECTIONS:
            raise ConfigError(
                f"{origin}: unknown section {section!r}; known: {', '.join(SECTIONS)}"
            )
        if not isinstance(keys, Mapping):
            raise ConfigError(f"{origin}: section {section!r} must be a table of keys")
        values[section].update(keys)


def field_kind(hint: Any) -> tuple[Any, bool]:
    """A field's annotation as its type without None, and whether it may be None."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [kind for kind in options if kind is not type(None)]
    return (kinds[0] if len(kinds) == 1 else hint), len(kinds) < len(options)


def as_text(value: Any) -> str:
    """A value as the environment and flags write it, and the loader parses it back:
    none, true, 8, 0.003, b5,b4,b3."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(as_text(item) for item in value)
    return str(value)


def _parse(value: Any, hint: Any) -> Any:
    """Text (environment, flags, `--set`) and file lists as the field's type, where they parse.

    "4" -> 4, "none" -> None where the key may be unset, "b5,b4,b3" -> ("b5", "b4", "b3").
    What does not parse is left as given, for the strict validation to name.
    """
    kind, nullable = field_kind(hint)
    if nullable and isinstance(value, str) and value.strip().lower() in NONE_WORDS:
        return None
    if kind is str or typing.get_origin(kind) is Literal:
        return value
    if typing.get_origin(kind) is tuple and isinstance(value, str):
        candidate: Any = tuple(part.strip() for part in value.split(","))
    elif typing.get_origin(kind) is tuple and isinstance(value, list):
        candidate = tuple(value)
    elif isinstance(value, str):
        candidate = value.strip()
    else:
        return value
    try:
        return TypeAdapter(kind).validate_python(candidate)
    except ValidationError:
        return value


_URL_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")

# pydantic error types -> what the key expects
_EXPECTED = {
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "expected int"),
    **dict.fromkeys(("float_type", "float_parsing"), "expected float"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "expected bool"),
    "string_type": "expected str",
}


def _describe(prefix: str, model: type[BaseModel], exc: ValidationError) -> str:
    """pydantic's errors as one line: `section.key: value; what was expected` for each."""
    return "; ".join(_describe_one(prefix, model, error) for error in exc.errors())


def _describe_one(prefix: str, model: type[BaseModel], error: ErrorDetails) -> str:
    names = [str(part) for part in error["loc"] if isinstance(part, str)]
    key = ".".join([prefix, *names] if prefix else names)
    fields = model.model_fields
    if error["type"] == "extra_forbidden":
        near = difflib.get_close_matches(names[-1], fields, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        return f"unknown key {key}{hint}; known keys: {', '.join(sorted(fields))}"
    if not names:  # a check across keys
        return f"{key}: {error['msg'].removeprefix('Value error, ')}"
    value = error["input"]
    if isinstance(value, str):  # a URL's password is never echoed
        value = _URL_PASSWORD.sub(r"\1***@", value)
    if value is None:
        return f"{key}: None; a value is required"
    if error["type"] in _EXPECTED:
        expected = _EXPECTED[error["type"]]
    elif error["type"] == "literal_error":
        expected = f"expected one of {error.get('ctx', {}).get('expected')}"
    elif error["type"] == "tuple_type":
        examples = fields[names[0]].examples if names[0] in fields else None
        expected = "expected a comma-separated list" + (
            f" such as {examples[0]}" if examples else ""
        )
    else:
        expected = error["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
    return f"{key}: {value!r}; {expected}"
