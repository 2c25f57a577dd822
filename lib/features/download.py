"""Torchvision weights fetched on first use, checked as torch.hub checks them, never kept half-way.

As torch.hub.load_state_dict_from_url(check_hash=True): the `-<hex>.` in the file name is the
start of the file's sha256, and a file that does not match it is refused. The file is written
under a lock (Ray actors and concurrent commands on one host share the torch cache, and only
one of them should fetch it) to a temp file beside the target, renamed into place only once
checked: a failed, cut or corrupt download leaves nothing that a later run would load.
No torch: urllib and hashlib suffice.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from lstmpipe.lib.atomic import write_atomic
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.state.database import file_lock

TORCHVISION_BASE = "https://download.pytorch.org/models/"  # every torchvision weights URL's start
TIMEOUT_S = 60.0  # per connect or read: a stalled server fails the command in a minute, not never
_HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's HASH_REGEX, a non-empty prefix
_BLOCK = 1 << 20

log = logging.getLogger(__name__)


def weights_url(url: str, mirror: str | None) -> str:
    """`url` served from `mirror` (a proxy, an internal copy) instead of download.pytorch.org."""
    if mirror is None or not url.startswith(TORCHVISION_BASE):
        return url
    return mirror.rstrip("/") + "/" + url.removeprefix(TORCHVISION_BASE)


def fetch_checkpoint(url: str, target: Path) -> Path:
    """`target` (`<torch hub dir>/checkpoints/<file>`), downloaded from `url` unless there, and
    checked against the sha256 prefix in its name; a ConfigError names the URL and the reason."""
    match = _HASH_PREFIX.search(target.name)
    if match is None:
        raise _failed(url, target, f"{target.name} has no hash prefix to check the file against")
    with file_lock(target.parent / f".{target.name}.lock"):
        if not target.is_file():  # else another process fetched it while this one waited
            log.info("downloading %s to %s", url, target)
            _download(url, target, match.group(1))
    return target


def _download(url: str, target: Path, prefix: str) -> None:
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except (OSError, ValueError) as exc:  # HTTP status, DNS, refused, timeout; ValueError: no URL
        raise _failed(url, target, _reason(exc)) from exc
    with response:
        write_atomic(target, lambda handle: _copy_checked(response, handle, url, target, prefix))


def _copy_checked(
    response: IO[bytes], handle: IO[bytes], url: str, target: Path, prefix: str
) -> None:
    """Copy the body into `handle`; a read error or a wrong hash raises a ConfigError, which is
    not an OSError, so write_atomic passes it on (as the download's, not the disk's) after
    removing its temp file."""
    digest = hashlib.sha256()
    while True:
        try:
            block = response.read(_BLOCK)
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, cut short
            raise _failed(url, target, _reason(exc)) from exc
        if not block:
            break
        digest.update(block)
        handle.write(block)
    got = digest.hexdigest()
    if not got.startswith(prefix):
        raise _failed(
            url,
            target,
            f"its sha256 starts {got[: len(prefix)]}, not {prefix} as its name says (a corrupt "
            "or altered file); it was not kept",
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _failed(url: str, target: Path, reason: str) -> ConfigError:
    return ConfigError(
        f"backbone.weights: cannot download {url}: {reason}; put the file at {target} by other "
        "means, set backbone.weights_mirror to a copy you can reach, pass a .pth path, or use "
        "--weights none"
    )
