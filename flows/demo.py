"""Flow `demo`: generate the labelled sample archive, then run the nightly chain on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.nightly import nightly
from flows.runtime import load_runtime
from lib.samples import SampleSpec, generate_archive, generate_incoming

DEMO_MODEL = "demo-motion"
# Offline and deterministic: a seeded random-init backbone, small frames. The classes
# differ only in the order of frames, so the LSTM must use time to beat the baseline.
DEMO_OVERRIDES = {"backbone.weights": "none", "sampling.size": 112, "sampling.fps": 8.0}


@task(name="generate-sample")
def generate_sample(root: str, seed: int, clips_per_class: int) -> dict[str, str]:
    spec = SampleSpec(seed=seed, clips_per_class=clips_per_class)
    archive = generate_archive(Path(root) / "archive", spec)
    incoming = generate_incoming(Path(root) / "incoming", spec)
    return {"archive": str(archive), "labels": str(archive / "labels.csv"), "incoming": str(incoming)}


@flow(name="demo")
def demo(config_file: str | None = None, overrides: dict[str, Any] | None = None, seed: int = 0,
         clips_per_class: int = SampleSpec.clips_per_class, run_id: str | None = None) -> dict[str, Any]:
    overrides = {**DEMO_OVERRIDES, **(overrides or {})}
    rt = load_runtime(config_file, overrides)
    sample = generate_sample(str(rt.home / "demo" / f"seed{seed}-n{clips_per_class}"), seed, clips_per_class)
    result = nightly(sample["archive"], DEMO_MODEL, sample["labels"], sample["incoming"], None, config_file,
                     overrides, run_id)
    return {**result, "sample": sample, "tracking_uri": rt.tracking_uri, "home": str(rt.home)}
