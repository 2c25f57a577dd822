"""`lstmpipe report RUN_ID`: one HTML page per training run, reports/<run id>.html in the outputs
store ($LSTMPIPE_HOME/reports/, or the bucket in team mode).

No Prefect here: a report only reads the MLflow store and writes one file, so the CLI runs it
without booting Prefect's API; the flows write theirs through tasks.promote.run_report.
"""

from __future__ import annotations

from typing import Any

from lstmpipe.flows.runtime import Runtime, load_runtime
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.registry import report as pages
from lstmpipe.lib.registry.history import PromotionHistory


def report_of_run(rt: Runtime, run_id: str) -> str:
    """(Re)write the page of one training run (a lstmpipe or an MLflow run id); the train flow
    ends with it (the promote flow's task too)."""
    return pages.build(
        registry.connect(rt.tracking_uri),
        run_id,
        rt.state.outputs_store(),
        PromotionHistory.at(rt.state).read(),
    )


def report(
    run_id: str, config_file: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    rt = load_runtime(config_file, overrides)
    return {"report": report_of_run(rt, run_id), "of": run_id}
