"""`lstmpipe`: thin entry points over the flows. Parsing here; the work happens in flows/.

Exit codes (SPEC §5): 0 all good, 1 crashed, 2 bad usage or configuration,
3 finished with some series failed. A source that does not exist, cannot be read or is no kind
lstmpipe reads is bad usage, found before anything starts; so is one holding no series, for the
commands that need some (extract, train, tune, plan). With --json every exit 2 still prints one
JSON object: {"error": the line, "path": the source it names, or null}.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import logging
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from lstmpipe.flows.console import render, terminal_safe
from lstmpipe.flows.runtime import Runtime, load_runtime, new_run_id, prepare_process
from lstmpipe.lib.config import NONE_WORDS, SECTIONS, as_text, field_kind
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.sources.roots import BadSource, check_source

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_FAILED_SERIES = 0, 1, 2, 3

# flag -> the config key it sets; its type, choices and "(default X)" come from lib/config.py
FEATURE_FLAGS = {
    "--fps": "sampling.fps",
    "--num-frames": "sampling.num_frames",
    "--size": "sampling.size",
    "--backbone": "backbone.name",
    "--weights": "backbone.weights",
    "--precision": "backbone.precision",
    "--batch-size": "backbone.batch_size",
    "--feature-dtype": "backbone.feature_dtype",
    "--workers": "runtime.workers",
    "--shard-size": "runtime.shard_size",
}
TRAIN_FLAGS = {
    "--epochs": "train.epochs",
    "--hidden-size": "train.hidden_size",
    "--layers": "train.num_layers",
    "--lr": "train.lr",
    "--seed": "train.seed",
}
PROMOTE_FLAGS = {
    "--margin": "promote.margin",
    "--test": "promote.test",
    "--alpha": "promote.alpha",
    "--max-recall-drop": "promote.max_recall_drop",
    "--max-cost-ratio": "promote.max_cost_ratio",
}
BACKFILL_FLAGS = {"--concurrency": "runtime.partition_concurrency"}
# command -> the arguments naming what it reads, each with whether it is a root of partitions
# (a folder or a bucket prefix): checked before anything starts (lib/sources/roots.py)
SOURCE_ARGUMENTS = {
    "extract": (("source", False),),
    "train": (("source", False),),
    "tune": (("source", False),),
    "infer": (("source", False),),
    "plan": (("source", False),),
    "nightly": (("root", True), ("infer_source", False)),
    "backfill": (("root", True),),
    "status": (("root", True),),
}
# what a command exits 2 with, named in one line (never a traceback)
USAGE_ERRORS = (ConfigError, LookupError)
SERVE_FLAGS = {
    "--root": "nightly.root",
    "--model": "nightly.model",
    "--labels": "nightly.labels",
    "--infer-source": "nightly.infer_source",
    "--cron": "nightly.cron",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstmpipe",
        description=(
            "Archives of videos and image series in; trained, registered LSTM sequence models "
            "and batch predictions out. State lives under $LSTMPIPE_HOME (default ./.lstmpipe)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = _command(
        commands,
        "demo",
        "generate a labelled sample archive and run the whole chain on it",
        FEATURE_FLAGS | TRAIN_FLAGS | PROMOTE_FLAGS,
    )
    demo.add_argument(
        "--sample-seed",
        type=int,
        default=0,
        help="seed of the generated sample (default %(default)s)",
    )
    demo.add_argument(
        "--domain",
        choices=["video", "direction", "medical", "remote-sensing"],
        default="video",
        help="video clips (order or direction of motion), cine-MR DICOM series or dated GeoTIFF "
        "stacks (default %(default)s)",
    )
    demo.add_argument(
        "--clips-per-class",
        type=int,
        default=None,
        help="series of each class in the sample "
        "(default: video 24, medical 96, remote-sensing 24)",
    )

    extract = _command(
        commands, "extract", "decode SOURCE and cache its CNN features", FEATURE_FLAGS
    )
    extract.add_argument("source", help="a folder, video file or archive (.tar, .tar.gz, .zip)")
    extract.add_argument(
        "--labels", help="manifest CSV/Parquet with series_id,label (default: folder names)"
    )

    train = _command(
        commands,
        "train",
        "train an LSTM on SOURCE's cached features and register it",
        FEATURE_FLAGS | TRAIN_FLAGS,
    )
    train.add_argument("source")
    train.add_argument(
        "--labels", help="manifest CSV/Parquet with series_id,label (default: folder names)"
    )
    train.add_argument("--model", required=True, help="registered model name")

    tune = _command(
        commands,
        "tune",
        "search the LSTM's hyperparameters with Ray Tune; register the best trial",
        FEATURE_FLAGS | TRAIN_FLAGS,
    )
    tune.add_argument("source")
    tune.add_argument(
        "--labels", help="manifest CSV/Parquet with series_id,label (default: folder names)"
    )
    tune.add_argument("--model", required=True, help="registered model name")
    tune.add_argument(
        "--trials", type=int, default=8, help="hyperparameter sets tried (default %(default)s)"
    )
    tune.add_argument(
        "--grace-period",
        type=int,
        default=3,
        help="epochs every trial runs before ASHA may stop it (default %(default)s)",
    )
    tune.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.0,
        help="GPU share per trial (default %(default)s)",
    )

    promote = _command(
        commands,
        "promote",
        "gate the latest (or --version) version and move @champion",
        FEATURE_FLAGS | PROMOTE_FLAGS,
    )
    promote.add_argument("model", help="registered model name")
    promote.add_argument("--version", help="challenger version (default: the latest)")
    promote.add_argument(
        "--history",
        action="store_true",
        help="print MODEL's recorded promotion decisions and rollbacks instead (default off)",
    )

    rollback = _command(commands, "rollback", "move @champion back to the version it replaced", {})
    rollback.add_argument("model", help="registered model name")

    report = _command(
        commands, "report", "write RUN_ID's HTML report under $LSTMPIPE_HOME/reports", {}
    )
    report.add_argument(
        "run",
        metavar="RUN_ID",
        help="a lstmpipe run id (train, promote, nightly) or an MLflow run id",
    )

    infer = _command(
        commands, "infer", "predict every series of SOURCE with a registered model", FEATURE_FLAGS
    )
    infer.add_argument("source")
    infer.add_argument(
        "--model", required=True, help="models:/NAME@champion, models:/NAME/3 or NAME"
    )
    infer.add_argument(
        "--out",
        help="predictions Parquet (default $LSTMPIPE_HOME/predictions/NAME-vN-TIME.parquet)",
    )
    infer.add_argument(
        "--force",
        action="store_true",
        help="predict series this model version already predicted too (default: skip them)",
    )
    infer.add_argument(
        "--per-frame",
        action="store_true",
        help="also write per-frame class scores and the LSTM's per-timestep hidden states to "
        "<out stem>.frames.parquet (default off)",
    )

    status = _command(
        commands, "status", "cache size, last runs, champions, recent failures (reads only)", {}
    )
    status.add_argument(
        "root",
        nargs="?",
        metavar="ROOT",
        help="also list ROOT's partitions done and pending (default: none)",
    )
    _command(
        commands,
        "compact",
        "merge small feature-cache files into large ones (safe while others run)",
        {},
    )

    plan = _command(
        commands,
        "plan",
        "what extract would compute, what is cached, and why (reads only)",
        FEATURE_FLAGS,
    )
    plan.add_argument("source", help="a folder, file or archive, as for extract")
    plan.add_argument(
        "--labels", help="manifest CSV/Parquet with series_id,label (default: folder names)"
    )

    nightly = _command(
        commands,
        "nightly",
        "extract, train, promote, then infer",
        FEATURE_FLAGS | TRAIN_FLAGS | PROMOTE_FLAGS,
    )
    nightly.add_argument("root", help="source root whose top-level folders/archives are partitions")
    nightly.add_argument(
        "--labels", help="manifest CSV/Parquet with series_id,label (default: folder names)"
    )
    nightly.add_argument("--model", required=True, help="registered model name")
    nightly.add_argument("--infer-source", help="what to predict (default: ROOT)")
    nightly.add_argument(
        "--out", help="predictions Parquet (default under $LSTMPIPE_HOME/predictions)"
    )
    nightly.add_argument(
        "--retrain",
        action="store_true",
        help="train even when no partition is new since the newest version (default off)",
    )

    backfill = _command(
        commands,
        "backfill",
        "extract a date range of ROOT's partitions (or all) into the cache; resumable",
        FEATURE_FLAGS | BACKFILL_FLAGS,
    )
    backfill.add_argument(
        "root", help="source root whose top-level folders/archives are partitions"
    )
    backfill.add_argument(
        "--from",
        dest="start",
        metavar="D1",
        help="first day: YYYY-MM-DD, YYYYMMDD, or YYYY-MM for the month's first (default: open)",
    )
    backfill.add_argument(
        "--to",
        dest="end",
        metavar="D2",
        help="last day, inclusive; YYYY-MM for the month's last (default: open)",
    )
    backfill.add_argument(
        "--all",
        dest="every",
        action="store_true",
        help="every partition, undated ones too (default off: give --from and/or --to)",
    )

    serve = _command(
        commands,
        "serve",
        "run the deployments on this machine, nightly on its cron (until Ctrl-C)",
        SERVE_FLAGS,
    )
    serve.add_argument(
        "--port",
        type=int,
        default=4200,
        help="port of the Prefect server started when PREFECT_API_URL is unset "
        "(default %(default)s)",
    )
    return parser


def _command(
    commands: Any, name: str, help_text: str, flags: dict[str, str]
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    for flag, key in flags.items():
        parser.add_argument(flag, dest=key, default=None, **config_argument(key))
    parser.add_argument(
        "--config", help="YAML or TOML config file (default: $LSTMPIPE_CONFIG, else none)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set train.dropout=0.3 (repeatable; default none)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a machine-readable summary on stdout (default: a readable one)",
    )
    return parser


def config_argument(key: str) -> dict[str, Any]:
    """The type, choices and help of the flag that sets config key `key`, from the config field.

    Its default stays None (only a flag that is given overrides the configuration); the help
    states the config's default, so the two cannot disagree.
    """
    section, _, name = key.partition(".")
    field = SECTIONS[section].model_fields[name]
    kind, nullable = field_kind(field.annotation)
    text = f"{field.description} (default {as_text(field.default)})"
    argument: dict[str, Any] = {"help": text.replace("%", "%%")}  # argparse formats help with %
    if typing.get_origin(kind) is Literal:
        argument["choices"] = typing.get_args(kind)
    # numbers are checked here, so a typo is a usage error naming the flag; other types (bool,
    # lists) go as text, which the config parses as it parses the environment
    base = kind if kind in (int, float) else str
    argument["type"] = _or_none(base) if nullable and base is not str else base
    return argument


def _or_none(kind: type) -> Callable[[str], Any]:
    """`kind`, or a word for none kept as text for the config to read as None (a flag left out
    is None here, and dropped)."""

    def parse(text: str) -> Any:
        return text if text.strip().lower() in NONE_WORDS else kind(text)

    parse.__name__ = kind.__name__  # argparse names it: "invalid float value: 'x'"
    return parse


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """Flags that were given, plus --set pairs, as section.key overrides."""
    given = {key: value for key, value in vars(args).items() if "." in key and value is not None}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected SECTION.KEY=VALUE")
        given[key] = value
    return given


def run() -> None:
    """The console script: main() in a process that exits when it returns.

    Start-up allocates about a million objects that live until exit, and Python's collector
    would walk them all, again and again while the flow's modules import and once more at
    exit: about 0.5 s of a command with nothing to compute. Collection pauses until the flow
    is imported (`_resume_collection`), and what lives at exit is frozen rather than walked.
    """
    gc.disable()
    code = main()
    gc.freeze()
    sys.exit(code)


def _resume_collection() -> None:
    """Collection back on for the work itself, start-up's objects frozen out of it (a no-op when
    main() runs without run(), as in tests)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on bad usage
    try:
        overrides = overrides_of(args)
        rt = load_runtime(args.config, overrides)
        if args.command == "backfill":  # a bad range is bad usage: say so before anything boots
            from lstmpipe.lib.ops.partitions import (
                date_range,
            )  # late: pyarrow would delay every command's start

            date_range(args.start, args.end, args.every)
        # before any server or backbone starts, and before anything is recorded
        for name, partitions in SOURCE_ARGUMENTS.get(args.command, ()):
            if getattr(args, name) is not None:
                check_source(getattr(args, name), rt.state, rt.config.sources, partitions)
    except ConfigError as exc:
        return _usage_error(args, exc)
    prepare_process(rt.home)
    run_id = new_run_id()
    started = time.monotonic()
    try:
        # stdout carries only the summary (JSON with --json); chatter from libraries goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            readers = {
                "status": lambda: _status(rt, args.root),
                "plan": lambda: _plan(rt, args),
                "serve": lambda: _serve(rt, args, overrides),
                "compact": lambda: _compact(rt),
                "report": lambda: _report(args, overrides),
                "history": lambda: _history(rt, args.model),
            }
            command = "history" if getattr(args, "history", False) else args.command
            if command in readers:
                _resume_collection()
                result = readers[command]()
            else:
                result = _run(args, rt, overrides, run_id)
    except USAGE_ERRORS as exc:
        return _usage_error(args, exc)
    record = {
        "command": args.command,
        "run_id": run_id,
        "seconds": round(time.monotonic() - started, 1),
        **(result if isinstance(result, dict) else result.to_json()),
    }
    # status and plan only read, serve serves, history reads: no run to record
    if args.command not in {"status", "plan", "serve"} and command != "history":
        _save_run(rt, record)
    print(json.dumps(record, indent=2, default=str) if args.json else render(record))
    return EXIT_FAILED_SERIES if record.get("failed") else EXIT_OK


def _usage_error(args: argparse.Namespace, exc: Exception) -> int:
    """Exit 2, the reason in one line on stderr; with --json also on stdout, as one object, so a
    script parses every outcome: {"error": the line, "path": the source it names, or null}."""
    print(f"lstmpipe {args.command}: {terminal_safe(str(exc))}", file=sys.stderr)
    if args.json:
        path = exc.path if isinstance(exc, BadSource) else None
        print(json.dumps({"error": str(exc), "path": path}))
    return EXIT_USAGE


class _NamedOnce(logging.Filter):
    """Drops Prefect's report of a usage error raised in a flow or task (the exception with its
    traceback, at ERROR): the CLI names it in one line and exits 2."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], USAGE_ERRORS))


_NAMED_ONCE = _NamedOnce()  # one instance: a logger holds a filter once, however often main runs


class Result(Protocol):
    """A typed command result (lib/ops/results.py and others): `--json` prints its to_json(),
    after the command, run id and seconds; the run record holds the same document."""

    def to_json(self) -> dict[str, Any]: ...


# What a command returns: typed, or a dict where its module builds one (compact, report,
# history, promote, serve).
Returned = Result | dict[str, Any]


# command -> the flows module that runs it: only that one is imported (each pulls in torch,
# Prefect, MLflow...)
FLOW_MODULES = {
    "demo": "demo",
    "extract": "extract",
    "train": "train",
    "tune": "tune",
    "promote": "promote",
    "rollback": "promote",
    "infer": "infer",
    "nightly": "nightly",
    "backfill": "backfill",
}


BACKBONE_COMMANDS = frozenset({"extract", "train", "tune", "nightly", "backfill"})


def _run(args: argparse.Namespace, rt: Runtime, overrides: dict[str, Any], run_id: str) -> Returned:
    """Find the local Prefect API (or boot it, importing the command's flow and loading the
    backbone meanwhile), then run the flow."""
    from lstmpipe.flows import startup

    for logger in ("prefect.flow_runs", "prefect.task_runs"):  # Prefect configures them later,
        logging.getLogger(logger).addFilter(_NAMED_ONCE)  # keeping their filters
    api = startup.local_api(idle_s=rt.config.runtime.api_idle_s)
    try:
        module = importlib.import_module(f"lstmpipe.flows.{FLOW_MODULES[args.command]}")
        _resume_collection()
        # they extract with the configured backbone; a running API leaves nothing to overlap, and
        # a command with nothing to compute then never loads it
        if api is not None and api.booting and args.command in BACKBONE_COMMANDS:
            startup.load_backbone_early(rt)
        with startup.using(api):
            return _call(module, args, overrides, run_id)
    finally:
        if api is not None:
            api.release()


def _call(
    module: Any, args: argparse.Namespace, overrides: dict[str, Any], run_id: str
) -> Returned:
    config = {"config_file": args.config, "overrides": overrides}
    common = {**config, "run_id": run_id}  # for the flows that record failures under the run
    calls: dict[str, Callable[[], Returned]] = {
        "demo": lambda: module.demo(
            seed=args.sample_seed,
            clips_per_class=args.clips_per_class,
            domain=args.domain,
            **common,
        ),
        "extract": lambda: module.extract(args.source, args.labels, **common),
        "train": lambda: module.train(args.source, args.model, args.labels, **common),
        "tune": lambda: module.tune(
            args.source,
            args.model,
            args.labels,
            trials=args.trials,
            grace_period=args.grace_period,
            gpus_per_trial=args.gpus_per_trial,
            **common,
        ),
        "promote": lambda: module.promote(args.model, args.version, **common),
        "rollback": lambda: module.rollback_flow(args.model, **common),
        "infer": lambda: module.infer(
            args.source, args.model, args.out, force=args.force, per_frame=args.per_frame, **common
        ),
        "nightly": lambda: module.nightly(
            args.root,
            args.model,
            args.labels,
            args.infer_source,
            args.out,
            retrain=args.retrain,
            **common,
        ),
        "backfill": lambda: module.backfill(args.root, args.start, args.end, args.every, **common),
    }
    return calls[args.command]()


def _status(rt: Runtime, root: str | None) -> Returned:
    from lstmpipe.lib.ops import status  # MLflow loads in seconds: only for this command
    from lstmpipe.lib.registry import mlflow_store as registry

    return status.collect(
        rt.state,
        registry.connect(rt.tracking_uri),
        rt.config.promote.alias,
        root,
    )


def _serve(rt: Runtime, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    from lstmpipe.flows.serve import serve  # late: it boots a Prefect server and imports every flow

    return serve(rt, args.config, overrides, args.port)


def _history(rt: Runtime, model: str) -> dict[str, Any]:
    # no Prefect, no MLflow: reading one table
    from lstmpipe.lib.registry.history import PromotionHistory

    rows = PromotionHistory.at(rt.state).read(model)
    return {"model": model, "history": [row.to_json() for row in rows]}


def _report(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    from lstmpipe.flows.report import report  # MLflow only: no Prefect API to boot for one page

    return report(args.run, args.config, overrides)


def _compact(rt: Runtime) -> dict[str, Any]:
    # late: torch and Arrow load in seconds, and delay Prefect's boot
    from lstmpipe.lib.features.cache import FeatureCache

    return FeatureCache.at(rt.state).compact()


def _plan(rt: Runtime, args: argparse.Namespace) -> Returned:
    from lstmpipe.lib.features.weights import default_device  # late, like every lib import here
    from lstmpipe.lib.ops.plan import plan_source

    return plan_source(
        args.source,  # a path, or s3://bucket/prefix
        args.labels,
        rt.config,
        Path(rt.torch_hub_dir),
        rt.state,
        default_device(),
    )


def _save_run(rt: Runtime, record: dict[str, Any]) -> None:
    """runs/RUN_ID.json in the outputs store ($LSTMPIPE_HOME, or the bucket in team mode): the
    document `--json` prints (`lstmpipe status` reads them)."""
    from lstmpipe.lib.registry.runs import save_run  # late, like every lib import here

    save_run(rt.state.outputs_store(), record)


if __name__ == "__main__":
    run()
