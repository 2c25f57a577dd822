"""Load: `lstmpipe backfill --all` over 5 000 small generated series on this machine's cores.

Generates a partitioned archive (20 daily partitions: folders, .tar and .zip, clips of
4-8 frames at 32 px), then runs the real CLI once, sampling the resident memory of its
whole process tree (the CLI, its Prefect API server, ffmpeg children) every 0.2 s.
Reports the wall time, series per second, the peak tree RSS, and the peak of the second
half of the run against the first half's (start-up included): memory that grows with the
number of series done shows as a ratio well above 1.
Writes bench/results/load-<UTC time>.json and prints a table.

    .venv/bin/python bench/load.py [--series 5000] [--executor local|ray] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lstmpipe.lib.demo.video import SampleSpec, generate_archive

RESULTS = Path(__file__).parent / "results"
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")
DAYS = tuple(f"2026-10-{day:02d}" for day in range(1, 21))
SETTINGS = {"sampling.size": 32, "sampling.fps": 4.0, "backbone.weights": "none"}
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root_pid: int) -> int:
    """Resident bytes of `root_pid` and every process descending from it (read from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry.name}/statm") as f:
                rss[int(entry.name)] = int(f.read().split()[1]) * PAGE
            parents[int(entry.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    total = 0
    for pid, size in rss.items():
        walk = pid
        while walk > 1 and walk != root_pid:
            walk = parents.get(walk, 0)
        total += size if walk == root_pid else 0
    return total


def backfill(root: Path, home: Path, executor: str) -> dict:
    """Run the CLI, sampling its tree's memory; its summary, wall time and memory samples."""
    env = {**os.environ, "LSTMPIPE_HOME": str(home)}
    process = subprocess.Popen(
        [
            LSTMPIPE,
            "backfill",
            str(root),
            "--all",
            "--json",
            f"--set=runtime.executor={executor}",
            *[f"--set={k}={v}" for k, v in SETTINGS.items()],
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    samples: list[tuple[float, int]] = []
    started = time.monotonic()

    def sample() -> None:
        while process.poll() is None:
            samples.append((time.monotonic() - started, tree_rss(process.pid)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    wall = time.monotonic() - started
    sampler.join()
    if process.returncode not in (0, 3):
        raise RuntimeError(f"backfill exited {process.returncode}")
    return {"summary": json.loads(stdout), "wall_s": wall, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument(
        "--series", type=int, default=5000, help="series in the archive (default 5000)"
    )
    parser.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where extraction runs (default local: in-process; ray: a local Ray the run starts)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp folder (default: delete it)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lstmpipe-bench-load-"))
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
        (root / "labels.csv").unlink()
        generated_s = time.monotonic() - started
        run = backfill(root, work / "home", args.executor)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary, samples = run["summary"], run["samples"]
    peak = max(rss for _, rss in samples)
    half = run["wall_s"] / 2
    first = max((rss for t, rss in samples if t <= half), default=peak)
    second = max((rss for t, rss in samples if t > half), default=peak)
    result = {
        "benchmark": "load",
        "series": args.series,
        "executor": args.executor,
        "generated_s": round(generated_s, 1),
        "wall_s": round(run["wall_s"], 1),
        "series_per_s": round(args.series / run["wall_s"], 1),
        "extracted": summary.get("extracted"),
        "failed": summary.get("failed"),
        "peak_rss_mib": round(peak / 2**20),
        "peak_rss_first_half_mib": round(first / 2**20),
        "peak_rss_second_half_mib": round(second / 2**20),
        "growth_ratio": round(second / first, 2),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"load-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2))
    for key in (
        "series",
        "executor",
        "wall_s",
        "series_per_s",
        "extracted",
        "failed",
        "peak_rss_mib",
        "peak_rss_first_half_mib",
        "peak_rss_second_half_mib",
        "growth_ratio",
    ):
        print(f"{key:<26} {result[key]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
