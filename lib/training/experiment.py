"""One training experiment: cached features in, an LSTM and its frame-averaging baseline out.

Pure values: no MLflow here (lib/registry/mlflow_store.py logs the outcome). The test split is
the frozen evaluation set the model is registered with; promotion scores every
candidate on it.

Splits come from official split lists when `train.split_lists` names them (validation
carved from their train part), else from a stratified split ranked by content hash;
either way an earlier run's record (`train.split_record`) pins the series it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmpipe.lib.config import TrainConfig
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.training.bundle import ModelBundle
from lstmpipe.lib.training.loop import FitResult, SequenceSet, evaluate, fit, model_spec
from lstmpipe.lib.training.splits import (
    match_split_lists,
    pins_from_record,
    read_split_lists,
    split_hash,
    split_records,
    stratified_split,
)

# A linear model on mean features needs larger steps than the LSTM to converge before
# early stopping: at the LSTM's rate it stops near chance and flatters the comparison.
BASELINE_LR_FACTOR = 5.0


# What train.select = "motion" fits beside the configured model: classes told apart by how things
# move (a gesture left or right, a front sweeping east or west) are swamped by each series' level
# under a per-frame LayerNorm, and small sets of them are memorised without augmentation; on the
# classes the demos tell apart by when things happen, this candidate lost accuracy
# (bench/quality.py, README "Model quality"), so it must win on validation to be kept.
# A lower peak rate, and half as many epochs again with more patience (scaled from the configured
# ones: 150 and 40 by default): on augmented batches validation climbs slowly.
MOTION = {"input_norm": "split", "crop_fraction": 0.7, "frame_dropout": 0.3, "lr": 1e-3}
MOTION_EPOCHS, MOTION_PATIENCE = 1.5, 1.6


@dataclass
class Outcome:
    bundle: ModelBundle  # the LSTM, its labels and recipe
    config: TrainConfig  # what trained the LSTM: the configured one, or the candidate chosen
    selection: dict[str, float]  # candidate -> its best validation macro-F1; "configured" first
    selected: str  # the candidate whose LSTM this is
    fit: FitResult
    baseline_fit: FitResult
    metrics: dict[str, dict[str, Any]]  # split -> metrics of the LSTM
    baseline_metrics: dict[str, dict[str, Any]]  # split -> metrics of the frame-averaging baseline
    splits: dict[str, list[str]]  # split -> series ids
    eval_set: list[dict]  # the test split's refs: what promotion scores on
    # split -> [{"series_id", "content_hash"}]: log it; a later run pins its splits with it
    # (train.split_record)
    split_records: dict[str, list[dict]] = field(default_factory=dict)
    # series left out of training: "unlisted" (official lists do not name them), "unused"
    # (HMDB51's 0)
    excluded: dict[str, list[str]] = field(default_factory=dict)

    @property
    def split_hash(self) -> str:
        return split_hash(self.splits)


def load_sequences(
    cache: FeatureCache, recipe_id: str, refs: list[SeriesRef], labels: list[str]
) -> SequenceSet:
    """The labelled series of `refs` whose features are cached under `recipe_id`."""
    stacked = cache.read_stacked([(r.content_hash, recipe_id) for r in refs])
    # one (sum_T, D) array; each series below is a view of it
    stacked_rows = stacked.features.numpy()
    rows = [
        (r.series_id, r.label, stacked_rows[o : o + n])
        for r, o, n in zip(refs, stacked.offsets.tolist(), stacked.lengths.tolist(), strict=False)
        if o >= 0 and r.label is not None
    ]
    index = {label: i for i, label in enumerate(labels)}
    return SequenceSet(
        features=[features for _, _, features in rows],
        labels=np.array([index[label] for _, label, _ in rows], dtype=np.int64),
        series_ids=[series_id for series_id, _, _ in rows],
    )


def candidates(config: TrainConfig) -> dict[str, TrainConfig]:
    """The LSTMs to fit, by name, the configured one first (it wins ties)."""
    if config.select == "none":
        return {"configured": config}
    motion = config.model_copy(
        update=MOTION
        | {
            "epochs": round(config.epochs * MOTION_EPOCHS),
            "patience": round(config.patience * MOTION_PATIENCE),
        }
    )
    return {"configured": config} | ({"motion": motion} if motion != config else {})


@dataclass(frozen=True)
class Selected:
    """The LSTM train.select kept: its candidate's name and settings, its fit, and every
    candidate's best validation macro-F1."""

    name: str
    config: TrainConfig
    fit: FitResult
    scores: dict[str, float]


def fit_selected(
    config: TrainConfig,
    train: SequenceSet,
    val: SequenceSet,
    input_dim: int,
    num_classes: int,
    on_epoch: Any = None,
    device: str = "cpu",
) -> Selected:
    """Fit each candidate LSTM of `config`; keep the best on validation (ties: the configured)."""
    fits, scores, tried = {}, {}, candidates(config)
    for name, candidate in tried.items():
        spec = model_spec(candidate, input_dim, num_classes, "lstm")
        fits[name] = fit(spec, train, val, candidate, on_epoch=on_epoch, device=device)
        scores[name] = fits[name].history[fits[name].best_epoch - 1]["val_macro_f1"]
    chosen = max(scores, key=lambda name: scores[name])  # the first of equals: configured
    return Selected(chosen, tried[chosen], fits[chosen], scores)


def run_experiment(
    cache: FeatureCache,
    recipe: FeatureRecipe,
    refs: list[SeriesRef],
    config: TrainConfig,
    on_epoch: Any = None,
    device: str = "cpu",
) -> Outcome:
    """Split, fit the LSTM (each candidate of `config.select`, keeping the best on validation) and
    the baseline on the same splits, evaluate both on every split."""
    labelled = [r for r in refs if r.label is not None]
    labels = sorted({r.label for r in refs if r.label is not None})
    if len(labels) < 2:
        raise ValueError(
            f"training needs at least 2 classes with cached features; found {labels or 'none'}"
        )
    data = load_sequences(cache, recipe.recipe_id, labelled, labels)
    by_id = {r.series_id: r for r in labelled}
    splits, excluded = make_splits(
        data.series_ids,
        [labels[y] for y in data.labels],
        [by_id[sid].content_hash for sid in data.series_ids],
        config,
    )
    parts = {name: data.select(ids) for name, ids in splits.items()}
    selected = fit_selected(
        config, parts["train"], parts["val"], recipe.feature_dim, len(labels), on_epoch, device
    )
    lstm_spec = model_spec(selected.config, recipe.feature_dim, len(labels), "lstm")
    lstm = selected.fit
    base = fit(
        model_spec(config, recipe.feature_dim, len(labels), "mean"),
        parts["train"],
        parts["val"],
        config.model_copy(update={"lr": config.lr * BASELINE_LR_FACTOR}),
        device=device,
    )
    return Outcome(
        bundle=ModelBundle(lstm_spec, lstm.model.cpu(), labels, recipe),
        config=selected.config,
        selection=selected.scores,
        selected=selected.name,
        fit=lstm,
        baseline_fit=base,
        metrics={
            name: evaluate(lstm.model, part, labels) for name, part in parts.items() if len(part)
        },
        baseline_metrics={
            name: evaluate(base.model, part, labels) for name, part in parts.items() if len(part)
        },
        splits=splits,
        eval_set=[by_id[sid].to_dict() for sid in splits["test"]],
        split_records=split_records(
            splits, {sid: by_id[sid].content_hash for sid in data.series_ids}
        ),
        excluded=excluded,
    )


def make_splits(
    series_ids: list[str], labels: list[str], content_hashes: list[str], config: TrainConfig
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(split -> series ids, reason -> series ids left out), as the module docstring describes."""
    pins: dict[str, str] = {}
    if config.split_record is not None:
        try:
            record = json.loads(Path(config.split_record).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"train.split_record {config.split_record}: cannot read it as JSON ({exc})"
            ) from exc
        pins = pins_from_record(record, series_ids, content_hashes)
    if config.split_lists is None:
        splits = stratified_split(
            series_ids,
            labels,
            config.val_fraction,
            config.test_fraction,
            config.seed,
            keys=content_hashes,
            pinned=pins,
        )
        return splits, {}
    listed, unlisted = match_split_lists(
        read_split_lists(config.split_lists, config.split_number), series_ids
    )
    train = [i for i, sid in enumerate(series_ids) if listed.get(sid) == "train"]
    # The official lists decide test; pins only steer which official-train series become validation.
    train_pins = {
        sid: split for sid, split in pins.items() if listed.get(sid) == "train" and split != "test"
    }
    carved = stratified_split(
        [series_ids[i] for i in train],
        [labels[i] for i in train],
        config.val_fraction,
        0.0,
        config.seed,
        keys=[content_hashes[i] for i in train],
        pinned=train_pins,
    )
    splits = {
        "train": carved["train"],
        "val": carved["val"],
        "test": sorted(sid for sid in series_ids if listed.get(sid) == "test"),
    }
    return splits, {
        "unlisted": unlisted,
        "unused": sorted(sid for sid in series_ids if listed.get(sid) == "unused"),
    }


def score(bundle: ModelBundle, cache: FeatureCache, eval_set: list[SeriesRef]) -> dict[str, Any]:
    """Metrics of a registered model on an evaluation set, with features made by its own recipe."""
    data = load_sequences(cache, bundle.recipe.recipe_id, eval_set, bundle.labels)
    if len(data) < len(eval_set):
        raise LookupError(
            f"{len(eval_set) - len(data)} evaluation series lack features for recipe "
            f"{bundle.recipe.recipe_id}; extract them first"
        )
    return evaluate(bundle.module, data, bundle.labels)
