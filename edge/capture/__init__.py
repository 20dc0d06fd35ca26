"""Frame sources behind one small protocol, and the reader thread that feeds the loop."""

from edge.capture.reader import CaptureThread, LatestFrame
from edge.capture.sources import FrameSource, SourceError, open_source

__all__ = ["CaptureThread", "FrameSource", "LatestFrame", "SourceError", "open_source"]
