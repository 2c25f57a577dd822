"""Peak memory of extraction against video length: a 1-minute and a 10-minute 1280x720 clip.

Each extraction runs in a fresh child process (decode + resnet18 through
lib.extract.extract_many, the code a Ray worker runs), which reports its own peak
RSS and its ffmpeg children's. Decoding streams bounded chunks, so the two peaks
should match within noise. Writes bench/results/memory-<time>.json and prints a table.

    .venv/bin/python bench/memory.py [--minutes 1 10] [--fps 2] [--size 224]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe

DATA = Path(__file__).parent / ".data"
RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, resource, sys, time, torch
from pathlib import Path
from lstmpipe.lib.config import load_config
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.features.build import load_backbone
from lstmpipe.lib.series import SeriesRef
torch.set_num_threads(2)
path, fps, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
settings = {"sampling.fps": fps, "sampling.size": size, "backbone.weights": "none"}
config = load_config(overrides=settings)
backbone, recipe = load_backbone(config.sampling, config.backbone, Path("/nonexistent"))
ref = SeriesRef(series_id=Path(path).name, content_hash="bench", kind="video", path=path)
started = time.monotonic()
batch_size = backbone.batch_size(config.sampling.size, config.backbone.batch_size)
[result] = list(extract_many([ref], config.sampling, backbone, batch_size, Path("/tmp")))
print(json.dumps({
    "frames": len(result.features),
    "seconds": round(time.monotonic() - started, 1),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "ffmpeg_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def make_clip(minutes: int) -> Path:
    """A 1280x720 H.264 test pattern with moving content, made once and kept under bench/.data."""
    target = DATA / f"testsrc-720p-{minutes}min.mp4"
    if not target.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                ffmpeg_exe(),
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size=1280x720:rate=30:duration={minutes * 60}",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                str(target),
            ],
            check=True,
        )
    return target


def measure(clip: Path, fps: float, size: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(clip), str(fps), str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument(
        "--minutes", type=int, nargs="+", default=[1, 10], help="clip lengths (default 1 10)"
    )
    parser.add_argument(
        "--fps", type=float, default=2.0, help="sampled frames per second (default 2)"
    )
    parser.add_argument("--size", type=int, default=224, help="frame size in px (default 224)")
    args = parser.parse_args()
    rows = []
    for minutes in args.minutes:
        clip = make_clip(minutes)
        rows.append({"minutes": minutes, "clip": clip.name, **measure(clip, args.fps, args.size)})
    base = rows[0]["peak_rss_mb"]
    for row in rows:
        row["peak_vs_first"] = round(row["peak_rss_mb"] / base, 3)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"memory-{stamp}.json"
    out.write_text(json.dumps({"fps": args.fps, "size": args.size, "rows": rows}, indent=2))
    print(
        f"{'minutes':>7} {'frames':>7} {'seconds':>8} {'peak RSS MB':>12} {'ffmpeg MB':>10} "
        f"{'vs first':>9}"
    )
    for row in rows:
        print(
            f"{row['minutes']:>7} {row['frames']:>7} {row['seconds']:>8} "
            f"{row['peak_rss_mb']:>12.0f} {row['ffmpeg_peak_rss_mb']:>10.0f} "
            f"{row['peak_vs_first']:>9}"
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
