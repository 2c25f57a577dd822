"""Torchvision weights on first use, against a local HTTP server: never the network."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torchvision

from lstmpipe.lib.config import BackboneConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.download import TORCHVISION_BASE, fetch_checkpoint, weights_url
from lstmpipe.lib.features.weights import resolve_weights

RESNET18 = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name  # resnet18-f37072fd.pth


@dataclass
class Server:
    """Serves `files` (path -> body) on a free localhost port and records every path asked for."""

    url: str
    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)
    delay_s: float = 0.0


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server("", {})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            time.sleep(state.delay_s)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/models/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours http_proxy: a CI proxy must not stand between a test and localhost."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def named_by_hash(stem: str, body: bytes) -> str:
    """A file name the way torchvision's carry the start of the file's sha256."""
    return f"{stem}-{hashlib.sha256(body).hexdigest()[:8]}.pth"


def left_in(checkpoints: Path) -> list[str]:
    """What a later run could find there: anything but the lock file."""
    if not checkpoints.exists():
        return []
    return sorted(p.name for p in checkpoints.iterdir() if not p.name.endswith(".lock"))


def test_a_file_matching_its_hash_prefix_is_downloaded_into_the_cache(
    server: Server, tmp_path: Path
) -> None:
    body = b"tensors" * 50_000  # several read blocks
    name = named_by_hash("tiny", body)
    server.files[f"/models/{name}"] = body
    target = tmp_path / "checkpoints" / name
    url = weights_url(TORCHVISION_BASE + name, server.url)
    assert url == server.url + name

    assert fetch_checkpoint(url, target) == target
    assert target.read_bytes() == body
    assert left_in(target.parent) == [name]  # no temp file beside it


def test_a_corrupt_file_is_refused_and_nothing_is_left_in_the_cache(
    server: Server, tmp_path: Path
) -> None:
    server.files[f"/models/{RESNET18}"] = b"not the weights the name promises"
    config = BackboneConfig(weights="IMAGENET1K_V1", weights_mirror=server.url)
    with pytest.raises(ConfigError, match="sha256 starts") as caught:
        resolve_weights(config, tmp_path)
    message = str(caught.value)
    assert f"{server.url}{RESNET18}" in message and "not f37072fd" in message
    assert "it was not kept" in message
    assert left_in(tmp_path / "checkpoints") == []


def test_offline_refuses_without_a_request(server: Server, tmp_path: Path) -> None:
    config = BackboneConfig(weights="DEFAULT", offline=True, weights_mirror=server.url)
    with pytest.raises(ConfigError, match="backbone.offline is set") as caught:
        resolve_weights(config, tmp_path)
    assert f"download {server.url}{RESNET18} to" in str(caught.value)  # how to get the file
    assert server.requests == []
    assert left_in(tmp_path / "checkpoints") == []


def test_a_cached_file_is_used_without_a_request(server: Server, tmp_path: Path) -> None:
    cached = tmp_path / "checkpoints" / RESNET18
    cached.parent.mkdir()
    cached.write_bytes(b"placed there earlier")
    source = resolve_weights(BackboneConfig(weights_mirror=server.url), tmp_path)
    assert (source.label, source.path) == ("IMAGENET1K_V1", cached)
    assert server.requests == []


def test_an_http_error_names_the_url_and_the_status(server: Server, tmp_path: Path) -> None:
    url = server.url + named_by_hash("gone", b"")
    with pytest.raises(ConfigError, match=f"cannot download {url}: HTTP 404"):
        fetch_checkpoint(url, tmp_path / "checkpoints" / Path(url).name)
    assert left_in(tmp_path / "checkpoints") == []


def test_an_unreachable_server_names_the_url_and_the_reason(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{named_by_hash('x', b'')}"
    with pytest.raises(ConfigError, match=f"cannot download {url}: .*refused"):
        fetch_checkpoint(url, tmp_path / Path(url).name)


def test_two_at_once_download_it_once(server: Server, tmp_path: Path) -> None:
    """The lock: the second waits for the first, then finds the file (Ray actors on one host)."""
    body = b"shared"
    name = named_by_hash("shared", body)
    server.files[f"/models/{name}"] = body
    server.delay_s = 0.3  # both ask while the first download is under way
    target = tmp_path / "checkpoints" / name
    threads = [
        threading.Thread(target=fetch_checkpoint, args=(server.url + name, target))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() == body
    assert server.requests == [f"/models/{name}"]
