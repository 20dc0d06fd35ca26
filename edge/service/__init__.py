"""The applications composed from the layers below: the device service (``app``), the
demo, and ``edge identify``."""
