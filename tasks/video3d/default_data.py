"""The embedded default: short videos whose class is a motion, written as MP4 with PyAV.

Every video shows one two-tone blob on a static background. Its state per frame is a
position (x, y), an orientation and a size; the class says which of them changes and which
way: ``right``, ``left``, ``up``, ``down`` (position), ``clockwise``, ``counterclockwise``
(orientation), ``approaching``, ``receding`` (size). Speeds are drawn per video.

A single frame cannot tell the class, by construction: a state that does not move is drawn
from the same distribution that a moving one sweeps through over the video, so the frames of
every class, pooled over time, have one and the same distribution —
position uniform on the torus (the canvas wraps around), orientation uniform, and
log-size "random midpoint + a random frame's offset" in all eight classes. Only the
*change* between frames carries the class; a single-frame model sits at chance (1/8).
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np

from cnnsuite.errors import ConfigError

MOTIONS = ("right", "left", "up", "down", "clockwise", "counterclockwise", "approaching", "receding")

FRAMES = 24  # per video: 3 s at 8 fps, i.e. three 1-second clips
FPS = 8
SIZE = 32  # pixels, square
SPEED = (1.0, 2.0)  # pixels per frame
SPIN = (15.0, 25.0)  # degrees per frame
ZOOM = (math.log(1.04), math.log(1.06))  # log-size change per frame
RADIUS = (6.0, 8.0)  # blob radius at the video's midpoint, pixels
SUPERSAMPLE = 2  # anti-aliasing: render at 2x and average


def render_motion(rng: np.random.Generator, motion: str, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """``(frames, size, size, 3)`` uint8 RGB frames of one video of class ``motion``."""
    if motion not in MOTIONS:
        raise ConfigError(f"motion={motion!r}: expected one of {', '.join(MOTIONS)}")
    tau = np.arange(frames) - (frames - 1) / 2  # time from the video's midpoint, in frames
    still = np.zeros(frames)
    speed, spin = rng.uniform(*SPEED), math.radians(rng.uniform(*SPIN))
    zoom = rng.uniform(*ZOOM)
    x = rng.uniform(0, size) + still
    y = rng.uniform(0, size) + still
    angle = rng.uniform(0, 2 * math.pi) + still
    mid_log_radius = rng.uniform(*np.log(RADIUS))
    # A still size holds the offset of one random frame of a zooming video: same distribution.
    log_radius = mid_log_radius + zoom * rng.choice(tau) + still
    sign = 1 if motion in ("right", "down", "clockwise", "approaching") else -1
    if motion in ("right", "left"):
        x = x + sign * speed * tau
    elif motion in ("up", "down"):
        y = y + sign * speed * tau  # image rows grow downwards
    elif motion in ("clockwise", "counterclockwise"):
        angle = angle + sign * spin * tau  # with y down, a growing angle turns clockwise on screen
    else:
        log_radius = mid_log_radius + sign * zoom * tau

    # The blob: a star-shaped polygon (random radii at jittered angles), two colours split
    # along an axis that turns with it, so orientation is visible.
    corners = int(rng.integers(5, 8))
    corner_angles = (np.arange(corners) + rng.uniform(-0.3, 0.3, corners)) * 2 * math.pi / corners
    corner_radii = rng.uniform(0.55, 1.0, corners)
    colours = rng.uniform(130, 255, (2, 3))
    background = _background(rng, size)

    n = size * SUPERSAMPLE
    grid = (np.arange(n) + 0.5) / SUPERSAMPLE
    gx, gy = np.meshgrid(grid, grid)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        dx = (gx - x[t] + size / 2) % size - size / 2  # offsets on the torus
        dy = (gy - y[t] + size / 2) % size - size / 2
        phi = (np.arctan2(dy, dx) - angle[t]) % (2 * math.pi)
        rho = np.hypot(dx, dy) / math.exp(log_radius[t])
        edge = np.interp(phi, corner_angles, corner_radii, period=2 * math.pi)
        inside = (rho < edge).astype(np.float32)
        tone = (phi < math.pi)[..., None]
        sprite = np.where(tone, colours[0], colours[1])
        alpha = _downsample(inside)[..., None]
        colour = _downsample(sprite * inside[..., None]) / np.maximum(alpha, 1e-6)
        frame = background * (1 - alpha) + colour * alpha + rng.normal(0, 4, (size, size, 3))
        out[t] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
    return out


def _downsample(a: np.ndarray) -> np.ndarray:
    s = SUPERSAMPLE
    h, w = a.shape[0] // s, a.shape[1] // s
    return a.reshape(h, s, w, s, *a.shape[2:]).mean(axis=(1, 3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A static dark background: a colour gradient in a random direction and a few soft blobs."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(direction) * xx + np.sin(direction) * yy)[..., None]
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    low, high = rng.uniform(0, 90, (2, 3))
    image = low * (1 - ramp) + high * ramp
    for _ in range(3):
        cx, cy, width = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.15)
        image += rng.uniform(10, 30) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))[..., None]
    return image


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """Write ``(T, H, W, 3)`` uint8 RGB frames as H.264 (MPEG-4 Part 2 if this PyAV lacks x264)."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"} if codec == "libx264" else {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_motion_dataset(folder: Path, videos_per_class: int, seed: int) -> None:
    """``folder/<motion>/<motion>_<index>.mp4`` for every motion."""
    rng = np.random.default_rng(seed)
    for motion in MOTIONS:
        (folder / motion).mkdir(parents=True)
        for index in range(videos_per_class):
            write_video(folder / motion / f"{motion}_{index:03d}.mp4", render_motion(rng, motion))
