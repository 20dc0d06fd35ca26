"""Where frames come from: frame sources behind one small protocol (camera, file, stream,
image folder, picamera2), the reader thread that feeds the loop, still-image reading
(``imageio``) and composited scenes for the demo and benchmarks (``scenes``)."""

from edge.capture.reader import CaptureThread, FrameHub, LatestFrame
from edge.capture.sources import FrameSource, SourceError, open_source

__all__ = ["CaptureThread", "FrameHub", "FrameSource", "LatestFrame", "SourceError", "open_source"]
