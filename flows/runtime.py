"""The edge: the one place that reads the environment and chooses where things run.

It maps the configuration (file < LSTMPIPE_* environment < flags) and the
standard variables (MLFLOW_TRACKING_URI, RAY_ADDRESS, PREFECT_API_URL) to the
state directory, the MLflow store, the Ray cluster and Prefect's API, and passes
plain values down to tasks and lib. It never imports Prefect or Ray, so the CLI
can set Prefect's home before Prefect loads.

Credentials for the servers are the clients' standard variables, each also given as
a file (`<NAME>_FILE`, a Docker or Kubernetes secret) so that none needs a command
line or a committed file; Ray reads its own RAY_AUTH_TOKEN_PATH.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstmpipe.lib.config import Config, Executor, load_config
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.names import is_plain_name
from lstmpipe.lib.state.places import StatePlaces

# The clients' credentials that may come from a file named by <NAME>_FILE: MLflow's basic auth
# and Prefect's auth string (PREFECT_SERVER_API_AUTH_STRING on the server).
SECRET_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "PREFECT_API_AUTH_STRING",
    "PGPASSWORD",  # libpq: the team state database (state.database)
    "AWS_SECRET_ACCESS_KEY",  # boto3: the team object store (state.store)
    "AWS_ACCESS_KEY_ID",
)


@dataclass(frozen=True)
class Runtime:
    config: Config
    home: Path  # $LSTMPIPE_HOME: local state lives below it; in team mode only scratch
    tracking_uri: str  # MLflow tracking and registry store
    artifact_root: str | None  # MLflow artifacts for a local store; a server chooses its own
    # None: extract in-process; "local": a Ray of our own; else a cluster to join
    ray_address: str | None
    torch_hub_dir: str  # where backbone weights are looked up, and downloaded on first use

    @property
    def state(self) -> StatePlaces:
        """Where the cache index, memo, records, history and output files live (lib/state/)."""
        state = self.config.state
        return StatePlaces(str(self.home), state.database, state.store, state.retry_s)

    @property
    def tmp_dir(self) -> str:
        return str(self.home / "tmp")


def load_runtime(
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Runtime:
    env = os.environ if env is None else env
    # flows a worker runs from infra/prefect.yaml never pass the CLI
    bound_mlflow_retries(os.environ)
    # the CLI calls this before importing Prefect, which reads its auth string on import
    read_secret_files(os.environ)
    config = load_config(
        config_file or env.get("LSTMPIPE_CONFIG"), _config_variables(env), overrides
    )
    home = Path(config.runtime.home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = (
        config.runtime.mlflow_uri
        or env.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{home / 'mlflow.db'}"
    )
    local_store = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    return Runtime(
        config=config,
        home=home,
        tracking_uri=tracking_uri,
        artifact_root=(home / "mlartifacts").as_uri() if local_store else None,
        ray_address=_ray_address(
            config.runtime.executor, config.runtime.ray_address or env.get("RAY_ADDRESS")
        ),
        torch_hub_dir=str(_torch_home(env) / "hub"),
    )


def _config_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The variables load_config reads. LSTMPIPE_OFFLINE (what tests and CI set) is short for
    LSTMPIPE_BACKBONE_OFFLINE, which wins when both are set."""
    variables = {k: v for k, v in env.items() if k not in {"LSTMPIPE_CONFIG", "LSTMPIPE_OFFLINE"}}
    if "LSTMPIPE_OFFLINE" in env:
        variables.setdefault("LSTMPIPE_BACKBONE_OFFLINE", env["LSTMPIPE_OFFLINE"])
    return variables


def _ray_address(executor: Executor, cluster: str | None) -> str | None:
    """Where extraction runs: auto = the cluster when one is named, else in this process."""
    if executor == "local":
        return None
    return cluster or ("local" if executor == "ray" else None)


def prepare_process(home: Path, environ: MutableMapping[str, str] | None = None) -> None:
    """Before Prefect and torch are imported: Prefect's state under `home`, quiet logs, no
    analytics, and torch's idle threads asleep.

    OMP_WAIT_POLICY=PASSIVE: between two operators torch's OpenMP threads otherwise spin,
    taking the cores that ffmpeg decodes the next frames on; with a fast CNN that cost 7 %
    of the pipeline's frames/s (mobilenet_v3_small, 224 px, 2 cores: 213 -> 228), and the
    backbone alone runs as fast either way. Only fills in what the user has not set, so
    PREFECT_API_URL and friends win.
    """
    env = os.environ if environ is None else environ
    env.setdefault("PREFECT_HOME", str(home / "prefect"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    bound_mlflow_retries(env)


def bound_mlflow_retries(env: MutableMapping[str, str]) -> None:
    """MLflow's client retries a request 7 times with back-off (246 s measured against a dead
    server) and Prefect's task retries run on top of it (12 min before a failure is named).
    3 retries (about 14 s) ride out a server restart; Prefect's attempts then make about 45 s in
    all. The user's values win."""
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")


def read_secret_files(env: MutableMapping[str, str]) -> None:
    """Set each credential of SECRET_VARIABLES from the file its <NAME>_FILE names; a value set
    directly wins. An unreadable file is a configuration error naming it."""
    for name in SECRET_VARIABLES:
        path = env.get(f"{name}_FILE")
        if path and name not in env:
            env[name] = _read_secret(Path(path), f"{name}_FILE")


def _read_secret(path: Path, variable: str) -> str:
    try:
        value = path.read_text().strip()  # `echo secret > file` leaves a newline
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{variable}: {path} is not UTF-8 text") from exc
    if not value:
        raise ConfigError(f"{variable}: {path} is empty")
    return value


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_id_of(given: str | None) -> str:
    """The caller's run id (the CLI's), else the Prefect flow run's (deployments, schedules).

    A given one names files (runs/<id>.json, failures/<id>-*.parquet), and a deployment's
    parameters come from whoever can start a flow run: only a plain name is taken."""
    if given:
        if not is_plain_name(given):
            raise ConfigError(
                f"run id {given!r}: use letters, digits, '_', '-' and '.' (at most 128), "
                "starting with a letter or digit"
            )
        return given
    from prefect.runtime import flow_run  # late: the CLI sets PREFECT_HOME before Prefect loads

    return (flow_run.id or new_run_id()).replace("-", "")[:12]


def _torch_home(env: Mapping[str, str]) -> Path:
    """Where torch.hub keeps weights: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else
    ~/.cache/torch."""
    if env.get("TORCH_HOME"):
        return Path(env["TORCH_HOME"]).expanduser()
    return Path(env.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "torch"
