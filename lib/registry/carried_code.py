"""What a registered version carries so that it loads where lstmpipe is not installed: the
lstmpipe modules its pyfunc entry (pyfunc_entry.py) imports, and pinned requirements.

mlflow_store.log_model logs the first with MLflow's `code_paths` (MLflow puts the folder on
sys.path before it runs the entry) and the second as the version's requirements.txt.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
# The distributions the entry and the lstmpipe modules it carries import.
REQUIRED = ("torch", "numpy", "mlflow")


def requirements() -> list[str]:
    """`name==version` of each installed distribution in REQUIRED, without a local version tag
    (torch's "+cu130"): pins any index can satisfy."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in REQUIRED]


def code_tree(root: Path) -> Path:
    """A `lstmpipe` folder under `root` with the modules pyfunc_entry.py imports from lstmpipe,
    directly or through each other: the code a version carries.

    Built, not pointed at: the installed package maps lstmpipe.lib to lib/, so no folder named
    lstmpipe exists to log. The folders get no __init__.py (lstmpipe's hold docstrings only):
    as namespace packages they never shadow an installed lstmpipe, whose regular packages win
    the import, so a process that has lstmpipe uses its own modules and the copies serve only
    where it is absent.
    """
    for name, source in _lstmpipe_closure(ENTRY).items():
        target = root.joinpath(*name.split(".")).with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return root / "lstmpipe"


def _lstmpipe_closure(entry: Path) -> dict[str, Path]:
    """Module name -> source file of every lstmpipe module `entry` imports, directly or through
    each other; packages are left out (see code_tree)."""
    found: dict[str, Path] = {}
    todo = _lstmpipe_imports(entry)
    while todo:
        name = todo.pop()
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise ImportError(f"{entry.name} imports {name}, which is not installed")
        if name in found or spec.submodule_search_locations is not None:
            continue
        if spec.origin is None:
            raise ImportError(f"{entry.name} imports {name}, which has no source file to log")
        found[name] = Path(spec.origin)
        todo |= _lstmpipe_imports(found[name])
    return dict(sorted(found.items()))


def _lstmpipe_imports(path: Path) -> set[str]:
    """Absolute imports of lstmpipe modules in one source file (lstmpipe uses no relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("lstmpipe.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lstmpipe."):
            module = str(node.module)
            names.add(module)
            # `from package import submodule` imports that submodule too
            spec = importlib.util.find_spec(module)
            if spec is not None and spec.submodule_search_locations is not None:
                names |= {
                    f"{module}.{a.name}"
                    for a in node.names
                    if importlib.util.find_spec(f"{module}.{a.name}") is not None
                }
    return names
