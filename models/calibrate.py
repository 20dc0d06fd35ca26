#!/usr/bin/env python3
"""Score → false-match-rate tables for the shipped embedders: per face-size band, per evidence
kind (photos per identity, fused looks) and per imaging condition, each holding for the worst
labelled group. Needs the runtime only (no TensorFlow).

    python models/calibrate.py --lfw ../shared/data/lfw-view1 --groups ../shared/data/lfw-groups/gender.csv

Every LFW View 1 image goes through the device's own still path (the region scanner's window,
face mesh, alignment) and embedder, as it is (the gallery's side: enrolment photos) and, for
each face-size band, shrunk so that its face lands in the band (a size drawn per image,
seeded), in colour and converted to grey (a night camera's infrared picture): the probe's
side. A comparison is what the device makes: a probe (one look, or the mean of three looks of
one person: a confirmed track's fused looks) against a template (the mean of k photos of one
person, k in 1, 2, 3, 5; k = 1 is one photo). From every such pair of two different people the
script builds a table whose each row holds for all pairs and for the pairs inside each labelled
group (``edge_lab.groups.worst_group_table``, with a margin of 2 for sampling). A kind measured
on fewer pairs than one photo against one look has fewer rows; below its last one it is
continued along the one-photo table of its band and condition, raised by the largest gap seen
between the two over its last rows (``edge_lab.groups.anchored_rows``).

Validation (written to the manifest): tables built from the DevTrain identities are checked on
the DevTest identities and the other way round (no identity on both sides): the observed rate
of each group, band, kind and condition at the stated 1e-4 and 1e-5, for the default pipeline.
LFW images are read, never copied: only scores and rates are written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edge.capture.imageio import read_image  # noqa: E402
from edge.device.runtime import load_manifest  # noqa: E402
from edge.device.settings import Settings  # noqa: E402
from edge.recognition.calibration import (  # noqa: E402
    CALIBRATION_DIR,
    CONDITIONS,
    LOOK_LEVELS,
    TEMPLATE_LEVELS,
    CalibrationTable,
)
from edge.recognition.pipeline import Recognizer  # noqa: E402
from edge.vision.embed import l2_normalise  # noqa: E402
from edge_lab import groups as G  # noqa: E402
from edge_lab.conditions import apply_condition  # noqa: E402

# (min_px, max_px): box side of the detected face. LFW deep-funneled faces are ~106 px boxed.
BANDS: tuple[tuple[float, float | None], ...] = ((80, None), (50, 80), (36, 50), (28, 36), (24, 28))
NATIVE_BOX_PX = 106.0
ALIGNMENTS = ("mesh5", "keypoints4")
KINDS = tuple((k, m) for k in TEMPLATE_LEVELS for m in LOOK_LEVELS)
# Rows from 1e-1 down to 1e-7 (a gallery of 1,000 at 1e-4 per stranger asks each identity for 1e-7):
# below what the pairs measure (about 1e-6 with LFW View 1's 12 million), by the tail model.
CAL_FMRS = tuple(float(10 ** (-k / 4)) for k in range(4, 29))
DOWN_TO = 1e-7
SUBSETS = 3  # random k-subsets of one person's photos taken as templates (or probes), for more pairs
# A group's rate varies between samples of people more than its pair count suggests (LFW View 1,
# identity-disjoint halves: one half's table seen on the other half's women gave 2.7x its rate at
# 1e-4; with this factor 1.6x, within 2x both ways). Each row promising f carries the threshold
# measured for f / MARGIN.
MARGIN = 2.0
METHOD = (
    f"each row promising rate f carries the highest threshold, measured at f/{MARGIN:g}, of all cross-identity "
    "pairs (probe of the band and condition against a template of the kind's photos, colour, full size; a pair "
    "of two photos counted once; names LFW gives one person twice taken as one) and of "
    "the pairs inside each labelled group (gender, manually verified LFW labels); below a group's measurable "
    "floor (10 impostors) its rate is taken as R x the all-pairs rate, R its largest ratio near the floor; a kind "
    "other than one photo and one look continues below its own floor along the one-photo, one-look table plus "
    "the largest gap seen over its last 3 rows, or its own tail model where stricter"
)
DEFAULT = (
    Settings().models.embedder,
    "mesh5",
    True,
)  # what a device runs by default: validated on identity-disjoint halves


# Crops are kept whatever the head turn (the widest the settings allow) with their yaw: a table is then
# built for the turns one gate admits (--max-yaw) without aligning View 1 again.
OPEN_YAW = 3.0
CACHE_VERSION = "v2"
# The widest head turn the shipped tables are measured on (docs/thresholds.md: why this one).
MAX_YAW = 1.2  # v2: crops of every head turn, with their yaw


def recognizer(models: Path, **m: object) -> Recognizer:
    # Neither the size nor the turn gate is applied here: every face the band holds is measured.
    return Recognizer(
        Settings.model_validate(
            {"models": {"dir": str(models), **m}, "quality": {"min_face_px": 8, "max_yaw": OPEN_YAW}}
        )
    )


def crops_for(
    rec: Recognizer, images: list[Path], band: tuple[float, float | None], seed: int, condition: str
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Aligned crops of the faces a device would judge at this band's sizes in this condition, which
    images they are and each face's yaw: a face the detector found that passes the quality gate (its size
    and head turn apart)."""
    rng = np.random.default_rng(seed)
    lo, hi = band
    out, keep, yaw = [], np.zeros(len(images), bool), []
    for i, path in enumerate(images):
        image = apply_condition(read_image(path), condition)
        size = None if hi is None else float(rng.uniform(lo, hi))
        if size is not None:
            side = max(16, round(image.shape[1] * size / NATIVE_BOX_PX))
            image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        res = rec.still(image)
        if res.aligned is None or not res.aligned.quality.ok:
            continue
        out.append(res.aligned.crop)
        yaw.append(res.aligned.quality.yaw)
        keep[i] = True
    return out, keep, np.array(yaw, np.float32)


def embeddings(
    args: argparse.Namespace, images: list[Path], b: int, alignment: str, condition: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(which images gave a face the gate admits, embedding per embedder and flip), cached between runs: the
    aligned crops once (they do not depend on the embedder), each embedder's plain and mirrored vectors once;
    the faces turned further than ``args.max_yaw`` left out."""
    band = BANDS[b]
    name = f"{band[0]:g}-{alignment}-{args.seed + b}" + ("" if condition == "colour" else f"-{condition}")
    name += f"-{CACHE_VERSION}"
    crops_file = args.cache / f"{name}-crops.npz"
    args.cache.mkdir(parents=True, exist_ok=True)
    if crops_file.is_file():  # the same images, models and seed as a run before
        stored = np.load(crops_file)
        keep, crops, yaw = stored["keep"], stored["crops"], stored["yaw"]
    else:
        t0 = time.time()
        found, keep, yaw = crops_for(
            recognizer(args.models, alignment=alignment, embedder=args.embedders[0]),
            images,
            band,
            args.seed + b,
            condition,
        )
        crops = np.stack(found) if found else np.zeros((0, 112, 112, 3), np.uint8)
        np.savez(crops_file, keep=keep, crops=crops, yaw=yaw)
        print(
            f"  aligned {name}: {int(keep.sum())} of {len(images)} faces judged, {time.time() - t0:.0f}s",
            file=sys.stderr,
        )
    out = {}
    for embedder in args.embedders:
        vectors_file = args.cache / f"{name}-{embedder}.npz"
        if vectors_file.is_file():
            stored = np.load(vectors_file)
            plain, mirrored = stored["plain"], stored["mirrored"]
        else:
            rec = recognizer(args.models, alignment=alignment, embedder=embedder)
            both = [rec.embedder.embed_both(list(crops[i : i + 64])) for i in range(0, len(crops), 64)]
            plain = np.concatenate([p for p, _ in both]) if both else np.zeros((0, rec.embedder.dim), np.float32)
            mirrored = np.concatenate([m for _, m in both if m is not None]) if both else plain
            np.savez(vectors_file, plain=plain, mirrored=mirrored)
        out[f"{embedder}-False"] = plain
        out[f"{embedder}-True"] = l2_normalise(plain + mirrored)
    admitted = np.abs(yaw) <= args.max_yaw
    gated = keep.copy()
    gated[keep] = admitted
    return gated, {k: v[admitted] for k, v in out.items()}


class Side:
    """One side of the comparisons: vectors (a photo, or the mean of several of one person), whose
    person and group label each is, and which images made it (a genuine pair never shares one)."""

    def __init__(self, vectors: np.ndarray, person: np.ndarray, label: np.ndarray, members: list[tuple[int, ...]]):
        self.vectors, self.person, self.label, self.members = vectors, person, label, members

    @classmethod
    def build(
        cls, emb: np.ndarray, rows: np.ndarray, person: np.ndarray, label: np.ndarray, k: int, rng: np.random.Generator
    ) -> Side:
        """``emb[i]`` is image ``rows[i]``'s; k = 1: every image alone; else up to SUBSETS random k-subsets of
        each person's images (people with fewer than k are left out)."""
        if k == 1:
            return cls(emb, person[rows], label[rows], [(int(r),) for r in rows])
        vecs, who, lab, members = [], [], [], []
        by_person: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_person.setdefault(int(person[r]), []).append(i)
        for p, idx in by_person.items():
            if len(idx) < k:
                continue
            subsets = {tuple(sorted(rng.choice(idx, k, replace=False).tolist())) for _ in range(SUBSETS)}
            for s in sorted(subsets):
                mean = emb[list(s)].mean(axis=0)
                vecs.append(mean / np.linalg.norm(mean))
                who.append(p)
                labs = {label[rows[i]] for i in s}
                lab.append(labs.pop() if len(labs) == 1 else None)
                members.append(tuple(int(rows[i]) for i in s))
        return cls(np.array(vecs, np.float32).reshape(-1, emb.shape[1]), np.array(who), np.array(lab, object), members)


def impostor_tails(probes: Side, templates: Side, once: bool, block: int = 512) -> dict[str, G.Tail]:
    """Scores of every (probe, template) pair of two different people: all, each group's (both sides
    labelled with it), cross_group. ``once``: one photo each side, and each pair of photos counted
    once (probe before template in View 1's order), whatever size each side was shrunk to: the same
    two photos are one piece of evidence, not two."""
    names = sorted({str(g) for g in np.concatenate([probes.label, templates.label]) if g is not None})
    code = {g: i for i, g in enumerate(names)}
    pc = np.array([code.get(str(g), -1) if g is not None else -1 for g in probes.label])
    tc = np.array([code.get(str(g), -1) if g is not None else -1 for g in templates.label])
    parts: dict[str, list[np.ndarray]] = {"all": [], "cross_group": [], **{g: [] for g in names}}
    probe_image = np.array([m[0] for m in probes.members])
    template_image = np.array([m[0] for m in templates.members])
    for start in range(0, len(probes.vectors), block):
        stop = min(start + block, len(probes.vectors))
        sims = probes.vectors[start:stop] @ templates.vectors.T
        mask = probes.person[start:stop, None] != templates.person[None, :]
        if once:
            mask &= probe_image[start:stop, None] < template_image[None, :]
        a, b = pc[start:stop, None], tc[None, :]
        parts["all"].append(sims[mask])
        parts["cross_group"].append(sims[mask & (a >= 0) & (b >= 0) & (a != b)])
        for g, i in code.items():
            parts[g].append(sims[mask & (a == i) & (b == i)])
    return {g: G.Tail.of(np.concatenate(v) if v else np.zeros(0, np.float32)) for g, v in parts.items()}


def genuine_scores(probes: Side, templates: Side) -> dict[str, np.ndarray]:
    """Scores of same-person (probe, template) pairs that share no image: all and per group."""
    out: dict[str, list[float]] = {"all": []}
    by_person: dict[int, list[int]] = {}
    for j, p in enumerate(templates.person):
        by_person.setdefault(int(p), []).append(j)
    for i, p in enumerate(probes.person):
        for j in by_person.get(int(p), []):
            if set(probes.members[i]) & set(templates.members[j]):
                continue
            s = float(probes.vectors[i] @ templates.vectors[j])
            out["all"].append(s)
            if probes.label[i] is not None and probes.label[i] == templates.label[j]:
                out.setdefault(str(probes.label[i]), []).append(s)
    return {g: np.array(v, np.float32) for g, v in out.items()}


def kind_table(
    probes: Side, templates: Side, once: bool, base: list[list[float]] | None
) -> tuple[dict[str, object], list[list[float]]]:
    """One manifest entry's table and its facts. One photo and one look (``base`` None) goes on below
    what its pairs measure along the tail model, down to ``DOWN_TO``; another kind is continued below
    its own floor along ``base`` (the one-photo, one-look rows of the same band and condition) plus
    the gap near its floor, or its own tail model where that is stricter."""
    tails = impostor_tails(probes, templates, once)
    table = G.worst_group_table(tails, CAL_FMRS, MARGIN, DOWN_TO)  # measured rows, then its own tail model
    measured = [r for r in table.rows if r[0] >= table.measured_to]
    rows, gap = (table.rows, 0.0) if base is None else G.anchored_rows(measured, base, own_model=table.rows)
    facts: dict[str, object] = {
        "impostor_pairs": tails["all"].n,
        "group_pairs": {g: t.n for g, t in tails.items()},
        "measured_rows": len(measured),
        "measured_to": table.measured_to,
        "governed_by": table.governing,
        "group_floors": table.floors,
        "group_ratios": {g: round(r, 3) for g, r in table.ratios.items()},
    }
    if base is None:
        facts["tail_slope_per_decade"] = round(table.tail_slope, 6)
    if base is not None:
        facts["anchor_gap"] = round(gap, 6)
    return facts, rows


def observed(threshold: float, tails: dict[str, G.Tail], genuine: dict[str, np.ndarray]) -> dict[str, object]:
    return {
        g: {
            "impostor_pairs": t.n,
            "observed_fmr": t.rate_at(threshold),
            "fnmr": float((genuine[g] < threshold).mean()) if g in genuine and len(genuine[g]) else None,
        }
        for g, t in tails.items()
        if g != "cross_group"
    }


def validate(
    sides: Callable[[np.ndarray], Iterator[tuple[str, Side, Side, bool, bool]]],
    fold: np.ndarray,
    stated: tuple[float, ...] = (1e-4, 1e-5),
) -> dict[str, object]:
    """Tables from one half of the identities (with the same margin and anchoring), rates observed on the other."""
    out: dict[str, object] = {}
    for train in (0, 1):
        per: dict[str, dict[str, object]] = {}
        base_rows: dict[str, list[list[float]]] = {}
        tests = {key: (p, t, sym) for key, p, t, sym, _ in sides(fold != train)}
        for key, probes, templates, once, is_base in sides(fold == train):
            band_key = key.rsplit(" ", 1)[0]
            try:
                _, rows = kind_table(probes, templates, once, None if is_base else base_rows[band_key])
            except ValueError as exc:  # a half too small for this kind (a --limit run)
                per[key] = {"skipped": str(exc)}
                continue
            if is_base:
                base_rows[band_key] = rows
            table = CalibrationTable.from_rows(rows)
            p, t, sym = tests[key]
            tails, genuine = impostor_tails(p, t, sym), genuine_scores(p, t)
            per[key] = {
                f"{f:g}": {
                    "threshold": round(table.threshold_for(f), 4),
                    **observed(table.threshold_for(f), tails, genuine),
                }
                for f in stated
            }
        out["train DevTrain, test DevTest" if train == 0 else "train DevTest, test DevTrain"] = per
    return out


ProbeSets = dict[tuple[str, int], tuple[np.ndarray, dict[str, np.ndarray]]]
SPLIT_QUANTILE = 1e-2  # a track splits when a look is less like its track than 1 in 100 same-person photo pairs


def appearance_floor(probe_sets: ProbeSets, variant: str, person: np.ndarray) -> dict[str, object]:
    """The score below which a look no longer counts as the same person as its track: the 1e-2 quantile of
    every same-person pair of photos (different photos, often years apart: far harsher than two moments of
    one video) at the same face size, the lowest over every band and condition; and the share of
    different-person pairs below it (how many swaps it catches)."""
    floors, caught = [], []
    for (condition, b), (keep, emb) in probe_sets.items():
        vectors, who = emb[variant], person[keep]
        genuine = G.genuine_by_group(vectors, who, np.full(len(who), None, object))["all"]
        floors.append((float(np.quantile(genuine, SPLIT_QUANTILE)), condition, b))
    floor, condition, b = min(floors)
    keep, emb = probe_sets[(condition, b)]
    impostors = lfw_impostors(emb[variant], person[keep])
    caught.append(float((impostors < floor).mean()))
    return {
        "split_below": round(floor, 4),
        "quantile_of_same_person_pairs": SPLIT_QUANTILE,
        "lowest_at": f"{condition} {BANDS[b][0]:g} px band",
        "different_person_pairs_below": round(caught[0], 4),
    }


def lfw_impostors(vectors: np.ndarray, who: np.ndarray) -> np.ndarray:
    from edge_lab.lfw import impostor_scores

    return np.asarray(impostor_scores(vectors, who))


def comparison_sides(
    native_keep: np.ndarray,
    native: dict[str, np.ndarray],
    probe_sets: ProbeSets,
    variant: str,
    person: np.ndarray,
    label: np.ndarray,
    seed: int,
    people: np.ndarray,
) -> Iterator[tuple[str, Side, Side, bool, bool]]:
    """(key, probes, templates, pairs once, is one photo and one look) for every condition, band and kind,
    from the images of ``people`` (a mask over View 1's images); one photo, one look first in each band."""
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(native_keep & people)
    templates = {
        k: Side.build(native[variant][people[native_keep]], rows, person, label, k, rng) for k in TEMPLATE_LEVELS
    }
    for (condition, b), (keep, emb) in probe_sets.items():
        prow = np.flatnonzero(keep & people)
        for m in LOOK_LEVELS:
            probes = Side.build(emb[variant][people[keep]], prow, person, label, m, rng)
            for k in TEMPLATE_LEVELS:
                yield f"{condition} {BANDS[b][0]:g} {k}x{m}", probes, templates[k], (k, m) == (1, 1), (k, m) == (1, 1)


# LFW's labels name some people twice. These View 1 names are one person each, so their photos are
# not impostor pairs (they are genuine ones): the same photograph filed under two names
# (Andrew_Caldecott_0001 and Andrew_Gilligan_0001: the same picture, shifted by a few pixels), and
# one person's name in two spellings or orders (Choi Sung-hong, Wang Nan, Hassan Wirajuda; Sepp is
# Joseph Blatter's own first name). Found among the highest-scoring cross-identity pairs, each kept
# out only on evidence that does not depend on the score: the pixels, or the person's public name.
# Left in: pairs that merely look alike (Jason_Kapono_0001 and Ray_Young_0001 score 0.85).
SAME_PERSON = (
    ("Andrew_Caldecott", "Andrew_Gilligan"),
    ("Choi_Sung-hong", "Sung_Hong_Choi"),
    ("Nan_Wang", "Wang_Nan"),
    ("Hasan_Wirayuda", "Hassan_Wirajuda"),
    ("Joseph_Blatter", "Sepp_Blatter"),
)


def view1(lfw: Path, groups: Path) -> tuple[list[Path], list[str], np.ndarray, np.ndarray]:
    """Every View 1 image (sorted: the order of the cached embeddings), its person's name and
    index (the names of ``SAME_PERSON`` share one), and its group label (None when unlabelled)."""
    images = sorted(lfw.glob("images/*/*.jpg"))
    names = [p.parent.name for p in images]
    alias = {b: a for a, b in SAME_PERSON}
    uniq = {n: i for i, n in enumerate(sorted({alias.get(n, n) for n in names}))}
    person = np.array([uniq[alias.get(n, n)] for n in names])
    return images, names, person, G.labels_for([p.name for p in images], G.read_groups(groups))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=HERE.parent.parent / "shared" / "data" / "lfw-view1")
    ap.add_argument("--groups", type=Path, default=HERE.parent.parent / "shared" / "data" / "lfw-groups" / "gender.csv")
    ap.add_argument("--models", type=Path, default=HERE, help="folder with manifest.json and calibration/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache", type=Path, default=HERE / ".work" / "calibrate", help="crops and embeddings kept between runs"
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (a quick check of the script)")
    ap.add_argument("--alignments", nargs="+", choices=ALIGNMENTS, default=list(ALIGNMENTS))
    ap.add_argument(
        "--embedders",
        nargs="+",
        help="manifest entries to calibrate (default: every embedder); each gets "
        "calibration/<embedder>.json, the others' files are left as they are",
    )
    ap.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    ap.add_argument(
        "--max-yaw",
        type=float,
        default=MAX_YAW,
        help="the widest head turn the tables are measured on (written to the file: a device's gate may not "
        "admit wider turns)",
    )
    ap.add_argument(
        "--embed-only", action="store_true", help="fill the cache and stop (one process per alignment runs in parallel)"
    )
    args = ap.parse_args()
    manifest = load_manifest(args.models)
    args.embedders = args.embedders or list(manifest.embedders)
    for e in args.embedders:
        manifest.embedder(e)  # a ModelError naming the embedders there are
    images, names, person, label = view1(args.lfw, args.groups)
    if args.limit:
        images, names, person, label = (
            images[: args.limit],
            names[: args.limit],
            person[: args.limit],
            label[: args.limit],
        )
    train_people = {
        ln.split()[0] for ln in (args.lfw / "peopleDevTrain.txt").read_text().splitlines()[1:] if ln.strip()
    }
    fold = np.array([0 if n in train_people else 1 for n in names])
    if args.embed_only:
        for alignment in args.alignments:
            for c in args.conditions:
                for b in range(len(BANDS)):
                    embeddings(args, images, b, alignment, c)
        return
    entries: dict[str, list[dict[str, object]]] = {e: [] for e in args.embedders}
    appearance: dict[str, dict[str, object]] = {e: {} for e in args.embedders}
    validation: dict[str, object] = {}
    for alignment in args.alignments:
        native_keep, native = embeddings(args, images, 0, alignment, "colour")
        probe_sets: ProbeSets = {
            (c, b): embeddings(args, images, b, alignment, c) for c in CONDITIONS for b in range(len(BANDS))
        }
        for embedder in args.embedders:
            for flip in (False, True):
                t0 = time.time()
                variant = f"{embedder}-{flip}"
                pipeline = alignment + ("+flip" if flip else "")
                appearance[embedder][pipeline] = appearance_floor(probe_sets, variant, person)
                sides = partial(comparison_sides, native_keep, native, probe_sets, variant, person, label, args.seed)
                base: dict[tuple[str, int], list[list[float]]] = {}
                everyone = np.ones(len(images), bool)
                for key, probes, templates, once, is_base in sides(everyone):
                    condition, lo, kind = key.split(" ")
                    b = next(i for i, band in enumerate(BANDS) if f"{band[0]:g}" == lo)
                    k, m = (int(x) for x in kind.split("x"))
                    facts, rows = kind_table(probes, templates, once, None if is_base else base[(condition, b)])
                    if is_base:
                        base[(condition, b)] = rows
                    band = BANDS[b]
                    label_txt = f"{band[0]:g}+ px" if band[1] is None else f"{band[0]:g}-{band[1]:g} px"
                    probe_txt = "as they are" if band[1] is None else f"shrunk so the face box is {label_txt}"
                    entries[embedder].append(
                        {
                            "embedder_sha256": manifest.spec(embedder).sha256,
                            "pipeline": pipeline,
                            "condition": condition,
                            "band": {"min_px": band[0], "max_px": band[1]},
                            "templates": k,
                            "looks": m,
                            **facts,
                            "table": rows,
                            "source": f"LFW View 1: probes {probe_txt}"
                            f"{'' if condition == 'colour' else ', ' + condition}{'' if m == 1 else f', the mean of {m} photos of one person'}; "
                            f"templates {'one photo' if k == 1 else f'the mean of {k} photos of one person'}, full size, colour",
                        }
                    )
                print(
                    f"{pipeline} {embedder}: {len(base)} bands x conditions, {len(KINDS)} kinds, {time.time() - t0:.0f}s",
                    file=sys.stderr,
                )
                if (embedder, alignment, flip) == DEFAULT:
                    validation = validate(sides, fold)
    for embedder, tables in entries.items():
        out: dict[str, object] = {
            "embedder": embedder,
            "embedder_sha256": manifest.spec(embedder).sha256,
            "written_by": "models/calibrate.py",
            "command": f"python models/calibrate.py --alignments {' '.join(args.alignments)} --embedders {embedder}",
            "method": METHOD,
            "quality_gate": {"max_yaw": args.max_yaw},
            "appearance": appearance[embedder],
        }
        if embedder == DEFAULT[0] and validation:
            out["validation"] = {
                "what": f"tables built from one half of View 1's identities, rates observed on the other half "
                f"({embedder}, mesh5+flip)",
                "groups": str(args.groups.name),
                "by_table": validation,
            }
        path = args.models / CALIBRATION_DIR / f"{embedder}.json"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**out, "tables": tables}, separators=(",", ":")) + "\n")
        tmp.replace(path)
    for embedder in entries:  # parses what was written
        Recognizer(Settings.model_validate({"models": {"dir": str(args.models), "embedder": embedder}})).matcher  # noqa: B018


if __name__ == "__main__":
    main()
