"""What a promotion or a rollback leaves behind, built once and written three ways: the model
version's tags, a row of the history table, and the JSON of `lstmpipe promote --json`.

The tag names, history columns and JSON keys are read by scripts and by existing history tables:
they do not change. Scores are rounded to 4 decimals once, so the three carry the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lstmpipe.lib.registry.gate import Decision
from lstmpipe.lib.registry.history import Action, HistoryRow, Outcome
from lstmpipe.lib.registry.mlflow_store import ModelRef

DECISION_TAG = "promotion.decision"


@dataclass(frozen=True)
class Score:
    """A model's headline metrics on the evaluation set, rounded to 4 decimals."""

    accuracy: float
    macro_f1: float

    @classmethod
    def of(cls, metrics: dict[str, Any]) -> Score:
        return cls(round(float(metrics["accuracy"]), 4), round(float(metrics["macro_f1"]), 4))


@dataclass(frozen=True)
class PromotionRecord:
    """One promotion decision about `challenger`, with what it was decided against."""

    model: str
    alias: str
    challenger: ModelRef
    champion_before: str | None  # the version @alias pointed at when the gate ran
    # whom the challenger replaced, kept when a champion is promoted again: rollback's target
    previous_champion: str
    decision: Decision
    challenger_score: Score
    champion_score: Score | None  # None: no champion, or the challenger already is it
    eval_series: int
    run_id: str  # the lstmpipe run that decided
    time: str  # ISO 8601, UTC
    history_file: str | None = None  # where the history row went, if anywhere

    @property
    def outcome(self) -> Outcome:
        return Outcome.PROMOTED if self.decision.promote else Outcome.REJECTED

    def checks_text(self) -> str:
        return json.dumps(self.decision.checks_json(), sort_keys=True, default=float)

    def tags(self) -> dict[str, str]:
        """The challenger version's tags; DECISION_TAG last (written after the alias moves)."""
        test = self.decision.significance
        return {
            "promotion.reason": self.decision.reason,
            "promotion.time": self.time,
            "promotion.previous_champion": self.previous_champion,
            "promotion.challenger_macro_f1": f"{self.challenger_score.macro_f1:.4f}",
            "promotion.champion_macro_f1": ""
            if self.champion_score is None
            else f"{self.champion_score.macro_f1:.4f}",
            "promotion.test": "" if test is None else test.test,
            "promotion.p_value": ""
            if test is None or test.p_value is None
            else f"{test.p_value:.4g}",
            "promotion.ci": ""
            if test is None or test.ci is None
            else f"[{test.ci[0]:.4f}, {test.ci[1]:.4f}]",
            "promotion.checks": self.checks_text(),
            "promotion.run_id": self.run_id,
            DECISION_TAG: self.outcome,
        }

    def history_row(self) -> HistoryRow:
        test = self.decision.significance
        return HistoryRow(
            time=self.time,
            model=self.model,
            action=Action.PROMOTE,
            decision=self.outcome,
            challenger_version=self.challenger.version,
            champion_version=self.champion_before,
            champion_after=self.challenger.version
            if self.decision.promote
            else self.champion_before,
            reason=self.decision.reason,
            challenger_macro_f1=self.challenger_score.macro_f1,
            champion_macro_f1=None if self.champion_score is None else self.champion_score.macro_f1,
            test=None if test is None else test.test,
            p_value=None if test is None else test.p_value,
            ci_low=None if test is None or test.ci is None else test.ci[0],
            ci_high=None if test is None or test.ci is None else test.ci[1],
            run_id=self.run_id,
            challenger_run_id=self.challenger.run_id,
            checks=self.checks_text(),
        )

    def to_json(self) -> dict[str, Any]:
        """`lstmpipe promote --json` (the promote flow adds "report"), nightly's "promote"."""
        test = self.decision.significance
        scores = {"challenger": self.challenger_score, "champion": self.champion_score}
        return {
            "model": self.model,
            "alias": self.alias,
            "challenger": self.challenger.version,
            "challenger_run_id": self.challenger.run_id,
            "champion_before": self.champion_before,
            "promoted": self.decision.promote,
            "reason": self.decision.reason,
            "scores": {
                role: {"accuracy": s.accuracy, "macro_f1": s.macro_f1}
                for role, s in scores.items()
                if s is not None
            },
            "test": {} if test is None else test.to_json(),
            "checks": self.decision.checks_json(),
            "eval_series": self.eval_series,
        } | ({} if self.history_file is None else {"history_file": self.history_file})


@dataclass(frozen=True)
class RollbackRecord:
    """@alias moved back from `current` to the version it had replaced."""

    model: str
    alias: str
    current: ModelRef  # the champion rolled back
    restored: str  # the version @alias points at again
    run_id: str
    time: str

    def tags(self) -> dict[str, str]:
        """Tagged on the version rolled back."""
        return {"promotion.rolled_back": self.time}

    def history_row(self) -> HistoryRow:
        return HistoryRow(
            time=self.time,
            model=self.model,
            action=Action.ROLLBACK,
            decision=Outcome.ROLLED_BACK,
            challenger_version=self.restored,
            champion_version=self.current.version,
            champion_after=self.restored,
            reason=f"rollback: @{self.alias} v{self.current.version} -> v{self.restored}",
            run_id=self.run_id,
            challenger_run_id=self.current.run_id,
        )

    def to_json(self) -> dict[str, Any]:
        """`lstmpipe rollback --json`."""
        return {"model": self.model, "from": self.current.version, "to": self.restored}
