"""Files that are not files (SPEC §6: a decoder never hangs the run): a named pipe dropped into a
source folder must be refused at discovery, not opened. Opening one for reading waits for a writer
forever."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from lstmpipe.lib.sources.discover import Discovery, discover

WAIT_S = 3.0


def test_a_named_pipe_in_a_source_folder_is_refused_not_waited_on(
    tmp_path: Path, clip: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    fifo = source / "stall.mp4"
    os.mkfifo(fifo)
    (source / "fine.mp4").write_bytes(clip.read_bytes())
    found: list[Discovery] = []
    worker = threading.Thread(target=lambda: found.append(discover(source)), daemon=True)
    worker.start()
    worker.join(WAIT_S)
    hung = worker.is_alive()
    # let a stuck discovery finish: each open for reading returns once a writer comes and goes
    for _ in range(20):
        if not worker.is_alive():
            break
        with contextlib.suppress(OSError):  # no reader waiting at this instant
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(0.2)
    assert not hung, f"discovery was still waiting on {fifo.name} after {WAIT_S:g} s"
    assert [r.series_id for r in found[0].refs] == ["fine.mp4"]
    assert [(f.series_id, f.stage) for f in found[0].failures] == [("stall.mp4", "discover")]
