#!/usr/bin/env python3
"""The threshold tables of docs/thresholds.md: observed false-match and false non-match rates per
group and face-size band, at the thresholds of this manifest and of an earlier one.

    git show 918cb08:models/manifest.json > /tmp/manifest-before.json
    python models/calibration_report.py --before /tmp/manifest-before.json

Reads the embeddings ``models/calibrate.py`` kept (``models/.work/calibrate``: the
default pipeline, int8 embedder, five-point alignment and flip averaging) and the
held-out validation it wrote into the manifest. In-sample figures use all of View 1's
pairs of each band; held-out ones are the manifest's two identity-disjoint halves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

sys.path.insert(0, str(HERE))

from calibrate import BANDS, view1  # noqa: E402

from edge.eval import groups as G  # noqa: E402
from edge.recognition.calibration import Calibration, parse_calibrations  # noqa: E402

NAMES = {"all": "all", "female": "female–female", "male": "male–male", "cross_group": "female–male"}


def default_calibration(manifest: Path) -> Calibration:
    man = json.loads(manifest.read_text())
    sha = man["models"]["embedder_int8"]["sha256"]
    return next(
        c for c in parse_calibrations(man["calibration"]) if c.embedder_sha256 == sha and c.pipeline == "mesh5+flip"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=HERE.parent.parent / "shared" / "data" / "lfw-view1")
    ap.add_argument("--groups", type=Path, default=HERE.parent.parent / "shared" / "data" / "lfw-groups" / "gender.csv")
    ap.add_argument("--manifest", type=Path, default=HERE / "manifest.json")
    ap.add_argument("--before", type=Path, required=True, help="an earlier manifest, for the 'before' columns")
    ap.add_argument("--cache", type=Path, default=HERE / ".work" / "calibrate")
    ap.add_argument("--rate", type=float, default=1e-4, help="stated false-match rate per comparison")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    _, _, person, label = view1(args.lfw, args.groups)
    before, after = default_calibration(args.before), default_calibration(args.manifest)
    held_out = json.loads(args.manifest.read_text())["calibration_validation"]["by_band"]
    f = args.rate
    rows = []
    for b, (lo, hi) in enumerate(BANDS):
        stored = np.load(args.cache / f"{lo:g}-mesh5-{args.seed + b}.npz")
        keep, emb = stored["keep"], stored["int8-True"]
        imp = G.impostors_by_group(emb, person[keep], label[keep])
        gen = G.genuine_by_group(emb, person[keep], label[keep])
        t0, t1 = (c.band_for(lo).table.threshold_for(f) for c in (before, after))
        rows.append(((lo, hi), t0, t1, G.rates_at(t0, imp, gen), G.rates_at(t1, imp, gen)))

    (lo, hi), t0, t1, r0, r1 = rows[0]
    print(f"View 1, faces at full size ({lo}+ px band), int8 embedder, stated rate {f:g} per comparison:\n")
    print(
        f"| impostor pairs | pairs | before: observed FMR at {t0:.4f} | × stated | after: observed FMR at {t1:.4f} | × stated |"
    )
    print("|---|---|---|---|---|---|")
    for g, name in NAMES.items():
        x0, x1 = r0[g].observed_fmr / f, r1[g].observed_fmr / f
        bold = "**" if x0 > 2 else ""
        print(f"| {name} | {r0[g].impostor_pairs / 1e6:.2f} M | {r0[g].observed_fmr:.2e} | {bold}{x0:.2f}{bold} "
              f"| {r1[g].observed_fmr:.2e} | {x1:.2f} |")  # fmt: skip
    print("\n| same-person pairs | pairs | FNMR before | FNMR after |\n|---|---|---|---|")
    for g in ("all", "female", "male"):
        print(f"| {g} | {r0[g].genuine_pairs} | {(r0[g].fnmr or 0) * 100:.1f}% | {(r1[g].fnmr or 0) * 100:.1f}% |")
    print(
        f"\nEvery band, stated {f:g}: in-sample (all of View 1) and held out (tables from one half of the identities,"
    )
    print("rates on the other half, both ways):\n")
    print("| band | threshold before → after | all pairs × stated, before → after | women × stated, before → after "
          "| held out: women × stated | held out: worst group | FNMR after: all / women / men |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for (lo, hi), t0, t1, r0, r1 in rows:
        band = f"{lo}+ px" if hi is None else f"{lo}-{hi} px"
        sides = held_out[band].values()
        women = " / ".join(f"{s[f'{f:g}']['female']['observed_fmr'] / f:.2f}" for s in sides)
        worst = max(s[f"{f:g}"][g]["observed_fmr"] / f for s in sides for g in NAMES)
        fnmr = " / ".join(f"{(r1[g].fnmr or 0) * 100:.1f}%" for g in ("all", "female", "male"))
        print(f"| {band.replace('-', '–')} | {t0:.4f} → {t1:.4f} | {r0['all'].observed_fmr / f:.2f} → "
              f"{r1['all'].observed_fmr / f:.2f} | {r0['female'].observed_fmr / f:.2f} → {r1['female'].observed_fmr / f:.2f} "
              f"| {women} | {worst:.2f} | {fnmr} |")  # fmt: skip


if __name__ == "__main__":
    main()
