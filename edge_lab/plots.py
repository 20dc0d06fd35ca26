"""Figures from the JSON the measurement commands print: what people would rather look at than read.

Each function takes the very JSON object its command prints (``--json``), so a figure can be
drawn by the command itself (``--plot FILE.png``) or again later from a saved run
(``docs/figures/make.py``); the docs cannot drift from the code that measured them.

matplotlib is an optional extra (``pip install '.[plots]'``): a device never installs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.errors import InputError

GROUP_COLOURS = {"all": "#333333", "female": "#c2185b", "male": "#1565c0"}
FNMR_FLOOR = 1e-3  # a rate of 0 cannot be drawn on a log scale: shown here


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no screen
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install '.[plots]' (never needed on a device)") from None
    return plt


def _save(fig: Any, path: Path) -> Path:
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    except OSError as exc:
        raise InputError(f"--plot {path}: cannot be written: {exc.strerror or exc}") from None
    finally:
        fig.clf()
    return path


def det_curve(report: Mapping[str, Any], path: Path) -> Path:
    """``edge eval lfw --groups``: false non-matches against false matches, one curve per group, log
    scales, the device's operating point (the stated rate's threshold) marked on each."""
    det = report.get("det")
    if not det:
        raise InputError("--plot for eval lfw needs --groups (the curve per group)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for group, points in det.items():
        fmr = [p[0] for p in points]
        fnmr = [max(p[1], FNMR_FLOOR) for p in points]
        ax.plot(fmr, fnmr, label=group, color=GROUP_COLOURS.get(group))
    op = report.get("operating_point", {})
    for group, point in op.get("groups", {}).items():
        if point["fmr"] > 0:
            ax.plot([point["fmr"]], [max(point["fnmr"], FNMR_FLOOR)], "o", color=GROUP_COLOURS.get(group), markersize=7)
    ax.axvline(report["stated_fmr"], color="#888888", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(FNMR_FLOOR * 0.8, 1.0)
    ax.set_xlabel("false-match rate (impostor pairs accepted)")
    ax.set_ylabel(f"false non-match rate (same-person pairs refused; 0 drawn at {FNMR_FLOOR:g})")
    cond = report.get("condition", "none")
    ax.set_title(
        f"LFW {Path(report['pairs_file']).name}{'' if cond == 'none' else f', {cond}'}: the device's threshold "
        f"{op.get('threshold', report['default_threshold']):.3f} (dots) for {report['stated_fmr']:g}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend()
    return _save(fig, path)


def recall_by_distance(runs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``edge eval range``: recall against distance, one line per run (frame size, scene, photos)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        rows = run["by_distance"]
        d = [float(k) for k in rows]
        cast = run.get("cast", {})
        label = f"{run['width']}x{run['height']}, {run.get('scene', 'hall')}, {cast.get('photos', 1)} photo(s)"
        ax.plot(d, [rows[k]["recall"] * 100 for k in rows], "o-", label=label)
    ax.set_ylim(0, 102)
    ax.set_xlabel("distance from a 60° camera (m)")
    ax.set_ylabel("enrolled people reported (%)")
    ax.set_title("Person-level recall, everyone cast counts", fontsize=9)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, path)


def memory_over_time(report: Mapping[str, Any], path: Path) -> Path:
    """``edge eval soak``: resident memory of the service over the run."""
    plt = _pyplot()
    peak = max((mb for _, mb in report["rss_mb_samples"]), default=0.0)
    # A sample under a tenth of the peak is the process still starting (exec'd, no models yet).
    samples = [(t, mb) for t, mb in report["rss_mb_samples"] if mb >= 0.1 * peak]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot([s / 60 for s, _ in samples], [mb for _, mb in samples], "-", color="#2e7d32")
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (MB)")
    lo, hi = min(mb for _, mb in samples), max(mb for _, mb in samples)
    ax.set_ylim(max(0.0, lo - 20), hi + 20)
    ax.set_title(
        f"Soak: {report.get('events', '?')} events, {report.get('gallery_versions_published', '?')} gallery updates",
        fontsize=9,
    )
    ax.grid(True, alpha=0.25)
    return _save(fig, path)


STAGES = (
    ("detect (one window)", "detect_window_ms"),
    ("detect (a still, every window)", "detect_still_ms"),
    ("align (per face)", "align_ms_per_face"),
    ("embed (per face)", "embed_ms_per_face"),
    ("match (gallery)", "match_ms"),
    ("service frame", "service_frame_ms"),
)


def stage_times(report: Mapping[str, Any], path: Path) -> Path:
    """``edge bench``: the time of each stage, median and (where measured) 95th percentile."""
    plt = _pyplot()
    rows = [(name, report[f"{key}_p50"], report.get(f"{key}_p95")) for name, key in STAGES if f"{key}_p50" in report]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    y = list(range(len(rows)))
    ax.barh([i - 0.2 for i in y], [r[1] for r in rows], height=0.4, color="#1565c0", label="median")
    ax.barh([i + 0.2 for i in y], [r[2] or 0 for r in rows], height=0.4, color="#90caf9", label="95th percentile")
    ax.set_yticks(y, [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds")
    ax.set_title(f"edge bench: {report.get('source', '')}, {report.get('threads', 1)} thread(s)", fontsize=9)
    ax.grid(True, axis="x", alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, path)


def recall_by_photos(runs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``edge eval identify``: the share of enrolled people identified against enrolment photos per
    person, one line per stated rate (and per group, dashed), from several runs' JSON."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    by_rate: dict[float, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_rate.setdefault(float(run["max_false_match_rate"]), []).append(run)
    for rate, rs in sorted(by_rate.items(), reverse=True):
        rs = sorted(rs, key=lambda r: r["photos"])
        line = ax.plot(
            [r["photos"] for r in rs], [r["recall_mean"] * 100 for r in rs], "o-", label=f"{rate:g}, everyone"
        )
        for group, style in (("female", "--"), ("male", ":")):
            if all(group in r.get("recall_by_group", {}) for r in rs):
                ax.plot(
                    [r["photos"] for r in rs],
                    [r["recall_by_group"][group] * 100 for r in rs],
                    style,
                    color=line[0].get_color(),
                    label=f"{rate:g}, {group}",
                )
    ax.set_xticks(sorted({r["photos"] for r in runs}))
    ax.set_ylim(0, 102)
    ax.set_xlabel("enrolment photos per person")
    ax.set_ylabel("people identified from one other photo (%)")
    size = runs[0]["gallery_size"] if runs else "?"
    ax.set_title(f"Person-level recall, gallery of {size}, by stated rate per stranger", fontsize=9)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
