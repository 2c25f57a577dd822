"""A source root checked before anything starts: a path that does not exist, cannot be read, or
holds no kind lstmpipe reads is bad usage (exit 2), named with its reason before the Prefect API,
Ray or a backbone start, and nothing is recorded.

Why before discovery: discovery runs inside the flow, once the servers are up, and finding
nothing there cannot tell a typo or an unmounted volume from a quiet night. Only the root itself
is checked here; what lies under it is discovery's (an unreadable entry is a recorded failure).
A bucket prefix has no folder to stat: it exists when it holds an object (or a folder marker).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.state.store import S3Store, is_remote, parse_s3

if TYPE_CHECKING:
    from lstmpipe.lib.config import SourcesConfig
    from lstmpipe.lib.state.places import StatePlaces

# what a failed stat or open says, in the words a user would look for
_WHY = {
    errno.ENOENT: "no such file or folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ELOOP: "a loop of symbolic links",
    errno.ENAMETOOLONG: "path too long",
}


class BadSource(ConfigError):
    """A source root no command can read: bad usage, not a per-series failure (there is no
    series to record it against). `path` and `reason` go apart into `--json`'s error object."""

    def __init__(self, path: str, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"{path}: {reason}")
        self.path = path
        self.reason = reason


def check_source(
    source: str | Path,
    state: StatePlaces,
    sources: SourcesConfig,
    partitions: bool = False,
) -> None:
    """BadSource unless `source` is a folder that can be listed, a readable file of a kind
    lstmpipe reads, or a bucket prefix (or object) that exists. `partitions`: a root whose
    top-level folders and archives are partitions (nightly, backfill, status), so a folder or a
    prefix."""
    if is_remote(source):
        _check_prefix(str(source), state.retry_s)
        return
    path = Path(source)
    mode = _mode(path)
    if stat.S_ISDIR(mode):
        _check_listable(path)
    elif partitions:
        raise BadSource(
            str(path), "not a folder; partitions are the dated folders and archives inside one"
        )
    elif not stat.S_ISREG(mode):  # never opened: a fifo would wait for a writer forever
        raise BadSource(str(path), "not a regular file or folder (a fifo, socket or device)")
    else:
        _check_readable(path)
        from lstmpipe.lib.sources.discover import check_file  # late: it loads the kinds

        check_file(path, state, sources)


def _mode(path: Path) -> int:
    """The mode of what `path` names, following links."""
    try:
        return path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise BadSource(
                str(path), f"broken link: its target {os.readlink(path)} does not exist"
            ) from exc
        raise BadSource(str(path), _reason(exc)) from exc


def _check_listable(path: Path) -> None:
    """Listing the folder and looking at its first entry: read and search permission on it."""
    try:
        with os.scandir(path) as entries:
            first = next(entries, None)
            if first is not None:
                first.stat(follow_symlinks=False)
    except OSError as exc:
        raise BadSource(str(path), f"folder cannot be read: {_reason(exc)}") from exc


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb") as stream:
            stream.read(1)
    except OSError as exc:
        raise BadSource(str(path), f"file cannot be read: {_reason(exc)}") from exc


def _reason(exc: OSError) -> str:
    return _WHY.get(exc.errno or 0) or exc.strerror or str(exc)


def _check_prefix(url: str, retry_s: float) -> None:
    """A prefix with an object under it, an object of that name, or a folder marker."""
    from botocore.exceptions import ClientError, NoCredentialsError  # late: boto3 loads slowly

    bucket, prefix = parse_s3(url)
    if not bucket:
        raise BadSource(url, "no bucket named (s3://bucket/prefix)")
    store = S3Store(bucket, "", retry_s)
    try:
        if next(iter(store.list(prefix)), None) is not None:
            return
        if prefix and (store.info(prefix) or store.info(f"{prefix}/")):
            return
    except NoCredentialsError as exc:
        raise BadSource(
            url, "no credentials for the object store (AWS_ACCESS_KEY_ID and friends)"
        ) from exc
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise BadSource(url, f"no such bucket: {bucket}") from exc
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise BadSource(url, f"the object store refused access ({code})") from exc
        raise
    raise BadSource(url, "no objects under this prefix (nothing uploaded, or a typo?)")
