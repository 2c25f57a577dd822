"""Every benchmark in one go (bench/extract.py, cache_scale.py, nightly.py, team.py), one table.

Each benchmark runs as its own process and writes its JSON under bench/results/;
its progress and its own table go to stderr, its results into the table here (stdout).
A result JSON with a `checks` list ({name, value, target, pass, label}) gives rows
of the table; any other benchmark's own printed table is shown as it is.

    .venv/bin/python bench/run.py [--quick] [--skip-memory]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent
RESULTS = BENCH / "results"


def run(script: Path, flags: list[str]) -> tuple[int, str]:
    """(exit code, stdout) of one benchmark; its stderr streams through."""
    print(f"== {script.name} {' '.join(flags)}".rstrip(), file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, str(script), *flags], stdout=subprocess.PIPE, text=True)
    return done.returncode, done.stdout


def supported(script: Path, flags: list[str]) -> list[str]:
    """The flags among `flags` that `script --help`
    mentions: another benchmark may not take them."""
    shown = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True
    ).stdout
    return [flag for flag in flags if flag in shown]


def written(stdout: str) -> Path | None:
    """The JSON a benchmark says it wrote: `written to PATH` (bench/memory.py) or `wrote PATH`."""
    found = re.findall(r"(?:written to|wrote) (\S+\.json)", stdout)
    return Path(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: fewer, shorter clips (default off)"
    )
    parser.add_argument(
        "--skip-memory", action="store_true", help="leave out the memory measurement (default off)"
    )
    args = parser.parse_args()
    flags = [
        flag for flag, on in (("--quick", args.quick), ("--skip-memory", args.skip_memory)) if on
    ]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")

    rows: list[tuple[str, dict]] = []
    verbatim: list[tuple[str, str]] = []
    crashed: list[str] = []
    benchmarks = [(BENCH / "extract.py", [*flags, "--out", str(RESULTS / f"extract-{stamp}.json")])]
    for other in ("cache_scale.py", "nightly.py", "team.py"):  # run with the flags each knows
        benchmarks.append((BENCH / other, supported(BENCH / other, flags)))
    for script, script_flags in benchmarks:
        code, stdout = run(script, script_flags)
        print(stdout, end="", file=sys.stderr)  # its own table and details, before the summary
        path = written(stdout)
        result = json.loads(path.read_text()) if path and path.exists() else {}
        if code != 0:
            crashed.append(
                f"{script.name} exited {code}" + "".join(f"; {e}" for e in result.get("errors", []))
            )
        if result.get("checks"):
            rows += [(script.stem, c) for c in result["checks"]]
        else:
            verbatim.append((script.name, stdout))
        if path:
            print(f"{script.name}: {path}", file=sys.stderr)

    for name, stdout in verbatim:
        print(f"-- {name}\n{stdout.rstrip()}")
    print(f"{'bench':<12} {'check':<52} {'value':>8} {'target':>8} {'':>4}  detail")
    for bench, c in rows:
        verdict = "n/a" if c.get("pass") is None else ("pass" if c["pass"] else "FAIL")
        value = "-" if c.get("value") is None else f"{c['value']:g}"
        print(
            f"{bench:<12} {c['name']:<52} {value:>8} {c['target']:>8} {verdict:>4}  "
            f"{c.get('label', '')}"
        )
    for problem in crashed:
        print(f"problem: {problem}")
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
