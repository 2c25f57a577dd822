"""The one-screen summary each command prints at the end.

It renders the document `--json` prints and $LSTMPIPE_HOME/runs/*.json keeps (the typed results'
to_json, behind the command, run id and seconds), so the screen shows nothing the record lacks.
File names and reasons come from untrusted inputs: every line goes through `terminal_safe`, so a
name holding an escape sequence is shown, never obeyed by the terminal.
"""

from __future__ import annotations

import re
from typing import Any

MAX_FAILURES_SHOWN = 20

# C0 controls, DEL and C1 controls (0x9b alone is a CSI on some terminals); the line and paragraph
# separators; the bidirectional embeddings, overrides and isolates that reorder what a line shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def terminal_safe(text: str) -> str:
    """`text` with every control character spelled as an escape (`\\x1b`, `\\n`, `\\u202e`):
    printed, it moves no cursor, sets no colour, title or clipboard, and starts no new line.
    Ordinary Unicode (accents, CJK, emoji) is kept as it is."""
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def render(result: dict[str, Any]) -> str:
    """The summary, one line per entry; each line made terminal-safe (names are untrusted)."""
    lines = [f"lstmpipe {result['command']}  run {result['run_id']}  {result['seconds']} s"]
    lines += _sections(result["command"], result)
    if result["command"] == "demo":
        lines += _where(result)
    if result.get("failed"):
        lines.append(f"finished with {result['failed']} failed series (exit code 3)")
    return "\n".join(terminal_safe(line) for line in lines)


def _sections(command: str, r: dict[str, Any]) -> list[str]:
    if command == "extract":
        return _extract(r)
    if command == "train":
        return (
            _extract(r["extract"])
            + _train(r["train"])
            + ([f"  report    {r['report']}"] if r.get("report") else [])
        )
    if command == "tune":
        return _extract(r["extract"]) + _tune(r["tune"])
    if command == "promote":
        return _promote(r)
    if command == "status":
        return _status(r)
    if command == "plan":
        return _plan(r)
    if command == "compact":
        return [
            f"  compact   {r['files_before']} files -> {r['files_after']}: "
            f"{r['series_moved']} series moved, {r['orphans_deleted']} orphan files deleted"
        ]
    if command == "rollback":
        return [f"  rollback  {r['model']}: @champion v{r['from']} -> v{r['to']}"]
    if command == "report":
        return [f"  report    {r['of']} -> {r['report']}"]
    if command == "infer":
        return _extract(r["extract"]) + _infer(r)
    if command == "backfill":
        return _partitions(r)
    if command == "serve":
        return [
            f"  serve     {', '.join(r['served'])} served by {r['api']}; nightly on {r['cron']}"
        ]
    return _nightly(r)  # nightly, demo


def _nightly(r: dict[str, Any]) -> list[str]:
    lines = _partitions(r["partitions"])
    if r["train"] is None:
        lines.append(f"  train     {r['train_reason']}")
    else:  # the run's report is named once, by promote, which adds its decision to it
        lines += (
            [f"  retrain   {r['train_reason']}"]
            + _extract(r["train"]["extract"])
            + _train(r["train"]["train"])
        )
    if r["promote"]:  # also a version left undecided by a night that stopped before promoting it
        lines += _promote(r["promote"])
    if r["infer"] is None:  # a quiet night: the root holds no series (the train line says so)
        return lines + ["  infer     skipped: nothing to predict"]
    return lines + _sections("infer", r["infer"])


def _partitions(r: dict[str, Any]) -> list[str]:
    """What a backfill or nightly run extracted, partition by partition."""
    lines = [
        f"  partitions {len(r['done'])} of {r['selected']} extracted now "
        f"({r['already_done']} done before) under recipe {r['recipe_id']}: {r['series']} series, "
        f"{r['cached']} cached, {r['extracted']} extracted, {r['failed']} failed"
    ]
    lines += [
        f"    {p['partition']}: {p['series']} series, {p['cached']} cached, "
        f"{p['extracted']} extracted, {p['failed']} failed; {p['frames']} frames in "
        f"{p['seconds']} s"
        for p in r["done"][:MAX_FAILURES_SHOWN]
    ]
    if len(r["done"]) > MAX_FAILURES_SHOWN:
        lines.append(
            f"    ... and {len(r['done']) - MAX_FAILURES_SHOWN} more partitions "
            "(--json lists every one)"
        )
    failed = r["failed_series"]
    lines += [
        f"    FAILED {row['series_id']} [{row.get('stage')}]: {row['reason']}"
        for row in failed[:MAX_FAILURES_SHOWN]
    ]
    if len(failed) > MAX_FAILURES_SHOWN:
        lines.append(
            f"    ... and {len(failed) - MAX_FAILURES_SHOWN} more "
            "(lstmpipe status, or the failures table)"
        )
    return lines + _ignored(r) + _missing(r)


def _missing(r: dict[str, Any]) -> list[str]:
    """Partitions recorded done that the root no longer holds (an unmounted or truncated
    archive), with when each was done and when a run first found it gone."""
    entries = r.get("missing") or []
    if not entries:
        return []
    lines = [f"  missing   {len(entries)} partitions recorded done are gone from {r['root']}:"]
    lines += [
        f"    MISSING {m['partition']}: done {m['done_at']} by run {m['run_id']} "
        f"({m['series']} series); "
        + (
            f"missing since {m['noticed_at']} (when a run first found it gone)"
            if m["noticed_at"]
            else "gone since then (no run over the root has looked yet)"
        )
        for m in entries[:MAX_FAILURES_SHOWN]
    ]
    if len(entries) > MAX_FAILURES_SHOWN:
        lines.append(
            f"    ... and {len(entries) - MAX_FAILURES_SHOWN} more (--json lists every one)"
        )
    return lines


def _ignored(r: dict[str, Any]) -> list[str]:
    """The files discovery read no series from, each with its reason: counted, then listed."""
    entries = r.get("ignored_files") or []
    if not entries:
        return []
    lines = [f"  ignored   {len(entries)} files, neither series nor failures:"]
    lines += [f"    IGNORED {e['path']}: {e['reason']}" for e in entries[:MAX_FAILURES_SHOWN]]
    if len(entries) > MAX_FAILURES_SHOWN:
        lines.append(
            f"    ... and {len(entries) - MAX_FAILURES_SHOWN} more (--json lists every one)"
        )
    return lines


def _extract(r: dict[str, Any]) -> list[str]:
    lines = [
        f"  extract   {r['series']} series: {r['cached']} cached, {r['extracted']} extracted, "
        f"{r['failed']} failed; {r['frames']} frames; recipe {r['recipe_id']}"
    ]
    compute = r.get("compute") or {}
    if compute.get("frames"):
        lines.append(
            f"            {compute['frames']} frames through the CNN in {compute['seconds']} s "
            f"({compute['frames'] / max(compute['seconds'], 1e-9):.1f} frames/s)"
        )
    failed = [row for row in r["per_series"] if row["status"] == "failed"]
    lines += [
        f"    FAILED {row['series_id']} [{row.get('stage')}]: {row['reason']}"
        for row in failed[:MAX_FAILURES_SHOWN]
    ]
    if len(failed) > MAX_FAILURES_SHOWN:
        lines.append(
            f"    ... and {len(failed) - MAX_FAILURES_SHOWN} more "
            f"(failures table: {r['failures_file']})"
        )
    return lines + _ignored(r)


def _train(r: dict[str, Any]) -> list[str]:
    return [
        f"  train     {r['model']} v{r['version']}: test accuracy {r['test'].get('accuracy')}, "
        f"macro-F1 {r['test'].get('macro_f1')}; frame-averaging baseline macro-F1 "
        f"{r['baseline_test'].get('macro_f1')}; splits {r['splits']}"
    ]


def _tune(r: dict[str, Any]) -> list[str]:
    trials = ", ".join(f"{n} {state}" for state, n in r["trials"].items())
    best = r["best_trial"]
    return [
        f"  tune      trials: {trials}; best {best['trial_id']} "
        f"(val macro-F1 {best['best_val_macro_f1']:.3f}) "
        f"registered as {r['model']} v{r['version']}: test accuracy {r['test'].get('accuracy')}, "
        f"macro-F1 {r['test'].get('macro_f1')}; search run {r['parent_run_id']}"
    ]


def _promote(r: dict[str, Any]) -> list[str]:
    if "history" in r:
        return _history(r)
    verdict = "promoted to" if r["promoted"] else "not promoted to"
    lines = [f"  promote   {r['model']} v{r['challenger']} {verdict} @{r['alias']}: {r['reason']}"]
    shown = (("history", "history_file"), ("report", "report"))
    lines += [f"  {label:9} {r[key]}" for label, key in shown if r.get(key)]
    return lines


def _history(r: dict[str, Any]) -> list[str]:
    """One line per recorded decision, oldest first: what `promote --history MODEL` prints."""
    if not r["history"]:
        return [f"  history   {r['model']}: no promotion decisions recorded"]
    lines = [
        f"  {'time':25} {'decision':11} {'challenger':>10} {'champion':>8} {'F1 new':>7} "
        f"{'F1 old':>7} {'test':9} {'p':>7}  reason"
    ]
    for row in r["history"]:
        lines.append(
            f"  {row['time']:25} {row['decision']:11} {_v(row['challenger_version']):>10} "
            f"{_v(row['champion_version']):>8} {_f(row['challenger_macro_f1']):>7} "
            f"{_f(row['champion_macro_f1']):>7} {row['test'] or '-':9} {_f(row['p_value']):>7}  "
            f"{row['reason']}"
        )
    return lines


def _v(version: str | None) -> str:
    return f"v{version}" if version else "-"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _infer(r: dict[str, Any]) -> list[str]:
    if r.get("no_series"):  # a quiet night
        return [f"  infer     nothing to predict: {r['no_series']}"]
    lines = [
        f"  infer     {r['predicted']} series with {r['model']} v{r['version']} -> "
        f"{r['predictions']}"
        + (
            f"; {r['skipped']} already predicted by v{r['version']} (--force redoes them)"
            if r.get("skipped")
            else ""
        )
    ]
    return lines + [
        f"            {kind}: {path}" for kind, path in (r.get("outputs") or {}).items()
    ]


def _where(r: dict[str, Any]) -> list[str]:
    promoted = r["promote"]
    champion = promoted["challenger"] if promoted["promoted"] else promoted["champion_before"]
    uri = r["tracking_uri"]
    return [
        "",
        "Where the results are:",
        f"  state directory  {r['home']}",
        f"  MLflow store     {uri}",
        f"  model            {promoted['model']} v{r['train']['train']['version']}, "
        f"@{promoted['alias']} = v{champion}",
        f"  predictions      {r['infer']['predictions']}",
        f"  MLflow UI        mlflow ui --backend-store-uri {uri}",
    ]


def _status(r: dict[str, Any]) -> list[str]:
    cache = r["cache"]
    lines = [
        f"  state     {r['home']}",
        f"  cache     {cache['series']} series, {cache['frames']} frames, "
        f"{cache['recipes']} recipes, {cache['bytes'] / 1e6:.1f} MB",
    ]
    lines += [
        f"  model     {m['model']}: "
        + ", ".join(f"@{k} = v{v}" for k, v in m.items() if k != "model")
        for m in r["champions"]
    ]
    lines += [
        f"  run       {run['run_id']} {run['command']} {run['seconds']} s: {run['outcome']}"
        for run in r["runs"]
    ]
    parts = r.get("partitions")
    if parts:
        lines.append(
            f"  partitions {parts['root']}: {len(parts['done'])} done, "
            f"{len(parts['pending'])} pending under recipe "
            f"{parts['recipe_id'] or '- (none recorded yet)'}"
        )
        lines += [f"    pending {name}" for name in parts["pending"][:MAX_FAILURES_SHOWN]]
        lines += _missing(parts)
    lines.append(f"  failures  {r['failures_total']} recorded; most recent:")
    lines += [
        f"    {f['time']} {f['series_id']} [{f['stage']}]: {f['reason']}"
        for f in r["recent_failures"]
    ]
    return lines


def _plan(r: dict[str, Any]) -> list[str]:
    lines = [
        f"  plan      {r['series']} series under recipe {r['recipe_id']}: {r['cached']} cached, "
        f"{r['compute']} to compute, {r['failed']} refused"
    ]
    todo = [row for row in r["per_series"] if row["action"] != "cached"]
    lines += [
        f"    {row['action'].upper():8} {row['series_id']}: {row['reason']}"
        for row in todo[:MAX_FAILURES_SHOWN]
    ]
    if len(todo) > MAX_FAILURES_SHOWN:
        lines.append(
            f"    ... and {len(todo) - MAX_FAILURES_SHOWN} more (--json lists every series)"
        )
    return lines
