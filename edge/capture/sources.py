"""Frame sources: OpenCV (V4L2 camera, video file, RTSP/HTTP URL), an image folder,
and the Raspberry Pi camera through ``picamera2`` when it is importable.

A source is opened, read until ``read`` returns None (exhausted: files only) or
raises SourceError (failed: a camera that vanished, a stream that dropped), and
closed. Reopening and back-off are the reader thread's job, not the source's.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edge.capture.imageio import IMAGE_SUFFIXES, read_image
from edge.device.redact import redact_url
from edge.errors import EdgeError, ImageError, InputError
from edge.types import ImageArray

log = logging.getLogger(__name__)


class SourceError(EdgeError):
    """A source failed to open or to deliver a frame."""


class FrameSource(Protocol):
    name: str
    live: bool  # a camera or stream: frames go stale; a file: every frame counts
    fps: float  # native rate (0 when unknown)
    stills: bool  # each frame a photo of its own (an image folder), not a moment of one scene

    def open(self) -> None: ...
    def read(self) -> ImageArray | None: ...
    def close(self) -> None: ...


def quiet_opencv() -> None:
    """OpenCV's own warnings on a camera that fails to open ('[ WARN:0@…] …') and FFmpeg's on a stream that
    does ('[tcp @ 0x…] Connection … failed') stay off the terminal: the source's error says what happened,
    once, through the project's logger. FFmpeg's level is read when OpenCV first starts it, so this runs
    before every open (a user's own OPENCV_FFMPEG_LOGLEVEL wins)."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


class OpenCVSource:
    """``cv2.VideoCapture`` on a camera index, a device path, a file or a URL."""

    stills = False

    def __init__(self, spec: str, width: int = 0, height: int = 0) -> None:
        self.spec = spec
        self.name = redact_url(spec)  # what logs and the status may show
        self.width, self.height = width, height
        self.is_camera = is_camera(spec)
        self.live = is_retried(spec)
        self.fps = 0.0
        self._cap: Any = None

    def open(self) -> None:
        quiet_opencv()
        target: str | int = int(self.spec) if self.spec.isdigit() else self.spec
        if not self.live and not Path(self.spec).is_file():
            raise SourceError(f"source {self.name}: no such file")
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2) if self.is_camera else cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"source {self.name}: cannot be opened")
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._cap = cap

    def read(self) -> ImageArray | None:
        if self._cap is None:
            raise SourceError(f"source {self.name}: not open")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if self.live:
                raise SourceError(f"source {self.name}: no frame (device gone or stream dropped)")
            return None
        return np.asarray(frame, np.uint8)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageDirSource:
    """Every image of a folder in name order, each a scene of its own (photos, not a video's frames); a
    corrupt file is skipped and logged."""

    live = False
    stills = True

    def __init__(self, folder: Path, fps: float = 30.0) -> None:
        self.folder = folder
        self.name = str(folder)
        self.fps = fps
        self._files: list[Path] = []
        self._next = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"source {self.folder}: no such folder")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"source {self.folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self._next = 0

    def read(self) -> ImageArray | None:
        while self._next < len(self._files):
            path = self._files[self._next]
            self._next += 1
            try:
                return read_image(path)
            except ImageError as exc:
                log.warning("skipping %s", exc)
        return None

    def close(self) -> None:
        self._files = []


class Picamera2Source:
    """The Raspberry Pi camera (libcamera) through the optional ``picamera2`` package."""

    stills = False

    live = True

    def __init__(self, width: int = 640, height: int = 480) -> None:
        self.name = "picamera2"
        self.fps = 0.0
        self.size = (width or 640, height or 480)
        self._cam: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError("source picamera2: the 'picamera2' package is not installed") from None
        try:
            cam = Picamera2()
            cam.configure(cam.create_video_configuration(main={"size": self.size, "format": "BGR888"}))
            cam.start()
        except Exception as exc:  # the library raises many kinds; all mean "camera unusable"
            raise SourceError(f"source picamera2: {exc}") from None
        self._cam = cam

    def read(self) -> ImageArray | None:
        try:
            return np.ascontiguousarray(self._cam.capture_array()[..., :3])
        except Exception as exc:
            raise SourceError(f"source picamera2: {exc}") from None

    def close(self) -> None:
        if self._cam is not None:
            self._cam.close()
            self._cam = None


def is_camera(spec: str) -> bool:
    """A camera index or a V4L2 device path."""
    return spec.isdigit() or spec.startswith("/dev/video")


def is_retried(spec: str) -> bool:
    """A camera, a stream URL, the Pi camera: live sources that come and go, retried with back-off. Anything
    else names a file or folder."""
    return spec == "picamera2" or is_camera(spec) or bool(re.match(r"^[a-z]+://", spec))


def check_at_start(spec: str) -> None:
    """A file or folder source that does not exist when the device starts is a configuration error (one
    line, exit 2); cameras and streams are retried instead."""
    if not is_retried(spec) and not Path(spec).exists():
        raise InputError(
            f"source {redact_url(spec)}: no such file or folder (a file source must exist when the device starts; "
            "a camera index, device or stream URL is retried)"
        )


def open_source(spec: str, fps: float = 30.0, width: int = 0, height: int = 0) -> FrameSource:
    """The source a ``--source`` string names (not opened yet)."""
    if spec == "picamera2":
        return Picamera2Source(width, height)
    if Path(spec).is_dir():
        return ImageDirSource(Path(spec), fps)
    return OpenCVSource(spec, width, height)
