"""Flow `nightly`: the partitions of a root not yet done, then train, register, promote and infer.

Training reads the whole root (every partition's features are cached by then, so it
costs no CNN work). It is skipped when no partition of the root was done, under the
configured recipe, since the model's newest version was registered: a night without
new data registers no new version and moves no alias (`retrain` forces it). A newest
version with no promotion decision (a night stopped between registering and promoting
it) is promoted then. Inference runs either way, with the champion, on what it has not
predicted yet. A root holding no series at all is a quiet night: nothing trained or predicted
(an `infer_source` of its own is still predicted), exit 0, and the summary says so, naming
the partitions recorded done that have gone missing, if any.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from lstmpipe.flows.artifacts import publish_mlflow_run, publish_summary
from lstmpipe.flows.backfill import extract_partitions, partitions_markdown
from lstmpipe.flows.extract import configured_recipe
from lstmpipe.flows.infer import infer
from lstmpipe.flows.promote import promote
from lstmpipe.flows.runtime import load_runtime, run_id_of
from lstmpipe.flows.train import train
from lstmpipe.lib.ops.partitions import decide_night
from lstmpipe.lib.ops.results import NightlyRun
from lstmpipe.tasks.partitions import nightly_plan


@flow(name="nightly")
def nightly(
    root: str,
    model: str,
    labels: str | None = None,
    infer_source: str | None = None,
    out: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    retrain: bool = False,
) -> NightlyRun:
    rt = load_runtime(config_file, overrides)
    run_id = run_id_of(run_id)  # one id for the whole chain
    recipe = configured_recipe(rt)
    partitions = extract_partitions(rt, root, recipe, run_id)
    plan = nightly_plan(rt.tracking_uri, model, rt.state, root, recipe.recipe_id)
    night = decide_night(plan, retrain, partitions.no_series, infer_source is not None)
    trained = promoted = predicted = None
    if night.train:
        trained = train(root, model, labels, config_file, overrides, run_id)
        publish_mlflow_run(rt.tracking_uri, trained.train.run_id)
        promoted = promote(model, trained.train.version, config_file, overrides, run_id)
    elif plan.promote:  # registered by a night that stopped before promoting it
        promoted = promote(model, plan.promote, config_file, overrides, run_id)
    if night.infer:
        predicted = infer(
            infer_source or root,
            f"models:/{model}@{rt.config.promote.alias}",
            out,
            config_file,
            overrides,
            run_id,
        )
    result = NightlyRun(partitions, trained, promoted, predicted, night.reason)
    publish_summary("nightly-summary", nightly_markdown(run_id, model, result))
    return result


def nightly_markdown(run_id: str, model: str, night: NightlyRun) -> str:
    lines = [
        partitions_markdown(f"nightly {run_id}", night.partitions),
        "",
        f"**train**: {night.train_reason}",
    ]
    if night.train:
        t = night.train.train
        lines.append(
            f"- {model} v{t.version}: test accuracy {t.test.get('accuracy')}, macro-F1 "
            f"{t.test.get('macro_f1')}"
        )
    if p := night.promote:
        lines.append(
            f"- promote: {'promoted to' if p['promoted'] else 'not promoted to'} @{p['alias']}: "
            f"{p['reason']}"
        )
    if i := night.infer:
        lines.append(
            f"- infer: {i.predicted} series with {i.model} v{i.version} -> {i.predictions}"
        )
    return "\n".join(lines)
