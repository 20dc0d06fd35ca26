"""The measuring lab: what measures the device and builds its tables, kept apart from what a device runs.

It imports the device package (``edge``) and is never imported by it (an import-linter contract in CI):
the LFW protocol and identification recall (``edge eval``), the benchmark, soak and camera scenes
(``edge bench``), range scenes, a simulated fleet, the dlib comparison and the figures. The model
building and calibration scripts in ``models/`` use it too.
"""
