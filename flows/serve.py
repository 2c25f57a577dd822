"""`lstmpipe serve`: infra/prefect.yaml's deployments, served by this one process (nightly on its
cron).

Schedules need a Prefect server running its scheduler service, which the temporary
API of the other commands does not run: with no PREFECT_API_URL, serve starts
`prefect server start` on 127.0.0.1 (its database under $LSTMPIPE_HOME/prefect) and
stops it on Ctrl-C. That server requires a random auth string, new at each start and
kept in $LSTMPIPE_HOME/prefect/api-auth-string (mode 0600) for the owner's own
`prefect` commands and the UI's login. Flow runs execute in subprocesses of this one, importing the
flows by module path, with the configuration serve was given. The server's
scheduler creates each scheduled run with an idempotency key (deployment, schedule,
time), so a restarted serve never runs a night twice; the partition records make a
manual re-run of a night cheap anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from prefect import serve as prefect_serve
from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import Flow
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from lstmpipe.flows.backfill import backfill
from lstmpipe.flows.extract import extract
from lstmpipe.flows.infer import infer
from lstmpipe.flows.local_api import write_private
from lstmpipe.flows.nightly import nightly
from lstmpipe.flows.promote import promote, rollback_flow
from lstmpipe.flows.runtime import Runtime
from lstmpipe.flows.startup import TemporaryApi, new_auth_string, using
from lstmpipe.flows.train import train
from lstmpipe.lib.config import Config
from lstmpipe.lib.errors import ConfigError

PORT = 4200  # Prefect's usual port: the UI at http://127.0.0.1:4200
# one run at a time (SPEC §3.5); so is nightly, so nights never overlap
SERIALISED = {"promote", "rollback"}


def deployments(
    config: Config, config_file: str | None = None, overrides: dict[str, Any] | None = None
) -> list[RunnerDeployment]:
    """The deployments infra/prefect.yaml declares, with parameters from `config.nightly`."""
    n = config.nightly
    for key in ("root", "model"):
        if not getattr(n, key):
            raise ConfigError(
                f"serve: nightly.{key} is not set; pass --{key} or set it in the config file"
            )
    given = {"config_file": config_file, "overrides": overrides or None}
    flows: dict[str, tuple[Flow, dict[str, Any]]] = {
        "nightly": (
            nightly,
            {"root": n.root, "model": n.model, "labels": n.labels, "infer_source": n.infer_source},
        ),
        "backfill": (backfill, {"root": n.root, "every": True}),
        "extract": (extract, {"source": n.root, "labels": n.labels}),
        "train": (train, {"source": n.root, "model": n.model, "labels": n.labels}),
        "promote": (promote, {"model": n.model}),
        "rollback": (rollback_flow, {"model": n.model}),
        "infer": (
            infer,
            {
                "source": n.infer_source or n.root,
                "model": f"models:/{n.model}@{config.promote.alias}",
            },
        ),
    }
    return [
        RunnerDeployment.from_flow(
            flow,
            name,
            parameters={**params, **given},
            tags=["lstmpipe"]
            + (["scheduled"] if name == "nightly" else ["promote"] if name in SERIALISED else []),
            schedules=[Cron(n.cron, timezone=n.timezone)] if name == "nightly" else None,
            concurrency_limit=1 if name in SERIALISED | {"nightly"} else None,
            # the installed package, wherever serve was started
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for name, (flow, params) in flows.items()
    ]


def serve(
    rt: Runtime, config_file: str | None, overrides: dict[str, Any], port: int = PORT
) -> dict[str, Any]:
    """Serve until interrupted; the summary names what was served."""
    served = deployments(rt.config, config_file, overrides)
    api = None if os.environ.get("PREFECT_API_URL") else start_server(port, rt.home / "prefect")
    try:
        with using(api):
            if api is not None:
                # the flow-run subprocesses report to it too
                os.environ["PREFECT_API_URL"] = api.url
                os.environ["PREFECT_API_AUTH_STRING"] = api.auth_string
            with get_client(sync_client=True) as client:
                # nightly's promotions too
                client.create_concurrency_limit(tag="promote", concurrency_limit=1)
                # tasks running the CNN or the LSTM: one per GPU at a time
                if gpus := torch.cuda.device_count():
                    client.create_concurrency_limit(tag="gpu", concurrency_limit=gpus)
            prefect_serve(*served)
    finally:
        if api is not None:
            api.stop()
    return {
        "served": [d.name for d in served],
        "cron": f"{rt.config.nightly.cron} {rt.config.nightly.timezone}",
        "api": api.url if api else os.environ["PREFECT_API_URL"],
    }


AUTH_FILE = "api-auth-string"  # under PREFECT_HOME


def start_server(port: int, prefect_home: Path) -> TemporaryApi:
    """`prefect server start` with its services (the scheduler), on localhost only (SPEC §6),
    refusing requests without its auth string (other local users reach localhost too)."""
    auth_string = new_auth_string()
    write_private(prefect_home / AUTH_FILE, auth_string)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, "PREFECT_SERVER_API_AUTH_STRING": auth_string},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return TemporaryApi(f"http://127.0.0.1:{port}/api", process, auth_string)
