"""Where extraction's time goes, per frame: the pieces bench/extract.py sets beside the pipeline.

- ceiling: the backbone alone on frames already decoded into memory (a fresh child, one torch
  thread per CPU), split into tensor preparation (uint8 frames to the network's normalised
  input, Backbone.prepare) and the CNN (Backbone.forward);
- decode and resize + RGB: the CPU time of ffmpeg decoding the clip to nothing, and of the
  command lstmpipe runs (decode, fps, scale, crop, rgb24 on a pipe), per frame handed out;
- cache write: FeatureCache.write of the frames' features, per frame.

Decoding runs on other cores than the CNN only where there are cores to spare. On a CPU the CNN
already uses all N cores, so the best any pipeline can do is the packing bound: N cores over
the CPU time one frame needs in all, N x (prep + CNN) + decode + resize + write. Where
decoding costs as much CPU as the CNN (mobilenet_v3_small on 2 cores), that bound sits far
below the ceiling; a GPU takes the CNN off the cores, and the bound becomes the decode rate.
"""

from __future__ import annotations

import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe, input_args
from lstmpipe.lib.sources.kinds.video import decode_command, probe

CEILING = """
import json, sys, time
import numpy as np, torch
from pathlib import Path
from lstmpipe.lib.config import BackboneConfig, SamplingConfig
from lstmpipe.lib.features.build import load_backbone
from lstmpipe.lib.features.weights import default_device
from lstmpipe.lib.sources.kinds.video import decode_video
clip, name, precision, threads, seconds = sys.argv[1:3] + [sys.argv[3], int(sys.argv[4]),
                                                          float(sys.argv[5])]
fps, size, batch = float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
torch.set_num_threads(threads)
sampling = SamplingConfig(fps=fps, size=size)
# (N, size, size, 3) uint8
pool = np.concatenate([c.frames for c in decode_video(clip, Path(clip).name, sampling)])
batches = [pool[i:i + batch] for i in range(0, len(pool) - batch + 1, batch)]  # full batches only
config = BackboneConfig(name=name, weights="none", precision=precision, batch_size=batch)
device = default_device()
backbone, recipe = load_backbone(sampling, config, Path("/nonexistent"), device)
backbone(batches[0])  # warm-up: first-call allocations and kernel selection

def sync():
    if device == "cuda":
        torch.cuda.synchronize()

frames, prep_s, cnn_s, started = 0, 0.0, 0.0, time.perf_counter()
while time.perf_counter() - started < seconds or frames < batch:
    t0 = time.perf_counter()
    x = backbone.prepare(batches[(frames // batch) % len(batches)])
    sync()
    t1 = time.perf_counter()
    backbone.forward(x)
    sync()
    prep_s, cnn_s = prep_s + t1 - t0, cnn_s + time.perf_counter() - t1
    frames += batch
elapsed = time.perf_counter() - started
print(json.dumps({"backbone": name, "precision": backbone.precision, "device": device,
                  "threads": torch.get_num_threads(), "frames": frames,
                  "seconds": round(elapsed, 2), "fps": round(frames / elapsed, 2),
                  "prep_ms": round(1000 * prep_s / frames, 3),
                  "cnn_ms": round(1000 * cnn_s / frames, 3),
                  "feature_dim": recipe.feature_dim}))
"""


def ffmpeg_cpu_ms(clip: Path, fps: float, size: int) -> dict:
    """CPU ms per frame handed out: ffmpeg decoding alone, and lstmpipe's whole decode command."""
    info = probe(str(clip), clip.name, 60.0)
    decode_only = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", *input_args(str(clip))]
    decode_only += ["-an", "-f", "null", "-"]
    _, decode_cpu = _cpu_of(decode_only)
    full_out, full_cpu = _cpu_of(decode_command(str(clip), size, fps, None))
    frames = len(full_out) // (size * size * 3)
    per = {
        "decode_ms": 1000 * decode_cpu / frames,
        "resize_rgb_ms": 1000 * max(0.0, full_cpu - decode_cpu) / frames,
    }
    return {
        "clip": clip.name,
        "source_fps": info.fps,
        "frames": frames,
        **{k: round(v, 3) for k, v in per.items()},
    }


def _cpu_of(command: list[str]) -> tuple[bytes, float]:
    """(stdout, user + system CPU seconds) of one child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, capture_output=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cache_write_ms(feature_dim: int, series: int = 16, frames: int = 200) -> float:
    """Wall ms per frame of committing `series` series of `frames` frames to a fresh local cache."""
    recipe = FeatureRecipe("bench", 8.0, None, 224, "bench", "none", "bench", "fp32", feature_dim)
    rows = [
        SeriesFeatures(
            series_id=f"s{i}",
            content_hash=f"{i:032x}",
            features=np.random.default_rng(i).random((frames, feature_dim), dtype=np.float32),
            t=np.arange(frames) / 8.0,
        )
        for i in range(series)
    ]
    with tempfile.TemporaryDirectory(prefix="bench-write-") as tmp:
        cache = FeatureCache.local(Path(tmp))
        cache.add_recipe(recipe)
        started = time.perf_counter()
        cache.write(recipe.recipe_id, rows)
        return round(1000 * (time.perf_counter() - started) / (series * frames), 3)


def per_frame(
    ceiling: dict, decode: dict, write_ms: float, pipeline_fps: float | None, cores: int
) -> dict:
    """One row of the breakdown, ms per frame, and the packing bound in frames/s; `not_hidden` is
    the pipeline's time per frame beyond tensor preparation and the CNN: decoding that competed
    for the CNN's cores, glue, waiting."""
    network_cores = cores if ceiling["device"] == "cpu" else 0  # a GPU leaves the cores free
    cpu_ms = network_cores * (ceiling["prep_ms"] + ceiling["cnn_ms"])
    cpu_ms += decode["decode_ms"] + decode["resize_rgb_ms"] + write_ms
    bound = min(1000 * cores / cpu_ms, ceiling["fps"])
    row = {
        "decode_cpu": decode["decode_ms"],
        "resize_rgb_cpu": decode["resize_rgb_ms"],
        "tensor_prep": ceiling["prep_ms"],
        "cnn": ceiling["cnn_ms"],
        "cache_write": write_ms,
        "bound_fps": round(bound, 1),
    }
    if pipeline_fps:
        pipeline_ms = 1000 / pipeline_fps
        row |= {
            "pipeline": round(pipeline_ms, 3),
            "not_hidden": round(pipeline_ms - ceiling["prep_ms"] - ceiling["cnn_ms"], 3),
        }
    return row
