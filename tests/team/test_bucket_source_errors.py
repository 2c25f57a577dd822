"""A bucket source that is empty or missing exits 2 naming it, before anything starts (issue 20):
`s3://bucket/archive` with nothing under it used to mirror an empty folder and report
`0 series`, exit 0. Against the real S3 server of tests/team/."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from lstmpipe.flows import startup
from lstmpipe.flows.cli import EXIT_USAGE, main
from lstmpipe.lib.config import SourcesConfig
from lstmpipe.lib.sources.roots import check_source
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.store import parse_s3
from tests.team.conftest import Team


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LSTMPIPE_HOME", str(tmp_path / "home"))

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server or the backbone started before the source was checked")

    monkeypatch.setattr(startup, "local_api", started)
    monkeypatch.setattr(startup, "load_backbone_early", started)
    return tmp_path / "home"


@pytest.mark.parametrize(
    "command",
    [["extract"], ["plan"], ["infer", "--model", "m"], ["nightly", "--model", "m"], ["status"]],
    ids=lambda c: c[0],
)
def test_an_empty_prefix_exits_2_naming_it(
    command: list[str], team: Team, home: Path, capsys: pytest.CaptureFixture
) -> None:
    url = f"{team.store}/archive"
    assert main([command[0], url, *command[1:], "--json"]) == EXIT_USAGE
    captured = capsys.readouterr()
    line = f"{url}: no objects under this prefix (nothing uploaded, or a typo?)"
    assert captured.err.strip().splitlines()[-1] == f"lstmpipe {command[0]}: {line}"
    assert json.loads(captured.out) == {"error": line, "path": url}
    assert not (home / "runs").exists() and not (home / "mirror").exists()


def test_a_missing_bucket_exits_2_naming_it(
    team: Team, home: Path, capsys: pytest.CaptureFixture
) -> None:
    url = "s3://lstmpipe-no-such-bucket/archive"
    assert main(["extract", url, "--json"]) == EXIT_USAGE
    assert json.loads(capsys.readouterr().out) == {
        "error": f"{url}: no such bucket: lstmpipe-no-such-bucket",
        "path": url,
    }


def test_a_prefix_an_object_or_a_folder_marker_is_there(team: Team, tmp_path: Path) -> None:
    bucket, prefix = parse_s3(team.store)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/archive/2026-11-20/grow/a.mp4", Body=b"x")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/marked/", Body=b"")  # an empty "folder"
    state = StatePlaces(str(tmp_path / "home"))
    for there in ("archive", "archive/2026-11-20", "archive/2026-11-20/grow/a.mp4", "marked"):
        check_source(f"{team.store}/{there}", state, SourcesConfig(), partitions=False)
