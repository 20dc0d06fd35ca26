"""Model files: the manifest, the sha256 check and the TFLite interpreter.

This is the one place that imports the TFLite runtime: ``ai_edge_litert`` (the
maintained LiteRT package) and, where only that is installed, ``tflite_runtime``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError

MANIFEST_NAME = "manifest.json"
log = logging.getLogger(__name__)
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def runtime_chatter_to_debug() -> Iterator[None]:
    """What the TFLite runtime's C++ code prints to the process's stderr while a model loads ("INFO: Created
    TensorFlow Lite XNNPACK delegate for CPU.") goes to this module's logger at debug level instead: a
    terminal shows only the project's own lines. File descriptor 2 is pointed at a temporary file for the
    duration (model loading happens at start-up); what landed there is logged afterwards."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.debug("runtime: %s", line)


class Interpreter(Protocol):
    """The part of the TFLite interpreter API the project uses."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def resize_tensor_input(self, input_index: int, tensor_size: Sequence[int], strict: bool = ...) -> None: ...
    def set_tensor(self, tensor_index: int, value: npt.NDArray[Any]) -> None: ...
    def get_tensor(self, tensor_index: int) -> npt.NDArray[Any]: ...
    def invoke(self) -> None: ...


@cache
def interpreter_factory() -> Callable[..., Interpreter]:
    """The interpreter class: ``ai_edge_litert`` first, then ``tflite_runtime``."""
    factory: Callable[..., Interpreter]
    try:
        from ai_edge_litert import interpreter as litert

        factory = litert.Interpreter
        return factory
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflite_rt

        factory = tflite_rt.Interpreter
        return factory
    except ImportError as exc:
        raise ModelError(
            "no TFLite runtime: install 'ai-edge-litert' (or 'tflite-runtime' where LiteRT has no wheel)"
        ) from exc


def default_models_dir() -> Path:
    """Models shipped in the wheel (``edge/_models``) or beside a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_models", package.parent / "models"):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    return package.parent / "models"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One manifest entry: what the file must be and how to feed it."""

    key: str
    file: str
    sha256: str
    input_shape: tuple[int, ...]
    input_dtype: str


@dataclass(frozen=True, slots=True)
class EmbedderSpec:
    """How to feed one embedder and what it gives, read from its manifest entry (``role: embedder``):
    the input's side in pixels and channel order, the normalisation the project applies before the
    graph (``(pixel - mean) * scale``; mean 0 and scale 1 where the graph normalises itself) and the
    output dimension."""

    key: str
    size: int
    channels: str  # "RGB" | "BGR"
    mean: float
    scale: float
    dim: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """The parsed ``models/manifest.json``."""

    root: Path
    models: dict[str, ModelSpec]
    raw: dict[str, Any]  # everything else it holds: provenance, quantization trials

    def spec(self, key: str) -> ModelSpec:
        try:
            return self.models[key]
        except KeyError:
            raise ModelError(f"model '{key}' is not in {self.root / MANIFEST_NAME}") from None

    @property
    def embedders(self) -> tuple[str, ...]:
        """The manifest entries that are embedders, in the manifest's order."""
        return tuple(k for k, e in self.raw["models"].items() if e.get("role") == "embedder")

    def embedder(self, key: str) -> EmbedderSpec:
        """The input and output spec of embedder ``key``; a ModelError naming the embedders there are."""
        if key not in self.embedders:
            raise ModelError(
                f"embedder '{key}' is not in {self.root / MANIFEST_NAME}; its embedders: {', '.join(self.embedders)}"
            )
        entry = self.raw["models"][key]
        try:
            shape, norm = entry["input"]["shape"], entry["input"]["normalisation"]
            spec = EmbedderSpec(
                key=key,
                size=int(shape[1]),
                channels=str(entry["input"]["channels"]),
                mean=float(norm["mean"]),
                scale=float(norm["scale"]),
                dim=int(entry["output"]["shape"][-1]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"embedder '{key}' in {self.root / MANIFEST_NAME} is malformed: {exc!r}") from None
        if spec.channels not in ("RGB", "BGR") or shape[1] != shape[2] or spec.scale <= 0:
            raise ModelError(f"embedder '{key}' in {self.root / MANIFEST_NAME}: unsupported input {entry['input']}")
        return spec


def load_manifest(models_dir: Path | None = None) -> Manifest:
    """Read and check the manifest; a missing or malformed one is a ModelError."""
    root = models_dir or default_models_dir()
    path = root / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
        models = {
            key: ModelSpec(
                key=key,
                file=entry["file"],
                sha256=entry["sha256"],
                input_shape=tuple(entry["input"]["shape"]),
                input_dtype=entry["input"]["dtype"],
            )
            for key, entry in raw["models"].items()
        }
    except FileNotFoundError:
        raise ModelError(f"model manifest not found: {path}") from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"model manifest {path} is malformed: {exc!r}") from None
    return Manifest(root=root, models=models, raw=raw)


def read_verified(path: Path, sha256: str) -> bytes:
    """The bytes of ``path`` if their sha256 is ``sha256``; otherwise a ModelError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model file {path} cannot be read: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ModelError(
            f"model file {path} fails its checksum (sha256 {digest[:12]}…, manifest says {sha256[:12]}…): "
            "missing, truncated or altered; rebuild it with models/build.py or restore it"
        )
    return data


class TFLiteModel:
    """A verified model file loaded into an interpreter with one input tensor.

    ``run`` feeds a batch and returns the output arrays (copies). A model whose
    batch dimension is dynamic is resized on demand; the last allocation is kept,
    so a steady batch size costs nothing extra.
    """

    def __init__(self, path: Path, sha256: str, threads: int = 1) -> None:
        self.path = path
        self.sha256 = sha256
        content = read_verified(path, sha256)
        try:
            with runtime_chatter_to_debug():
                self._it = interpreter_factory()(model_content=content, num_threads=threads)
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model file {path} does not load: {exc}") from None
        inp = self._it.get_input_details()[0]
        self._input_index = int(inp["index"])
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in inp["shape"])
        self.input_dtype = np.dtype(inp["dtype"])
        self._outputs = [int(d["index"]) for d in self._it.get_output_details()]
        self.output_names = [str(d["name"]) for d in self._it.get_output_details()]
        self._batch = self.input_shape[0]

    def run(self, batch: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        if batch.shape[0] != self._batch:
            self._it.resize_tensor_input(self._input_index, list(batch.shape), strict=False)
            self._it.allocate_tensors()
            self._batch = batch.shape[0]
        self._it.set_tensor(self._input_index, batch.astype(self.input_dtype, copy=False))
        self._it.invoke()
        return [self._it.get_tensor(i).copy() for i in self._outputs]


def load_model(manifest: Manifest, key: str, threads: int = 1) -> TFLiteModel:
    spec = manifest.spec(key)
    return TFLiteModel(manifest.root / spec.file, spec.sha256, threads=threads)
