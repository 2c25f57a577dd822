"""A trained model as files: what the registry stores and what inference and serving load.

    spec.json     the network's shape (ModelSpec): enough to rebuild the module
    weights.pt    its state_dict, loaded with torch.load(weights_only=True)
    labels.json   class names, in logit order
    recipe.json   the feature recipe its inputs must be made with (FeatureRecipe.to_dict())
Rebuilding from a spec and a state_dict (rather than pickling the module or exporting with
fixed shapes) keeps loading safe and any sequence length valid.

The files are data that whoever can write a registry may have written: every one is checked
before it sizes anything (read_bundle). A spec is bounded before its network is allocated, the
weights file before torch reads it, and the tensors must be exactly the ones the spec builds.

This module imports torch and lstmpipe modules that import nothing else of lstmpipe's (model,
state_files, errors): a registered version carries them as code and loads where lstmpipe is not
installed (lib/registry/pyfunc_entry.py). The recipe stays a JSON dict here for that reason;
lib/training/bundle.py types it.
"""

from __future__ import annotations

import json
import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.state_files import load_state_dict
from lstmpipe.lib.training.model import ModelSpec

JSON_FILES = ("spec.json", "labels.json", "recipe.json")
WEIGHTS = "weights.pt"

# Bounds on a stored spec, far above the models lstmpipe trains (backbones give 512-2048 features;
# the defaults, 128 units in 1 layer, make 0.2-0.4 M parameters) and far below a memory bomb: a
# spec.json asking for a 10^9-unit LSTM is refused before torch allocates a byte of it.
MAX_WIDTH = 1 << 16  # input_dim, input_proj, hidden_size
MAX_LAYERS = 16
MAX_CLASSES = 10_000
# 2^28 parameters = 1 GiB of float32 (loading holds the file's tensors and the module: 2 GiB).
# 4 bidirectional layers of 1024 units over 2048 features make 86 M; the 5.3 * 10^11 of a spec
# with 16 layers of 65536 units are refused.
MAX_PARAMETERS = 1 << 28
# spec, labels and recipe are a few kB; 10 000 class names of 100 characters fit in 1 MiB.
MAX_JSON_BYTES = 1 << 20
# torch's zip around the tensors: a fixed part and a record per tensor (measured ~400 B each).
WEIGHTS_OVERHEAD = 64 << 10
WEIGHTS_OVERHEAD_PER_TENSOR = 4 << 10

_INTS = {
    "input_dim": (1, MAX_WIDTH),
    "num_classes": (2, MAX_CLASSES),
    "hidden_size": (1, MAX_WIDTH),
    "num_layers": (1, MAX_LAYERS),
}
_TEXTS = ("kind", "cell", "pooling", "input_norm")


@dataclass(frozen=True)
class StoredBundle:
    """A bundle's files, read: the rebuilt network in eval mode and the JSON beside it."""

    spec: ModelSpec
    module: nn.Module
    labels: list[str]
    recipe: dict[str, Any]


def write_bundle(directory: Path, model: StoredBundle) -> Path:
    """The four files in `directory` (created); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spec.json").write_text(json.dumps(model.spec.to_dict(), indent=2))
    (directory / "labels.json").write_text(json.dumps(model.labels))
    (directory / "recipe.json").write_text(json.dumps(model.recipe, indent=2, sort_keys=True))
    torch.save(model.module.state_dict(), directory / WEIGHTS)
    return directory


def read_bundle(directory: Path, where: str | None = None) -> StoredBundle:
    """Rebuild the network from spec.json and load weights.pt into it (tensors only), each file
    checked as hostile data first; a refusal is a ConfigError naming `where` (default: the folder)
    and the file."""
    directory = Path(directory)
    where = where or str(directory)
    spec = read_spec(directory / "spec.json", where)
    labels = _labels(_read_json(directory / "labels.json", where), spec, where)
    recipe = _read_json(directory / "recipe.json", where)
    if not isinstance(recipe, dict):
        raise ConfigError(f"{where}: recipe.json is not a JSON object")
    return StoredBundle(spec, _load_weights(spec, directory / WEIGHTS, where), labels, recipe)


def read_spec(path: Path, where: str) -> ModelSpec:
    """spec.json as a ModelSpec whose types and sizes are checked, and whose network stays under
    MAX_PARAMETERS: nothing is allocated for a spec that fails."""
    data = _read_json(path, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: spec.json is not a JSON object")
    problem = _spec_problem(data)
    if problem is None:
        try:
            spec = ModelSpec.from_dict(data)
        except (TypeError, ValueError) as exc:
            problem = str(exc)
    if problem is not None:
        raise ConfigError(f"{where}: spec.json refused: {problem}")
    parameters = sum(math.prod(shape) for shape, _ in expected_tensors(spec).values())
    if parameters > MAX_PARAMETERS:
        raise ConfigError(
            f"{where}: spec.json refused: the network it describes has {parameters} parameters, "
            f"over the {MAX_PARAMETERS} a model may have"
        )
    return spec


def expected_tensors(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in the state_dict of `spec`'s network, from a build
    on the meta device (shapes only: no memory, whatever the spec asks)."""
    with torch.device("meta"):
        state = spec.build().state_dict()
    return {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in state.items()}


def weights_limit(spec: ModelSpec) -> int:
    """The most bytes an honest weights.pt of `spec` takes: its tensors and torch's zip around
    them."""
    tensors = expected_tensors(spec)
    data = sum(math.prod(shape) * dtype.itemsize for shape, dtype in tensors.values())
    return data + WEIGHTS_OVERHEAD + WEIGHTS_OVERHEAD_PER_TENSOR * len(tensors)


def _spec_problem(data: dict[str, Any]) -> str | None:
    """The first field of a spec.json with a wrong type or an out-of-bounds size, else None."""
    for name, (low, high) in _INTS.items():
        if name in data and not _int_within(data[name], low, high):
            return f"{name} {data[name]!r} is not an integer from {low} to {high}"
    proj = data.get("input_proj")
    if proj is not None and not _int_within(proj, 1, MAX_WIDTH):
        return f"input_proj {proj!r} is not null or an integer from 1 to {MAX_WIDTH}"
    if "bidirectional" in data and not isinstance(data["bidirectional"], bool):
        return f"bidirectional {data['bidirectional']!r} is not true or false"
    dropout = data.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        return f"dropout {dropout!r} is not a number from 0 to below 1"
    for name in _TEXTS:
        if name in data and not isinstance(data[name], str):
            return f"{name} {data[name]!r} is not a string"
    return None


def _int_within(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _labels(data: Any, spec: ModelSpec, where: str) -> list[str]:
    """One distinct class name per logit of the network."""
    if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
        raise ConfigError(f"{where}: labels.json is not a JSON list of class names")
    if len(data) != spec.num_classes or len(set(data)) != len(data):
        raise ConfigError(
            f"{where}: labels.json holds {len(data)} names ({len(set(data))} distinct); "
            f"spec.json's network has {spec.num_classes} classes"
        )
    return data


def _read_json(path: Path, where: str) -> Any:
    _check_file(path, MAX_JSON_BYTES, where)
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{where}: {path.name} is not JSON ({exc})") from exc


def _load_weights(spec: ModelSpec, path: Path, where: str) -> nn.Module:
    """The network of `spec` with the tensors of `path`, which must be exactly its state_dict's
    (names, shapes, dtypes): nothing else is read into it."""
    _check_file(path, weights_limit(spec), where)
    state = load_state_dict(path, where)
    expected = expected_tensors(spec)
    if not isinstance(state, dict):
        raise ConfigError(f"{where}: {WEIGHTS} is not a state_dict (a mapping of tensors)")
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise ConfigError(
            f"{where}: {WEIGHTS} does not fit spec.json: missing {missing[:3]}, "
            f"unexpected {[str(k) for k in extra[:3]]}"
        )
    for name, (shape, dtype) in expected.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or (tuple(tensor.shape), tensor.dtype) != (
            shape,
            dtype,
        ):
            got = (
                f"{tuple(tensor.shape)} {tensor.dtype}"
                if isinstance(tensor, torch.Tensor)
                else type(tensor).__name__
            )
            raise ConfigError(
                f"{where}: {WEIGHTS} does not fit spec.json: {name} is {got}, "
                f"the network needs {shape} {dtype}"
            )
    module = spec.build()
    module.load_state_dict(state, strict=True)
    return module.eval()


def _check_file(path: Path, limit: int, where: str) -> None:
    """A regular file (not a fifo or a device that would block or never end) of 1 to `limit`
    bytes."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"{where}: {path.name} cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        raise ConfigError(f"{where}: {path.name} refused: not a regular file, or empty")
    if info.st_size > limit:
        raise ConfigError(
            f"{where}: {path.name} refused: {info.st_size} bytes, over its limit of {limit}"
        )
