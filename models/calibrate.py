#!/usr/bin/env python3
"""Score → false-match-rate tables for the shipped embedders, per face-size band, holding
for the worst labelled group. Needs the runtime only (no TensorFlow).

    python models/calibrate.py --lfw ../shared/data/lfw-view1 --groups ../shared/data/lfw-groups/gender.csv

For each face-size band, every LFW View 1 image is shrunk so that its face lands
in the band (a size drawn per image, seeded), then goes through the device's own
still path (the region scanner's window, face mesh, alignment) and embedder; the
top band uses the images as they are. From every cross-identity pair the script
builds a table whose each row holds for all pairs and for the pairs inside each
labelled group (edge.eval.groups.worst_group_table), and writes it into
manifest.json with the band, the method and the pair counts.

Validation (also written to the manifest): tables built from the DevTrain
identities are checked on the DevTest identities and the other way round (no
identity on both sides): the observed rate of each group and band at the stated
1e-4, 1e-5. LFW images are read, never copied: only scores and rates are written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edge.capture.imageio import read_image  # noqa: E402
from edge.device.config import Settings  # noqa: E402
from edge.device.runtime import load_manifest  # noqa: E402
from edge.eval import groups as G  # noqa: E402
from edge.eval.lfw import TABLE_FMRS  # noqa: E402
from edge.recognition.calibration import CalibrationTable  # noqa: E402
from edge.recognition.pipeline import Recognizer  # noqa: E402

# (min_px, max_px): box side of the detected face. LFW deep-funneled faces are ~106 px boxed.
BANDS: tuple[tuple[float, float | None], ...] = ((80, None), (50, 80), (36, 50), (28, 36), (24, 28))
NATIVE_BOX_PX = 106.0
ALIGNMENTS = ("mesh5", "keypoints4")
EMBEDDERS = ("fp32", "int8")
# A group's rate varies between samples of people more than its pair count suggests (LFW View 1,
# identity-disjoint halves: one half's table seen on the other half's women gave 2.7x its rate at
# 1e-4; with this factor 1.6x, within 2x both ways). Each row promising f carries the threshold
# measured for f / MARGIN.
MARGIN = 2.0
METHOD = (
    f"each row promising rate f carries the highest threshold, measured at f/{MARGIN:g}, of all cross-identity pairs "
    "and of the pairs inside each labelled group (gender, manually verified LFW labels); below a group's "
    "measurable floor (10 impostors) its rate is taken as R x the all-pairs rate, R its largest ratio near the floor"
)


def recognizer(models: Path, **m: object) -> Recognizer:
    # The gate is not applied here: every face the band holds is measured.
    return Recognizer(Settings.model_validate({"models": {"dir": str(models), **m}, "quality": {"min_face_px": 8}}))


def band_size(rng: np.random.Generator, band: tuple[float, float | None]) -> float | None:
    lo, hi = band
    return None if hi is None else float(rng.uniform(lo, hi))


def crops_for(
    rec: Recognizer, images: list[Path], band: tuple[float, float | None], seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Aligned crops of the faces a device would judge at this band's sizes, and which images they are:
    a face the detector found that passes the quality gate (its size apart: that is the band's)."""
    rng = np.random.default_rng(seed)
    out, keep = [], np.zeros(len(images), bool)
    for i, path in enumerate(images):
        image = read_image(path)
        size = band_size(rng, band)
        if size is not None:
            side = max(16, round(image.shape[1] * size / NATIVE_BOX_PX))
            image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        res = rec.still(image)
        if res.aligned is None or not res.aligned.quality.ok:
            continue
        out.append(res.aligned.crop)
        keep[i] = True
    return out, keep


def tables(emb: np.ndarray, person: np.ndarray, label: np.ndarray) -> tuple[G.WorstGroupTable, dict[str, int]]:
    imp = G.impostors_by_group(emb, person, label)
    return G.worst_group_table(imp, TABLE_FMRS, MARGIN), {k: len(v) for k, v in imp.items()}


def validate(
    emb: np.ndarray, person: np.ndarray, label: np.ndarray, fold: np.ndarray, stated: tuple[float, ...] = (1e-4, 1e-5)
) -> dict[str, object]:
    """Tables from one fold of identities (with the same margin), rates observed on the other (both ways)."""
    out: dict[str, object] = {}
    for train in (0, 1):
        tr, te = fold == train, fold != train
        table, _ = tables(emb[tr], person[tr], label[tr])
        cal = CalibrationTable.from_rows(table.rows)
        imp = G.impostors_by_group(emb[te], person[te], label[te])
        gen = G.genuine_by_group(emb[te], person[te], label[te])
        side = {}
        for f in stated:
            t = cal.threshold_for(f)
            rates = G.rates_at(t, imp, gen)
            side[f"{f:g}"] = {
                "threshold": round(t, 4),
                **{g: {"impostor_pairs": r.impostor_pairs, "observed_fmr": r.observed_fmr, "fnmr": r.fnmr}
                   for g, r in rates.items()},
            }  # fmt: skip
        out["train DevTrain, test DevTest" if train == 0 else "train DevTest, test DevTrain"] = side
    return out


def view1(lfw: Path, groups: Path) -> tuple[list[Path], list[str], np.ndarray, np.ndarray]:
    """Every View 1 image (sorted: the order of the cached embeddings), its person's name and
    index, and its group label (None when unlabelled)."""
    images = sorted(lfw.glob("images/*/*.jpg"))
    names = [p.parent.name for p in images]
    uniq = {n: i for i, n in enumerate(sorted(set(names)))}
    person = np.array([uniq[n] for n in names])
    return images, names, person, G.labels_for([p.name for p in images], G.read_groups(groups))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=HERE.parent.parent / "shared" / "data" / "lfw-view1")
    ap.add_argument("--groups", type=Path, default=HERE.parent.parent / "shared" / "data" / "lfw-groups" / "gender.csv")
    ap.add_argument("--models", type=Path, default=HERE, help="folder with manifest.json (rewritten in place)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=HERE / ".work" / "calibrate", help="embeddings kept between runs")
    args = ap.parse_args()
    images, names, person, label = view1(args.lfw, args.groups)
    train_people = {
        ln.split()[0] for ln in (args.lfw / "peopleDevTrain.txt").read_text().splitlines()[1:] if ln.strip()
    }
    fold = np.array([0 if n in train_people else 1 for n in names])
    manifest_path = args.models / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    sha = {e: manifest["models"][f"embedder_{e}"]["sha256"] for e in EMBEDDERS}
    entries: list[dict[str, object]] = []
    validation: dict[str, object] = {}
    for b, band in enumerate(BANDS):
        label_txt = f"{band[0]:g}+ px" if band[1] is None else f"{band[0]:g}-{band[1]:g} px"
        for alignment in ALIGNMENTS:
            t0 = time.time()
            cache = args.cache / f"{band[0]:g}-{alignment}-{args.seed + b}.npz"
            if cache.is_file():  # the same images, models and seed as a run before
                stored = np.load(cache)
                keep, embeddings = stored["keep"], {k: stored[k] for k in stored.files if k != "keep"}
            else:
                crops, keep = crops_for(
                    recognizer(args.models, alignment=alignment, embedder="fp32"), images, band, args.seed + b
                )
                embeddings = {}
                for embedder in EMBEDDERS:
                    for flip in (False, True):
                        rec = recognizer(args.models, alignment=alignment, embedder=embedder, flip_average=flip)
                        embeddings[f"{embedder}-{flip}"] = rec.embedder.embed(crops)
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cache, keep=keep, **embeddings)
            print(f"band {label_txt} {alignment}: {int(keep.sum())} of {len(images)} faces judged, {time.time() - t0:.0f}s",
                  file=sys.stderr)  # fmt: skip
            p, lab, fo = person[keep], label[keep], fold[keep]
            for embedder in EMBEDDERS:
                for flip in (False, True):
                    rec = recognizer(args.models, alignment=alignment, embedder=embedder, flip_average=flip)
                    emb = embeddings[f"{embedder}-{flip}"]
                    table, counts = tables(emb, p, lab)
                    entries.append({
                        "embedder_sha256": sha[embedder], "pipeline": rec.pipeline_id,
                        "band": {"min_px": band[0], "max_px": band[1]},
                        "impostor_pairs": counts["all"], "group_pairs": counts, "method": METHOD, "faces": int(keep.sum()),
                        "group_floors": table.floors, "group_ratios": {g: round(r, 3) for g, r in table.ratios.items()},
                        "governed_by": table.governing,
                        "source": f"all cross-identity pairs of the {len(images)} LFW View 1 images"
                                  + ("" if band[1] is None else f", shrunk so the face box is {label_txt}"),
                        "table": table.rows,
                    })  # fmt: skip
                    if embedder == "int8" and alignment == "mesh5" and flip:  # the default pipeline
                        validation[label_txt] = validate(emb, p, lab, fo)
                    print(f"  {embedder} {rec.pipeline_id}: threshold at 1e-4 "
                          f"{CalibrationTable.from_rows(table.rows).threshold_for(1e-4):.4f} "
                          f"(governed by {table.governing[12] if len(table.governing) > 12 else '-'})", file=sys.stderr)  # fmt: skip
    manifest["calibration"] = entries
    manifest["calibration_validation"] = {
        "what": "tables built from one half of View 1's identities, rates observed on the other half (int8, mesh5+flip)",
        "groups": str(args.groups.name),
        "by_band": validation,
    }
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    load_manifest(args.models)  # parses what was written


if __name__ == "__main__":
    main()
