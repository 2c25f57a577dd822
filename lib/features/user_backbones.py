"""Backbones a user brings: an entry point's module, or a TorchScript file (SPEC §3.2).

Either maps a normalised (N, 3, H, W) float batch (ImageNet mean and std, as for torchvision's)
to (N, D) vectors; (N, D, 1, 1) is flattened. An entry point runs the user's code in this
process: it is configuration, like a plugin (SECURITY.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from lstmpipe.lib.errors import ConfigError


def from_entry_point(name: str) -> nn.Module:
    """`package.module:callable` called with no arguments (after the caller seeded torch, so a
    module it initialises at random is the same every time)."""
    module_name, _, attribute = name.partition(":")
    # what the user's code prints goes to stderr: stdout carries the CLI's --json document
    with contextlib.redirect_stdout(sys.stderr):
        try:
            target: object = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"backbone.name: entry point {name!r}: cannot import it: {exc}"
            ) from exc
        for part in attribute.split("."):
            if not hasattr(target, part):
                raise ConfigError(
                    f"backbone.name: entry point {name!r}: {module_name} has no {part}"
                )
            target = getattr(target, part)
        if not callable(target):
            raise ConfigError(f"backbone.name: entry point {name!r} is not callable")
        made = target()
    if not isinstance(made, nn.Module):
        raise ConfigError(
            f"backbone.name: entry point {name!r} returned a {type(made).__name__}, "
            "not a torch.nn.Module"
        )
    return made


def from_torchscript(path: Path) -> nn.Module:
    """A file torch.jit.save wrote (code and weights in one), loaded on the CPU."""
    try:
        # deprecated in favour of torch.export since torch 2.14, still supported (backbone.py)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"backbone.name: {path} is not a TorchScript file torch.jit.load can read "
            f"(a state_dict belongs in backbone.weights): {exc}"
        ) from exc


def tensors_digest(module: nn.Module) -> str:
    """blake2b of a module's state_dict: every entry's name, dtype, shape and bytes, in name
    order; equal tensors, equal digest, wherever and however they were made."""
    digest = hashlib.blake2b(digest_size=16)
    for key, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):  # a module's extra state
            digest.update(f"{key}={value!r}\n".encode())
            continue
        data = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}\n".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
