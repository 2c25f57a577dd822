"""Labelled clips whose classes differ only in the direction of motion.

Every class has a twin that is itself played backwards: `left` is `right` reversed,
`up` is `down`, `anticlockwise` is `clockwise`. A clip and its twin's clip with the same
number share one random draw, so each pair holds exactly the same frames: frame
averaging can at best tell which pair a clip belongs to (accuracy 1/2 with three
pairs), and only the order of frames tells the direction.

Kinds of direction (pairs): an object travelling across the frame (`horizontal`,
`vertical`, `diagonal`), an object circling (`orbit`), and the whole textured scene
sliding under a still camera window (`pan`: no object, everything moves). The default
sample holds horizontal, vertical and orbit; diagonal and pan are kept for checking a
recipe on kinds it was not tuned on. Positions, paths, speeds, shapes, colours, a
still distractor and noise are drawn per clip, so no single frame position or colour
gives a class away.

Clips are H.264 MP4s written like the video sample's (lib/demo/video.py write_clip):
the same arguments give byte-identical files.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstmpipe.lib.demo.folders import publish_sample
from lstmpipe.lib.demo.video import write_clip
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.sources.ffmpeg import ffmpeg_version

# kind -> (the class moving forward, its time reversal)
PAIRS = {
    "horizontal": ("right", "left"),
    "vertical": ("down", "up"),
    "orbit": ("clockwise", "anticlockwise"),
    "diagonal": ("down_right", "up_left"),
    "pan": ("pan_right", "pan_left"),
}
DEFAULT_KINDS = ("horizontal", "vertical", "orbit")
HELD_OUT_KINDS = ("diagonal", "pan")
_SHAPES = ("disc", "square", "triangle")
_FORMAT = 1  # bump when rendering changes: old samples are then regenerated
SIZE, FPS = 96, 8  # frame width = height in px; frames per second written into the MP4
MIN_FRAMES, MAX_FRAMES = 14, 22


@dataclass(frozen=True)
class MotionDraw:
    """Everything random about one clip (and its twin); rendering it is a pure function."""

    frames: int
    start: int  # frame where the motion starts; held before it
    end: int  # frame where it stops; held after it
    path: tuple[float, float, float, float]  # travel: x0, y0, x1, y1 | orbit: cx, cy, r, turn
    angle: float  # orbit: start angle, radians
    shape: str
    radius: float  # of the moving shape, fraction of the size
    colour: tuple[int, int, int]
    background: tuple[int, int, int]
    distractor: tuple[float, float, float] | None  # a still shape: x, y, radius (fractions)
    noise_sigma: float
    seed: int  # noise and the pan's texture


def draw_motion(kind: str, rng: np.random.Generator) -> MotionDraw:
    """One clip's timing, path, looks and noise for `kind` (a key of PAIRS)."""
    frames = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    slack = frames // 5 + 1
    dark, bright = _rgb(rng.integers(0, 90, 3)), _rgb(rng.integers(150, 256, 3))
    colour, background = (bright, dark) if rng.random() < 0.5 else (dark, bright)
    span = float(rng.uniform(0.35, 0.6))  # of the frame, start to end
    across = float(rng.uniform(-0.3, 0.3))  # where the path runs, off the centre line
    offset = float(rng.uniform(-0.1, 0.1))  # where along it the motion is centred
    if kind == "horizontal":
        path = (offset - span / 2, across, offset + span / 2, across)
    elif kind == "vertical":
        path = (across, offset - span / 2, across, offset + span / 2)
    elif kind == "diagonal":
        d = span / 2 / np.sqrt(2)
        path = (offset - d, across - d, offset + d, across + d)
    elif kind == "orbit":
        cx, cy = (float(v) for v in rng.uniform(-0.1, 0.1, 2))
        # radius, then how much of a full turn it travels
        path = (cx, cy, float(rng.uniform(0.18, 0.3)), float(rng.uniform(0.6, 1.0)))
    elif kind == "pan":
        path = (-span / 2, 0.0, span / 2, 0.0)
    else:
        raise ConfigError(f"direction kind {kind!r}; expected one of {', '.join(PAIRS)}")
    still = (float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.35, 0.35)), 0.08)
    return MotionDraw(
        frames=frames,
        start=int(rng.integers(0, slack)),
        end=frames - 1 - int(rng.integers(0, slack)),
        path=path,
        angle=float(rng.uniform(0, 2 * np.pi)),
        shape=_SHAPES[int(rng.integers(len(_SHAPES)))],
        radius=float(rng.uniform(0.07, 0.13)),
        colour=colour,
        background=background,
        distractor=still if kind != "pan" and rng.random() < 0.5 else None,
        noise_sigma=float(rng.uniform(2.0, 6.0)),
        seed=int(rng.integers(2**31)),
    )


def render_motion(kind: str, label: str, draw: MotionDraw, size: int = SIZE) -> np.ndarray:
    """Frames (T, size, size, 3) uint8; the pair's second class is the first played backwards."""
    t = np.arange(draw.frames, dtype=np.float64)
    progress = np.clip((t - draw.start) / max(draw.end - draw.start, 1), 0.0, 1.0)  # (T,)
    if kind == "pan":
        frames = _pan(draw, progress, size)
    else:
        x, y = _positions(kind, draw, progress)
        frames = _paint(draw, x, y, size)
    return frames[::-1] if label == PAIRS[kind][1] else frames


def generate_direction(
    root: Path, clips_per_class: int, seed: int, kinds: tuple[str, ...] = DEFAULT_KINDS
) -> Path:
    """Write `root/<label>/clip_<index>.mp4` for both classes of each kind and `labels.csv`."""
    unknown = [k for k in kinds if k not in PAIRS]
    if unknown or not kinds:
        raise ConfigError(f"direction kinds {unknown or 'empty'}; choose from {', '.join(PAIRS)}")
    if clips_per_class < 1:
        raise ConfigError(f"clips per class: {clips_per_class} must be >= 1")
    classes = [label for kind in kinds for label in PAIRS[kind]]
    spec = {
        "format": _FORMAT,
        "ffmpeg": ffmpeg_version(),
        "kinds": list(kinds),
        "clips_per_class": clips_per_class,
        "seed": seed,
    }

    def write(staging: Path) -> list[tuple[str, str]]:
        jobs = []
        for kind_index, kind in enumerate(PAIRS):
            if kind not in kinds:
                continue
            for index in range(clips_per_class):
                # one draw per pair and clip number: both classes of a pair share it
                draw = draw_motion(kind, np.random.default_rng([seed, kind_index, index]))
                jobs += [(kind, label, index, draw) for label in PAIRS[kind]]

        def encode(job: tuple[str, str, int, MotionDraw]) -> tuple[str, str]:
            kind, label, index, draw = job
            member = f"{label}/clip_{index:04d}.mp4"
            (staging / label).mkdir(exist_ok=True)
            write_clip(render_motion(kind, label, draw), FPS, staging / member)
            return member, label

        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(encode, jobs))

    return publish_sample(root, spec, classes, write)


def _positions(kind: str, draw: MotionDraw, progress: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The moving shape's centre per frame, as fractions of the size off the frame's centre."""
    if kind == "orbit":
        cx, cy, r, turn = draw.path
        angle = draw.angle + 2 * np.pi * turn * progress  # image y points down: clockwise
        return cx + r * np.cos(angle), cy + r * np.sin(angle)
    x0, y0, x1, y1 = draw.path
    return x0 + (x1 - x0) * progress, y0 + (y1 - y0) * progress


def _paint(draw: MotionDraw, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """The shape at each (x, y), a still distractor, noise: anti-aliased over the background."""
    grid = np.arange(size, dtype=np.float64) + 0.5 - size / 2  # pixel centres off the centre
    dx = grid[None, None, :] - (x * size)[:, None, None]  # (T, 1, W)
    dy = grid[None, :, None] - (y * size)[:, None, None]  # (T, H, 1)
    coverage = _coverage(draw.shape, dx, dy, draw.radius * size)  # (T, H, W)
    if draw.distractor is not None:
        sx, sy, sr = draw.distractor
        still = _coverage("square", grid[None, :] - sx * size, grid[:, None] - sy * size, sr * size)
        coverage = np.maximum(coverage, still[None])
    background, colour = np.asarray(draw.background, float), np.asarray(draw.colour, float)
    frames = background + coverage[..., None] * (colour - background)
    return _noisy(frames, draw)


def _pan(draw: MotionDraw, progress: np.ndarray, size: int) -> np.ndarray:
    """A window sliding right over a smooth random texture twice its width."""
    rng = np.random.default_rng(draw.seed)
    width = 2 * size
    xs = np.arange(width, dtype=np.float64)[None, :]  # (1, 2W)
    ys = np.arange(size, dtype=np.float64)[:, None]  # (H, 1)
    texture = np.zeros((size, width))
    for _ in range(6):  # a few oriented waves: blobs and stripes with no direction of their own
        fx, fy = rng.uniform(-6, 6, 2) / size
        texture += np.sin(2 * np.pi * (fx * xs + fy * ys) + rng.uniform(0, 2 * np.pi))
    texture = (texture - texture.min()) / (np.ptp(texture) or 1.0)  # (H, 2W) in [0, 1]
    shift = (size / 2 + (np.asarray(progress) * 2 - 1) * draw.path[2] * size).round().astype(int)
    window = np.stack([texture[:, s : s + size] for s in shift])  # (T, H, W)
    background, colour = np.asarray(draw.background, float), np.asarray(draw.colour, float)
    return _noisy(background + window[..., None] * (colour - background), draw)


def _noisy(frames: np.ndarray, draw: MotionDraw) -> np.ndarray:
    noise = np.random.default_rng(draw.seed).normal(0.0, draw.noise_sigma, frames.shape)
    return np.clip(np.rint(frames + noise), 0, 255).astype(np.uint8)


def _coverage(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """How much of each pixel the shape covers (0..1), anti-aliased over one pixel."""
    if shape == "disc":
        distance = np.hypot(dx, dy) - r
    elif shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - 0.886 * r  # the disc's area
    else:  # upward triangle: three edges at inradius r/2
        distance = np.maximum(np.maximum(dy, 0.866 * dx - 0.5 * dy), -0.866 * dx - 0.5 * dy) - r / 2
    return np.clip(0.5 - distance, 0.0, 1.0)


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in values)
    return red, green, blue
