"""Retries only on transient, IO-bound failures, never on bad input or bad configuration."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, cast

from lstmpipe.lib.errors import BadInput, ConfigError

if TYPE_CHECKING:  # MLflow loads in over a second; a run that never used it raised none of it
    from mlflow.exceptions import MlflowException

_PERMANENT = (BadInput, ConfigError, ValueError, TypeError, KeyError, LookupError)


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry OSError / connection / worker-death errors only."""
    try:
        state.result()
    except _PERMANENT:
        return False
    except Exception as exc:
        return _transient(exc)
    return False


def _transient(exc: Exception) -> bool:
    """MLflow's 4xx answers stay one (its client already retried each request); anything else
    (IO, network, a dead Ray worker) may pass on retry."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")  # never imported: none was raised
    if mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException):
        status = cast("MlflowException", exc).get_http_status_code()
        return not 400 <= status < 500 or status == 429
    return True
