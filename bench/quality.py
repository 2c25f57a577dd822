"""Test accuracy of the demos' models over sample seeds and backbone precisions, per recipe.

Each domain's labelled sample (flows/demo.py SERIES_MAKERS, plus `direction-held-out`:
the direction kinds no recipe was tuned on, lib/demo/direction.py HELD_OUT_KINDS) goes
through the demo's path without Prefect, Ray or MLflow: lib.features.extract
.extract_to_cache, then lib.training.experiment.run_experiment with the domain's
settings (flows/demo.py DOMAINS) and each variant's overrides on top. The LSTM and the
frame-averaging baseline are scored on the same test split. One process per (domain,
seed, precision), one torch thread each; features are extracted once per recipe and
shared by the variants that keep it. Prints one JSON line per run and a table of mean
(min-max) over seeds; writes them to bench/results/quality-<time>.json (or --out).

    .venv/bin/python bench/quality.py [--domains video,direction,...] [--seeds 0,1,2]
        [--precisions fp32,bf16] [--variant NAME='{"train.crop_fraction": 1.0}' ...]
        [--clips N] [--processes 2]

bf16 on a CPU without AMX or AVX512-BF16 runs emulated, several times slower than fp32.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

BENCH = Path(__file__).parent
HELD_OUT = "direction-held-out"  # scored with the direction domain's settings


def _ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",")]


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, overrides = text.partition("=")
    return name, json.loads(overrides or "{}")


def generate(work: Path, domain: str, seed: int, clips: int | None) -> Path:
    """The domain's labelled sample for `seed` under work (made once; generators skip a made
    one)."""
    from lstmpipe.flows.demo import DOMAINS, SERIES_MAKERS
    from lstmpipe.lib.demo.direction import HELD_OUT_KINDS, generate_direction

    root = work / f"{domain}-seed{seed}"
    if domain == HELD_OUT:
        return generate_direction(
            root, clips or DOMAINS["direction"].clips_per_class, seed, HELD_OUT_KINDS
        )
    return SERIES_MAKERS[domain](root, clips or DOMAINS[domain].clips_per_class, seed)


def measure(
    work: Path, domain: str, seed: int, precision: str, variants: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Extract the sample once per recipe at `precision`, train and score each variant."""
    import torch

    from lstmpipe.flows.demo import DOMAINS
    from lstmpipe.lib.config import load_config
    from lstmpipe.lib.features.build import load_backbone
    from lstmpipe.lib.features.cache import FeatureCache
    from lstmpipe.lib.features.extract import extract_to_cache, split_cached
    from lstmpipe.lib.sources.discover import discover
    from lstmpipe.lib.training.experiment import run_experiment

    torch.set_num_threads(1)
    archive = work / f"{domain}-seed{seed}"
    refs = discover(archive, archive / "labels.csv").refs
    settings = DOMAINS["direction" if domain == HELD_OUT else domain].overrides
    cache = FeatureCache.local(work / f"{domain}-seed{seed}-{precision}-cache")
    lines = []
    for name, overrides in variants:
        config = load_config(overrides={**settings, **overrides, "backbone.precision": precision})
        backbone, recipe = load_backbone(
            config.sampling, config.backbone, work / "hub", "cpu", config.sources
        )
        _, missing = split_cached(cache, refs, recipe.recipe_id)
        started = time.perf_counter()
        outcomes = extract_to_cache(
            missing, config.sampling, backbone, 32, work / "tmp", config.sources, cache,
            recipe.recipe_id,
        )  # fmt: skip
        failed = [o for o in outcomes if not o.usable]
        if failed:
            raise RuntimeError(f"{domain} seed {seed}: {len(failed)} failed, first {failed[0]}")
        extract_s = time.perf_counter() - started
        started = time.perf_counter()
        outcome = run_experiment(cache, recipe, refs, config.train)
        test, base = outcome.metrics["test"], outcome.baseline_metrics["test"]
        lines.append(
            {
                "domain": domain,
                "variant": name,
                "seed": seed,
                "precision": backbone.precision,
                "series": len(refs),
                "test_series": len(outcome.splits["test"]),
                "lstm_test_accuracy": round(test["accuracy"], 3),
                "lstm_test_macro_f1": round(test["macro_f1"], 3),
                "lstm_train_accuracy": round(outcome.metrics["train"]["accuracy"], 3),
                "baseline_test_accuracy": round(base["accuracy"], 3),
                "selected": outcome.selected,  # train.select's candidate, by validation
                "validation": {k: round(v, 3) for k, v in outcome.selection.items()},
                "best_epoch": outcome.fit.best_epoch,
                "extract_s": round(extract_s, 1),
                "train_s": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(lines[-1]), flush=True)
    return lines


def table(lines: list[dict[str, Any]]) -> str:
    """Mean (min-max) over seeds per domain, variant and precision."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for line in lines:
        groups.setdefault((line["domain"], line["variant"], line["precision"]), []).append(line)
    rows = [
        f"{'domain':<20}{'variant':<14}{'precision':<10}{'seeds':<7}"
        f"{'LSTM test accuracy':<24}{'baseline':<10}LSTM train"
    ]
    for (domain, variant, precision), runs in sorted(groups.items()):
        rows.append(
            f"{domain:<20}{variant:<14}{precision:<10}{len(runs):<7}"
            f"{_spread([r['lstm_test_accuracy'] for r in runs]):<24}"
            f"{statistics.mean(r['baseline_test_accuracy'] for r in runs):<10.2f}"
            f"{statistics.mean(r['lstm_train_accuracy'] for r in runs):.2f}"
        )
    return "\n".join(rows)


def _spread(scores: list[float]) -> str:
    return f"{statistics.mean(scores):.3f} ({min(scores):.2f}-{max(scores):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--domains",
        default=f"video,direction,{HELD_OUT},medical,remote-sensing",
        help="default: every demo domain and the held-out direction kinds",
    )
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="default 0,1,2")
    parser.add_argument("--precisions", default="fp32,bf16", help="default fp32,bf16")
    parser.add_argument(
        "--variant",
        type=_variant,
        action="append",
        default=None,
        help="NAME=JSON config overrides on top of each domain's settings, repeatable "
        "(default: one variant, `default`, with none)",
    )
    parser.add_argument("--clips", type=int, default=None, help="per class; default the demo's")
    parser.add_argument("--processes", type=int, default=2, help="default 2")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/…json")
    args = parser.parse_args()
    variants = args.variant or [("default", {})]
    domains = args.domains.split(",")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or BENCH / "results" / f"quality-{stamp}.json"
    context = get_context("spawn")  # a fresh interpreter per worker: torch threads set once
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        work = Path(tmp)
        with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
            made = [
                pool.submit(generate, work, domain, seed, args.clips)
                for domain in domains
                for seed in args.seeds
            ]
            for job in made:
                job.result()
            jobs = [
                pool.submit(measure, work, domain, seed, precision, variants)
                for precision in args.precisions.split(",")
                for domain in domains
                for seed in args.seeds
            ]
            lines = [line for job in jobs for line in job.result()]
    out.write_text(json.dumps(lines, indent=1) + "\n")
    print(table(lines))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
