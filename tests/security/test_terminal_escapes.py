"""File names and reasons reach the terminal as text, never as commands (issue 16 item 9b).

A file named with an escape sequence could retitle the window, clear the screen, recolour or
rewrite earlier lines, or (OSC 52) fill the clipboard when a summary prints it. The summary
(flows/console.py `render`) spells every control character as an escape; ordinary Unicode stays.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from lstmpipe.flows.console import render, terminal_safe
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.ops.summary import extraction_summary
from lstmpipe.lib.sources.discover import discover
from tests.security.conftest import SMALL
from tests.security.pipeline import mean_colour

TITLE = "\x1b]0;owned\x07"  # OSC: set the window title
CLEAR = "\x1b[2J\x1b[H"  # CSI: clear the screen, cursor home
CLIPBOARD = "\x1b]52;c;ZWNobyBvd25lZA==\x1b\\"  # OSC 52: write the clipboard
C1_CSI = "\x9b31m"  # the 8-bit CSI some terminals obey
BIDI = "\u202egpj.exe"  # right-to-left override: shows as exe.jpg
# what may not reach a terminal: C0 but the newlines render puts between lines, DEL, C1, bidi
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (TITLE, "\\x1b]0;owned\\x07"),
        (CLEAR, "\\x1b[2J\\x1b[H"),
        (CLIPBOARD, "\\x1b]52;c;ZWNobyBvd25lZA==\\x1b\\"),
        (C1_CSI, "\\x9b31m"),
        (BIDI, "\\u202egpj.exe"),
        ("back\bspace\rreturn\nnew\tline\x7f", "back\\x08space\\rreturn\\nnew\\tline\\x7f"),
        ("été 漢字 🎥 ünïcödé", "été 漢字 🎥 ünïcödé"),  # ordinary Unicode is kept
    ],
)
def test_terminal_safe_spells_controls_and_keeps_unicode(raw: str, shown: str) -> None:
    assert terminal_safe(raw) == shown
    assert not UNSAFE.search(terminal_safe(raw))


def test_hostile_names_in_a_real_run_print_as_text(tmp_path: Path, clip: Path) -> None:
    """Through discovery, decoding and the summary: a clip, a broken clip and an ignored file,
    each named with escape sequences; the summary shows every name, escaped, and nothing a
    terminal would act on."""
    source = tmp_path / "source"
    cls = source / f"cls{CLEAR}"
    cls.mkdir(parents=True)
    shutil.copy(clip, cls / f"good{TITLE}.mp4")
    (cls / f"broken{CLIPBOARD}.mp4").write_text("not a video\n")
    (source / f"notes{C1_CSI}{BIDI}.txt").write_text("field notes\n")
    found = discover(source)
    results = list(extract_many(found.refs, SMALL, mean_colour, 16, tmp_path / "tmp"))
    failures = [r for r in results if isinstance(r, Failure)]
    assert len(found.refs) == 2 and len(failures) == 1 and len(found.ignored) == 1
    summary = extraction_summary([], found.failures + failures, 0.0, found.ignored)
    shown = render({"command": "extract", "run_id": "r", "seconds": 1.0, **summary.to_json()})
    assert not UNSAFE.search(shown), repr(shown)
    assert terminal_safe(f"FAILED cls{CLEAR}/broken{CLIPBOARD}.mp4 [decode]") in shown
    assert terminal_safe(f"IGNORED notes{C1_CSI}{BIDI}.txt: not a media file") in shown


def test_every_section_is_safe(tmp_path: Path) -> None:
    """The partitions of a backfill list failed series by name, as other sections do: the
    escaping is applied to every line render makes, whichever section made it."""
    name = f"2026-11-20{TITLE}/clip{CLEAR}.mp4"
    row = {"series_id": name, "status": "failed", "stage": "decode", "reason": f"bad {C1_CSI}"}
    document = {
        "command": "backfill",
        "run_id": "r",
        "seconds": 1.0,
        "root": str(tmp_path),
        "recipe_id": "r1",
        "selected": 1,
        "already_done": 0,
        "done": [],
        "series": 1,
        "cached": 0,
        "extracted": 0,
        "failed": 1,
        "failed_series": [row],
        "ignored": 1,
        "ignored_files": [{"path": f"{BIDI}/x", "reason": "hidden\x1b[8m"}],
    }
    shown = render(document)
    assert not UNSAFE.search(shown), repr(shown)
    assert terminal_safe(name) in shown and terminal_safe(BIDI) in shown
