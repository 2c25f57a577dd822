"""Flows `promote` and `rollback`: gate a challenger on the frozen evaluation set; move the
alias back.

Both append their decision to the promotion history; promote ends by (re)writing the
challenger's run report, which then shows the decision. Each returns its record's JSON (what
`--json` prints and nightly's "promote" holds).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from lstmpipe.flows.extract import extract_refs
from lstmpipe.flows.runtime import load_runtime, run_id_of
from lstmpipe.tasks.promote import promote_challenger, promotion_candidates, run_report
from lstmpipe.tasks.promote import rollback as rollback_task


@flow(name="promote")
def promote(
    model: str,
    version: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    rt = load_runtime(config_file, overrides)
    run_id = run_id_of(run_id)
    rules = rt.config.promote
    plan = promotion_candidates(rt.tracking_uri, model, version, rules.alias)
    for recipe in plan.recipes.values():  # each model scores on features made by its own recipe
        extract_refs(rt, plan.eval_set, recipe)
    decided = promote_challenger(
        plan,
        rt.tracking_uri,
        rt.state,
        rules,
        run_id,
    )
    page = run_report(rt.tracking_uri, decided.challenger.run_id, rt.state)
    return decided.to_json() | {"report": page}


@flow(name="rollback")
def rollback_flow(
    model: str,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    rt = load_runtime(config_file, overrides)
    rolled = rollback_task(
        rt.tracking_uri,
        model,
        rt.config.promote.alias,
        rt.state,
        run_id_of(run_id),
    )
    return rolled.to_json()
