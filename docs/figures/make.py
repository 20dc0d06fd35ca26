#!/usr/bin/env python3
"""Every figure of the docs, drawn again from the JSON of the runs that measured it.

    pip install -e '.[plots]'
    python docs/figures/make.py            # docs/figures/*.png from docs/figures/data/*.json
    python docs/figures/make.py OUT/       # the same figures into another folder

Each JSON file in data/ is exactly what a measurement command printed with ``--json``; the
command that made it is in ``COMMANDS`` below and beside the figure in the docs. To refresh a
figure: run its command again into its data file, then this script. The drawing is the
commands' own (``edge_lab.plots``), so a figure cannot say other than its data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from edge_lab import plots  # noqa: E402

DATA = HERE / "data"
LFW = "edge eval lfw --root ../shared/data/lfw-view1 --pairs ../shared/data/lfw-view1/pairsDevTest.txt --groups ../shared/data/lfw-groups/gender.csv"
IDENTIFY = "edge eval identify --root ../shared/data/lfw-view1 --gallery-size 100 --strangers 60 --groups ../shared/data/lfw-groups/gender.csv"
RANGE = "edge eval range --root ../shared/data/lfw-view1"
COMMANDS = {
    "lfw.json": f"{LFW} --json",
    "lfw_grey.json": f"{LFW} --condition grey --json",
    "identify_p{K}_r{R}.json": f"EDGE_MATCH__MAX_FALSE_MATCH_RATE={{R}} {IDENTIFY} --people 50 --min-photos 6 --photos {{K}} --json",
    "identify60_p{K}.json": f"{IDENTIFY} --people 60 --photos {{K}} --json",
    "identify60_p3_{C}.json": f"{IDENTIFY} --people 60 --photos 3 --condition {{C}} --json",
    "range_hall_{W}x{H}.json": f"{RANGE} --size {{W}}x{{H}} --json",
    "range_cameras2_1280x720.json": f"{RANGE} --size 1280x720 --cameras 2 --json",
    "range_wall_p{K}.json": f"{RANGE} --size 1280x720 --scene wall --codec mp4v --photos {{K}} --distances 1,2,4,6 --json",
    "soak.json": "edge eval soak --minutes 15 --json",
    "bench.json": "edge bench --size 640x480 --json",
}


def load(name: str) -> dict[str, object]:
    return json.loads((DATA / name).read_text())


def main(out: Path = HERE) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = []
    if (DATA / "lfw.json").is_file():
        made.append(plots.det_curve(load("lfw.json"), out / "det.png"))
    if (DATA / "lfw_grey.json").is_file():
        made.append(plots.det_curve(load("lfw_grey.json"), out / "det_grey.png"))
    identify = [load(p.name) for p in sorted(DATA.glob("identify_p*_r*.json"))]
    if identify:
        made.append(plots.recall_by_photos(identify, out / "recall_by_photos.png"))
    hall = [load(p.name) for p in sorted(DATA.glob("range_hall_*.json"), key=lambda p: load(p.name)["width"])]
    if hall:
        made.append(plots.recall_by_distance(hall, out / "range_hall.png"))
    wall = [load(p.name) for p in sorted(DATA.glob("range_wall_p*.json"))]
    if wall:
        made.append(plots.recall_by_distance(wall, out / "range_wall.png"))
    if (DATA / "soak.json").is_file():
        made.append(plots.memory_over_time(load("soak.json"), out / "soak.png"))
    if (DATA / "bench.json").is_file():
        made.append(plots.stage_times(load("bench.json"), out / "bench_stages.png"))
    for path in made:
        print(f"wrote {path}")
    return made


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
