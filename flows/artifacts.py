"""Prefect artifacts: a Markdown summary per flow run, a link to the MLflow run a flow trained.

Published only where a Prefect API records them (a server, or the CLI's temporary
API); a flow called from plain Python with none configured skips them rather than
booting Prefect's ephemeral server for a table.
"""

from __future__ import annotations

from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.settings import PREFECT_API_URL


def api_present() -> bool:
    return bool(PREFECT_API_URL.value())


def publish_summary(key: str, markdown: str) -> None:
    """`key` (lowercase, digits, dashes) groups one flow's summaries in the UI's Artifacts page."""
    if api_present():
        create_markdown_artifact(markdown, key=key, description="lstmpipe run summary")


def publish_mlflow_run(tracking_uri: str, run_id: str) -> None:
    """A link to the run in the MLflow UI: the tracking server's, else `mlflow ui`'s default
    address."""
    if not api_present():
        return
    served = tracking_uri.startswith(("http://", "https://"))
    base = tracking_uri.rstrip("/") if served else "http://127.0.0.1:5000"
    create_link_artifact(
        f"{base}/#/runs/{run_id}",
        link_text=f"MLflow run {run_id}",
        key="mlflow-run",
        description=None
        if served
        else f"start the UI first: mlflow ui --backend-store-uri {tracking_uri}",
    )
