"""infra/ is validated, never dead text (SPEC §4).

Each file is parsed, checked against the schema or the parser of the tool that reads
it (Prefect's prefect.yaml model, Ray's cluster-config schema and `ray start` options,
the MLflow server's options), and against the code it deploys (flow signatures, the
Ray resources the tasks request, the environment flows/runtime.py reads). No Docker
engine is needed; `docker compose config` runs where the compose plugin exists.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
POOL = "lstmpipe-pool"
EXPECTED_DEPLOYMENTS = {
    "nightly": "flows/nightly.py:nightly",
    "backfill": "flows/backfill.py:backfill",
    "extract": "flows/extract.py:extract",
    "train": "flows/train.py:train",
    "promote": "flows/promote.py:promote",
    "rollback": "flows/promote.py:rollback_flow",
    "infer": "flows/infer.py:infer",
}
# What `docker compose` would read from the shell or infra/.env; no secret (those are files).
COMPOSE_TEST_ENV = {"POSTGRES_USER": "lstmpipe"}
# lstmpipe's processes: the Prefect worker (the Ray driver) and every Ray node.
LSTMPIPE_NODES = {"prefect-worker", "ray-head", "ray-worker", "ray-worker-gpu"}
# The compose secrets (files made by infra/make-secrets.sh) and the services that read each.
SECRETS = {
    "postgres_password": {"postgres", "mlflow", "prefect-server"},
    "mlflow_password": {"mlflow", "prefect-worker"},
    "mlflow_secret_key": {"mlflow"},
    "prefect_auth_string": {"prefect-server", "prefect-deploy", "prefect-worker"},
    "ray_token": LSTMPIPE_NODES,
    # lstmpipe's team state: its own PostgreSQL role (made by postgres' init) and S3 identity
    "state_db_password": {"postgres", *LSTMPIPE_NODES},
    "s3_access_key": LSTMPIPE_NODES,
    "s3_secret_key": LSTMPIPE_NODES,
    "s3_config": {"seaweedfs"},  # the identity file SeaweedFS reads
}
STATE_STORE = "s3://lstmpipe/state"  # compose's bucket (SeaweedFS) and prefix
STATE_VARIABLES = {
    "LSTMPIPE_STATE_DATABASE",
    "LSTMPIPE_STATE_STORE",
    "AWS_ENDPOINT_URL",
    "PGPASSWORD_FILE",
    "AWS_ACCESS_KEY_ID_FILE",
    "AWS_SECRET_ACCESS_KEY_FILE",
}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --------------------------------------------------------------------------- loading


def load_yaml(relative: str) -> Any:
    return yaml.safe_load((INFRA / relative).read_text())


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return load_yaml("prefect.yaml")


@pytest.fixture(scope="module")
def deployments(prefect_yaml: dict) -> dict[str, dict]:
    return {d["name"]: d for d in prefect_yaml["deployments"]}


@pytest.fixture(scope="module")
def compose_raw() -> dict:
    return load_yaml("compose.yaml")


@pytest.fixture(scope="module")
def compose(compose_raw: dict) -> dict:
    """The compose file as `docker compose` would see it with COMPOSE_TEST_ENV set."""
    return interpolate(compose_raw, COMPOSE_TEST_ENV)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return load_yaml("ray/cluster.yaml")


@pytest.fixture(scope="module")
def raycluster() -> dict:
    docs = list(yaml.safe_load_all((INFRA / "ray/kuberay.yaml").read_text()))
    (found,) = [d for d in docs if d and d.get("kind") == "RayCluster"]
    return found


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-spec interpolation: $$, ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?err}, ${VAR?err}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"] or match["bare"], match["op"] or "", match["arg"] or ""
        current = env.get(name)
        unset = current is None or (op.startswith(":") and current == "")
        if op.endswith("?") and unset:
            raise LookupError(f"required variable {name} is missing: {arg}")
        if op.endswith("-") and unset:
            return arg
        return current or ""

    return _VAR.sub(substitute, value)


def git_ignored(path: Path) -> bool:
    """Whether git ignores `path` (infra/secrets/, infra/.env: local credentials)."""
    return (
        subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, timeout=30).returncode
        == 0
    )


def command_text(service: dict) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def published_ports(service: dict) -> Iterator[tuple[str | None, str, str]]:
    """(host_ip, host_port, container_port) of each published port, short or long syntax."""
    for port in service.get("ports", []):
        if isinstance(port, dict):
            yield port.get("host_ip"), str(port.get("published", "")), str(port["target"])
        else:
            parts = str(port).split(":")
            if len(parts) == 3:
                yield parts[0], parts[1], parts[2]
            else:  # "5000" or "5000:5000": every interface
                yield None, parts[0], parts[-1]


def mounts(service: dict) -> dict[str, str]:
    """container path -> source of each volume/bind mount."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = volume.get("source", "")
        else:
            source, target, *_ = volume.split(":")
            found[target] = source
    return found


def ray_start_context(args: list[str]):
    """`ray start` options parsed (and type-checked) by Ray's own click command; nothing runs."""
    from ray.scripts.scripts import start

    return start.make_context("start", list(args))


def ray_start_args(shell: str) -> list[str]:
    """The arguments after `ray start` in a line like `ulimit -n 65536; ray start --head ...`."""
    (line,) = [part for part in re.split(r"[;&\n]+", shell) if "ray start" in part]
    words = shlex.split(line.replace("$RAY_HEAD_IP", "10.0.0.1"))
    return words[words.index("start") + 1 :]


# --------------------------------------------------------------------------- every file


def test_every_yaml_file_parses() -> None:
    files = sorted(INFRA.rglob("*.yaml"))
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {
        "prefect.yaml",
        "compose.yaml",
        "ray/cluster.yaml",
        "ray/kuberay.yaml",
    }
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_readme_names_every_infra_file() -> None:
    readme = (INFRA / "README.md").read_text()
    for path in INFRA.rglob("*"):
        if path.is_file() and path.name != "README.md" and not git_ignored(path):
            relative = path.relative_to(INFRA).as_posix()
            # a file of an image folder (mlflow/) is covered by the folder's line
            named = relative in readme or (
                path.parent != INFRA and f"`{path.parent.name}/`" in readme
            )
            assert named, f"infra/README.md does not say what {relative} is"


def test_lstmpipe_variables_named_in_infra_are_config_keys() -> None:
    """lib/config.py reads *every* LSTMPIPE_* variable and rejects unknown ones, so infra
    must not invent any (the pull step's checkout variable is REPO_DIR for that reason)."""
    from lstmpipe.lib.config import SECTIONS

    sections = {name: set(cls.model_fields) for name, cls in SECTIONS.items()}
    names = {
        name
        for path in INFRA.rglob("*")
        if path.is_file()
        for name in re.findall(r"\bLSTMPIPE_[A-Z0-9_]+\b", path.read_text())
    }
    assert "LSTMPIPE_HOME" in names
    for name in names:
        rest = name.removeprefix("LSTMPIPE_").lower()
        if rest in {"home", "config"}:
            continue
        section, _, key = rest.partition("_")
        assert section in sections and key in sections[section], (
            f"{name} appears in infra/ but lib/config.py would reject it: "
            "not LSTMPIPE_<SECTION>_<KEY>"
        )


# --------------------------------------------------------------------------- prefect.yaml


def test_prefect_yaml_follows_prefects_own_model(prefect_yaml: dict) -> None:
    """The model `prefect deploy` validates prefect.yaml
    with (it ignores unknown keys, so check those too)."""
    import prefect
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, RawScheduleConfig

    model = PrefectYamlModel.model_validate(prefect_yaml)
    top_level = {f.alias or name for name, f in PrefectYamlModel.model_fields.items()} | {
        "definitions"
    }
    assert set(prefect_yaml) <= top_level, set(prefect_yaml) - top_level
    assert prefect_yaml["prefect-version"] == prefect.__version__
    assert {d.name for d in model.deployments} == set(EXPECTED_DEPLOYMENTS)
    for deployment in prefect_yaml["deployments"]:
        unknown = set(deployment) - set(DeploymentConfig.model_fields)
        assert not unknown, (
            f"{deployment['name']}: keys prefect deploy would silently ignore: {unknown}"
        )
        assert deployment["work_pool"]["name"] == POOL
        for schedule in deployment.get("schedules") or []:
            RawScheduleConfig.model_validate(schedule)  # extra="forbid": a typo fails here


@pytest.mark.parametrize("name", sorted(EXPECTED_DEPLOYMENTS))
def test_entrypoint_is_a_flow_that_accepts_the_parameters(deployments: dict, name: str) -> None:
    from prefect import Flow
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    deployment = deployments[name]
    assert deployment["entrypoint"] == EXPECTED_DEPLOYMENTS[name]
    path, function = deployment["entrypoint"].split(":")
    assert (ROOT / path).is_file()
    flow = getattr(
        importlib.import_module("lstmpipe." + path.removesuffix(".py").replace("/", ".")), function
    )
    assert isinstance(flow, Flow), f"{deployment['entrypoint']} is not a Prefect flow"
    assert flow.name == name  # `prefect deployment run NAME/NAME`, as infra/README.md says

    given = deployment.get("parameters") or {}
    accepted = inspect.signature(flow.fn).parameters
    assert set(given) <= set(accepted), (
        f"{name}: the flow has no parameter {set(given) - set(accepted)}"
    )
    required = {p for p, spec in accepted.items() if spec.default is inspect.Parameter.empty}
    assert required <= set(given), (
        f"{name}: required flow parameters not given: {required - set(given)}"
    )
    # What the Prefect server checks when it creates a run (enforce_parameter_schema).
    validate(given, parameter_schema(flow).model_dump_for_openapi(), raise_on_error=True)


def test_pull_step_enters_the_checkout_where_every_entrypoint_loads(
    prefect_yaml: dict, deployments: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker before a run: the pull step templated with its environment, chdir, flow loaded."""
    from prefect.deployments.steps.pull import set_working_directory
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.importtools import import_object
    from prefect.utilities.templating import apply_values

    (step,) = prefect_yaml["pull"]
    ((qualified_name, inputs),) = step.items()
    assert import_object(qualified_name).__name__ == set_working_directory.__name__
    monkeypatch.setenv("REPO_DIR", str(ROOT))
    resolved = apply_values(inputs, dict(os.environ))
    assert Path(resolved["directory"]) == ROOT
    monkeypatch.chdir(tmp_path)  # restored after the test
    set_working_directory(**resolved)
    for name, deployment in deployments.items():
        assert load_flow_from_entrypoint(deployment["entrypoint"]).name == name


def test_only_nightly_is_scheduled_and_its_cron_is_valid(deployments: dict) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    with pytest.raises(ValueError):  # the validator does reject a bad cron string
        CronSchedule(cron="0 25 * * *", timezone="UTC")
    scheduled = {name: d["schedules"] for name, d in deployments.items() if d.get("schedules")}
    assert scheduled == {"nightly": [{"cron": "0 2 * * *", "timezone": "UTC"}]}
    for schedule in scheduled["nightly"]:
        assert CronSchedule(**schedule).timezone == "UTC"


def test_serve_serves_the_deployments_declared_here(deployments: dict) -> None:
    """`lstmpipe serve` (flows/serve.py) and prefect.yaml must not drift apart: served with the
    placeholders as its nightly.* config, it builds the very same deployments."""
    from prefect.client.schemas.schedules import CronSchedule

    from lstmpipe.flows.serve import deployments as served_deployments
    from lstmpipe.lib.config import load_config

    nightly = deployments["nightly"]["parameters"]
    config = load_config(overrides={f"nightly.{key}": value for key, value in nightly.items()})
    served = {d.name: d for d in served_deployments(config)}
    assert set(served) == set(deployments)
    for name, d in served.items():
        declared = deployments[name]
        assert d.entrypoint is not None, name
        module, function = d.entrypoint.rsplit(".", 1)  # served by module path
        assert (
            declared["entrypoint"]
            == f"{module.removeprefix('lstmpipe.').replace('.', '/')}.py:{function}"
        )
        given = {
            k: v
            for k, v in d.parameters.items()
            if k not in {"config_file", "overrides"} and v is not None
        }
        assert given == {k: v for k, v in declared["parameters"].items() if v is not None}, name
        assert d.tags == declared["tags"], name
        assert d.concurrency_limit == declared.get("concurrency_limit"), name
        schedules = []
        for s in d.schedules or []:
            assert isinstance(s.schedule, CronSchedule), name
            schedules.append({"cron": s.schedule.cron, "timezone": s.schedule.timezone})
        assert schedules == (declared.get("schedules") or []), name


def test_promotions_are_serialised(deployments: dict, services: dict) -> None:
    """Deployment limits cover runs of promote/rollback; the `promote` tag limit also covers
    nightly's promotion, because the promotion tasks carry that tag."""
    from lstmpipe.tasks import promote as promote_tasks

    for name in ("promote", "rollback"):
        assert deployments[name]["concurrency_limit"] == 1
    assert "promote" in promote_tasks.promote_challenger.tags
    assert "promote" in promote_tasks.rollback.tags
    script = command_text(services["prefect-deploy"])
    assert "prefect concurrency-limit create promote 1" in script
    assert f"prefect work-pool create {POOL} --type process" in script
    assert "prefect deploy --all --prefect-file infra/prefect.yaml --no-prompt" in script


def test_the_tasks_that_run_a_network_carry_the_gpu_tag() -> None:
    """The `gpu` tag limit (serve sets it to the GPU count; prefect.yaml says how on a worker) must
    cover every task that runs the CNN or the LSTM, and nothing else."""
    from prefect import Task

    from lstmpipe.tasks import extract, infer, promote, train, tune

    tagged = {
        t.name
        for module in (extract, infer, promote, train, tune)
        for t in vars(module).values()
        if isinstance(t, Task) and "gpu" in t.tags
    }
    assert tagged == {"extract-shard", "train-model", "tune-model"}
    assert "prefect concurrency-limit create gpu" in (ROOT / "infra" / "prefect.yaml").read_text()


def test_infer_reads_the_alias_that_promote_moves(deployments: dict) -> None:
    from lstmpipe.lib.config import PromoteConfig

    model = deployments["promote"]["parameters"]["model"]
    assert (
        deployments["nightly"]["parameters"]["model"]
        == model
        == deployments["train"]["parameters"]["model"]
    )
    assert deployments["infer"]["parameters"]["model"] == f"models:/{model}@{PromoteConfig().alias}"


# --------------------------------------------------------------------------- compose.yaml


def test_compose_has_the_services(services: dict) -> None:
    assert set(services) >= {
        "postgres",
        "seaweedfs",
        "s3-bucket",
        "mlflow",
        "prefect-server",
        "prefect-deploy",
        "prefect-worker",
        "ray-head",
        "ray-worker",
    }
    assert "healthcheck" in services["postgres"]
    for name in ("mlflow", "prefect-server"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["prefect-worker"]["depends_on"]
    for one_shot in ("prefect-deploy", "s3-bucket"):
        assert worker[one_shot]["condition"] == "service_completed_successfully", one_shot
    assert services["s3-bucket"]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"


def test_published_ports_bind_localhost_only(services: dict) -> None:
    published = set()
    for name, service in services.items():
        assert service.get("network_mode") != "host", (
            f"{name}: host networking bypasses the bindings"
        )
        for host_ip, host_port, _ in published_ports(service):
            assert host_ip == "127.0.0.1", (
                f"{name}: port {host_port} is published on every interface"
            )
            published.add(host_port)
    assert published == {"4200", "5000", "8265"}  # Prefect UI, MLflow UI, Ray dashboard


def strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(nearest key, string) for every string in a parsed YAML document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, key)
    elif isinstance(value, str):
        yield key, value


def test_no_credential_in_plain_text(compose_raw: dict) -> None:
    """Credentials are compose secrets: files under infra/secrets/ (git-ignored), mounted at
    /run/secrets/NAME; a variable naming one ends in _FILE (or is Ray's RAY_AUTH_TOKEN_PATH)."""
    assert "POSTGRES_PASSWORD}" not in (INFRA / "compose.yaml").read_text()
    for key, value in strings(interpolate(compose_raw, COMPOSE_TEST_ENV)):
        if re.search(r"PASSWORD|SECRET|TOKEN|AUTH_STRING", key):
            assert key.endswith(("_FILE", "_PATH")) and value.startswith("/run/secrets/"), (
                f"{key}: {value!r} is not a secret file"
            )
        assert not re.search(r"://[^:/@\s]+:[^@\s]*@", value), f"a URI embeds a password: {value!r}"
    declared = compose_raw["secrets"]
    assert set(declared) == set(SECRETS)
    for name, secret in declared.items():
        path = INFRA / secret["file"]
        assert path.parent == INFRA / "secrets" and path.name == name
        assert git_ignored(path), f"{secret['file']} could be committed"
    tracked = subprocess.run(
        ["git", "ls-files", "infra"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert not [f for f in tracked.split() if Path(f).name == ".env" or "/secrets/" in f], (
        "a credentials file is in git"
    )


def secret_names(service: dict) -> set[str]:
    """The secrets a service mounts, short (`name`) or long (`source:`, `target:`) syntax."""
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def test_each_secret_reaches_exactly_its_readers(services: dict) -> None:
    """Each mounted secret is read: named by a variable, or (long syntax) mounted where the
    service's command reads it."""
    for name, service in services.items():
        files = {
            value.removeprefix("/run/secrets/")
            for key, value in service.get("environment", {}).items()
            if value.startswith("/run/secrets/")
        }
        command = command_text(service) if "command" in service else ""
        files |= {
            s["source"]
            for s in service.get("secrets", [])
            if isinstance(s, dict) and s["target"] in command
        }
        assert files == secret_names(service), name
        assert files == {secret for secret, readers in SECRETS.items() if name in readers}, name


def test_no_command_line_carries_a_credential(services: dict) -> None:
    """/proc/*/cmdline is readable by every user of a host: commands hold no secret, and no
    variable they expand could hold one."""
    for name, service in services.items():
        text = command_text(service) if "command" in service else ""
        assert not re.search(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|/run/secrets", text), name
        assert not re.search(r"://[^/@\s]+@", text), (
            f"{name}: a URI with credentials in its command"
        )


def test_every_server_requires_authentication(services: dict) -> None:
    pg = services["postgres"]["environment"]
    assert pg["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "--auth-host=scram-sha-256" in pg["POSTGRES_INITDB_ARGS"].split()
    assert "--auth-local=scram-sha-256" in pg["POSTGRES_INITDB_ARGS"].split()

    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    ini = mlflow_auth_ini()
    assert ini["default_permission"] in {"READ", "NO_PERMISSIONS"}  # others never write
    assert "admin_password" not in ini  # from MLFLOW_AUTH_ADMIN_PASSWORD(_FILE)
    env = mlflow["environment"]
    assert {"MLFLOW_AUTH_ADMIN_PASSWORD_FILE", "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"} <= set(env)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] in (INFRA / "mlflow" / "Dockerfile").read_text()
    worker = services["prefect-worker"]["environment"]
    assert worker["MLFLOW_TRACKING_USERNAME"] == ini["admin_username"]
    assert "MLFLOW_TRACKING_PASSWORD_FILE" in worker

    assert "PREFECT_SERVER_API_AUTH_STRING_FILE" in services["prefect-server"]["environment"]
    for name in ("prefect-deploy", "prefect-worker"):
        assert "PREFECT_API_AUTH_STRING_FILE" in services[name]["environment"], name

    for name in ("prefect-worker", "ray-head", "ray-worker", "ray-worker-gpu"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_token", name

    # SeaweedFS's S3 API: requests signed by the identities of its -s3.config (without one it
    # takes anonymous writes), the file the secret s3_config is mounted as.
    seaweed = services["seaweedfs"]
    config = [w.split("=", 1)[1] for w in seaweed["command"] if w.startswith("-s3.config=")]
    (mounted,) = [s for s in seaweed["secrets"] if isinstance(s, dict)]
    assert config == [mounted["target"]] and mounted["source"] == "s3_config"


def test_secret_file_variables_are_read(services: dict) -> None:
    """Each NAME_FILE variable becomes NAME through the images' entrypoint, and NAME is one the
    program reads: Prefect's settings, MLflow's auth app and client, libpq's PGPASSWORD. The
    postgres image reads POSTGRES_PASSWORD_FILE itself."""
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    from lstmpipe.flows.runtime import SECRET_VARIABLES

    known = (
        set(_get_valid_setting_names(Settings))
        # MLflow's variables, read from its source: importing mlflow costs seconds
        | set(re.findall(r'"(MLFLOW_\w+)"', mlflow_source("environment_variables.py").read_text()))
        | {"PGPASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"}
        | set(SECRET_VARIABLES)  # PGPASSWORD (libpq), AWS_* (boto3): lstmpipe's team state
    )
    for name, service in services.items():
        for variable in service.get("environment", {}):
            if variable.endswith("_FILE") and name != "postgres":
                assert variable.removesuffix("_FILE") in known, f"{name}: {variable}"
    # lstmpipe's own commands read the client credentials' _FILE forms too (flows/runtime.py)
    clients = {v.removesuffix("_FILE") for v in services["prefect-worker"]["environment"]}
    assert clients >= set(SECRET_VARIABLES)


def test_entrypoint_turns_secret_files_into_variables(tmp_path: Path) -> None:
    script = INFRA / "secrets-env.sh"
    (tmp_path / "token").write_text("s3cret")
    env = {"PATH": os.environ["PATH"], "PREFECT_API_AUTH_STRING_FILE": str(tmp_path / "token")}
    shown = subprocess.run(
        ["sh", str(script), "env"], env=env, capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert "PREFECT_API_AUTH_STRING=s3cret" in shown.stdout.splitlines()
    assert "PREFECT_API_AUTH_STRING_FILE" not in shown.stdout
    env["PGPASSWORD_FILE"] = str(tmp_path / "missing")
    refused = subprocess.run(
        ["sh", str(script), "env"], env=env, capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 1 and "PGPASSWORD_FILE" in refused.stderr
    for dockerfile_path in (INFRA / "Dockerfile", INFRA / "mlflow" / "Dockerfile"):
        steps = dockerfile(dockerfile_path)
        (entrypoint,) = [args for op, args in steps if op == "ENTRYPOINT"]
        (copied,) = [args.split() for op, args in steps if op == "COPY" and "secrets-env" in args]
        assert copied[-1] in entrypoint, dockerfile_path


def test_make_secrets_writes_one_private_folder(tmp_path: Path, compose_raw: dict) -> None:
    folder = tmp_path / "secrets"
    command = ["sh", str(INFRA / "make-secrets.sh"), str(folder)]
    subprocess.run(command, check=True, capture_output=True, timeout=30)
    assert folder.stat().st_mode & 0o777 == 0o700
    made = {path.name: path.read_text() for path in folder.iterdir()}
    assert set(made) == set(compose_raw["secrets"])
    assert len(set(made.values())) == len(made) and all(len(v) >= 64 for v in made.values())
    assert made["prefect_auth_string"].startswith("lstmpipe:")  # Prefect's user:password
    # SeaweedFS's identities: one, with lstmpipe's keys, limited to its bucket (no Admin: the
    # bucket is made by the one-shot s3-bucket through SeaweedFS's own shell)
    (identity,) = json.loads(made["s3_config"])["identities"]
    assert identity["credentials"] == [
        {"accessKey": made["s3_access_key"], "secretKey": made["s3_secret_key"]}
    ]
    bucket = urlsplit(STATE_STORE).hostname
    assert identity["actions"] and all(a.endswith(f":{bucket}") for a in identity["actions"])
    assert f"s3.bucket.create -name {bucket}" in command_text(compose_raw["services"]["s3-bucket"])
    subprocess.run(command, check=True, capture_output=True, timeout=30)
    assert {path.name: path.read_text() for path in folder.iterdir()} == made  # kept


def test_containers_run_hardened(services: dict) -> None:
    """Non-root, no capabilities, no privilege escalation, read-only root (tmpfs for scratch)."""
    users = {
        "lstmpipe:0.1.0": last_user(INFRA / "Dockerfile"),
        "lstmpipe-mlflow:3.17.2": last_user(INFRA / "mlflow" / "Dockerfile"),
        "lstmpipe-seaweedfs:4.48": last_user(INFRA / "seaweedfs" / "Dockerfile"),
    }
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"] and not service.get("cap_add"), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not service.get("privileged"), name
        user = service.get("user") or users.get(service["image"])
        assert user and user not in {"root", "0"}, f"{name} runs as root"
        assert "/tmp" in service.get("tmpfs", []), name


def test_decoding_workers_have_no_egress(compose: dict, services: dict) -> None:
    """The Ray workers (and the driver, the database) sit on the internal network alone; only
    the services publishing a port on 127.0.0.1 join a routed one."""
    networks = compose["networks"]
    internal = {name for name, net in networks.items() if (net or {}).get("internal")}
    for name, service in services.items():
        joined = set(service.get("networks", []))
        assert joined and joined <= set(networks), name
        if service.get("ports"):
            assert joined - internal, f"{name}: an internal network cannot publish ports"
        else:
            assert joined <= internal, f"{name}: has a route out"
    for name in ("ray-worker", "ray-worker-gpu", "prefect-worker", "postgres"):
        assert set(services[name]["networks"]) <= internal, name


def test_worker_environment_reaches_the_servers(services: dict, tmp_path: Path) -> None:
    from lstmpipe.flows.runtime import load_runtime

    env = services["prefect-worker"]["environment"]
    assert set(env) >= {
        "PREFECT_API_URL",
        "MLFLOW_TRACKING_URI",
        "RAY_ADDRESS",
        "LSTMPIPE_HOME",
        "REPO_DIR",
    }

    api = urlsplit(env["PREFECT_API_URL"])
    server_cmd = services["prefect-server"]["command"]
    assert api.hostname == "prefect-server" and api.path == "/api"
    assert str(api.port) == server_cmd[server_cmd.index("--port") + 1]
    assert services["prefect-deploy"]["environment"]["PREFECT_API_URL"] == env["PREFECT_API_URL"]

    tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
    mlflow_cmd = services["mlflow"]["command"]
    assert (
        tracking.hostname == "mlflow"
        and str(tracking.port) == mlflow_cmd[mlflow_cmd.index("--port") + 1]
    )

    ray_host, ray_port = env["RAY_ADDRESS"].split(":")
    assert ray_host == "ray-head"
    assert ray_start_context(services["ray-head"]["command"][2:]).params["port"] == int(ray_port)
    # A driver needs a Ray node on its host: the worker joins the same address first.
    worker_node = ray_start_context(ray_start_args(command_text(services["prefect-worker"]))).params
    assert worker_node["address"] == env["RAY_ADDRESS"]
    assert worker_node["num_cpus"] == 0 and worker_node["num_gpus"] == 0

    # flows/runtime.py turns exactly this environment into the runtime (home moved to tmp_path).
    rt = load_runtime(env={**env, "LSTMPIPE_HOME": str(tmp_path)})
    assert rt.tracking_uri == env["MLFLOW_TRACKING_URI"] and rt.artifact_root is None
    assert rt.ray_address == env["RAY_ADDRESS"]
    assert rt.torch_hub_dir == f"{env['TORCH_HOME']}/hub"

    # lstmpipe's team state: the compose PostgreSQL and SeaweedFS's S3 port
    assert rt.state.team
    assert rt.state.database == env["LSTMPIPE_STATE_DATABASE"]
    assert rt.state.store == env["LSTMPIPE_STATE_STORE"] == STATE_STORE
    database = urlsplit(env["LSTMPIPE_STATE_DATABASE"])
    assert (database.hostname, database.port, database.password) == ("postgres", 5432, None)
    endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
    s3_port = [w for w in services["seaweedfs"]["command"] if w.startswith("-s3.port=")]
    assert endpoint.hostname == "seaweedfs" and s3_port == [f"-s3.port={endpoint.port}"]


def test_nothing_on_disk_is_shared_by_the_worker_and_the_ray_nodes(
    compose: dict, services: dict
) -> None:
    """No shared filesystem (issue 17): the worker and every node get the same state variables
    and credentials, their homes are their own tmpfs, and the one volume they share holds
    backbone weights, read-only."""
    worker = services["prefect-worker"]
    home = worker["environment"]["LSTMPIPE_HOME"]
    for name in LSTMPIPE_NODES:
        service = services[name]
        env = service["environment"]
        assert {k: env.get(k) for k in STATE_VARIABLES} == {
            k: worker["environment"][k] for k in STATE_VARIABLES
        }, name
        assert home in service["tmpfs"], f"{name}: LSTMPIPE_HOME is not its own scratch"
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            assert mode == ["ro"] and target == worker["environment"]["TORCH_HOME"], (
                f"{name}: {volume} is shared and writable"
            )
        assert service["image"] == worker["image"] == services["prefect-server"]["image"], name
    writers: dict[str, list[str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, _, *mode = volume.split(":")
            if source in compose["volumes"] and mode != ["ro"]:
                writers.setdefault(source, []).append(name)
    assert all(len(names) == 1 for names in writers.values()), writers


def test_postgres_serves_both_stores(services: dict, compose: dict) -> None:
    pg = services["postgres"]["environment"]
    mlflow_db = urlsplit(services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"])
    prefect_db = urlsplit(
        services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    )
    auth_db = urlsplit(mlflow_auth_ini()["database_uri"])
    assert mlflow_db.scheme == auth_db.scheme == "postgresql"
    assert prefect_db.scheme == "postgresql+asyncpg"
    for url in (mlflow_db, prefect_db, auth_db):
        assert (url.hostname, url.port) == ("postgres", 5432)
        # the password comes from PGPASSWORD (libpq, asyncpg), never the URI
        assert (url.username, url.password) == (pg["POSTGRES_USER"], None)
    assert mlflow_db.path == f"/{pg['POSTGRES_DB']}"
    # MLflow, its auth app and Prefect each keep an alembic_version table: separate databases.
    assert len({mlflow_db.path, prefect_db.path, auth_db.path}) == 3
    init = compose["configs"]["postgres-init"]["content"]
    for url in (prefect_db, auth_db):
        assert f"CREATE DATABASE {url.path.lstrip('/')};" in init

    # lstmpipe's state: a role of its own owning its database, its password from a secret
    # through psql's environment (never a command-line word), the other databases closed to it
    state_db = urlsplit(services["ray-worker"]["environment"]["LSTMPIPE_STATE_DATABASE"])
    role, name = state_db.username, state_db.path.lstrip("/")
    assert role != pg["POSTGRES_USER"] and state_db.password is None
    script = compose["configs"]["postgres-state"]["content"]
    assert f"CREATE ROLE {role} LOGIN PASSWORD :'password';" in script
    assert f"CREATE DATABASE {name} OWNER {role};" in script
    assert '"$(cat "$STATE_DB_PASSWORD_FILE")"' in script and "\\getenv password" in script
    assert pg["STATE_DB_PASSWORD_FILE"] == "/run/secrets/state_db_password"
    assert "REVOKE CONNECT ON DATABASE mlflow, prefect, mlflow_auth FROM PUBLIC;" in init
    targets = [c["target"] for c in services["postgres"]["configs"]]
    assert sorted(targets) == targets  # the databases first, then the state role
    assert importlib.util.find_spec("asyncpg"), (
        "Prefect's postgresql+asyncpg driver is missing from the image deps"
    )


def test_prefect_variables_are_prefect_settings(services: dict) -> None:
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    # the names Prefect reads from the environment
    valid = _get_valid_setting_names(Settings)
    for name, service in services.items():
        for variable in service.get("environment", {}):
            if variable.startswith("PREFECT_") and not variable.endswith("_FILE"):
                assert variable in valid, f"{name}: Prefect has no setting {variable}"


def mlflow_source(relative: str) -> Path:
    """A file of the installed MLflow, found without importing it."""
    spec = importlib.util.find_spec("mlflow")
    assert spec is not None and spec.submodule_search_locations is not None
    return Path(spec.submodule_search_locations[0]) / relative


def mlflow_auth_ini() -> dict[str, str]:
    """infra/mlflow/basic_auth.ini, as MLflow's auth app reads it."""
    config = configparser.ConfigParser()
    config.read(INFRA / "mlflow" / "basic_auth.ini")
    return dict(config["mlflow"])


def mlflow_host_rule():
    """MLflow's own Host-header check, loaded from its module file: importing it the usual
    way executes mlflow.server's package __init__ (the Flask app), which costs seconds."""
    spec = importlib.util.spec_from_file_location(
        "_mlflow_security_utils", mlflow_source("server/security_utils.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.is_allowed_host_header


def test_mlflow_server_options(services: dict) -> None:
    service = services["mlflow"]
    command = service["command"]
    assert command[:2] == ["mlflow", "server"]
    options: dict[str, Any] = {}
    for i, word in enumerate(command[2:], start=2):
        if word.startswith("--"):
            following = command[i + 1] if i + 1 < len(command) else "--"
            options[word] = True if following.startswith("--") else following
    declared = set(
        re.findall(
            r'"(--[a-z][a-z-]*)',
            mlflow_source("cli/__init__.py").read_text()
            + mlflow_source("utils/cli_args.py").read_text(),
        )
    )
    assert set(options) <= declared, (
        f"options mlflow server does not have: {set(options) - declared}"
    )
    # the store URI comes from the environment variable the option reads
    assert "--backend-store-uri" not in options
    assert 'envvar="MLFLOW_BACKEND_STORE_URI"' in mlflow_source("cli/__init__.py").read_text()
    assert "MLFLOW_BACKEND_STORE_URI" in service["environment"]
    assert options["--serve-artifacts"] is True
    assert options["--artifacts-destination"] in mounts(service)
    assert options["--host"] == "0.0.0.0"  # inside the container; published on 127.0.0.1 only
    assert int(options["--port"]) == int(next(p for _, _, p in published_ports(service)))
    # MLflow rejects Host headers it does not know (DNS-rebinding guard): the worker's and the
    # browser's.
    is_allowed = mlflow_host_rule()
    allowed = options["--allowed-hosts"].split(",")
    assert is_allowed(
        allowed, urlsplit(services["prefect-worker"]["environment"]["MLFLOW_TRACKING_URI"]).netloc
    )
    assert not is_allowed(allowed, "attacker.example:5000")
    for host_ip, host_port, _ in published_ports(service):
        assert is_allowed(allowed, f"{host_ip}:{host_port}") and is_allowed(
            allowed, f"localhost:{host_port}"
        )


def test_mlflow_image_pins_the_client_version() -> None:
    import mlflow

    pins = dict(
        re.findall(
            r"^([\w-]+)(?:\[[\w,]+\])?==(\S+)",
            (INFRA / "mlflow/requirements.txt").read_text(),
            re.M,
        )
    )
    assert pins["mlflow"] == mlflow.__version__
    assert "mlflow[auth]==" in (INFRA / "mlflow/requirements.txt").read_text()  # Flask-WTF
    assert f"mlflow=={pins['mlflow']}" in PYPROJECT["project"]["dependencies"]
    assert "psycopg2-binary" in pins  # the postgresql:// backend store driver
    assert "requirements.txt" in (INFRA / "mlflow/Dockerfile").read_text()


def _compose_plugin() -> bool:
    if not shutil.which("docker"):
        return False
    return (
        subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode
        == 0
    )


@pytest.mark.skipif(not _compose_plugin(), reason="the docker compose plugin is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    base = ["docker", "compose", "-f", str(INFRA / "compose.yaml"), "config", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_TEST_ENV}
    subprocess.run(
        base, env={**env, **COMPOSE_TEST_ENV}, check=True, capture_output=True, timeout=60
    )


# --------------------------------------------------------------------------- Dockerfile


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in joined.splitlines()
        if line.strip()
    ]


def last_user(path: Path) -> str:
    """The user a Dockerfile's image runs as."""
    return [args for op, args in dockerfile(path) if op == "USER"][-1]


def test_dockerfile_installs_ffmpeg_and_the_project_as_non_root(services: dict) -> None:
    steps = dockerfile(INFRA / "Dockerfile")
    runs = [args for op, args in steps if op == "RUN"]
    assert steps[0] == ("FROM", "python:3.11-slim")
    # One Python minor on driver and cluster (Ray requires it); the project's too.
    assert sys.version_info[:2] == (3, 11) and "3.11" in PYPROJECT["project"]["requires-python"]
    assert any(re.search(r"apt-get install\b.*\bffmpeg\b", run) for run in runs)
    assert any(re.search(r"pip install\b[^&]*\s\.(\s|$)", run) for run in runs)
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert re.search(rf"useradd\b.*\b{users[-1]}\b", " ".join(runs))

    copied = {source for op, args in steps if op == "COPY" for source in args.split()[:-1]}
    packages = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())  # lib, tasks, flows
    assert copied >= packages | {"pyproject.toml", PYPROJECT["project"]["readme"]}
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    for source in copied:  # the ignore file excludes everything else from the build context
        assert f"!{source}" in ignored or f"!{source}/" in ignored, source

    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in steps if op == "ENV")))
    workdir = [args for op, args in steps if op == "WORKDIR"][-1]
    assert env["REPO_DIR"] == workdir == services["prefect-worker"]["environment"]["REPO_DIR"]
    assert env["LSTMPIPE_HOME"] == services["prefect-worker"]["environment"]["LSTMPIPE_HOME"]


# --------------------------------------------------------------------------- Ray


def requested_resources() -> set[str]:
    """Ray resource names the code asks for: num_cpus/num_gpus/resources= in tasks/, and
    what it reads back from ray.cluster_resources()."""
    names = set()
    by_keyword = {"num_cpus": "CPU", "num_gpus": "GPU"}
    for path in (ROOT / "tasks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg in by_keyword:
                names.add(by_keyword[node.arg])
            if (
                isinstance(node, ast.keyword)
                and node.arg == "resources"
                and isinstance(node.value, ast.Dict)
            ):
                names |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and "cluster_resources" in ast.unparse(node.func.value)
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.add(node.args[0].value)
    return names


def test_the_code_requests_cpus_and_gpus() -> None:
    from lstmpipe.lib.config import RuntimeConfig
    from lstmpipe.lib.features.placement import placement
    from lstmpipe.tasks.ray_workers import FeatureWorker

    assert requested_resources() == {"CPU", "GPU"}
    # lib.features.placement sizes each actor for its cluster
    assert "num_cpus" not in vars(FeatureWorker)["_default_options"]
    assert placement(RuntimeConfig(), {"CPU": 8.0, "GPU": 1.0}).actor_cpus == 1


def test_cluster_yaml_passes_rays_schema(cluster: dict) -> None:
    import copy
    import json

    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)  # strict: unknown keys fail
    validate_config(prepare_config(copy.deepcopy(cluster)))  # what `ray up` does


def test_cluster_yaml_node_types_match_the_actors(cluster: dict) -> None:
    requested = requested_resources()
    types = cluster["available_node_types"]
    for name, node_type in types.items():
        assert set(node_type["resources"]) <= requested, (
            f"{name}: resources the code never requests"
        )
    workers = {n: t["resources"] for n, t in types.items() if n != cluster["head_node_type"]}
    # A FeatureWorker takes CPU 1 (and GPU 1 where there are GPUs) on one node.
    assert any(r.get("GPU", 0) >= 1 and r.get("CPU", 0) >= 1 for r in workers.values()), (
        "no GPU worker type"
    )
    assert any(r.get("CPU", 0) >= 1 and not r.get("GPU") for r in workers.values()), (
        "no CPU worker type"
    )

    head = ray_start_context(ray_start_args(" ".join(cluster["head_start_ray_commands"]))).params
    assert head["head"] and head["num_cpus"] == types[cluster["head_node_type"]]["resources"].get(
        "CPU"
    )
    assert head["dashboard_host"] == "127.0.0.1"  # SPEC §6
    worker = ray_start_context(
        ray_start_args(" ".join(cluster["worker_start_ray_commands"]))
    ).params
    assert worker["address"] == f"10.0.0.1:{head['port']}"


def test_cluster_yaml_installs_the_project(cluster: dict) -> None:
    remote, local = "~/lstmpipe", cluster["file_mounts"]["~/lstmpipe"]
    assert (ROOT / local / "pyproject.toml").is_file()  # `ray up` from the repository root
    setup = "\n".join(cluster["setup_commands"])
    assert re.search(rf"pip install\b.*\s{re.escape(remote)}(\s|$)", setup)
    assert re.search(r"apt-get install\b.*\bffmpeg\b", setup)
    assert "--python 3.11" in setup


def test_kuberay_raycluster(raycluster: dict, services: dict) -> None:
    import ray

    assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["kind"] == "RayCluster"
    spec = raycluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert any(
        re.fullmatch(rf"ray\[[a-z,]*default[a-z,]*\]=={re.escape(ray.__version__)}", dep)
        for dep in PYPROJECT["project"]["dependencies"]
    )

    groups = {
        "head": spec["headGroupSpec"],
        **{g["groupName"]: g for g in spec["workerGroupSpecs"]},
    }
    requested = requested_resources()
    gpu_groups, cpu_groups = [], []
    for name, group in groups.items():
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), (
            f"{name}: rayStartParams values are strings"
        )
        ray_start_context([f"--{k}={v}" for k, v in params.items()])  # valid `ray start` options
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert re.search(r"/lstmpipe:", container["image"]), (
            f"{name}: not the infra/Dockerfile image"
        )
        assert pod["securityContext"]["runAsNonRoot"] is True
        limits = container["resources"]["limits"]
        names = {"CPU"} | ({"GPU"} if "nvidia.com/gpu" in limits else set())
        assert names <= requested
        # LSTMPIPE_HOME is the pod's own scratch, as the compose worker's tmpfs
        home = services["prefect-worker"]["environment"]["LSTMPIPE_HOME"]
        by_path = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[by_path[home]], name
        if name != "head":
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            (gpu_groups if "nvidia.com/gpu" in limits else cpu_groups).append(name)
            assert float(limits["cpu"]) >= 1  # a FeatureWorker takes one CPU, GPU or not
    assert gpu_groups and cpu_groups
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0"
    assert groups["head"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"  # SPEC §6
    assert len({g["template"]["spec"]["containers"][0]["image"] for g in groups.values()}) == 1

    # No shared filesystem (issue 17): no claim, no NFS; the team state instead, from the Secret.
    assert not [d for d in kuberay_docs() if d["kind"] == "PersistentVolumeClaim"]
    assert "ReadWriteMany" not in (INFRA / "ray/kuberay.yaml").read_text()
    for name, group in groups.items():
        pod = group["template"]["spec"]
        assert not [v for v in pod["volumes"] if {"persistentVolumeClaim", "nfs"} & set(v)], name
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        for variable in (
            "LSTMPIPE_STATE_DATABASE",
            "LSTMPIPE_STATE_STORE",
            "AWS_ENDPOINT_URL",
            "PGPASSWORD",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ):
            # KubeRay replaces the image's entrypoint (no *_FILE turned into variables there):
            # the variables themselves, each a reference to the Secret, no value in the file
            assert "value" not in env[variable], f"{name}: {variable} has a value in the file"
            assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == "lstmpipe-state"


def test_cluster_yaml_starts_every_node_with_token_auth(cluster: dict) -> None:
    token = "~/.ray/lstmpipe_token"
    assert cluster["file_mounts"][token] == "infra/secrets/ray_token"
    assert git_ignored(ROOT / cluster["file_mounts"][token])
    assert "**/infra/secrets" in cluster["rsync_exclude"]  # not the repository sync
    expected = f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token};"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in cluster[key] if "ray start" in c]
        assert start.startswith(expected), key
    setup = "\n".join(cluster["setup_commands"])
    assert f"chmod 600 {token}" in setup
    assert "export RAY_AUTH_MODE=token" in setup  # login shells: the driver, `ray` commands


def test_cluster_yaml_gives_every_node_the_team_state_and_no_shared_filesystem(
    cluster: dict,
) -> None:
    """The state's URLs and credential files in every login shell (the driver reads the files
    itself), Ray started under infra/secrets-env.sh so that its workers inherit PGPASSWORD and
    AWS_*, the credential files copied from the git-ignored infra/secrets/ and kept 0600."""
    setup = "\n".join(cluster["setup_commands"])
    assert not re.search(r"\bnfs|\befs\b|mount -t", setup, re.I), "a shared filesystem"
    exported = dict(re.findall(r"\b([A-Z][A-Z0-9_]+)=(\S+)", setup))
    assert set(exported) >= STATE_VARIABLES
    assert urlsplit(exported["LSTMPIPE_STATE_DATABASE"]).password is None
    for variable in ("PGPASSWORD_FILE", "AWS_ACCESS_KEY_ID_FILE", "AWS_SECRET_ACCESS_KEY_FILE"):
        remote = exported[variable].strip('"').replace("$HOME", "~")
        local = cluster["file_mounts"][remote]
        assert local.startswith("infra/secrets/") and git_ignored(ROOT / local), variable
        assert f"chmod 600 {str(Path(remote).parent)}/*" in setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in cluster[key] if "ray start" in c]
        assert "sh ~/lstmpipe/infra/secrets-env.sh ray start" in start, key


def kuberay_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / "ray/kuberay.yaml").read_text()) if d]


def test_kuberay_pods_are_hardened_and_authenticated(raycluster: dict) -> None:
    spec = raycluster["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_AUTH_MODE"] == "token"
        token_dir = str(Path(env["RAY_AUTH_TOKEN_PATH"]).parent)
        mounts_by_path = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret = volumes[mounts_by_path[token_dir]]["secret"]
        assert secret["secretName"] == "lstmpipe-ray-token"
        assert secret["defaultMode"] & 0o007 == 0  # no other user
        # a read-only root: Ray's scratch is an emptyDir
        assert "emptyDir" in volumes[mounts_by_path["/tmp"]]


def test_kuberay_network_policies_fence_the_workers(raycluster: dict) -> None:
    cluster = {"ray.io/cluster": raycluster["metadata"]["name"]}
    policies = {
        d["metadata"]["name"]: d["spec"] for d in kuberay_docs() if d["kind"] == "NetworkPolicy"
    }
    ingress = policies["lstmpipe-ray-ingress"]
    assert ingress["podSelector"]["matchLabels"] == cluster and ingress["policyTypes"] == [
        "Ingress"
    ]
    sources = [peer for rule in ingress["ingress"] for peer in rule["from"]]
    assert all("ipBlock" not in peer and "podSelector" in peer for peer in sources)

    egress = policies["lstmpipe-ray-workers-egress"]
    assert egress["podSelector"]["matchLabels"] == {**cluster, "ray.io/node-type": "worker"}
    assert egress["policyTypes"] == ["Egress"]
    ports = set()
    for rule in egress["egress"]:
        assert all("ipBlock" not in peer for peer in rule["to"]), "an address range: egress"
        ports |= {port["port"] for port in rule.get("ports", [])}
    # MLflow, PostgreSQL, the object store, DNS; plus the cluster's own pods
    assert ports == {5000, 5432, 8333, 53}


def test_lstmpipe_reads_credentials_from_the_files_infra_names(tmp_path: Path) -> None:
    """flows/runtime.py: NAME_FILE sets NAME (a value set directly wins); a missing or empty file
    is a configuration error naming the variable and the file."""
    from lstmpipe.flows.runtime import read_secret_files
    from lstmpipe.lib.errors import ConfigError

    (tmp_path / "password").write_text("s3cret\n")
    env = {
        "MLFLOW_TRACKING_PASSWORD_FILE": str(tmp_path / "password"),
        "PREFECT_API_AUTH_STRING": "given",
        "PREFECT_API_AUTH_STRING_FILE": str(tmp_path / "missing"),
    }
    read_secret_files(env)
    assert env["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert env["PREFECT_API_AUTH_STRING"] == "given"
    for name, content in (("missing", None), ("empty", "\n")):
        if content is not None:
            (tmp_path / name).write_text(content)
        bad = {"PREFECT_API_AUTH_STRING_FILE": str(tmp_path / name)}
        with pytest.raises(ConfigError, match=f"PREFECT_API_AUTH_STRING_FILE: .*{name}"):
            read_secret_files(bad)
