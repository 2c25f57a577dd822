"""Retries only on transient, IO-bound failures, never on bad input or bad configuration."""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException

from lstmpipe.lib.errors import BadInput, ConfigError

_PERMANENT = (BadInput, ConfigError, ValueError, TypeError, KeyError, LookupError)


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry OSError / connection / worker-death errors only."""
    try:
        state.result()
    except _PERMANENT:
        return False
    # the client already retried each request; a 4xx answer stays one
    except MlflowException as exc:
        status = exc.get_http_status_code()
        return not 400 <= status < 500 or status == 429
    # anything else (IO, network, a dead Ray worker) may pass on retry
    except Exception:
        return True
    return False
