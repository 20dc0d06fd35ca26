"""Error types with the exit code the CLI maps them to.

Every error carries a one-line message that names the cause (the file, the key,
the value); the CLI prints it as it is and exits with ``exit_code``.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of the project's errors: a runtime failure (exit code 1)."""

    exit_code = 1


class InputError(EdgeError):
    """Bad usage or invalid input: corrupt image, bad config, bad file (exit code 2)."""

    exit_code = 2


class ModelError(InputError):
    """A model file is missing, truncated, altered or of the wrong shape."""


class ImageError(InputError):
    """An image could not be read or decoded."""
