"""Training options end to end on real decoded frames: the sample generator's H.264 clips ->
resnet18 features.

Uses the session's sample archive and feature cache (tests/lib/conftest.py: 12 clips,
3 per class, in a folder, a .tar and a .zip partition), official split lists written
next to it in both formats, and every new model option at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import Config
from lstmpipe.lib.features.backbone import Backbone
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.training.bundle import ModelBundle
from lstmpipe.lib.training.experiment import load_sequences, run_experiment
from lstmpipe.lib.training.loop import predict_proba


def _relative(ref: SeriesRef) -> str:
    """`2026-11-20.tar/grow/clip_0001.mp4` -> `grow/clip_0001.mp4`, as official lists name it."""
    return ref.series_id.split("/", 1)[1]


def _label(ref: SeriesRef) -> str:
    """The class a sample clip's folder gives it (every one has a label)."""
    assert ref.label is not None, ref.series_id
    return ref.label


def write_ucf101(folder: Path, refs: list[SeriesRef]) -> None:
    """clip 0 and 1 of each class train, clip 2 test; fade_out/clip_0001 left out of the lists."""
    folder.mkdir()
    rels = sorted(_relative(r) for r in refs)
    train = [rel for rel in rels if not rel.endswith("2.mp4") and rel != "fade_out/clip_0001.mp4"]
    (folder / "trainlist01.txt").write_text("".join(f"{rel} 1\n" for rel in train))
    (folder / "testlist01.txt").write_text(
        "".join(f"{rel}\n" for rel in rels if rel.endswith("2.mp4"))
    )


def write_hmdb51(folder: Path, refs: list[SeriesRef]) -> None:
    """The same assignment in HMDB51's format; fade_out/clip_0001 is marked unused (0) instead."""
    folder.mkdir()
    for label in sorted({_label(r) for r in refs}):
        lines = []
        for rel in sorted(_relative(r) for r in refs if r.label == label):
            name = rel.split("/")[1]
            code = 2 if name.endswith("2.mp4") else 0 if rel == "fade_out/clip_0001.mp4" else 1
            lines.append(f"{name} {code} \n")
        (folder / f"{label}_test_split1.txt").write_text("".join(lines))


@pytest.mark.parametrize("fmt", ["ucf101", "hmdb51"])
def test_official_lists_and_every_model_option_on_real_features(
    fmt: str,
    tmp_path: Path,
    sample_cache: FeatureCache,
    sample_refs: list[SeriesRef],
    backbone: tuple[Backbone, FeatureRecipe],
    tiny_config: Config,
    one_thread: None,
) -> None:
    (write_ucf101 if fmt == "ucf101" else write_hmdb51)(tmp_path / "lists", sample_refs)
    config = tiny_config.train.model_copy(
        update={
            "epochs": 4,
            "patience": 4,
            "cell": "gru",
            "pooling": "attention",
            "bidirectional": True,
            "input_proj": 16,
            "crop_fraction": 0.75,
            "frame_dropout": 0.1,
            "balance": "sampler",
            "split_lists": str(tmp_path / "lists"),
            "split_number": 1,
        }
    )
    outcome = run_experiment(sample_cache, backbone[1], sample_refs, config)

    by_id = {r.series_id: r for r in sample_refs}
    left_out = [sid for sid in by_id if sid.endswith("fade_out/clip_0001.mp4")]
    assert outcome.excluded == (
        {"unlisted": left_out, "unused": []}
        if fmt == "ucf101"
        else {"unlisted": [], "unused": left_out}
    )
    assert sorted(_relative(by_id[s]) for s in outcome.splits["test"]) == sorted(
        f"{label}/clip_0002.mp4" for label in ("fade_in", "fade_out", "grow", "shrink")
    )
    # Validation carved from the official train part, per class: a class of 2 gives 1, a class of 1
    # (fade_out) none.
    val_classes = sorted(_label(by_id[s]) for s in outcome.splits["val"])
    assert val_classes == ["fade_in", "grow", "shrink"] and len(outcome.splits["train"]) == 4
    assert [e["series_id"] for e in outcome.eval_set] == outcome.splits["test"]
    for name, records in outcome.split_records.items():
        assert [r["series_id"] for r in records] == outcome.splits[name]
        assert all(r["content_hash"] == by_id[r["series_id"]].content_hash for r in records)

    # The registered form rebuilds the same network from its spec (what lib/registry/mlflow_store.py
    # and inference load).
    spec = outcome.bundle.spec
    assert (spec.cell, spec.pooling, spec.bidirectional, spec.input_proj) == (
        "gru",
        "attention",
        True,
        16,
    )
    loaded = ModelBundle.load(outcome.bundle.save(tmp_path / "bundle"))
    features = load_sequences(
        sample_cache, backbone[1].recipe_id, sample_refs, outcome.bundle.labels
    ).features
    assert len({len(f) for f in features}) > 1  # real clips of different lengths
    together = loaded.predict(features)
    assert np.allclose(together, outcome.bundle.predict(features), atol=1e-6)
    # A series' prediction does not depend on the series it is batched with.
    one_by_one = np.concatenate([predict_proba(loaded.module, [f]) for f in features])
    assert np.allclose(together, one_by_one, atol=1e-5)
