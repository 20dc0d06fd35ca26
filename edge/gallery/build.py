"""The one builder of a gallery: from each identity's templates, wherever they came from (enrolment
reports, a bundle's identities, the lab's casts), to the ``Gallery`` the matcher judges with."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from edge.recognition.match import Gallery
from edge.types import FloatArray


class Enrolled(Protocol):
    """An identity and the embeddings of its photos (None or none: nothing to match it by)."""

    @property
    def identity_id(self) -> str: ...

    @property
    def label(self) -> str | None: ...

    @property
    def embeddings(self) -> FloatArray | None: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """An identity's templates given directly (a bundle's identity, a measurement's cast)."""

    identity_id: str
    label: str | None
    embeddings: FloatArray | None


def gallery_of(enrolled: Iterable[Enrolled], version: int = 0, name: str = "") -> Gallery:
    """Every identity that has embeddings, in order; rows are made unit length, templates their means."""
    entries = [
        (e.identity_id, e.label, e.embeddings) for e in enrolled if e.embeddings is not None and len(e.embeddings)
    ]
    return Gallery.build(entries, version=version, name=name)
