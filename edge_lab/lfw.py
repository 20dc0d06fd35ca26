"""The LFW verification protocol on any ``pairs.txt``-format file.

Format: the first line is either ``N`` (View 1: N same pairs, then N different
pairs) or ``F N`` (View 2: F folds, each N same then N different pairs). Same
pairs are ``name n1 n2``, different pairs ``name1 n1 name2 n2``; images are
``ROOT/name/name_%04d.jpg``.

Accuracy is 10-fold cross-validated: the threshold is chosen on nine folds and
applied to the tenth. A file with folds uses its own folds; a file without
(View 1) is split into ten folds round-robin within the same and the different
pairs (pair i goes to fold i mod 10), which is stated in the report.

TAR at a given FMR uses the threshold at which that FMR is reached over *all*
cross-identity pairs of the images embedded (millions of pairs), not only the
few hundred different pairs of the file, so rates down to 1e-4 are measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.errors import InputError
from edge.recognition.pipeline import Recognizer
from edge.types import AlignedFace, Box, Face, ImageArray

FloatArray = npt.NDArray[np.float32]
# FMR levels of the calibration table: 10^-1 … 10^-6 in quarter decades.
TABLE_FMRS = tuple(float(10 ** (-k / 4)) for k in range(4, 25))


@dataclass(frozen=True, slots=True)
class Pair:
    name1: str
    n1: int
    name2: str
    n2: int
    fold: int

    @property
    def same(self) -> bool:
        return self.name1 == self.name2


@dataclass(frozen=True, slots=True)
class PairsFile:
    pairs: tuple[Pair, ...]
    folds: int
    has_folds: bool


def people_photos(root: Path) -> dict[str, list[Path]]:
    """Every person's photos of an LFW-style folder (``NAME/NAME_NNNN.jpg``, or under ``images/``), by name."""
    if not root.is_dir():
        raise InputError(f"--root {root}: no such folder (LFW View 1: NAME/NAME_NNNN.jpg, or with images/)")
    images = root / "images" if (root / "images").is_dir() else root
    people = {p.name: sorted(p.glob("*.jpg")) for p in sorted(images.iterdir()) if p.is_dir()}
    people = {k: v for k, v in people.items() if v}
    if not people:
        raise InputError(f"no LFW-style images (NAME/NAME_NNNN.jpg) under {root}")
    return people


def covering_pairs(people: dict[str, list[Path]], seed: int = 0) -> list[str]:
    """A View 1-format pairs file (its lines) that names every image at least once.

    ``edge eval lfw`` counts the impostor pairs of every image a pairs file names, so with this
    file all cross-identity pairs of the folder count (View 1: 12.4 million, not the 1.2 million
    of ``pairsDevTest.txt``). Same pairs: each person's consecutive photos. Different pairs: as
    many, first naming the images no same pair names (one-photo people), then random people.
    """
    rng = np.random.default_rng(seed)
    names = sorted(people)
    number = {name: [int(p.stem.rsplit("_", 1)[-1]) for p in people[name]] for name in names}
    same = [f"{n}\t{a}\t{b}" for n in names for a, b in zip(number[n], number[n][1:], strict=False)]
    alone = [(n, number[n][0]) for n in names if len(number[n]) == 1]
    if len(same) < 1 or len(names) < 2:
        raise InputError("a covering pairs file needs a person with two photos and two people")

    def other(name: str) -> tuple[str, int]:
        while (pick := names[int(rng.integers(len(names)))]) == name:
            pass
        return pick, number[pick][int(rng.integers(len(number[pick])))]

    different: list[str] = []
    while alone and len(different) < len(same):
        first = alone.pop(0)
        second = alone.pop(0) if len(alone) > len(same) - len(different) - 1 else other(first[0])
        different.append(f"{first[0]}\t{first[1]}\t{second[0]}\t{second[1]}")
    if alone:
        raise InputError(f"{len(alone)} one-photo people left over: too few same pairs to balance them")
    while len(different) < len(same):
        name = names[int(rng.integers(len(names)))]
        pick = other(name)
        different.append(f"{name}\t{number[name][int(rng.integers(len(number[name])))]}\t{pick[0]}\t{pick[1]}")
    return [str(len(same)), *same, *different]


def image_path(root: Path, name: str, n: int) -> Path:
    return root / name / f"{name}_{n:04d}.jpg"


def parse_pairs(path: Path) -> PairsFile:
    try:
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise InputError(f"pairs file {path} cannot be read: {exc.strerror or exc}") from None
    if not lines:
        raise InputError(f"pairs file {path} is empty")
    head = lines[0]
    try:
        if len(head) == 1:
            n_folds, per, has_folds = 1, int(head[0]), False
        elif len(head) == 2:
            n_folds, per, has_folds = int(head[0]), int(head[1]), True
        else:
            raise ValueError
    except ValueError:
        raise InputError(f"pairs file {path}: header {' '.join(head)!r} is not 'N' or 'FOLDS N'") from None
    body = lines[1:]
    if len(body) != n_folds * per * 2:
        raise InputError(f"pairs file {path}: header promises {n_folds * per * 2} pairs, file has {len(body)}")
    pairs = []
    for i, tok in enumerate(body):
        block, pos = divmod(i, 2 * per)
        fold = block if has_folds else (pos % per) % 10
        try:
            if len(tok) == 3:
                pairs.append(Pair(tok[0], int(tok[1]), tok[0], int(tok[2]), fold))
            elif len(tok) == 4:
                pairs.append(Pair(tok[0], int(tok[1]), tok[2], int(tok[3]), fold))
            else:
                raise ValueError
        except ValueError:
            raise InputError(f"pairs file {path}: line {i + 2} {' '.join(tok)!r} is not a pair") from None
    return PairsFile(tuple(pairs), n_folds if has_folds else 10, has_folds)


def best_threshold(scores: FloatArray, same: npt.NDArray[np.bool_]) -> float:
    """The threshold maximising accuracy on (scores, same), midway between scores."""
    order = np.argsort(scores)
    s, y = scores[order], same[order]
    # Accuracy if the threshold sits just above s[i]: negatives at or below, positives above.
    neg_below = np.cumsum(~y)
    pos_above = y.sum() - np.cumsum(y)
    acc = (neg_below + pos_above) / len(s)
    i = int(np.argmax(acc))
    # Also the option of accepting everything.
    if y.mean() > acc[i]:
        return float(s[0] - 1e-6)
    nxt = s[i + 1] if i + 1 < len(s) else s[i] + 1e-3
    return float((s[i] + nxt) / 2)


def cross_validated_accuracy(
    scores: FloatArray, same: npt.NDArray[np.bool_], folds: npt.NDArray[np.int_]
) -> tuple[float, float, list[float]]:
    accs, thresholds = [], []
    for f in np.unique(folds):
        test = folds == f
        t = best_threshold(scores[~test], same[~test])
        accs.append(float(((scores[test] >= t) == same[test]).mean()))
        thresholds.append(t)
    return float(np.mean(accs)), float(np.std(accs)), thresholds


def impostor_blocks(
    emb: FloatArray, person: npt.NDArray[np.int_], block: int = 1024
) -> Iterator[tuple[slice, slice, FloatArray, npt.NDArray[np.bool_]]]:
    """Blocks of the upper triangle of the score matrix: (rows, columns, scores, mask of the pairs
    of images of different people), so millions of pairs are scored without the full matrix."""
    n = len(emb)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = emb[start:stop] @ emb[start:].T
        rows = np.arange(start, stop)[:, None]
        cols = np.arange(start, n)[None, :]
        mask = (cols > rows) & (person[start:stop, None] != person[None, start:])
        yield slice(start, stop), slice(start, n), sims, mask


def impostor_scores(emb: FloatArray, person: npt.NDArray[np.int_], block: int = 1024) -> FloatArray:
    """Cosine scores of every pair of images of different people (upper triangle)."""
    parts = [sims[mask] for _, _, sims, mask in impostor_blocks(emb, person, block)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def threshold_at_fmr(impostors: FloatArray, fmr: float) -> float:
    """Smallest threshold t with (impostors >= t).mean() <= fmr (exact, from sorted scores)."""
    k = int(np.floor(fmr * len(impostors)))  # impostors allowed at or above t
    if k >= len(impostors):
        return float(impostors.min())
    top = np.partition(impostors, len(impostors) - k - 1)[len(impostors) - k - 1 :]
    return float(np.nextafter(np.float32(top.min()), np.float32(2.0)))


def calibration_table(impostors: FloatArray, fmrs: Iterable[float] = TABLE_FMRS) -> list[list[float]]:
    """Rows [fmr, threshold] for FMRs with at least 10 impostor pairs behind them."""
    ordered = np.sort(impostors)[::-1]
    n = len(ordered)
    rows = []
    for f in fmrs:
        k = int(np.floor(f * n))
        if k < 10:
            break
        t = float(np.nextafter(ordered[k], np.float32(2.0)))  # exactly k scores are > ordered[k]
        rows.append([f, math.ceil(t * 1e6) / 1e6])  # rounded up: never looser than measured
    thresholds = [r[1] for r in rows]
    if thresholds != sorted(thresholds):
        raise ValueError("calibration thresholds are not monotone")
    return rows


@dataclass
class EmbeddedSet:
    """Embeddings of the distinct images named by a pairs file."""

    keys: list[tuple[str, int]]
    emb: FloatArray
    person: npt.NDArray[np.int_]
    missing: set[tuple[str, int]]
    no_face: int
    fallback_counts: dict[str, int]


def embed_pairs_images(
    root: Path,
    pairs: PairsFile,
    embed_image: Callable[[Path], tuple[FloatArray | None, str]],
    progress: Callable[[int, int], None] | None = None,
) -> EmbeddedSet:
    """Embed every distinct image once. ``embed_image`` returns (vector | None, fallback)."""
    wanted = sorted({(p.name1, p.n1) for p in pairs.pairs} | {(p.name2, p.n2) for p in pairs.pairs})
    keys, vecs, missing = [], [], set()
    fallbacks: dict[str, int] = {}
    for i, key in enumerate(wanted):
        path = image_path(root, *key)
        if not path.is_file():
            missing.add(key)
        else:
            vec, fallback = embed_image(path)
            if vec is None:
                missing.add(key)
            else:
                keys.append(key)
                vecs.append(vec)
                if fallback:
                    fallbacks[fallback] = fallbacks.get(fallback, 0) + 1
        if progress:
            progress(i + 1, len(wanted))
    names = {name: j for j, name in enumerate(sorted({k[0] for k in keys}))}
    person = np.array([names[k[0]] for k in keys], np.int64)
    emb = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, 192), np.float32)
    no_face = sum(fallbacks.values())
    return EmbeddedSet(keys, emb, person, missing, no_face, fallbacks)


@dataclass(frozen=True)
class LfwReport:
    pairs: int
    skipped: int
    no_face: int
    fallbacks: dict[str, int]
    folds: int
    split: str
    accuracy_mean: float
    accuracy_std: float
    tar_at_fmr: dict[str, float]
    impostor_pairs: int
    default_threshold: float
    stated_fmr: float
    observed_fmr: float


def evaluate(
    pairs: PairsFile,
    data: EmbeddedSet,
    default_threshold: float,
    stated_fmr: float,
) -> LfwReport:
    index = {k: i for i, k in enumerate(data.keys)}
    usable = [p for p in pairs.pairs if (p.name1, p.n1) in index and (p.name2, p.n2) in index]
    a = data.emb[[index[(p.name1, p.n1)] for p in usable]]
    b = data.emb[[index[(p.name2, p.n2)] for p in usable]]
    scores = (a * b).sum(axis=1)
    same = np.array([p.same for p in usable])
    folds = np.array([p.fold for p in usable])
    mean, std, _ = cross_validated_accuracy(scores, same, folds)
    impostors = impostor_scores(data.emb, data.person)
    tar = {}
    for label, fmr in (("1e-3", 1e-3), ("1e-4", 1e-4)):
        t = threshold_at_fmr(impostors, fmr)
        tar[label] = float((scores[same] >= t).mean()) if same.any() else float("nan")
    observed = float((impostors >= default_threshold).mean()) if len(impostors) else float("nan")
    split = "the file's own folds" if pairs.has_folds else "10 folds, pair i of each half in fold i mod 10"
    return LfwReport(
        pairs=len(usable),
        skipped=len(pairs.pairs) - len(usable),
        no_face=data.no_face,
        fallbacks=data.fallback_counts,
        folds=pairs.folds,
        split=split,
        accuracy_mean=mean,
        accuracy_std=std,
        tar_at_fmr=tar,
        impostor_pairs=len(impostors),
        default_threshold=default_threshold,
        stated_fmr=stated_fmr,
        observed_fmr=observed,
    )


def centre_face(image: ImageArray) -> Face:
    """A face assumed centred and filling half the image (an LFW image), keypoints from the template."""
    from edge.vision import align as align_mod

    h, w = image.shape[:2]
    side = 0.5 * min(h, w)
    scale = side / align_mod.CROP
    x0, y0 = (w - side) / 2, (h - side) / 2
    kp = np.vstack([align_mod.TEMPLATE_4, [[20.0, 55.0], [92.0, 55.0]]]) * scale + [x0, y0]
    return Face(Box(x0, y0, x0 + side, y0 + side), kp.astype(np.float32), 0.0, "centre")


def still_or_centre(recognizer: Recognizer, image: ImageArray) -> tuple[AlignedFace, str]:
    """The device's still-photo path on an LFW image; when it finds no face, the centred face every LFW
    image has, aligned from the template's points (and said: ``centre-box``). Always a face: the protocol
    scores every pair."""
    res = recognizer.still(image)
    if res.aligned is not None:
        return res.aligned, res.fallback
    return recognizer.align(image, [centre_face(image)])[0], "centre-box"
