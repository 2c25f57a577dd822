"""Backbones as per-frame feature extractors (SPEC §3.2): torchvision models, headless and
pooled globally or over a k x k grid, or the module an entry point or a TorchScript file brings
(user_backbones.py).

Which weights and precision they run with is decided in weights.py, without torch.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torchvision
from torch import nn

from lstmpipe.lib.config import BackboneConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.backbone_names import (
    BackboneKind,
    backbone_kind,
    providers,
    torchscript_path,
)
from lstmpipe.lib.features.user_backbones import from_entry_point, from_torchscript, tensors_digest
from lstmpipe.lib.features.weights import WeightsSource, resolve_optimize, resolve_precision
from lstmpipe.lib.state_files import load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HEADS = ("fc", "classifier", "heads", "head")  # where torchvision models keep their classifier
_FEATURE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
CPU_BATCH = 32
# beyond this a GPU is saturated by any torchvision backbone; latency only grows
MAX_GPU_BATCH = 1024


class Backbone:
    """A headless torchvision model, or a user's module: uint8 frames in, one feature vector per
    frame out.

    Loaded once (in `__init__`), then called on batches; the caller decides batching
    and placement (a Ray actor holds one per worker). `weights_digest` and `code` say what the
    recipe records of it (build.py).
    """

    def __init__(self, config: BackboneConfig, weights: WeightsSource, device: str = "cpu") -> None:
        if config.feature_dtype not in _FEATURE_DTYPES:
            raise ConfigError(
                f"backbone.feature_dtype: {config.feature_dtype!r}; expected float32 or float16"
            )
        self.device = torch.device(device)
        self.precision = resolve_precision(config.precision, self.device.type)
        self.feature_dtype = _FEATURE_DTYPES[config.feature_dtype]
        self.name, self.kind = config.name, backbone_kind(config.name)
        model = _build(config, weights)
        # An entry point's weights are whatever its code made: the digest of the tensors built.
        # A TorchScript file's is the file's; torchvision's, the checkpoint's (weights.py).
        self.weights_digest = weights.digest
        self.code = ""  # the distributions an entry point's code came from, with versions
        if self.kind is BackboneKind.ENTRY_POINT:
            self.weights_digest = tensors_digest(model)
            self.code = providers([config.name.partition(":")[0], type(model).__module__])
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.optimize = resolve_optimize(config.optimize, self.device.type, self.precision)
        if self.kind is BackboneKind.TORCHSCRIPT and self.optimize == "inductor":
            self.optimize = "none"  # torch.compile cannot compile TorchScript; it runs as saved
        self.model = _optimized(self.model, self.optimize, config.name, self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self.feature_dim = self._probe_dim()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) features: float32, or float16 if the recipe stores that."""
        return self.forward(self.prepare(frames))

    @torch.inference_mode()
    def prepare(self, frames: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> the network's input: normalised (N, 3, H, W), channels last."""
        x = torch.from_numpy(frames)  # (N, H, W, 3) uint8: a quarter of the bytes of float32
        if self.device.type == "cuda":  # page-locked, so the copy below runs asynchronously
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W), a channels_last view
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> np.ndarray:
        """A prepared batch -> (N, D) features on the CPU, in the recipe's dtype."""
        return self._run(x).to(self.feature_dtype).flatten(1).cpu().numpy()

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output: (N, D), or (N, C, k, k) where nothing flattens what the pooling
        returns (ConvNeXt; a user's module returning (N, D, 1, 1))."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            return self.model(x)

    def batch_size(self, size: int, requested: int | None = None) -> int:
        """Frames per forward pass: `requested`, else 32 on CPU (throughput is flat beyond ~16 there
        and memory grows), else on GPU what half the free memory holds (measured on a probe)."""
        if requested:
            return requested
        if self.device.type != "cuda":
            return CPU_BATCH
        probe = 16
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self(np.zeros((probe, size, size, 3), dtype=np.uint8))
        per_frame = max(1, (torch.cuda.max_memory_allocated(self.device) - before) // probe)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(min(MAX_GPU_BATCH, max(CPU_BATCH, free // 2 // per_frame // 32 * 32)))

    def _probe_dim(self) -> int:
        """D, from one small frame; a user's module must return vectors, not a feature map."""
        out = self._run(self.prepare(np.zeros((1, 64, 64, 3), dtype=np.uint8)))
        vectors = isinstance(out, torch.Tensor) and (
            out.ndim == 2 or (out.ndim == 4 and tuple(out.shape[2:]) == (1, 1))
        )
        if self.kind is not BackboneKind.TORCHVISION and not vectors:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"backbone.name: {self.name!r} returned {got} for one 64 px frame; "
                "expected (N, D) vectors (or (N, D, 1, 1)): pool its feature map"
            )
        return int(out.flatten(1).shape[1])


def _optimized(model: nn.Module, how: str, name: str, device: torch.device) -> nn.Module:
    """The same function, faster: frozen TorchScript or torch.compile.

    Freezing folds batch norms into convolutions and inlines constants; it is traced once on a
    small frame and valid for any batch and frame size. A TorchScript file is frozen as loaded.
    """
    if how == "freeze":
        # torch 2.14 marks TorchScript deprecated in favour of torch.compile, which on these CPUs
        # costs a minute of compiling per run; freezing is still supported, takes 1 s and runs as
        # fast: kept until it goes.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            if isinstance(model, torch.jit.ScriptModule):
                return torch.jit.freeze(model)
            example = torch.zeros(1, 3, 64, 64, device=device)
            try:
                traced = torch.jit.trace(
                    model, example.contiguous(memory_format=torch.channels_last)
                )
            # a user's module may do what tracing cannot (data-dependent control flow, outputs
            # that are not tensors): say which setting avoids it
            except Exception as exc:
                raise ConfigError(
                    f"backbone.optimize: freeze traces {name!r}, which failed ({exc}); "
                    "set backbone.optimize=none"
                ) from exc
            return torch.jit.freeze(traced)
    if how == "inductor":
        # one graph per batch shape: full batches and the last one
        compiled = torch.compile(model, dynamic=False)
        assert isinstance(compiled, nn.Module)  # an OptimizedModule wrapping `model`
        return compiled
    return model


def _build(config: BackboneConfig, weights: WeightsSource) -> nn.Module:
    """The module with its weights: a torchvision model headless and pooled as configured, or
    what an entry point or a TorchScript file brings (those pool themselves: only `global`)."""
    kind = backbone_kind(config.name)
    if kind is not BackboneKind.TORCHVISION and config.pool != "global":
        raise ConfigError(
            f"backbone.pool: {config.pool} needs a torchvision model; {config.name!r} is a "
            f"{kind.value} and pools its own features (use global)"
        )
    # `none` weights, or an entry point that initialises at random: the same init every time
    torch.manual_seed(config.seed)
    if kind is BackboneKind.ENTRY_POINT:
        return _with_weights(from_entry_point(config.name), weights, config.name)
    if kind is BackboneKind.TORCHSCRIPT:
        return from_torchscript(torchscript_path(config.name))
    try:
        model = torchvision.models.get_model(config.name, weights=None)
    except ValueError as exc:
        raise ConfigError(f"backbone.name: unknown torchvision model {config.name!r}") from exc
    return _pooled(_headless(_with_weights(model, weights, config.name)), config.pool)


def _with_weights(model: nn.Module, weights: WeightsSource, name: str) -> nn.Module:
    if weights.path is not None:
        state = load_state_dict(weights.path, "backbone.weights")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(
                f"backbone.weights: {weights.path} does not fit {name}: {exc}"
            ) from exc
    return model


def _pooled(model: nn.Module, pool: str) -> nn.Module:
    """`gridk`: the final feature map averaged over k x k cells instead of the whole frame, so
    where things are survives (a dot moving left or right). C * k * k features, channel-major:
    feature c * k * k + row * k + column. torchvision models that pool with an `avgpool` module
    and flatten what it returns (resnet, mobilenet_v3, efficientnet, convnext, regnet, swin,
    vgg...) take it; the others pool in their forward code."""
    if pool == "global":
        return model
    if not isinstance(getattr(model, "avgpool", None), nn.AdaptiveAvgPool2d):
        raise ConfigError(
            f"backbone.pool: {pool} needs a model that pools with an avgpool module (resnet, "
            f"mobilenet_v3, efficientnet, convnext, regnet...); {type(model).__name__} has none"
        )
    model.avgpool = nn.AdaptiveAvgPool2d(int(pool.removeprefix("grid")))
    return model


def _headless(model: nn.Module) -> nn.Module:
    """Replace the classifier head with Identity so the model returns pooled features."""
    for name in _HEADS:
        if isinstance(getattr(model, name, None), nn.Module):
            setattr(model, name, nn.Identity())
            return model
    raise ConfigError(
        f"backbone.name: {type(model).__name__} has no known classifier head ({', '.join(_HEADS)})"
    )
