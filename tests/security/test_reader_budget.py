"""Every non-video reader has a time budget that kills it (issue 16, item 3): a reader that hangs,
dies or blows its memory costs its own series, named, and the next series decodes.

The readers run in lstmpipe.lib.sources.reader_process's reader process; the misbehaving ones are
in tests/security/hostile_readers.py.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.cache import SeriesFeatures
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.decode import decode
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.reader_process import READER_ADDRESS_SPACE, open_in_reader
from tests.helpers import wheel_data
from tests.security import hostile_readers
from tests.security.pipeline import mean_colour

BUDGET = SamplingConfig(fps=None, size=8, chunk_frames=8, timeout_s=1.0)
SLACK_S = 1.5  # polling, kill and reap; a loaded 2-core machine included


def _ref(path: Path, kind: str = "test") -> SeriesRef:
    return SeriesRef(series_id=path.name, content_hash="0" * 16, kind=kind, path=str(path))


def _frames(opener: str, ref: SeriesRef) -> int:
    """Frames the opener's series hands out, read through a reader process."""
    with open_in_reader(
        f"tests.security.hostile_readers:{opener}",
        ref,
        BUDGET,
        ref_dir(ref),
        ArchiveLimits(),
        SourcesConfig(),
    ) as series:
        return sum(len(chunk) for chunk in series.chunks)


def ref_dir(ref: SeriesRef) -> Path:
    return Path(ref.path).parent


@pytest.fixture(autouse=True)
def warm_reader(tmp_path: Path) -> None:
    """An idle reader ready before each test: the budget is timed, not a reader's start (its
    imports take seconds); a reader killed in one test is replaced here for the next."""
    assert _frames("honest", _ref(tmp_path / "warm.bin")) == hostile_readers.FRAMES


@pytest.fixture()
def fifo(tmp_path: Path) -> Path:
    """A named pipe no one writes: opening it for reading waits forever."""
    path = tmp_path / "external-storage"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("opener", "reason"),
    [
        ("sleeps_opening", "reader silent for 1 s: killed"),
        ("exits", "reader died: exit code 7"),
        ("segfaults", "reader died: killed by SIGSEGV"),
        (
            "allocates",
            f"reader out of memory (limit {READER_ADDRESS_SPACE >> 30} GiB of address space)",
        ),
    ],
)
def test_a_reader_that_hangs_dies_or_blows_up_fails_its_series_and_the_next_decodes(
    tmp_path: Path, opener: str, reason: str
) -> None:
    bad = _ref(tmp_path / "bad.bin")
    started = time.monotonic()
    with pytest.raises(BadInput) as refused:
        _frames(opener, bad)
    took = time.monotonic() - started
    assert refused.value.path == bad.location
    assert refused.value.reason.startswith(reason), refused.value.reason
    assert took < BUDGET.timeout_s + SLACK_S, f"refused after {took:.1f} s"
    assert _frames("honest", _ref(tmp_path / "good.bin")) == hostile_readers.FRAMES


def test_a_reader_blocked_on_a_fifo_is_killed_within_its_budget(fifo: Path) -> None:
    started = time.monotonic()
    with pytest.raises(BadInput, match="reader silent for 1 s: killed") as refused:
        _frames("reads_fifo", _ref(fifo))
    assert refused.value.path == str(fifo)
    assert time.monotonic() - started < BUDGET.timeout_s + SLACK_S


def test_a_dicom_file_swapped_for_a_fifo_after_discovery_is_killed_in_decode(
    tmp_path: Path,
) -> None:
    """The real DICOM reader, through decode(): pydicom blocks reading a file replaced by a FIFO
    after discovery; the series fails by name within the budget instead of hanging the run."""
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(wheel_data("pydicom", "pydicom/data/test_files/CT_small.dcm"), folder / "ct.dcm")
    (ref,) = discover(folder).refs
    (folder / "ct.dcm").unlink()
    os.mkfifo(folder / "ct.dcm")
    started = time.monotonic()
    with pytest.raises(BadInput, match="reader silent for 1 s: killed") as refused:
        list(decode(ref, BUDGET, tmp_path))
    assert refused.value.path == ref.location
    assert time.monotonic() - started < BUDGET.timeout_s + SLACK_S


def test_a_hung_reader_in_a_run_is_recorded_and_the_run_goes_on(fifo: Path, tmp_path: Path) -> None:
    """Through extract_many, as a run decodes: the FIFO's series is a failure naming it, the
    honest series after it has its features."""
    refs = [_ref(fifo, kind="reads_fifo"), _ref(tmp_path / "good.bin", kind="honest")]

    def decode_fn(ref: SeriesRef):  # the opener named by the ref's kind
        with open_in_reader(
            f"tests.security.hostile_readers:{ref.kind}",
            ref,
            BUDGET,
            tmp_path,
            ArchiveLimits(),
            SourcesConfig(),
        ) as series:
            yield from series.chunks

    results = list(
        extract_many(refs, BUDGET, mean_colour, 16, tmp_path, decoders=1, decode_fn=decode_fn)
    )
    failures = [r for r in results if isinstance(r, Failure)]
    done = [r for r in results if isinstance(r, SeriesFeatures)]
    assert [(f.series_id, f.path) for f in failures] == [(fifo.name, str(fifo))]
    assert "reader silent for 1 s: killed" in failures[0].reason
    assert [(d.series_id, len(d.t)) for d in done] == [("good.bin", hostile_readers.FRAMES)]
