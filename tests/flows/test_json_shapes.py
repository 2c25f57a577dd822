"""`--json` and the run records keep their shape: a real small run of each command, compared with
the shape recorded before results were typed (tests/flows/data/json_shapes.json), changed since
deliberately: `ignored` (a count) and `ignored_files` (path, reason) in every extraction summary
and partitions run, `ignored` in each partition done (issue 16: nothing dropped silently);
`series_before` and `missing` in partitions runs, `missing` in status's partitions, `no_series`
in infer's result (issue 20: quiet nights and missing partitions said).

Scripts and `lstmpipe status` read these documents, so a renamed or moved key is a break even
when every flow test still passes. Values that change from run to run (times, paths, ids,
metrics) are compared by type only; counts, statuses and the keys themselves exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL

from lstmpipe.flows.cli import main
from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from tests.helpers import TINY_SETTINGS

pytestmark = pytest.mark.slow
GOLDEN = Path(__file__).parent / "data" / "json_shapes.json"
# values compared exactly: the closed sets of words, and the counts a deterministic sample fixes
EXACT_STRINGS = {"command", "status", "action", "stage", "version", "challenger", "model"}
VOLATILE_INTS = {"best_epoch", "epochs", "bytes"}


def shape(value: Any, key: str = "") -> Any:
    """`value` with what varies between runs replaced by its type name."""
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v, key) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return "int" if key in VOLATILE_INTS else value
    if isinstance(value, str) and key in EXACT_STRINGS:
        return value
    return type(value).__name__


def run_commands(home: Path, work: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Each command's `--json` document, in an order that gives every section something to show."""
    sample = generate_archive(
        work / "sample",
        SampleSpec(
            clips_per_class=4,
            partitions=("2026-11-18", "2026-11-19"),
            size=32,
            min_frames=8,
            max_frames=10,
        ),
    )
    root = work / "root"
    shutil.copytree(sample, root, ignore=shutil.ignore_patterns("labels.csv", ".*"))
    (root / "README.txt").write_text("what these partitions are\n")  # ignored, in no partition
    loose = work / "loose"
    shutil.copytree(root / "2026-11-18", loose)
    (loose / "grow" / "broken.mp4").write_text("not a video\n")
    (loose / "notes.txt").write_text("field notes\n")  # ignored: listed with its reason
    flags = [f"--set={key}={value}" for key, value in TINY_SETTINGS.items()] + ["--json"]
    commands = {
        "extract": ["extract", str(loose)],
        "plan": ["plan", str(loose)],
        "backfill": ["backfill", str(root), "--all"],
        "nightly": ["nightly", str(root), "--model", "shapes"],
        "nightly_again": ["nightly", str(root), "--model", "shapes"],
        "infer": [
            "infer",
            str(loose),
            "--model",
            "models:/shapes@champion",
            "--per-frame",
            "--force",
        ],
        "status": ["status", str(root)],
    }
    documents = {}
    for name, argv in commands.items():
        code = main([*argv, *flags])
        out = capsys.readouterr().out
        assert code == (3 if name in {"extract", "infer"} else 0), (name, out[-2000:])
        documents[name] = json.loads(out)
    documents["run_record"] = json.loads(
        (home / "runs" / f"{documents['extract']['run_id']}.json").read_text()
    )
    return documents


def test_every_command_keeps_its_json_shape(
    harness, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LSTMPIPE_HOME", str(home))
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the harness's, not a new one
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    documents = run_commands(home, tmp_path, capsys)
    assert documents["run_record"] == documents["extract"]  # the record is what --json printed
    got = {name: shape(document) for name, document in documents.items()}
    want = json.loads(GOLDEN.read_text())
    for name in want:
        assert got[name] == want[name], name
