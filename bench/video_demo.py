"""The video demo's LSTM test macro-F1 over sample seeds, backbone precisions and sample sizes.

The demo's own path without Prefect, Ray or MLflow (as tests/flows/test_demo_domains.py
does): the sample of lib.demo.video.generate_archive, features through
lib.features.extract.extract_to_cache, then lib.training.experiment.run_experiment with
the demo's settings (flows/demo.py DOMAINS["video"]), sampling.size and the number of
clips per class varied. One process per (seed, precision, size), one torch thread each:
it extracts the largest sample once and trains on every smaller one, the clips of index
< n (clip i is the same draw whatever the sample's size). Prints one JSON line per run
and a table; writes them to bench/results/video-demo-<time>.json (or --out).

    .venv/bin/python bench/video_demo.py [--seeds 0,1,2] [--precisions fp32,bf16]
        [--sizes 64] [--clips 40] [--processes 6]

bf16 on a CPU without AMX or AVX512-BF16 runs emulated, about 5x slower than fp32.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

BENCH = Path(__file__).parent


def _ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",")]


def measure(
    work: Path, seed: int, precision: str, size: int, clips: list[int]
) -> list[dict[str, Any]]:
    """Extract seed's largest sample at (precision, size), then train on each sample size."""
    import torch

    from lstmpipe.flows.demo import DOMAINS
    from lstmpipe.lib.config import load_config
    from lstmpipe.lib.features.build import load_backbone
    from lstmpipe.lib.features.cache import FeatureCache
    from lstmpipe.lib.features.extract import extract_to_cache
    from lstmpipe.lib.sources.discover import discover
    from lstmpipe.lib.training.experiment import run_experiment

    torch.set_num_threads(1)
    archive = work / f"seed{seed}"
    refs = discover(archive, archive / "labels.csv").refs
    overrides = {
        **DOMAINS["video"].overrides,
        "sampling.size": size,
        "backbone.precision": precision,
    }
    config = load_config(overrides=overrides)
    backbone, recipe = load_backbone(config.sampling, config.backbone, work / "hub", device="cpu")
    here = work / f"seed{seed}-{precision}-{size}"
    cache = FeatureCache.local(here / "cache")
    started = time.perf_counter()
    outcomes = extract_to_cache(
        refs, config.sampling, backbone, 32, here / "tmp", config.sources, cache, recipe.recipe_id
    )
    extract_s = time.perf_counter() - started
    failed = [o for o in outcomes if not o.usable]
    if failed:
        raise RuntimeError(f"seed {seed}: {len(failed)} clips failed, first {failed[0]}")
    lines = []
    for n in clips:
        sample = [r for r in refs if _clip_index(r.series_id) < n]
        started = time.perf_counter()
        outcome = run_experiment(cache, recipe, sample, config.train)
        lines.append(
            {
                "seed": seed,
                "precision": backbone.precision,
                "size": size,
                "clips_per_class": n,
                "test_series": len(outcome.splits["test"]),
                "lstm_test_macro_f1": round(outcome.metrics["test"]["macro_f1"], 3),
                "baseline_test_macro_f1": round(outcome.baseline_metrics["test"]["macro_f1"], 3),
                "best_epoch": outcome.fit.best_epoch,
                "extract_s": round(extract_s, 1),
                "train_s": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(lines[-1]), flush=True)
    return lines


def _clip_index(series_id: str) -> int:
    found = re.search(r"clip_(\d+)\.mp4$", series_id)
    if found is None:
        raise ValueError(f"{series_id}: not a clip of lib.demo.video's archive")
    return int(found.group(1))


def _generate(work: Path, seed: int, clips_per_class: int) -> None:
    from lstmpipe.lib.demo.video import SampleSpec, generate_archive

    generate_archive(work / f"seed{seed}", SampleSpec(seed=seed, clips_per_class=clips_per_class))


def _table(lines: list[dict[str, Any]]) -> str:
    groups: dict[tuple[int, int, str], list[float]] = {}
    for line in lines:
        key = (line["size"], line["clips_per_class"], line["precision"])
        groups.setdefault(key, []).append(line["lstm_test_macro_f1"])
    rows = ["size  clips/class  precision  seeds  LSTM test macro-F1 mean (min-max)"]
    for (size, n, precision), scores in sorted(groups.items()):
        spread = f"{statistics.mean(scores):.3f} ({min(scores):.3f}-{max(scores):.3f})"
        rows.append(f"{size:>4}  {n:>11}  {precision:>9}  {len(scores):>5}  {spread}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="default 0,1,2")
    parser.add_argument("--precisions", default="fp32,bf16", help="default fp32,bf16")
    parser.add_argument("--sizes", type=_ints, default=[64], help="sampling.size; default 64")
    parser.add_argument("--clips", type=_ints, default=[40], help="clips per class; default 40")
    parser.add_argument("--processes", type=int, default=6, help="default 6")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/…json")
    args = parser.parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or BENCH / "results" / f"video-demo-{stamp}.json"
    context = get_context("spawn")  # a fresh interpreter per worker: torch threads set once
    with tempfile.TemporaryDirectory(prefix="video-demo-") as tmp:
        work = Path(tmp)
        with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
            list(
                pool.map(
                    _generate,
                    [work] * len(args.seeds),
                    args.seeds,
                    [max(args.clips)] * len(args.seeds),
                )
            )
            jobs = [
                pool.submit(measure, work, seed, precision, size, sorted(args.clips))
                for size in args.sizes
                for precision in args.precisions.split(",")
                for seed in args.seeds
            ]
            lines = [line for job in jobs for line in job.result()]
    out.write_text(json.dumps(lines, indent=1) + "\n")
    print(_table(lines))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
