"""Orchestration overhead: `lstmpipe nightly` over 1 000 series whose features are already cached.

Generates a partitioned archive of --series short clips (10 daily partitions), starts a
Prefect server (`prefect server start`, so that server start-up is outside the times, as
the target says), then runs the real CLI against it (in-process extraction, MLflow on SQLite):

    cold      the first nightly: extract every series, train, register, promote, infer
    no-op     nightly again: no partition is new and every series is already predicted
    retrain   nightly --retrain: every feature is cached; train, register, promote and
              infer (the new champion predicts every series again) without any backbone work

Each row gives the CLI's wall time (process start to exit: Python, torch and MLflow imports
included) and the time its summary reports (from just after argument parsing). The target
(issue 7) is on the cached runs: under 60 s on 2 cores beyond server start-up.
Writes bench/results/nightly-<UTC time>.json and prints a table.

    .venv/bin/python bench/nightly.py [--series 1000] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from lstmpipe.lib.demo.video import SampleSpec, generate_archive

RESULTS = Path(__file__).parent / "results"
TARGET_S = 60.0
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")
SETTINGS = {
    "sampling.size": 32,
    "sampling.fps": 4.0,
    "backbone.weights": "none",
    "train.epochs": 3,
    "train.patience": 3,
    "train.hidden_size": 32,
}
DAYS = tuple(f"2026-11-{day:02d}" for day in range(10, 20))


def prefect_server(work: Path) -> tuple[subprocess.Popen, str, float]:
    """`prefect server start` on a free localhost port:
    the process, its API URL, its start-up seconds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
            "--analytics-off",
        ],
        env={**os.environ, "PREFECT_HOME": str(work / "prefect")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    while time.monotonic() - started < 300:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url, time.monotonic() - started
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("prefect server did not start within 300 s")


def nightly(root: Path, home: Path, api: str, *extra: str) -> dict:
    """One `lstmpipe nightly` run: its wall time and its JSON summary."""
    started = time.monotonic()
    done = subprocess.run(
        [
            LSTMPIPE,
            "nightly",
            str(root),
            "--model",
            "bench",
            "--json",
            *extra,
            *[f"--set={k}={v}" for k, v in SETTINGS.items()],
        ],
        env={**os.environ, "LSTMPIPE_HOME": str(home), "PREFECT_API_URL": api},
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if done.returncode not in (0, 3):
        raise RuntimeError(f"nightly exited {done.returncode}:\n{done.stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "summary": json.loads(done.stdout)}


def _extracted(summary: dict) -> int:
    """Series that went through the CNN anywhere in the
    run (0 when everything came from the cache)."""
    parts = [
        summary.get("partitions"),
        (summary.get("train") or {}).get("extract"),
        summary["infer"]["extract"],
    ]
    return sum((p or {}).get("extracted", 0) for p in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument(
        "--series", type=int, default=1000, help="series in the archive (default 1000)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp folder (default: delete it)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 series (default off)")
    args = parser.parse_args()
    if args.quick:
        args.series = 200
    work = Path(tempfile.mkdtemp(prefix="lstmpipe-bench-nightly-"))
    try:
        started = time.monotonic()
        root = generate_archive(
            work / "archive",
            SampleSpec(
                clips_per_class=args.series // 4,
                partitions=DAYS,
                size=32,
                min_frames=4,
                max_frames=8,
            ),
        )
        (root / "labels.csv").unlink()  # labels from the class folders
        generated_s = time.monotonic() - started
        home = work / "home"
        server, api, server_s = prefect_server(work)
        try:
            runs = {
                "cold": nightly(root, home, api),
                "no-op": nightly(root, home, api),
                "retrain": nightly(root, home, api, "--retrain"),
            }
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = {
        name: {
            "wall_s": r["wall_s"],
            "reported_s": r["summary"]["seconds"],
            "trained": r["summary"]["train"] is not None,
            "predicted": r["summary"]["infer"]["predicted"],
            "extracted": _extracted(r["summary"]),
        }
        for name, r in runs.items()
    }
    checks = [
        {
            "name": f"nightly {name}",
            "value": rows[name]["wall_s"],
            "target": TARGET_S,
            "pass": rows[name]["wall_s"] < TARGET_S,
            "label": f"s wall for {args.series} cached series",
        }
        for name in ("no-op", "retrain")
    ]
    result = {
        "benchmark": "nightly",
        "series": args.series,
        "generated_s": round(generated_s, 1),
        "prefect_server_start_s": round(server_s, 1),
        "runs": rows,
        "checks": checks,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"nightly-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(
        f"{'run':<8} {'wall s':>7} {'reported s':>10} {'extracted':>9} {'trained':>7} "
        f"{'predicted':>9}"
    )
    for name, row in rows.items():
        print(
            f"{name:<8} {row['wall_s']:>7} {row['reported_s']:>10} {row['extracted']:>9} "
            f"{row['trained']!s:>7} {row['predicted']:>9}"
        )
    print(f"(prefect server start-up, not included: {server_s:.1f} s)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
