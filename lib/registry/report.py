"""One self-contained HTML page per training run: metrics (LSTM beside its baseline, per split),
the run's plots embedded as base64 PNGs, and the promotion decisions about its model version.

`collect` reads an MLflow run into plain values; `render` turns those values into HTML and
escapes every one of them (class names and tags come from data and may hold markup). Pages are
objects of the outputs store (`reports/<run id>.html`: a folder under home, or a bucket prefix in
team mode), as are the run records they are found by (`runs/<run id>.json`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.names import is_plain_name
from lstmpipe.lib.registry.history import HistoryRow
from lstmpipe.lib.registry.mlflow_store import MAX_RUN_TEXT_BYTES, filter_value
from lstmpipe.lib.registry.runs import read_run
from lstmpipe.lib.state.store import Store

PREFIX = "reports"  # pages in the outputs store: reports/<lstmpipe run id>.html

PLOTS = {
    "confusion_matrix.png": "Confusion matrix (test split)",
    "learning_curves.png": "Learning curves",
}
HEADLINE = ("accuracy", "macro_f1")


def mlflow_run_of(record: dict[str, Any]) -> str | None:
    """The MLflow run a lstmpipe run record (runs/<id>.json) trained or promoted, searched
    depth-first."""
    if {"model", "version", "run_id"} <= record.keys():  # a train summary
        return str(record["run_id"])
    if record.get("challenger_run_id"):  # a promote summary
        return str(record["challenger_run_id"])
    for value in record.values():
        if isinstance(value, dict) and (found := mlflow_run_of(value)):
            return found
    return None


def collect(client: MlflowClient, run_id: str, history: list[HistoryRow]) -> dict[str, Any]:
    """Everything the page shows, as values: run, params, metrics.json, PNGs, versions with
    promotion tags, the history rows about its version."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise LookupError(
            f"run {run_id}: not an MLflow run in this store ({exc.message}); pass a lstmpipe "
            "run id from `lstmpipe status` or an MLflow run id"
        ) from exc
    sizes = {a.path: a.file_size for a in client.list_artifacts(run_id)}
    shown = [name for name in [*PLOTS, "metrics.json"] if name in sizes]
    for name in shown:
        if (sizes[name] or 0) > MAX_RUN_TEXT_BYTES:
            raise ConfigError(
                f"run {run_id}: {name} refused before download: {sizes[name]} bytes, over the "
                f"{MAX_RUN_TEXT_BYTES} a report reads"
            )
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            name: Path(client.download_artifacts(run_id, name, tmp)).read_bytes() for name in shown
        }
    versions = [
        {"name": v.name, "version": str(v.version), "tags": dict(v.tags)}
        for v in client.search_model_versions(f"run_id = {filter_value(run.info.run_id)}")
    ]
    return {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "start_time": run.info.start_time,
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "params": dict(run.data.params),
        "metrics": json.loads(files.pop("metrics.json")) if "metrics.json" in files else {},
        "plots": {name: base64.b64encode(data).decode("ascii") for name, data in files.items()},
        "versions": versions,
        "history": [row.to_json() for row in history if row.challenger_run_id == run_id],
    }


def render(report: dict[str, Any]) -> str:
    """The page: no external resource, every value from data escaped."""
    lstmpipe_run = report.get("tags", {}).get("lstmpipe.run_id")
    title = (
        f"lstmpipe run {lstmpipe_run} (MLflow run {report['run_id']})"
        if lstmpipe_run
        else f"MLflow run {report['run_id']}"
    )
    parts = [
        f"<h1>{_e(title)}</h1>",
        _run_table(report),
        _metrics_tables(report.get("metrics", {})),
        _plots(report.get("plots", {})),
        _promotion(report),
        _params(report.get("params", {})),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(p for p in parts if p)
        + "\n</body></html>\n"
    )


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
    "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
    "th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}"
    ".promoted{color:#176317}.rejected{color:#a01818}"
)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="n">{value:.4f}</td>'
    return f'<td class="n">{_e(value)}</td>' if isinstance(value, int) else f"<td>{_e(value)}</td>"


def _table(header: list[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_num(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _run_table(r: dict[str, Any]) -> str:
    rows = [["MLflow run", r["run_id"]], ["run name", r.get("run_name")]]
    rows += [["model", f"{v['name']} v{v['version']}"] for v in r.get("versions", [])]
    rows += [[k, v] for k, v in sorted(r.get("tags", {}).items())]
    return "<h2>Run</h2>" + _table(["", ""], rows)


def _metrics_tables(metrics: dict[str, Any]) -> str:
    lstm, base = metrics.get("lstm", {}), metrics.get("baseline", {})
    if not lstm:
        return "<h2>Metrics</h2><p>No metrics.json in this run.</p>"
    rows = []
    for split in [s for s in ("train", "val", "test") if s in lstm] + sorted(
        set(lstm) - {"train", "val", "test"}
    ):
        rows.append(
            [
                split,
                *(lstm[split].get(k) for k in HEADLINE),
                *(base.get(split, {}).get(k) for k in HEADLINE),
                _gain(lstm[split].get("macro_f1"), base.get(split, {}).get("macro_f1")),
            ]
        )
    out = "<h2>Metrics: LSTM vs frame-averaging baseline</h2>" + _table(
        [
            "split",
            "LSTM accuracy",
            "LSTM macro-F1",
            "baseline accuracy",
            "baseline macro-F1",
            "macro-F1 gain from time",
        ],
        rows,
    )
    split = "test" if "test" in lstm else next(iter(lstm))
    classes = [key.split("/", 1)[1] for key in lstm[split] if key.startswith("recall/")]
    per_class = [
        [
            name,
            *(lstm[split].get(f"{k}/{name}") for k in ("precision", "recall", "f1", "support")),
            base.get(split, {}).get(f"recall/{name}"),
        ]
        for name in classes
    ]
    return out + (
        f"<h3>Per class ({_e(split)} split)</h3>"
        + _table(["class", "precision", "recall", "F1", "support", "baseline recall"], per_class)
    )


def _gain(a: Any, b: Any) -> Any:
    return round(a - b, 4) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""


def _plots(plots: dict[str, str]) -> str:
    figures = [
        f'<figure><img alt="{_e(PLOTS.get(name, name))}" src="data:image/png;base64,{_e(data)}">'
        f"<figcaption>{_e(PLOTS.get(name, name))}</figcaption></figure>"
        for name, data in plots.items()
    ]
    return "<h2>Plots</h2>" + ("".join(figures) or "<p>No plots in this run.</p>")


def _promotion(r: dict[str, Any]) -> str:
    out = ["<h2>Promotion</h2>"]
    for v in r.get("versions", []):
        tags = {
            k.split(".", 1)[1]: val
            for k, val in v["tags"].items()
            if k.startswith("promotion.") and k != "promotion.checks"
        }
        if not tags:
            out.append(
                f"<p>{_e(v['name'])} v{_e(v['version'])}: not gated yet "
                f"(<code>lstmpipe promote {_e(v['name'])} --version {_e(v['version'])}</code>).</p>"
            )
            continue
        decision = tags.get("decision", "")
        out.append(
            f'<p class="{_e(decision)}"><b>{_e(v["name"])} v{_e(v["version"])}: '
            f"{_e(decision)}</b>: {_e(tags.get('reason'))}</p>"
        )
        out.append(
            _table(
                ["tag", "value"],
                [[k, val] for k, val in sorted(tags.items()) if k not in {"reason"}],
            )
        )
    rows = [
        [
            row.get("time"),
            row.get("action"),
            row.get("decision"),
            row.get("challenger_version"),
            row.get("champion_version"),
            row.get("challenger_macro_f1"),
            row.get("champion_macro_f1"),
            row.get("test"),
            row.get("p_value"),
            row.get("reason"),
        ]
        for row in r.get("history", [])
    ]
    if rows:
        out.append(
            "<h3>Decisions about this run's version</h3>"
            + _table(
                [
                    "time",
                    "action",
                    "decision",
                    "challenger",
                    "champion",
                    "challenger macro-F1",
                    "champion macro-F1",
                    "test",
                    "p-value",
                    "reason",
                ],
                rows,
            )
        )
    return "".join(out) if len(out) > 1 else out[0] + "<p>No registered version.</p>"


def _params(params: dict[str, str]) -> str:
    return (
        "<h2>Parameters</h2>" + _table(["parameter", "value"], sorted(params.items()))
        if params
        else ""
    )


def write(report: dict[str, Any], store: Store, key: str) -> str:
    """Render and write the page atomically (a reader never sees half a page); its URI."""
    page = render(report).encode()
    store.put(key, lambda out: out.write(page))
    return store.uri(key)


# Run ids and the report's name are used in keys (file names): only a plain name (letters,
# digits, "_", "-", "."; first a letter or digit) is. lstmpipe's run ids (12 hex digits) and
# MLflow's (32) are plain; a tag can hold anything, "../../x" and "/abs" included.
def mlflow_run_id(store: Store, given: str) -> str:
    """`given` as a lstmpipe run id (its run record names the MLflow run it trained or
    promoted), else as is; one that is not a plain name is refused before any key is made."""
    if not is_plain_name(given):
        raise LookupError(
            f"run {given!r}: not a run id (letters, digits, '_', '-' and '.', at most 128); "
            "pass a lstmpipe run id from `lstmpipe status` or an MLflow run id"
        )
    record = read_run(store, given)
    if record is None:
        return given
    found = mlflow_run_of(record)
    if found is None:
        raise LookupError(
            f"run {given}: a `{record.get('command')}` run, which trained and promoted no model; "
            "pass the id of a train, promote, nightly or demo run"
        )
    return found


def build(client: MlflowClient, given: str, store: Store, history: list[HistoryRow]) -> str:
    """Write the page of run `given` (lstmpipe or MLflow run id) as
    reports/<training's lstmpipe run id>.html in `store` (the outputs store); its URI."""
    values = collect(client, mlflow_run_id(store, given), history)
    name = values["tags"].get("lstmpipe.run_id") or values["run_id"]  # one page per training run
    return write(values, store, page_key(store, name))


def page_key(store: Store, name: str) -> str:
    """reports/<name>.html for a plain name, else reports/run-<hash of name>.html (the same page
    each time): a tag such as "../../x" or "/abs" names no object outside the folder.

    In a local folder the resolved path is checked too, so a planted link at that name is
    refused, not followed.
    """
    stem = name if is_plain_name(name) else f"run-{_digest(name)}"
    key = f"{PREFIX}/{stem}.html"
    path = store.local_path(key)
    if path is not None and path.resolve().parent != path.parent.resolve():
        raise ConfigError(f"report {path}: resolves outside {path.parent}; refused")
    return key


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
