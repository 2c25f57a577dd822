"""`lstmpipe status`: what the state directory holds, read without starting anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lib.cache import FeatureCache
from lib.failures import read_failures

RECENT = 10


def collect(home: Path, client: MlflowClient, alias: str) -> dict[str, Any]:
    """Cache size, the last runs and their outcome, each model's champion, recent failures."""
    failures = read_failures(home / "failures").to_pylist()
    return {
        "home": str(home),
        "cache": FeatureCache(home / "cache").stats(),
        "runs": _recent_runs(home / "runs"),
        "champions": _champions(client, alias),
        "failures_total": len(failures),
        "recent_failures": [{k: str(v) for k, v in row.items()} for row in failures[-RECENT:]],
    }


def _recent_runs(runs_dir: Path) -> list[dict[str, Any]]:
    files = sorted(runs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)[-RECENT:] if runs_dir.exists() else []
    runs = []
    for path in files:
        record = json.loads(path.read_text())
        runs.append({"run_id": record["run_id"], "command": record["command"], "seconds": record["seconds"],
                     "failed": record.get("failed", 0)})
    return runs


def _champions(client: MlflowClient, alias: str) -> list[dict[str, str]]:
    """Every registered model with the version `alias` points at ("-" when none)."""
    try:
        models = client.search_registered_models()
    except MlflowException:
        return []  # an empty or unreachable store: nothing registered yet
    return [{"model": m.name, alias: str(m.aliases.get(alias, "-"))} for m in models]
