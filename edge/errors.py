"""Error types with the exit code the CLI maps them to.

Every error carries a one-line message that names the cause (the file, the key,
the value); the CLI prints it as it is and exits with ``exit_code``.
"""

from __future__ import annotations

import stat
from pathlib import Path


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


def read_input_file(path: Path, what: str, max_bytes: int, error: type[InputError] = InputError) -> bytes:
    """The bytes of a file someone named (an image, a bundle), or ``error`` with one line
    naming why not: missing, a folder, not a regular file (a FIFO or device would block),
    larger than ``max_bytes``, unreadable."""
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {path} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{what} {path} is {st.st_size} bytes, over the limit of {max_bytes}")
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
