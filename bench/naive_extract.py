"""bench/naive.py's extractor: plain Python, torchvision and ffmpeg, independent of lstmpipe.

Run through bench/naive.py, which times these imports.
"""

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

IMPORTED = time.perf_counter()


def video_size(ffmpeg: str, video: Path) -> tuple[int, int]:
    """(width, height) from what `ffmpeg -i` prints (no ffprobe in the imageio-ffmpeg wheel)."""
    text = subprocess.run(
        [ffmpeg, "-hide_banner", "-i", str(video)], capture_output=True, text=True
    ).stderr
    match = re.search(r"Video: .*?[ ,](\d+)x(\d+)[ ,]", text)
    if match is None:
        raise SystemExit(f"{video}: no video stream in ffmpeg's output")
    return int(match.group(1)), int(match.group(2))


def read_frames(ffmpeg: str, video: Path, fps: float | None) -> np.ndarray:
    """Every frame (after an fps filter when `fps` is
    given) as (N, H, W, 3) uint8, all in memory."""
    width, height = video_size(ffmpeg, video)
    cmd = [ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(video)]
    cmd += ["-vf", f"fps={fps}"] if fps else []
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3)


def main(started_imports: float) -> None:
    """Extract the videos on the command line; one JSON line on stdout."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for one .npy per video (required)"
    )
    parser.add_argument(
        "--fps", type=float, default=8.0, help="frames per second sampled (default 8)"
    )
    parser.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="N frames uniformly spaced over all decoded frames instead of --fps (default off)",
    )
    parser.add_argument("--size", type=int, default=224, help="crop size in px (default 224)")
    parser.add_argument(
        "--ffmpeg",
        default=imageio_ffmpeg.get_ffmpeg_exe(),
        help="ffmpeg binary (default: imageio-ffmpeg's)",
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    started = time.perf_counter()
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    # everything but the classifier head: pooled (N, 512) features
    model = torch.nn.Sequential(*list(resnet.children())[:-1], torch.nn.Flatten(1))
    model.eval()
    preprocess = T.Compose(
        [
            T.Resize(args.size),
            T.CenterCrop(args.size),
            T.ToTensor(),
            T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    model_s = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    frames_total, decode_s, cnn_s = 0, 0.0, 0.0
    for video in args.videos:
        t0 = time.perf_counter()
        frames = read_frames(args.ffmpeg, video, None if args.num_frames else args.fps)
        if args.num_frames:
            frames = frames[np.linspace(0, len(frames) - 1, args.num_frames).round().astype(int)]
        t1 = time.perf_counter()
        features = []
        with torch.no_grad():
            for frame in frames:
                x = torch.as_tensor(preprocess(Image.fromarray(frame))).unsqueeze(0)  # (1, 3, S, S)
                features.append(model(x).numpy()[0])  # (512,)
        np.save(args.out / f"{video.stem}.npy", np.stack(features))
        decode_s += t1 - t0
        cnn_s += time.perf_counter() - t1
        frames_total += len(frames)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "videos": len(args.videos),
                "frames": frames_total,
                "seconds": round(seconds, 2),
                "fps": round(frames_total / seconds, 2),
                "import_s": round(IMPORTED - started_imports, 2),
                "model_s": round(model_s, 2),
                "decode_s": round(decode_s, 2),
                "cnn_s": round(cnn_s, 2),  # transforms + forward, frame by frame
                "threads": torch.get_num_threads(),
            }
        )
    )
