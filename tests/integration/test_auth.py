"""The servers refuse strangers (issue 16, SPEC §4): each real server of the stack, started with
authentication on, refuses a request without credentials or with wrong ones, while lstmpipe's
own calls, with the credentials read from files the way a deployment passes them, succeed.
No secret appears on any command line.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lstmpipe.flows.runtime import read_secret_files
from lstmpipe.flows.serve import AUTH_FILE
from lstmpipe.flows.serve import start_server as serve_server
from lstmpipe.flows.startup import LocalApi, TemporaryApi, local_api
from tests.integration.conftest import Stack
from tests.integration.servers import free_port

pytestmark = pytest.mark.integration
PYTHON = sys.executable
# MLflow checks a password with PBKDF2: seconds per request on 2 cores that run other tests too
http = httpx.Client(timeout=120)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": f"Basic {base64.b64encode(f'{user}:{password}'.encode()).decode()}"}


# --------------------------------------------------------------------------- MLflow


def test_mlflow_refuses_anonymous_and_wrong_passwords(stack: Stack) -> None:
    create = f"{stack.mlflow_uri}/api/2.0/mlflow/registered-models/create"
    get = f"{stack.mlflow_uri}/api/2.0/mlflow/registered-models/get"
    for headers in ({}, basic("lstmpipe", "wrong"), basic("intruder", "x")):
        assert http.post(create, json={"name": "planted"}, headers=headers).status_code == 401
        assert http.get(get, params={"name": "planted"}, headers=headers).status_code == 401
    assert http.get(f"{stack.mlflow_uri}/health").status_code == 200  # probes need no login


def test_lstmpipe_registers_and_reads_with_its_password_file(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLFLOW_TRACKING_PASSWORD_FILE, as flows/runtime.py resolves it, logs MLflow's client in."""
    env = {k: stack.env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD_FILE")}
    read_secret_files(env)
    assert env["MLFLOW_TRACKING_PASSWORD"] == stack.secrets.mlflow_password
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    client = MlflowClient(stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    name = f"auth-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    assert client.get_registered_model(name).name == name

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        client.get_registered_model(name)


def test_another_user_may_read_but_not_write_lstmpipes_models(stack: Stack) -> None:
    """default_permission = READ (infra/mlflow/basic_auth.ini): a signed-in user who is not the
    model's owner can neither add a version nor move @champion."""
    api = f"{stack.mlflow_uri}/api/2.0/mlflow"
    admin = basic("lstmpipe", stack.secrets.mlflow_password)
    name = f"owned-{uuid.uuid4().hex[:8]}"
    assert http.post(
        f"{api}/registered-models/create", json={"name": name}, headers=admin
    ).is_success
    other = {"username": f"u{uuid.uuid4().hex[:8]}", "password": uuid.uuid4().hex}
    assert http.post(f"{api}/users/create", json=other, headers=admin).is_success
    them = basic(other["username"], other["password"])

    read = http.get(f"{api}/registered-models/get", params={"name": name}, headers=them)
    assert read.status_code == 200
    version = {"name": name, "source": "file:///tmp/planted"}
    assert http.post(f"{api}/model-versions/create", json=version, headers=them).status_code == 403
    alias = {"name": name, "alias": "champion", "version": "1"}
    assert http.post(f"{api}/registered-models/alias", json=alias, headers=them).status_code == 403


# --------------------------------------------------------------------------- Prefect


def test_prefect_refuses_requests_without_the_auth_string(stack: Stack) -> None:
    flows = f"{stack.prefect_api}/flows/filter"
    assert http.post(flows, json={}).status_code == 401
    assert http.post(flows, json={}, headers=basic("lstmpipe", "wrong")).status_code == 401
    assert http.post(flows, json={}, headers=stack.secrets.prefect_headers()).status_code == 200
    assert http.get(f"{stack.prefect_api}/health").status_code == 200


def test_lstmpipe_runs_a_flow_with_the_auth_string_file(stack: Stack) -> None:
    """A flow run created and finished through Prefect's client, its auth string read from
    PREFECT_API_AUTH_STRING_FILE (flows/runtime.py) before Prefect loads, as the CLI does."""
    script = (
        "from lstmpipe.flows.runtime import read_secret_files; import os\n"
        "read_secret_files(os.environ)\n"
        "from prefect import flow\n"
        "@flow(name='auth-probe')\n"
        "def probe() -> int:\n"
        "    return 42\n"
        "print(probe())\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", script], env=stack.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("42"), done.stderr[-3000:]
    runs = http.post(
        f"{stack.prefect_api}/flow_runs/filter",
        json={"flows": {"name": {"any_": ["auth-probe"]}}},
        headers=stack.secrets.prefect_headers(),
    ).json()
    assert [run["state_type"] for run in runs] == ["COMPLETED"]


# --------------------------------------------------------------------------- Ray


def listening(base: str, timeout_s: float = 120) -> None:
    """The agent starts after the dashboard answers (seen refusing connections a moment later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            http.get(f"{base}/api/healthz")
            return
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.mark.parametrize("where", ["dashboard", "agent"])
def test_ray_job_api_refuses_requests_without_the_token(stack: Stack, where: str) -> None:
    """Both the dashboard and each node's dashboard agent serve the job API."""
    base = stack.ray_dashboard if where == "dashboard" else stack.ray_agent
    listening(base)
    job = {"entrypoint": "touch /tmp/ray-job-ran"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert http.post(f"{base}/api/jobs/", json=job, headers=headers).status_code in {401, 403}
    # with the token the request passes authentication (the agent lists no jobs: 404)
    answer = http.get(f"{base}/api/jobs/", headers=stack.secrets.ray_headers())
    assert answer.status_code not in {401, 403}


def test_ray_dashboard_api_refuses_requests_without_the_token(stack: Stack) -> None:
    assert http.get(f"{stack.ray_dashboard}/api/version").status_code in {401, 403}
    answer = http.get(f"{stack.ray_dashboard}/api/version", headers=stack.secrets.ray_headers())
    assert answer.status_code == 200


def ray_task(env: dict[str, str]) -> subprocess.CompletedProcess:
    script = (
        "import ray\n"
        "ray.init(log_to_driver=False)\n"
        "print(ray.get(ray.remote(lambda: 42).remote()))\n"
    )
    return subprocess.run(
        [PYTHON, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )


def test_a_ray_driver_needs_the_token(stack: Stack, tmp_path: Path) -> None:
    wrong = tmp_path / "token"
    wrong.write_text("0" * 64)
    refused = ray_task({**stack.env, "RAY_AUTH_TOKEN_PATH": str(wrong)})
    assert refused.returncode != 0
    assert "uthenticat" in refused.stderr, refused.stderr[-3000:]
    done = ray_task(stack.env)
    assert done.returncode == 0 and done.stdout.strip().endswith("42"), done.stderr[-3000:]


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_refuses_connections_without_the_password(stack: Stack) -> None:
    if not stack.mlflow_backend.startswith("postgresql"):
        pytest.skip("PostgreSQL is not installed")
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(stack.mlflow_backend)
    where = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    for password in ("", "wrong"):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(**where, password=password, connect_timeout=10)
    connection = psycopg2.connect(**where, password=stack.secrets.postgres_password)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT count(*) FROM registered_models")  # MLflow's own table
        assert cursor.fetchone() is not None
    finally:
        connection.close()


# --------------------------------------------------------------------------- command lines


def test_no_secret_is_on_any_command_line(stack: Stack) -> None:
    """/proc/PID/cmdline is readable by every local user: no server's (or child's) holds one."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        found += [proc.name for secret in stack.secrets.values() if secret in cmdline]
    assert found == []


# --------------------------------------------------------------------------- lstmpipe's own servers


def own_env(tmp_path: Path) -> dict[str, str]:
    """No server configured: lstmpipe starts its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LSTMPIPE_"))}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect")}


def assert_refuses_strangers(api: TemporaryApi | LocalApi) -> None:
    api.wait()
    flows = f"{api.url}/flows/filter"
    assert http.post(flows, json={}).status_code == 401
    assert http.post(flows, json={}, headers=basic(*api.auth_string.split(":", 1))).is_success
    pid = api.pid if isinstance(api, LocalApi) else api.process.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert api.auth_string.encode() not in cmdline


def test_the_local_api_requires_its_own_auth_string(tmp_path: Path) -> None:
    """Every command without PREFECT_API_URL uses this server on 127.0.0.1: other local users
    reach the port, not the runs (the auth string lives in the server's environment and in an
    address file only its owner reads: tests/integration/test_standalone.py)."""
    api = local_api(own_env(tmp_path))
    assert api is not None
    try:
        assert_refuses_strangers(api)
        other = local_api(own_env(tmp_path / "other"))
        assert other is not None
        other.stop()
        assert other.auth_string != api.auth_string  # one per server
    finally:
        api.stop()


def test_serve_keeps_its_servers_auth_string_in_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in own_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    api = serve_server(free_port(), tmp_path / "prefect")
    try:
        assert_refuses_strangers(api)
        kept = tmp_path / "prefect" / AUTH_FILE
        assert kept.read_text() == api.auth_string
        assert kept.stat().st_mode & 0o777 == 0o600
    finally:
        api.stop()
