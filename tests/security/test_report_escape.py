"""Names from data never leave the state directory (issue 16 item 6). A report page is named after
the run tag `lstmpipe.run_id`, which anyone who can write a run sets: "../../x" or "/abs" would
have written the page outside $LSTMPIPE_HOME. A plain name is used as is, anything else becomes
run-<hash>.html in the reports folder (the same name each time); a run id given on the command
line that is not a plain name is refused before a path is made; values in MLflow search filters
are quoted so that a quote in them cannot change the filter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.utils.search_utils import SearchModelVersionUtils

from lstmpipe.flows.runtime import run_id_of
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.registry import report
from lstmpipe.lib.state.store import LocalStore
from tests.helpers import isolate_mlflow
from tests.security.conftest import snapshot

HOSTILE_NAMES = ["../../x", "/abs/x", "a/../../b", "..", ".hidden", "-rf", "x\n", "a" * 200, ""]


def values(run_tag: str) -> dict:
    return {"run_id": "0" * 32, "tags": {"lstmpipe.run_id": run_tag}, "metrics": {}}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_page_name_is_hashed_inside_the_reports_folder(
    home: Path, system_tmp: Path, name: str
) -> None:
    store, before = LocalStore(home), snapshot(home.parent)
    if name.startswith("/"):
        name = str(home.parent / "abs")  # an absolute path this test may watch
    key = report.page_key(store, name)
    assert key.startswith("reports/run-") and key.endswith(".html") and key.count("/") == 1
    assert report.page_key(store, name) == key  # one page per run, every time
    report.write(values(name), store, key)
    written = set(snapshot(home.parent)) - set(before)
    assert written == {"home/reports", f"home/{key}"}, written


def test_a_plain_run_id_names_its_page() -> None:
    store = LocalStore(Path("/home/r"))
    assert report.page_key(store, "3f2a9c01b7de") == "reports/3f2a9c01b7de.html"
    assert report.page_key(store, "nightly-2026.12_04") == "reports/nightly-2026.12_04.html"


def test_a_planted_link_at_the_page_name_is_refused(home: Path, tmp_path: Path) -> None:
    reports = home / "reports"
    reports.mkdir()
    outside = tmp_path / "elsewhere.html"
    (reports / "r1.html").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"r1\.html: resolves outside .*reports; refused"):
        report.page_key(LocalStore(home), "r1")
    assert not outside.exists()


@pytest.mark.parametrize("given", ["../x", "/abs/x", "a/b", "x'y", ""])
def test_a_run_id_that_is_not_a_plain_name_is_refused_unread(home: Path, given: str) -> None:
    """Without the check, runs/../x.json (a record planted beside the runs folder) would be read
    and name the MLflow run of its choice."""
    runs = home / "runs"
    runs.mkdir()
    (home / "x.json").write_text(json.dumps({"model": "m", "version": "1", "run_id": "chosen"}))
    with pytest.raises(LookupError, match="not a run id"):
        report.mlflow_run_id(LocalStore(home), given)


@pytest.mark.parametrize(
    "value",
    ["x' AND name = 'seq", 'x" AND name = "seq', "abc' OR run_id != '", "it's", 'say "hi"'],
)
def test_a_quote_in_a_filter_value_stays_in_the_value(value: str) -> None:
    """MLflow's own parser reads the quoted value back whole: one clause, the value unchanged."""
    clauses = SearchModelVersionUtils.parse_search_filter(
        f"run_id = {registry.filter_value(value)}"
    )
    assert clauses == [{"type": "attribute", "key": "run_id", "comparator": "=", "value": value}]


@pytest.mark.parametrize("value", ["both ' and \"", "back\\slash' ", "new\nline"])
def test_a_value_no_quote_can_hold_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="cannot go in a filter"):
        registry.filter_value(value)


@pytest.fixture()
def store(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[registry.MlflowClient]:
    """A SQLite store inside the state directory; MLflow's process-wide URIs are put back after."""
    isolate_mlflow(monkeypatch)
    yield registry.connect(f"sqlite:///{home}/mlflow.db")


@pytest.mark.slow  # an SQLite store's first connection migrates its schema: ~7 s
def test_runs_tagged_with_escaping_names_get_pages_inside_home(
    store: registry.MlflowClient, home: Path, tmp_path: Path, system_tmp: Path
) -> None:
    """The report of a real run, as `lstmpipe report` and the train and promote flows build it."""
    experiment = registry.experiment_id(store, "escape", (home / "art").as_uri())
    outside = snapshot(tmp_path)
    pages = []
    for tag in ("../../x", str(tmp_path / "abs"), "ok-run"):
        run = store.create_run(experiment, tags={"lstmpipe.run_id": tag})
        pages.append(Path(report.build(store, run.info.run_id, LocalStore(home), [])))
    assert [p.parent for p in pages] == [home / "reports"] * 3
    assert pages[0].name.startswith("run-") and pages[1].name.startswith("run-")
    assert pages[2].name == "ok-run.html"
    written = {p for p in set(snapshot(tmp_path)) - set(outside) if not p.startswith("home")}
    assert written == set(), written
    assert "../../x" in pages[0].read_text()  # the tag is still shown, as text


@pytest.mark.parametrize("given", ["../../x", "/abs", ".hidden", "a/b", "x" * 129, "a\nb"])
def test_a_run_id_that_names_files_must_be_a_plain_name(given: str) -> None:
    """A deployment's run_id parameter becomes runs/<id>.json and failures/<id>-*.parquet."""
    with pytest.raises(ConfigError, match="run id"):
        run_id_of(given)
    assert run_id_of("3f2a9c1b7d4e") == "3f2a9c1b7d4e"
