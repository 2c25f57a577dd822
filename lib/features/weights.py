"""Which weights and precision a backbone runs with, decided without importing torch.

Weights come from the local torch cache, a state_dict file, or `none` (a seeded random
init, labelled as such). A torchvision weights name missing from the cache is downloaded
there on first use, hash-checked (download.py), unless `backbone.offline`. A command whose
features are all cached names its recipe from these answers alone (recipe.recipe_key):
torch and torchvision take seconds to import, and it needs neither, nor the network.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from lstmpipe.lib.config import BackboneConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.backbone_names import BackboneKind, backbone_kind, torchscript_path


@dataclass(frozen=True)
class WeightsSource:
    """What initialised the backbone: goes into the feature recipe."""

    label: str  # e.g. "IMAGENET1K_V1", "file:resnet18.pth", "none(seed=0)"
    digest: str  # identifies the exact tensors: file hash, or "random-seed-N"
    path: Path | None  # the state_dict file to load, None for a random init


def resolve_weights(config: BackboneConfig, torch_hub_dir: Path) -> WeightsSource:
    """Find the weights `config.weights` names; only a torchvision name missing from the
    cache touches the network, once (_fetch_torchvision)."""
    kind = backbone_kind(config.name)
    if kind is not BackboneKind.TORCHVISION:
        return _own_weights(config, kind)
    if _names_torchvision_weights(config):
        return _torchvision_weights(config, torch_hub_dir)
    if config.weights.lower() == "none":
        return WeightsSource(f"none(seed={config.seed})", f"random-seed-{config.seed}", None)
    return _weights_file(config)


def _weights_file(config: BackboneConfig) -> WeightsSource:
    as_path = Path(config.weights).expanduser()
    if not as_path.is_file():
        raise ConfigError(f"backbone.weights: file {as_path} does not exist")
    return WeightsSource(f"file:{as_path.name}", _digest_of(as_path), as_path)


def _own_weights(config: BackboneConfig, kind: BackboneKind) -> WeightsSource:
    """An entry point's or a TorchScript file's weights: its own (DEFAULT), or a state_dict file
    loaded into an entry point's module. No `none`: only the user's code knows how to make a
    random init. An entry point's recipe takes the digest of the tensors it built (backbone.py);
    a TorchScript file's is the file's, which holds them."""
    if kind is BackboneKind.TORCHSCRIPT:
        if config.weights != "DEFAULT":
            raise ConfigError(
                f"backbone.weights: {config.weights!r}: the TorchScript file {config.name} holds "
                "its own weights; use DEFAULT (or save the file with the weights you want)"
            )
        path = torchscript_path(config.name)
        if not path.is_file():
            raise ConfigError(f"backbone.name: TorchScript file {path} does not exist")
        return WeightsSource("DEFAULT", _digest_of(path), None)
    if config.weights == "DEFAULT":
        return WeightsSource("DEFAULT", "", None)
    if config.weights.lower() == "none":
        raise ConfigError(
            f"backbone.weights: none (a seeded random init) is for torchvision models; the entry "
            f"point {config.name!r} brings its own weights: use DEFAULT or a .pth state_dict"
        )
    return _weights_file(config)


def _names_torchvision_weights(config: BackboneConfig) -> bool:
    """`weights` is a torchvision weights name (IMAGENET1K_V1, DEFAULT): neither `none` nor a
    file (a .pt/.pth name, or any path that exists), for a torchvision model."""
    as_path = Path(config.weights).expanduser()
    is_file = as_path.suffix in {".pt", ".pth"} or as_path.exists()
    torchvision = backbone_kind(config.name) is BackboneKind.TORCHVISION
    return torchvision and config.weights.lower() != "none" and not is_file


def _torchvision_weights(config: BackboneConfig, torch_hub_dir: Path) -> WeightsSource:
    import torchvision  # late: seconds to import, and only a torchvision name needs it

    try:
        enum = torchvision.models.get_model_weights(config.name)
        weights = enum[config.weights]  # DEFAULT too: an alias member of every weights enum
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"backbone.weights: {config.weights!r} is not a weights name of {config.name}"
        ) from exc
    filename = Path(weights.url).name
    cached = torch_hub_dir / "checkpoints" / filename
    if not cached.is_file():
        _fetch_torchvision(config, f"{config.name} {weights.name}", weights.url, cached)
    return WeightsSource(weights.name, filename, cached)


def _fetch_torchvision(config: BackboneConfig, what: str, url: str, cached: Path) -> None:
    """First use: download `cached` as torchvision would, unless offline (air-gapped hosts,
    tests), where the missing file stays an error saying how to get it."""
    from lstmpipe.lib.features.download import fetch_checkpoint, weights_url  # late, like torch

    url = weights_url(url, config.weights_mirror)
    if config.offline:
        raise ConfigError(
            f"backbone.weights: {what} is not in the local torch cache ({cached}) and "
            f"backbone.offline is set (or LSTMPIPE_OFFLINE): download {url} to that path, unset "
            "it to fetch the file on first use, pass a .pth path, or use --weights none"
        )
    fetch_checkpoint(url, cached)


def _digest_of(path: Path) -> str:
    stat = path.stat()
    return _file_digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """blake2b of a weights file, once per process per (path, size, mtime): the recipe, the early
    load and every shard resolve the same file, and hashing it reads tens of MB each time."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_precision(requested: str, device: str) -> str:
    """`auto` picks bf16 where the hardware runs it fast, else fp16 on GPU, else fp32."""
    if requested not in {"auto", "fp32", "bf16", "fp16"}:
        raise ConfigError(f"backbone.precision: {requested!r}; expected auto, fp32, bf16 or fp16")
    if requested != "auto":
        return requested
    if device == "cuda":
        import torch  # late: only a GPU's answer needs it

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def resolve_optimize(requested: str, device: str, precision: str) -> str:
    """`auto` freezes on CPU in fp32 (tested there); autocast and GPUs run the module as it is."""
    if requested not in {"auto", "freeze", "inductor", "none"}:
        raise ConfigError(
            f"backbone.optimize: {requested!r}; expected auto, freeze, inductor or none"
        )
    if requested != "auto":
        return requested
    return "freeze" if device == "cpu" and precision == "fp32" else "none"


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: without them bf16 autocast on CPU is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# Device nodes a GPU driver creates (NVIDIA; AMD's ROCm; WSL's GPU paravirtualisation): without
# one, torch finds no GPU.
_GPU_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def default_device() -> str:
    """`cuda` when torch sees a GPU, else `cpu`. torch is asked only where a GPU driver is
    present, so a CPU-only host decides without importing it."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in {"", "-1"} or not any(
        Path(node).exists() for node in _GPU_NODES
    ):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_identity(config: BackboneConfig, torch_hub_dir: Path) -> str:
    """What resolve_weights would name, without importing torchvision: a torchvision weights
    name maps to one checkpoint per torchvision version. Files, TorchScript files and `none`
    resolve as always."""
    if _names_torchvision_weights(config):
        return f"torchvision {version('torchvision')}: {config.name} {config.weights}"
    return resolve_weights(config, torch_hub_dir).digest
