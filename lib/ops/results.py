"""What the train, tune, infer, backfill and nightly flows return, typed; `to_json` of each is the
document `--json` prints and the run record `runs/<run id>.json` in the outputs store keeps
(lib/registry/runs.py; a folder under home, or a bucket prefix in team mode).

Those documents are read by scripts and by `lstmpipe status`: their keys and shapes are
fixed (tests/flows/test_json_shapes.py compares them with a recorded run). A bare dict is left
only where the keys are open-ended: metric names, split names, output kinds, and the promote
flow's record, which lib/registry/record.py types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lstmpipe.lib.features.outcomes import SeriesOutcome
from lstmpipe.lib.ops.partitions import MissingPartition
from lstmpipe.lib.ops.summary import ExtractionSummary
from lstmpipe.lib.registry.mlflow_store import ModelRef
from lstmpipe.lib.sources.discover import Ignored
from lstmpipe.lib.training.experiment import Outcome
from lstmpipe.lib.training.tune import TrialRecord

HEADLINE = ("accuracy", "macro_f1")  # the metrics a summary shows of a split


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """A split's headline metrics, rounded to 4 decimals; those it lacks are left out."""
    return {k: round(float(metrics[k]), 4) for k in HEADLINE if k in metrics}


@dataclass(frozen=True)
class TrainResult:
    """A registered version and how it scored: the LSTM's and the frame-averaging baseline's
    test metrics, the size of each split, the epoch kept and the epochs run."""

    model: str
    version: str
    run_id: str
    splits: dict[str, int]
    test: dict[str, float]
    baseline_test: dict[str, float]
    best_epoch: int
    epochs: int

    @classmethod
    def of(cls, ref: ModelRef, outcome: Outcome) -> TrainResult:
        return cls(
            model=ref.name,
            version=ref.version,
            run_id=ref.run_id,
            splits={name: len(ids) for name, ids in outcome.splits.items()},
            test=headline(outcome.metrics.get("test", {})),
            baseline_test=headline(outcome.baseline_metrics.get("test", {})),
            best_epoch=outcome.fit.best_epoch,
            epochs=len(outcome.fit.history),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "run_id": self.run_id,
            "splits": self.splits,
            "test": self.test,
            "baseline_test": self.baseline_test,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
        }


@dataclass(frozen=True)
class TuneResult:
    """A search: the best trial retrained and registered, its search run, and its trials by how
    they ended."""

    model: str
    version: str
    run_id: str
    parent_run_id: str
    best_trial: dict[str, Any]  # TrialRecord.summary(): its hp.* keys are the space searched
    trials: dict[str, int]  # completed | stopped | error -> count
    test: dict[str, float]

    @classmethod
    def of(
        cls,
        ref: ModelRef,
        parent_run_id: str,
        best: TrialRecord,
        records: list[TrialRecord],
        outcome: Outcome,
    ) -> TuneResult:
        return cls(
            model=ref.name,
            version=ref.version,
            run_id=ref.run_id,
            parent_run_id=parent_run_id,
            best_trial=best.summary(),
            trials={
                status: sum(t.status == status for t in records)
                for status in ("completed", "stopped", "error")
            },
            test=headline(outcome.metrics.get("test", {})),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "run_id": self.run_id,
            "parent_run_id": self.parent_run_id,
            "best_trial": self.best_trial,
            "trials": self.trials,
            "test": self.test,
        }


@dataclass(frozen=True)
class TrainRun:
    """The train flow: extraction, then training; `report` is the run's HTML page."""

    extract: ExtractionSummary
    train: TrainResult
    report: str

    @property
    def failed(self) -> int:
        return self.extract.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "extract": self.extract.to_json(),
            "train": self.train.to_json(),
            "failed": self.failed,
            "report": self.report,
        }


@dataclass(frozen=True)
class TuneRun:
    """The tune flow: extraction, then the search."""

    extract: ExtractionSummary
    tune: TuneResult

    @property
    def failed(self) -> int:
        return self.extract.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "extract": self.extract.to_json(),
            "tune": self.tune.to_json(),
            "failed": self.failed,
        }


@dataclass(frozen=True)
class InferRun:
    """The infer flow: the pinned version, the predictions file's URI (None when nothing was left
    to predict) and the domain outputs written beside it (kind -> URI): files, or s3:// objects
    in team mode. `no_series` says a quiet night: the source held no series at all."""

    extract: ExtractionSummary
    model: str
    version: str
    predictions: str | None
    outputs: dict[str, str]
    predicted: int
    no_series: str | None = None

    @property
    def skipped(self) -> int:
        """Series this version had predicted already (`force` redoes them)."""
        return self.extract.skipped

    @property
    def failed(self) -> int:
        return self.extract.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "extract": self.extract.to_json(),
            "model": self.model,
            "version": self.version,
            "predictions": self.predictions,
            "outputs": self.outputs,
            "predicted": self.predicted,
            "skipped": self.skipped,
            "failed": self.failed,
            "no_series": self.no_series,
        }


@dataclass(frozen=True)
class PartitionDone:
    """One partition extracted by a backfill or nightly run."""

    partition: str
    summary: ExtractionSummary
    seconds: float

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return {
            "partition": self.partition,
            "series": s.series,
            "cached": s.cached,
            "extracted": s.extracted,
            "failed": s.failed,
            "frames": s.frames,
            "ignored": len(s.ignored),
            "seconds": round(self.seconds, 1),
        }


@dataclass(frozen=True)
class PartitionsRun:
    """The partitions of a root a run selected, how many were done before (holding
    `series_before` series), those done now; what discovery ignored at the root's top level, in
    no partition (a README beside them); and the partitions recorded done that the root no
    longer holds."""

    root: str
    recipe_id: str
    selected: int
    already_done: int
    done: tuple[PartitionDone, ...]
    ignored_outside: tuple[Ignored, ...] = ()
    series_before: int = 0
    missing: tuple[MissingPartition, ...] = ()

    @property
    def series(self) -> int:
        return sum(p.summary.series for p in self.done)

    @property
    def cached(self) -> int:
        return sum(p.summary.cached for p in self.done)

    @property
    def extracted(self) -> int:
        return sum(p.summary.extracted for p in self.done)

    @property
    def failed(self) -> int:
        return sum(p.summary.failed for p in self.done)

    @property
    def failed_series(self) -> list[SeriesOutcome]:
        return [row for p in self.done for row in p.summary.per_series if row.failure]

    @property
    def no_series(self) -> str | None:
        """Why the selected partitions hold no series at all (None when they hold some): there
        are none, or none holds a series; partitions gone missing are named as a likely cause."""
        if self.series_before or self.series:
            return None
        held = (
            f"{self.selected} partitions, none holding a series"
            if self.selected
            else "no partitions (dated folders or archives)"
        )
        gone = (
            f"; {len(self.missing)} partitions recorded done are missing (an unmounted volume?)"
            if self.missing
            else ""
        )
        return f"no series under {self.root}: {held}{gone}"

    @property
    def ignored(self) -> list[Ignored]:
        """Files ignored in the partitions done now, and at the top level."""
        inside = [entry for p in self.done for entry in p.summary.ignored]
        return sorted([*self.ignored_outside, *inside], key=lambda entry: entry.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "recipe_id": self.recipe_id,
            "selected": self.selected,
            "already_done": self.already_done,
            "done": [p.to_json() for p in self.done],
            "series": self.series,
            "cached": self.cached,
            "extracted": self.extracted,
            "failed": self.failed,
            "failed_series": [row.to_json() for row in self.failed_series],
            "ignored": len(self.ignored),
            "ignored_files": [entry.to_json() for entry in self.ignored],
            "series_before": self.series_before,
            "missing": [entry.to_json() for entry in self.missing],
        }


@dataclass(frozen=True)
class NightlyRun:
    """A night: its partitions, training when there was reason to (None: skipped, and why in
    `train_reason`), the promotion's record (None when none ran), inference with the champion
    (None on a quiet night: the root holds no series, and `train_reason` says so)."""

    partitions: PartitionsRun
    train: TrainRun | None
    promote: dict[str, Any] | None
    infer: InferRun | None
    train_reason: str

    @property
    def failed(self) -> int:
        """Training re-reads the whole root, partitions included: its failures, else theirs."""
        extracted = self.train.failed if self.train else self.partitions.failed
        return extracted + (self.infer.failed if self.infer else 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions.to_json(),
            "train": self.train.to_json() if self.train else None,
            "promote": self.promote,
            "infer": self.infer.to_json() if self.infer else None,
            "train_reason": self.train_reason,
            "failed": self.failed,
        }
