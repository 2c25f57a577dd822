"""lib is pure: it never imports the orchestration (Prefect, Ray) or the layers above (STYLE §2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORCHESTRATION = ["prefect", "ray", "prefect_ray", "lstmpipe.tasks", "lstmpipe.flows"]

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import lstmpipe.lib as lib
names = [m.name for m in pkgutil.walk_packages(lib.__path__, "lstmpipe.lib.")]
for name in names:
    importlib.import_module(name)
loaded = {m.split(".")[0] for m in sys.modules} | {".".join(m.split(".")[:2]) for m in sys.modules}
print(json.dumps({"modules": names, "loaded": sorted(loaded)}))
"""


def test_import_linter_contracts_hold() -> None:
    """The contracts in pyproject.toml: lib imports none of
    prefect, ray, tasks, flows; tasks never flows."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache", "--no-logo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lib is pure: no orchestration imports KEPT" in done.stdout
    assert "BROKEN" not in done.stdout


# a fresh interpreter importing torch, torchvision and mlflow: 8 s on 2 idle cores
@pytest.mark.slow
def test_every_lib_module_imports_without_orchestration() -> None:
    """Catches what a static check cannot: a dependency of
    lib that drags Prefect or Ray in at import time."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert {
        "lstmpipe.lib.config",
        "lstmpipe.lib.features.extract",
        "lstmpipe.lib.registry.mlflow_store",
        "lstmpipe.lib.registry.promotion",
        "lstmpipe.lib.registry.pyfunc_entry",
    } <= set(found["modules"])
    assert "torch" in found["loaded"] and "mlflow" in found["loaded"]  # the imports really happened
    assert [name for name in ORCHESTRATION if name in found["loaded"]] == []
