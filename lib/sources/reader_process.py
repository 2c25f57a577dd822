"""Non-video readers run in a watched child process: a reader that hangs is killed, one that dies
costs only its series.

DICOM, NIfTI, GeoTIFF, NetCDF/Zarr and image decoders are libraries, not processes: run in the
caller, a read that blocks (HDF5 external storage on a FIFO, a hung network mount, a hostile chunk
that decodes for hours) hangs the run, and a thread cannot be killed. Here each series is opened
and decoded in a reader process that sends its metadata, then one FrameChunk per request, over a
socket; a reply that takes longer than `sampling.timeout_s` (the budget ffmpeg has) gets the
reader killed, reaped and the series refused by name. A reader that dies (a decoder's segfault,
the OOM killer) fails its series with the exit reason; one that runs out of its address space
(READER_ADDRESS_SPACE) fails it as out of memory. Either way the next series gets a new reader.

Readers are long-lived (starting one imports every decoder: seconds) and pooled: one per series
being decoded at once, reused across series. A reader is a fresh interpreter started with
`python -c` (what a multiprocessing spawn does, without re-importing the caller's `__main__`,
which for the CLI imports Prefect), never a fork of a caller holding torch threads. It leaves at
the caller's exit (atexit), when its socket closes, and within a second of its parent dying.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import FrameChunk, OpenSeries, SeriesRef
from lstmpipe.lib.sources.archives import ArchiveLimits

# Address space a reader may map (RLIMIT_AS), so that a reader bomb is a MemoryError in the reader,
# recorded as its series' failure, never the machine's OOM killer choosing the run. The reader's
# interpreter with every decoder imported maps ~1.6 GiB; the largest input the kinds accept, a
# 512^3 NIfTI volume, needs ~3 GiB more while it is scaled (float64 copies). 8 GiB leaves room for
# both; it could become configuration for machines whose legitimate volumes are larger.
READER_ADDRESS_SPACE = 8 << 30

# A reader gets this long to import its decoders before its first series: not the file's time.
_START_S = 120.0

# How often a reader checks that its parent is alive: a SIGKILLed caller leaves no orphan behind.
_ORPHAN_CHECK_S = 1.0

# Imported by a reader before it says it is ready, so that no series' budget pays for it.
_PRELOAD = "lstmpipe.lib.sources.decode"

Opener = Callable[
    [SeriesRef, SamplingConfig, Path, ArchiveLimits, SourcesConfig],
    AbstractContextManager[OpenSeries],
]


@contextmanager
def open_in_reader(
    opener: str,
    ref: SeriesRef,
    sampling: SamplingConfig,
    tmp_dir: Path,
    limits: ArchiveLimits,
    sources: SourcesConfig,
) -> Iterator[OpenSeries]:
    """`opener` ("package.module:function", an Opener) run in a reader process: its metadata now,
    its chunks on demand; BadInput naming `ref.location` when the reader is silent for
    `sampling.timeout_s` (then killed), dies or runs out of memory. Closing the chunks early stops
    the reader's work on the series."""
    reader = _POOL.take()
    series = _RemoteSeries(reader, ref.location, sampling.timeout_s)
    try:
        meta = series.open(opener, (ref, sampling, tmp_dir, limits, sources))
        yield OpenSeries(meta, series.chunks())
    finally:
        try:
            series.finish()
        finally:
            _POOL.give_back(reader)


class _Reader:
    """One reader process and the parent's end of its socket."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self._conn = Connection(mine.detach())
        self.broken = False
        self._conn.send(("init", list(sys.path)))
        if not self._conn.poll(_START_S):
            self.stop()
            raise RuntimeError(f"reader process not ready after {_START_S:g} s")
        try:
            self._conn.recv()  # ("ready",)
        except (EOFError, OSError):
            raise RuntimeError(f"reader process failed to start: {self._exit_reason()}") from None

    def ask(self, request: tuple, where: str) -> None:
        try:
            self._conn.send(request)
        except OSError:
            self.broken = True
            raise BadInput(where, f"reader died: {self._exit_reason()}") from None

    def reply(self, where: str, timeout_s: float) -> Any:
        """The reader's next message; BadInput if it is silent for `timeout_s` (killed) or dies."""
        if not self._conn.poll(timeout_s):
            self.stop()
            raise BadInput(where, f"reader silent for {timeout_s:g} s: killed")
        return self._receive(where)

    def reply_bytes(self, where: str, timeout_s: float, size: int) -> bytearray:
        """The raw bytes following a chunk's header, read straight into place: Connection's own
        recv_bytes allocates a buffer of the remaining size per read (80 MB/s for frames)."""
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            if not self._conn.poll(timeout_s):
                self.stop()
                raise BadInput(where, f"reader silent for {timeout_s:g} s: killed")
            try:
                read = os.readv(self._conn.fileno(), [view[got:]])
            except OSError:
                read = 0
            if not read:
                self.broken = True
                raise BadInput(where, f"reader died: {self._exit_reason()}")
            got += read
        return buf

    def _receive(self, where: str) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self.broken = True
            raise BadInput(where, f"reader died: {self._exit_reason()}") from None

    def _exit_reason(self) -> str:
        code = self._proc.wait()
        self._conn.close()
        if code < 0:
            name = signal.Signals(-code).name
            return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        return f"exit code {code}"

    def stop(self) -> None:
        """Kill and reap: a hung reader is not asked twice, an idle one holds nothing to save."""
        self.broken = True
        self._proc.kill()
        self._proc.wait()
        self._conn.close()


class _RemoteSeries:
    """The parent's side of one series in a reader: requests and replies, one at a time."""

    def __init__(self, reader: _Reader, where: str, timeout_s: float) -> None:
        self._reader = reader
        self._where = where
        self._timeout_s = timeout_s
        self._open = False  # the reader holds the series and waits for "next" or "close"
        self._asked = False  # a reply (or a chunk's bytes) is still to come

    def open(self, opener: str, args: tuple) -> dict[str, Any]:
        return self._request(("open", opener, args), "meta")[1]

    def chunks(self) -> Generator[FrameChunk, None, None]:
        """One chunk per request, so the reader decodes only what is consumed."""
        try:
            while self._open:
                head = self._request(("next",), "chunk", "end")
                if head[0] == "end":
                    return
                _, shape, dtype, t, start = head
                size = int(np.prod(shape)) * np.dtype(dtype).itemsize
                buf = self._reader.reply_bytes(self._where, self._timeout_s, size)
                self._asked = False
                yield FrameChunk(np.frombuffer(buf, dtype=dtype).reshape(shape), t, start)
        finally:
            self.finish()

    def finish(self) -> None:
        """Tell the reader to close the series (it stops decoding) and wait until it has."""
        if self._asked:  # interrupted while waiting (Ctrl-C): its reply must not reach the next
            self._reader.stop()
        elif self._open:
            self._request(("close",), "closed")

    def _request(self, request: tuple, *kinds: str) -> tuple:
        """Ask, then the reply if it is one of `kinds`; the series' error (which ends it) if not."""
        self._reader.ask(request, self._where)
        self._asked, self._open = True, False
        message = self._reader.reply(self._where, self._timeout_s)
        if message[0] not in kinds:
            self._asked = False
            raise self._error(message)
        self._asked = message[0] == "chunk"  # its bytes follow
        self._open = message[0] in ("meta", "chunk")
        return message

    def _error(self, message: tuple) -> Exception:
        if message[0] == "bad":
            return BadInput(message[1], message[2])
        if message[0] == "memory":
            self._reader.broken = True  # a fresh heap for the next series
            return BadInput(
                self._where,
                f"reader out of memory (limit {READER_ADDRESS_SPACE >> 30} GiB of address "
                f"space): {message[1]}",
            )
        if message[0] == "error":  # not bad input: a bug or the environment, as in-process
            error, remote = message[1], message[2]
            error.__cause__ = _RemoteTraceback(remote)
            return error
        self._reader.broken = True
        return RuntimeError(f"{self._where}: reader sent {message[0]!r} out of turn")


class _RemoteTraceback(Exception):
    """The reader's traceback, attached as the cause of an error it sent back."""

    def __str__(self) -> str:
        return f"\nin the reader process:\n{self.args[0]}"


class _Pool:
    """Idle readers for reuse, and every live one (idle or busy) for the exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Reader] = []
        self._live: set[_Reader] = set()

    def take(self) -> _Reader:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        reader = _Reader()
        with self._lock:
            self._live.add(reader)
        return reader

    def give_back(self, reader: _Reader) -> None:
        """Kept for the next series; as many idle readers as series were ever read at once."""
        if reader.broken:
            with self._lock:
                self._live.discard(reader)
            reader.stop()
            return
        with self._lock:
            self._idle.append(reader)

    def shutdown(self) -> None:
        """Every reader ends, idle (it holds nothing) or busy (a thread still decoding)."""
        with self._lock:
            live, self._idle, self._live = self._live, [], set()
        for reader in live:
            reader.stop()

    def forget(self) -> None:
        """In a forked child: the readers are the parent's; talking to them would interleave."""
        self._lock = threading.Lock()
        self._idle, self._live = [], set()


_POOL = _Pool()
atexit.register(_POOL.shutdown)
os.register_at_fork(after_in_child=_POOL.forget)

shutdown = _POOL.shutdown

# The reader's entry point: the socket's descriptor is its only argument.
_BOOT = "import sys; from lstmpipe.lib.sources.reader_process import serve; serve(int(sys.argv[1]))"


# ---- the reader process ---------------------------------------------------------------------


def serve(fd: int) -> None:
    """A reader's life: serve series one at a time until its socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    _limit_address_space(READER_ADDRESS_SPACE)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    conn = Connection(fd)
    try:
        _, path = conn.recv()
        sys.path[:] = path  # the caller's: an opener from its tests imports here too
        importlib.import_module(_PRELOAD)
        conn.send(("ready",))
        while True:
            request = conn.recv()
            if request[0] == "open":
                _serve_series(conn, request[1], request[2])
    except (EOFError, OSError):
        return  # the caller closed the socket or died


def _serve_series(conn: Connection, opener: str, args: tuple) -> None:
    """One series, ended by exactly one reply: "end", "closed", or why it failed."""
    try:
        reply = _run_series(conn, _resolve(opener), args)
    except BadInput as exc:
        reply = ("bad", exc.path, exc.reason)
    except MemoryError as exc:
        reply = ("memory", str(exc) or "MemoryError")
    except Exception as exc:  # the caller's socket closing fails the send below too
        reply = ("error", _portable(exc), traceback.format_exc())
    conn.send(reply)


def _run_series(conn: Connection, opener: Opener, args: tuple) -> tuple:
    """Metadata, then a chunk per "next" until "close" or the end; replies once it is closed."""
    with opener(*args) as series, closing(series.chunks) as chunks:
        conn.send(("meta", series.meta))
        while conn.recv()[0] == "next":
            chunk = next(chunks, None)
            if chunk is None:
                return ("end",)
            frames = np.ascontiguousarray(chunk.frames)
            conn.send(("chunk", frames.shape, frames.dtype.str, chunk.t, chunk.start))
            _write_all(conn.fileno(), frames.data.cast("B"))
    return ("closed",)


def _write_all(fd: int, data: memoryview) -> None:
    """`data` unframed: its size went ahead in the chunk's header."""
    while data:
        data = data[os.write(fd, data) :]


def _portable(exc: Exception) -> Exception:
    """`exc` if it survives pickling (its class may not rebuild from args), else a RuntimeError."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _resolve(name: str) -> Opener:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _limit_address_space(limit: int) -> None:
    """RLIMIT_AS at `limit`, or lower where the caller's hard limit already is."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _exit_when_orphaned(parent: int) -> None:
    """A reader blocked in a decoder never reads its socket's EOF: its parent's death ends it."""
    while os.getppid() == parent:
        time.sleep(_ORPHAN_CHECK_S)
    os._exit(0)
