"""Composited camera scenes: people pasted into frames at the size a given distance gives.

Used by ``edge eval range``, ``edge bench`` and the demo clip. A 16 cm wide face
at ``d`` metres from a camera with horizontal field ``hfov`` spans
``width · 0.16 / (2 d tan(hfov/2))`` pixels. Portraits are LFW-style 250×250 crops
whose face is about 0.4 of the width; they are pasted with a feathered elliptical
mask so that no square patch edge is left for a detector to key on. Backgrounds are
structured (walls, doors, frames, texture) and each frame gets its own sensor noise,
so motion detection meets what a real camera gives it.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
import numpy.typing as npt

from edge.types import ImageArray

HFOV_DEG = 60.0
FACE_WIDTH_M = 0.16
# LFW-style 250×250 portraits: the face is about 100 px wide in the middle.
PORTRAIT_FACE_FRACTION = 0.4


def face_px_at(distance_m: float, width: int = 640, hfov_deg: float = HFOV_DEG) -> float:
    """Width in pixels of a 16 cm wide face at ``distance_m`` from a ``hfov_deg`` camera ``width`` px wide."""
    return float(width * FACE_WIDTH_M / (2 * distance_m * np.tan(np.radians(hfov_deg / 2))))


def gradient_background(width: int, height: int, rng: np.random.Generator) -> ImageArray:
    """A plain lit wall: a gradient with fixed noise (the demo's and the bench's backdrop)."""
    y, x = np.mgrid[0:height, 0:width]
    base = (90 + 60 * x / width + 30 * y / height)[..., None] * np.array([1.0, 0.95, 0.9])
    noise = rng.normal(0, 6, (height, width, 3))
    out: ImageArray = np.clip(base + noise, 0, 255).astype(np.uint8)
    return out


def hall_background(width: int, height: int, rng: np.random.Generator) -> ImageArray:
    """A hall: lit walls, doors and frames, posters, a floor, fine texture; deterministic per ``rng``."""
    frame = gradient_background(width, height, rng).astype(np.float32)
    floor = int(height * rng.uniform(0.62, 0.75))
    frame[floor:] = frame[floor:] * 0.55 + np.array([40, 50, 60], np.float32)
    for _ in range(int(rng.integers(4, 9))):  # doors, frames, posters, furniture
        w, h = int(rng.uniform(0.05, 0.2) * width), int(rng.uniform(0.15, 0.6) * height)
        x0, y0 = int(rng.uniform(0, width - w)), int(rng.uniform(0.05, 0.7) * height)
        colour = rng.uniform(30, 220, 3)
        frame[y0 : y0 + h, x0 : x0 + w] = frame[y0 : y0 + h, x0 : x0 + w] * 0.3 + colour * 0.7
        cv2.rectangle(frame, (x0, y0), (x0 + w, y0 + h), rng.uniform(10, 80, 3).tolist(), max(1, width // 400))
    texture = cv2.resize(rng.normal(0, 10, (height // 8 + 1, width // 8 + 1, 3)), (width, height))
    out: ImageArray = np.clip(frame + texture, 0, 255).astype(np.uint8)
    return out


def smooth_background(width: int, height: int, rng: np.random.Generator, cell: int = 60) -> ImageArray:
    """A smooth textured wall: a grey level of 60-190 per ``cell`` px cell, a tint of ±12 per channel,
    upscaled with cubic interpolation, with fixed sensor noise (sigma 6). Such a wall is where
    BlazeFace draws large false boxes (hundreds of pixels) that hold the real faces in front of it."""
    gw, gh = width // cell + 2, height // cell + 2
    grey = rng.uniform(60, 190, (gh, gw, 1)) + rng.uniform(-12, 12, (1, 1, 3))
    big = cv2.resize(grey.astype(np.float32), (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)[:height, :width]
    out: ImageArray = np.clip(big + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    return out


# An LFW deep-funneled 250×250 portrait cut to the head (rows 20-230, columns 30-220): its face is ~110 px wide.
HEAD_ROWS, HEAD_COLS, HEAD_FACE_PX = (20, 230), (30, 220), 110.0


def paste_head(frame: ImageArray, portrait: ImageArray, cx: float, cy: float, face_px: float) -> None:
    """Draw the head of an LFW-style portrait into ``frame`` so that its face is ``face_px`` wide, centred
    at (cx, cy), through a feathered ellipse (semi-axes 0.46 w, 0.48 h, Gaussian edge of w / 12)."""
    head = portrait[HEAD_ROWS[0] : HEAD_ROWS[1], HEAD_COLS[0] : HEAD_COLS[1]]
    scale = face_px / HEAD_FACE_PX
    w, h = max(4, round(head.shape[1] * scale)), max(4, round(head.shape[0] * scale))
    tile = cv2.resize(head, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x0, y0 = round(cx - w / 2), round(cy - h / 2)
    fh, fw = frame.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, fw), min(y0 + h, fh)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    alpha = _ellipse(w, h)[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    part = tile[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0].astype(np.float32)
    under = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    frame[fy0:fy1, fx0:fx1] = (part * alpha + under * (1.0 - alpha)).astype(np.uint8)


@cache
def _ellipse(w: int, h: int) -> npt.NDArray[np.float32]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inside = (((xx - w / 2) / (0.46 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2 <= 1.0).astype(np.float32)
    alpha: npt.NDArray[np.float32] = cv2.GaussianBlur(inside, (0, 0), max(w / 12, 0.5))[..., None]
    return alpha


@cache
def _feather(side: int) -> npt.NDArray[np.float32]:
    """An elliptical alpha mask over a portrait's head and shoulders, soft at the edge."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / max(side - 1, 1)
    r = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.55) / 0.5) ** 2
    alpha: npt.NDArray[np.float32] = np.clip((1.0 - r) / 0.25, 0.0, 1.0).astype(np.float32)[..., None]
    return alpha


def paste(frame: ImageArray, portrait: ImageArray, cx: float, cy: float, face_px: float, feather: bool = True) -> None:
    """Draw ``portrait`` into ``frame`` so that its face is ``face_px`` wide, centred at (cx, cy)."""
    side = max(8, round(face_px / PORTRAIT_FACE_FRACTION))
    interp = cv2.INTER_AREA if side < portrait.shape[1] else cv2.INTER_LINEAR
    tile = cv2.resize(portrait, (side, side), interpolation=interp)
    x0, y0 = int(cx - side / 2), int(cy - side / 2)
    h, w = frame.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    part = tile[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    if not feather:
        frame[fy0:fy1, fx0:fx1] = part
        return
    alpha = _feather(side)[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    under = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    frame[fy0:fy1, fx0:fx1] = (part * alpha + under * (1.0 - alpha)).astype(np.uint8)


def sensor_noise(frame: ImageArray, rng: np.random.Generator, sigma: float = 2.0) -> ImageArray:
    """The frame as a camera would deliver it: with its own temporal noise."""
    noise = rng.normal(0.0, sigma, frame.shape[:2]).astype(np.float32)[..., None]
    out: ImageArray = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return out
