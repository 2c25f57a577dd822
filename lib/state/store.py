"""The store of files: a folder under home (local) or an S3 bucket prefix (team).

Keys are relative, '/'-separated (`features/part-<uuid>.parquet`). Both stores give
the same guarantees, so callers are written once:
- `put` is atomic: a reader sees the old object or the new one, never half (a folder:
  temp file, fsync, rename; S3: a PUT, or a multipart upload, becomes visible whole on
  completion, and an aborted one is never visible);
- `open` returns a seekable binary file; on S3 each read is a ranged GET, so Parquet
  row groups and zip members are fetched, not whole objects;
- `list` yields every object under a prefix with its size, ETag (content fingerprint)
  and modification time.
On S3 a request that cannot reach the server is retried with back-off for `retry_s`,
then `StateUnavailable` names the endpoint. Credentials, endpoint and region come from
the standard AWS variables and files (AWS_ACCESS_KEY_ID, AWS_SHARED_CREDENTIALS_FILE,
AWS_ENDPOINT_URL, AWS_REGION), read by boto3, never from lstmpipe's config.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol, TypeVar
from urllib.parse import urlparse

from lstmpipe.lib.atomic import write_atomic
from lstmpipe.lib.state.errors import StateUnavailable

_T = TypeVar("_T")
# bytes fetched per ranged GET when reading an S3 object sequentially
READ_BLOCK = 1 << 20
_FIRST_PAUSE_S = 0.5
_MAX_PAUSE_S = 8.0


class ObjectInfo(NamedTuple):
    key: str  # relative to the store's root
    size: int
    etag: str  # changes whenever the content does (a folder: size and mtime_ns)
    modified: float  # seconds since the epoch


class Store(Protocol):
    url: str  # where it is, for messages: /home/x/.lstmpipe or s3://bucket/prefix

    def uri(self, key: str) -> str: ...
    def put(self, key: str, write: Callable[[IO[bytes]], object]) -> None: ...
    def put_file(self, key: str, source: Path) -> None: ...
    def open(self, key: str) -> IO[bytes]: ...
    def read_bytes(self, key: str) -> bytes: ...
    def info(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> bool: ...
    def local_path(self, key: str) -> Path | None: ...


def open_store(url: str | Path, retry_s: float = 120.0) -> Store:
    """`s3://bucket/prefix` is a bucket; anything else is a folder."""
    text = str(url)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        return S3Store(bucket, prefix, retry_s=retry_s)
    return LocalStore(Path(text.removeprefix("file://")))


def is_remote(url: str | Path) -> bool:
    return str(url).startswith("s3://")


class LocalStore:
    """Files under a folder (the local deployment, unchanged: `home/cache/features/...`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def put(self, key: str, write: Callable[[IO[bytes]], object]) -> None:
        write_atomic(self.root / key, write, suffix=Path(key).suffix)

    def put_file(self, key: str, source: Path) -> None:
        self.put(key, lambda out: _copy_from(source, out))

    def open(self, key: str) -> IO[bytes]:
        return (self.root / key).open("rb")

    def read_bytes(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def info(self, key: str) -> ObjectInfo | None:
        try:
            stat = (self.root / key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}", stat.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for folder, _dirs, files in os.walk(base):
            for name in files:
                path = Path(folder) / name
                found = self.info(path.relative_to(self.root).as_posix())
                if found is not None:  # not deleted meanwhile
                    yield found

    def delete(self, key: str) -> bool:
        try:
            (self.root / key).unlink()
        except FileNotFoundError:
            return False
        return True

    def local_path(self, key: str) -> Path | None:
        return self.root / key


class S3Store:
    """Objects under `s3://bucket/prefix/`."""

    def __init__(self, bucket: str, prefix: str = "", retry_s: float = 120.0) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.retry_s = retry_s
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = s3_client()
        self.endpoint = self.client.meta.endpoint_url

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put(self, key: str, write: Callable[[IO[bytes]], object]) -> None:
        buffer = io.BytesIO()
        write(buffer)
        body = buffer.getvalue()
        self.call(
            f"writing {self.uri(key)}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body),
        )

    def put_file(self, key: str, source: Path) -> None:
        self.call(
            f"writing {self.uri(key)}",
            lambda: self.client.upload_file(str(source), self.bucket, self._key(key)),
        )

    def open(self, key: str) -> IO[bytes]:
        found = self.info(key)
        if found is None:
            raise FileNotFoundError(f"{self.uri(key)}: no such object")
        raw = RangedObject(self, self._key(key), found.size, found.etag)
        return io.BufferedReader(raw, buffer_size=READ_BLOCK)  # type: ignore[arg-type]

    def read_bytes(self, key: str) -> bytes:
        try:
            reply = self.call(
                f"reading {self.uri(key)}",
                lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key)),
            )
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"{self.uri(key)}: no such object") from exc
        return reply["Body"].read()

    def info(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            head = self.call(
                f"looking up {self.uri(key)}",
                lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(
            key, head["ContentLength"], head["ETag"].strip('"'), head["LastModified"].timestamp()
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._key(prefix)
        if prefix and not full.endswith("/"):
            full += "/"
        token: dict[str, str] = {}
        while True:
            page = self.call(
                f"listing {self.uri(prefix)}",
                functools.partial(
                    self.client.list_objects_v2,
                    Bucket=self.bucket,
                    Prefix=full,
                    MaxKeys=1000,
                    **token,
                ),
            )
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"]
                if key and not key.endswith("/"):  # folder markers some tools create
                    yield ObjectInfo(
                        key, item["Size"], item["ETag"].strip('"'), item["LastModified"].timestamp()
                    )
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def delete(self, key: str) -> bool:
        existed = self.info(key) is not None
        self.call(
            f"deleting {self.uri(key)}",
            lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)),
        )
        return existed

    def local_path(self, key: str) -> Path | None:
        return None

    def call(self, doing: str, request: Callable[[], _T]) -> _T:
        """`request()`, retried with back-off while the endpoint is unreachable or failing."""
        deadline = time.monotonic() + self.retry_s
        pause = _FIRST_PAUSE_S
        while True:
            try:
                return request()
            except Exception as exc:  # botocore's connection and 5xx errors, by class below
                if not _retriable(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StateUnavailable(
                        f"object store {self.endpoint} ({self.url}): unreachable for "
                        f"{self.retry_s:.0f} s while {doing} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was indexed "
                        "for what was not written, re-run once it is back"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)

    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key


class RangedObject(io.RawIOBase):
    """A seekable read-only view of one S3 object; each read is a ranged GET of that version.

    The ETag seen when it was opened is required on every GET (If-Match), so an object
    replaced meanwhile fails loudly instead of mixing two versions' bytes.
    """

    def __init__(self, store: S3Store, key: str, size: int, etag: str) -> None:
        super().__init__()
        self.store = store
        self.key = key
        self.size = size
        self.etag = etag
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.position + len(view), self.size)
        if end <= self.position:
            return 0
        reply = self.store.call(
            f"reading {self.store.uri(self.key)}",
            lambda: self.store.client.get_object(
                Bucket=self.store.bucket,
                Key=self.key,
                Range=f"bytes={self.position}-{end - 1}",
                IfMatch=f'"{self.etag}"',
            ),
        )
        data = reply["Body"].read()
        view[: len(data)] = data
        self.position += len(data)
        return len(data)


def s3_client() -> Any:
    """A boto3 S3 client from the standard AWS variables; path-style addressing when an
    endpoint is given (MinIO, SeaweedFS, Ceph serve buckets under the path, not a subdomain)."""
    import boto3.session
    from botocore.config import Config as BotoConfig

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = BotoConfig(
        retries={"max_attempts": 2, "mode": "standard"},  # our own back-off spans outages
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint else {},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=session.region_name or "us-east-1",
        config=config,
    )


def _retriable(exc: Exception) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, (ConnectionError, HTTPClientError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") in (
            "SlowDown",
            "RequestTimeout",
            "ServiceUnavailable",
        )
    return False


def _copy_from(source: Path, out: IO[bytes]) -> None:
    with Path(source).open("rb") as handle:
        shutil.copyfileobj(handle, out, 1 << 20)


def parse_s3(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    parsed = urlparse(url)
    return parsed.netloc, parsed.path.strip("/")
