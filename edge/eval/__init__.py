"""Measurement: the LFW protocol (``edge eval``) and the benchmark (``edge bench``)."""
