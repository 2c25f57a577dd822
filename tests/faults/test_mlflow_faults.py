"""The MLflow server unreachable, or answering 503, during registration and promotion (issue 8).

A real `mlflow server` (SQLite store, proxied artifacts) behind a tiny HTTP proxy of this module
that passes requests through until a request path containing a trigger arrives; from then on it
answers 503, or stops listening (connections refused), for a number of requests or for good. The
flows run in this process under Prefect's test harness, so Prefect's task retries run as they would
in production; the MLflow client's own HTTP retries are set small (one retry, no back-off) to keep
the test bounded.

What must hold: the failure is retried (the proxy counts the attempts), then named with the server's
address; no version is half-registered (each is READY and carries the tags it was created with) and
the champion alias only ever points at such a version; features already computed stay in the cache.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from lstmpipe.flows.promote import promote
from lstmpipe.flows.train import train
from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.registry import mlflow_store as registry
from tests.integration.servers import Server, free_port, start

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # a real `mlflow server`
BIN = Path(sys.executable).parent
MODEL = "flaky"
TINY = {
    "sampling.size": 32,
    "sampling.fps": 4.0,
    "backbone.weights": "none",
    "train.epochs": 2,
    "train.patience": 2,
    "train.hidden_size": 16,
    "promote.test": "none",
    "promote.max_cost_ratio": None,
}
CLIENT_RETRIES = 1  # MLflow's own retries per HTTP request: each call is tried twice
TRAIN_ATTEMPTS, PROMOTE_ATTEMPTS = 2, 3  # tasks/train.py retries=1, tasks/promote.py retries=2


@dataclass
class Fault:
    """Requests `method` `path` (containing `fragment`) answered 503, or from the first of them on,
    every connection refused; `after` of them pass first, `count` fail before it heals by itself
    (None: never)."""

    method: str
    fragment: str
    mode: str  # "503" | "refuse"
    after: int = 0
    count: int | None = None
    seen: int = 0

    def hit(self, method: str, path: str) -> bool:
        if method != self.method or self.fragment not in path:
            return False
        self.seen += 1
        return self.after < self.seen and (
            self.count is None or self.seen <= self.after + self.count
        )


@dataclass
class Proxy:
    """HTTP proxy to `upstream` with one switchable fault; counts requests per (method, path)."""

    upstream: int
    port: int = field(default_factory=free_port)
    hits: Counter = field(default_factory=Counter)
    fault: Fault | None = None
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def listen(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                mode = proxy.failing(self.command, self.path)
                if mode == "503":
                    self.send_error(503, "injected: service unavailable")
                    return
                # this connection is dropped unanswered; the listener is closing
                if mode == "refuse":
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
                try:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() not in ("host", "connection")
                    }
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def failing(self, method: str, path: str) -> str | None:
        """Count the request; the fault's mode if it must
        fail ("refuse" stops listening until healed)."""
        with self.lock:
            self.hits[(method, path.split("?")[0])] += 1
            if self.fault is None or not self.fault.hit(method, path):
                return None
            if self.fault.mode == "refuse" and self.server is not None:
                closing, self.server = self.server, None
                threading.Thread(
                    target=lambda: (closing.shutdown(), closing.server_close()), daemon=True
                ).start()
            return self.fault.mode

    def inject(self, fault: Fault) -> None:
        with self.lock:
            self.fault = fault
            self.hits.clear()

    def heal(self) -> None:
        with self.lock:
            self.fault = None
            if self.server is None:
                self.listen()

    def attempts(self, method: str, endpoint: str) -> int:
        return sum(
            n for (verb, path), n in self.hits.items() if verb == method and path.endswith(endpoint)
        )


@pytest.fixture(scope="module")
def mlflow_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, str]]:
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    with ThreadPoolExecutor(1) as pool:  # the MLflow server boots while Prefect's test server does
        booting = pool.submit(
            start, "mlflow", command, f"http://127.0.0.1:{port}/health", dict(os.environ), root
        )
        with prefect_test_harness(server_startup_timeout=120):
            server: Server = booting.result()
            proxy = Proxy(upstream=port)
            proxy.listen()
            try:
                yield proxy, f"http://127.0.0.1:{port}"
            finally:
                if proxy.server is not None:
                    proxy.server.shutdown()
                server.stop()


@pytest.fixture()
def env(mlflow_proxy: tuple[Proxy, str], monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, _ = mlflow_proxy
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(CLIENT_RETRIES))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def assert_registry_whole(direct: MlflowClient) -> list[str]:
    """The versions, each READY with its creation tags; the champion (if any) is one of them."""
    versions = direct.search_model_versions(f"name = '{MODEL}'")
    for version in versions:
        assert version.status == "READY" and registry.COMPLETE_TAG in version.tags, (
            f"v{version.version} is half-registered"
        )
    names = {str(v.version) for v in versions}
    champion = registry.alias_version(direct, MODEL, "champion")
    assert champion is None or champion.version in names
    return sorted(names, key=int)


def test_registration_and_promotion_survive_an_unreachable_or_failing_server(
    tmp_path: Path, mlflow_proxy: tuple[Proxy, str], env: None
) -> None:
    proxy, upstream = mlflow_proxy
    # the server itself, never through the proxy
    direct = MlflowClient(upstream, registry_uri=upstream)
    source = generate_archive(
        tmp_path / "src", SampleSpec(clips_per_class=4, size=32, min_frames=8, max_frames=12)
    )
    overrides = {**TINY, "runtime.home": str(tmp_path / "home")}
    cache = FeatureCache.local(tmp_path / "home" / "cache")

    # Registration: the version-create call answered 503, or the server gone from it on: retried,
    # then named.
    for mode in ("503", "refuse"):
        proxy.inject(Fault("POST", "/model-versions/create", mode))
        with pytest.raises(Exception) as failed:
            train(str(source), MODEL, overrides=overrides, run_id=f"reg-{mode}")
        assert f"127.0.0.1:{proxy.port}" in str(failed.value), (
            f"the failure does not name the server: {failed.value}"
        )
        # both retry layers: the task's attempts, each with the client's own retries
        if mode == "503":
            assert proxy.attempts("POST", "/model-versions/create") == TRAIN_ATTEMPTS * (
                1 + CLIENT_RETRIES
            )
        proxy.heal()
        assert assert_registry_whole(direct) == [], "a failed registration left a version behind"
        assert cache.stats()["series"] == 16, "the computed features were not kept"

    first = train(str(source), MODEL, overrides=overrides, run_id="healed")
    # no CNN work again
    assert first.extract.extracted == 0 and first.extract.cached == 16
    assert first.train.version == "1"
    assert promote(MODEL, "1", overrides=overrides, run_id="p1")["promoted"]
    assert train(str(source), MODEL, overrides=overrides, run_id="second").train.version == "2"

    # Promotion: the alias move answered 503, or the server gone from it on: retried, named; v1
    # stays champion and v2 does not read "promoted".
    for mode in ("503", "refuse"):
        proxy.inject(Fault("POST", "/registered-models/alias", mode))
        with pytest.raises(Exception) as failed:
            promote(MODEL, "2", overrides=overrides, run_id=f"promote-{mode}")
        assert f"127.0.0.1:{proxy.port}" in str(failed.value), (
            f"the failure does not name the server: {failed.value}"
        )
        if mode == "503":
            assert proxy.attempts("POST", "/registered-models/alias") == PROMOTE_ATTEMPTS * (
                1 + CLIENT_RETRIES
            )
        proxy.heal()
        assert assert_registry_whole(direct) == ["1", "2"]
        assert direct.get_model_version_by_alias(MODEL, "champion").version == "1"
        assert direct.get_model_version(MODEL, "2").tags.get("promotion.decision") != "promoted"

    # A blip while the champion is re-read under the promotion lock (the candidates' read passes):
    # retried, so the gate still meets v1; taking the failed read for "no champion" would promote v2
    # ungated.
    proxy.inject(Fault("GET", "/registered-models/alias", "503", after=1, count=1 + CLIENT_RETRIES))
    decided = promote(MODEL, "2", overrides=overrides, run_id="blip")
    assert proxy.fault is not None
    assert proxy.fault.seen > 1 + CLIENT_RETRIES  # the blip happened, and passed
    assert decided["champion_before"] == "1", decided["reason"]
    proxy.heal()

    # A version created without its tags (what an interrupted registration left before) is never
    # promoted.
    one = direct.get_model_version(MODEL, "1")
    assert one.source is not None
    half = direct.create_model_version(
        MODEL, one.source, run_id=one.run_id, model_id=one.source.removeprefix("models:/")
    )
    with pytest.raises(LookupError, match=f"version {half.version}: half-registered"):
        promote(MODEL, half.version, overrides=overrides, run_id="half")
    champion = direct.get_model_version_by_alias(MODEL, "champion").version
    assert (
        champion in ("1", "2")
        and registry.COMPLETE_TAG in direct.get_model_version(MODEL, champion).tags
    )
    direct.delete_model_version(MODEL, half.version)
    assert assert_registry_whole(direct) == ["1", "2"]
