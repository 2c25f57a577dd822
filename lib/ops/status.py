"""`lstmpipe status`: what the state directory holds, read without starting anything."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lstmpipe.lib.failures import read_failures
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.ops.partitions import PartitionRecords, list_partitions

RECENT = 10


def collect(
    home: Path, client: MlflowClient, alias: str, root: Path | None = None
) -> dict[str, Any]:
    """Cache size, the last runs and their outcome, each model's champion, recent failures; with `root`,
    its partitions done and pending."""
    failures = read_failures(home / "failures").to_pylist()
    return {
        "partitions": _partitions(home / "partitions.sqlite", root) if root is not None else None,
        "home": str(home),
        "cache": FeatureCache(home / "cache").stats(),
        "runs": _recent_runs(home / "runs"),
        "champions": _champions(client, alias),
        "failures_total": len(failures),
        "recent_failures": [{k: str(v) for k, v in row.items()} for row in failures[-RECENT:]],
    }


def _recent_runs(runs_dir: Path) -> list[dict[str, Any]]:
    files = (
        sorted(runs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)[-RECENT:]
        if runs_dir.exists()
        else []
    )
    runs = []
    for path in files:
        record = json.loads(path.read_text())
        failed = record.get("failed", 0)
        runs.append(
            {
                "run_id": record["run_id"],
                "command": record["command"],
                "seconds": record["seconds"],
                "finished": dt.datetime.fromtimestamp(
                    path.stat().st_mtime, dt.UTC
                ).isoformat(timespec="seconds"),
                "failed": failed,
                "outcome": f"{failed} series failed (exit 3)" if failed else "ok",
            }
        )
    return runs


def _partitions(records_file: Path, root: Path) -> dict[str, Any]:
    """Partitions of `root` done and pending under the recipe its latest record used (the recipe a
    nightly or backfill last ran with: working out the configured one would mean loading the backbone)."""
    records = PartitionRecords(records_file).records(root) if records_file.exists() else []
    recipe_id = records[-1].recipe_id if records else None
    done = {r.partition: r.fingerprint for r in records if r.recipe_id == recipe_id}
    found = list_partitions(root)
    return {
        "root": str(root),
        "recipe_id": recipe_id,
        "done": [p.name for p in found if done.get(p.name) == p.fingerprint],
        "pending": [p.name for p in found if done.get(p.name) != p.fingerprint],
    }


def _champions(client: MlflowClient, alias: str) -> list[dict[str, str]]:
    """Every registered model with the version `alias` points at ("-" when none)."""
    try:
        models = client.search_registered_models()
    except MlflowException:
        return []  # an empty or unreachable store: nothing registered yet
    return [{"model": m.name, alias: str(m.aliases.get(alias, "-"))} for m in models]
