"""What `backbone.name` names, decided from the text alone, without torch.

- `package.module:callable`: an entry point, the user's own code (timm, torchgeo, MONAI...);
- a name with a `/` or a `.`: a TorchScript file (torchvision names have neither);
- anything else: a torchvision model.

The recipe names a TorchScript file by its file name (paths differ between machines, as for
`file:` weights) and records which distributions an entry point's code came from.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from enum import Enum
from importlib.metadata import distribution, packages_distributions
from importlib.util import find_spec
from pathlib import Path

from lstmpipe.lib.errors import ConfigError

_ENTRY_POINT = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
TORCHSCRIPT_PREFIX = "torchscript:"  # the recipe's name for a TorchScript backbone


class BackboneKind(Enum):
    TORCHVISION = "torchvision"
    ENTRY_POINT = "entry point"
    TORCHSCRIPT = "TorchScript file"


def backbone_kind(name: str) -> BackboneKind:
    if _ENTRY_POINT.fullmatch(name):
        return BackboneKind.ENTRY_POINT
    if "/" in name or "." in name:
        return BackboneKind.TORCHSCRIPT
    return BackboneKind.TORCHVISION


def torchscript_path(name: str) -> Path:
    return Path(name).expanduser()


def recipe_name(name: str) -> str:
    """The backbone as the recipe records it: a TorchScript file by its file name."""
    if backbone_kind(name) is BackboneKind.TORCHSCRIPT:
        return TORCHSCRIPT_PREFIX + torchscript_path(name).name
    return name


def code_identity(name: str) -> str:
    """What recipe_key knows of an entry point's code without importing it: every installed
    distribution (the dist-info folders on sys.path name them with their versions) and the file
    stamps of the entry point's top-level package. Its code may import any installed package,
    so any install is taken as a change: the next command derives the recipe again (one backbone
    load) rather than reuse a recipe the code no longer makes. Empty for other backbones."""
    if backbone_kind(name) is not BackboneKind.ENTRY_POINT:
        return ""
    top = name.partition(":")[0].partition(".")[0]
    spec = find_spec(top)  # a top-level module: found, not imported
    if spec is None:
        raise ConfigError(f"backbone.name: entry point {name!r}: no module named {top!r}")
    code = hashlib.blake2b(digest_size=16)
    for folder in sys.path:
        if os.path.isdir(folder):
            installed = sorted(e for e in os.listdir(folder) if e.endswith(".dist-info"))
            code.update("\n".join(installed).encode())
    if spec.submodule_search_locations:
        files = sorted(f for d in spec.submodule_search_locations for f in Path(d).rglob("*.py"))
    else:
        files = [Path(spec.origin)] if spec.origin else []
    for file in files:
        stat = file.stat()
        code.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return code.hexdigest()


def providers(module_names: list[str]) -> str:
    """ "dist version" of each distribution whose files hold one of these (imported) modules, once
    each, in order: "efficientnet-lite-pytorch 0.1.0". A module outside every distribution (the
    user's own code, an editable install) is named as "<top-level name> (no distribution)"."""
    found: list[str] = []
    for module_name in module_names:
        provider = _distribution_of(module_name)
        if provider not in found:
            found.append(provider)
    return "; ".join(found)


def _distribution_of(module_name: str) -> str:
    top = module_name.partition(".")[0]
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if file is not None:
        real = Path(os.path.realpath(file))
        # a top-level name may be claimed by several distributions (`tests`, by careless
        # wheels): the one installed where the module's file is
        for name in _top_levels().get(top, []):
            dist = distribution(name)
            if real.is_relative_to(os.path.realpath(str(dist.locate_file("")))):
                return f"{dist.metadata['Name']} {dist.version}"
    return f"{top} (no distribution)"


@functools.cache
def _top_levels() -> dict[str, list[str]]:
    """Top-level module -> the distributions that install it: half a second to build, once."""
    return dict(packages_distributions())
