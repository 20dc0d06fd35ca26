#!/usr/bin/env python3
"""The group report of an embedder's calibration: does the stated false-match rate hold for each group?

    python models/calibration_report.py --embedder sface_int8 [--json FILE]

Reads the held-out validation ``models/calibrate.py`` wrote into ``models/calibration/<embedder>.json``:
tables built from one half of LFW View 1's identities (DevTrain or DevTest), rates observed on the
other half's pairs, both ways. For every table (condition, face-size band, photos × looks) and stated
rate, each group's observed rate as a multiple of the stated one. A cell counts when its pairs could
show the rate (at least ``--min-expected`` false matches expected at the stated rate); the report
gives the worst counted multiple per group and lists every counted cell above 2x.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROUPS = ("all", "female", "male")


def cells(validation: dict[str, object], min_expected: float) -> list[dict[str, object]]:
    out = []
    for direction, tables in validation.items():
        assert isinstance(tables, dict)
        for table, rates in tables.items():
            if "skipped" in rates:
                continue
            for stated, row in rates.items():
                f = float(stated)
                for g in GROUPS:
                    if g not in row:
                        continue
                    pairs, observed = int(row[g]["impostor_pairs"]), float(row[g]["observed_fmr"])
                    out.append(
                        {
                            "direction": direction,
                            "table": table,
                            "stated": f,
                            "group": g,
                            "pairs": pairs,
                            "observed": observed,
                            "ratio": observed / f,
                            "counted": pairs * f >= min_expected,
                            "fnmr": row[g].get("fnmr"),
                            "threshold": row["threshold"],
                        }
                    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", default="sface_int8")
    ap.add_argument("--models", type=Path, default=HERE)
    ap.add_argument("--min-expected", type=float, default=5.0, help="false matches expected for a cell to count")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    raw = json.loads((args.models / "calibration" / f"{args.embedder}.json").read_text())
    validation = raw.get("validation", {}).get("by_table")
    if not validation:
        sys.exit(f"calibration/{args.embedder}.json has no held-out validation (models/calibrate.py writes it)")
    rows = cells(validation, args.min_expected)
    summary: dict[str, object] = {"embedder": args.embedder, "min_expected": args.min_expected, "by_rate": {}}
    print(f"{args.embedder}: held-out group report ({raw['validation']['what']})\n")
    print(
        "| stated rate | group | cells counted | worst observed × stated | median × stated | FNMR at the 80+ px one-photo table |"
    )
    print("|---|---|---|---|---|---|")
    for f in sorted({r["stated"] for r in rows}, reverse=True):  # type: ignore[type-var]
        per: dict[str, object] = {}
        for g in GROUPS:
            counted = sorted(float(r["ratio"]) for r in rows if r["stated"] == f and r["group"] == g and r["counted"])  # type: ignore[arg-type]
            fnmr = [r["fnmr"] for r in rows if r["stated"] == f and r["group"] == g and r["table"] == "colour 80 1x1"]
            worst = max(counted) if counted else None
            median = counted[len(counted) // 2] if counted else None
            per[g] = {"cells": len(counted), "worst": worst, "median": median}
            fn = " / ".join(f"{float(x) * 100:.1f}%" for x in fnmr if x is not None) or "-"
            print(
                f"| {f:g} | {g} | {len(counted)} | {worst if worst is None else f'{worst:.2f}'} | "
                f"{median if median is None else f'{median:.2f}'} | {fn} |"
            )
        summary["by_rate"][f"{f:g}"] = per  # type: ignore[index]
    above = [r for r in rows if r["counted"] and float(r["ratio"]) > 2.0]  # type: ignore[arg-type]
    summary["cells_above_2x"] = above
    print(f"\ncounted cells above 2x: {len(above)}")
    for r in above:
        print(
            f"  {r['direction']}: {r['table']} at {r['stated']:g}, {r['group']}: {r['ratio']:.2f}x ({r['pairs']} pairs)"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
