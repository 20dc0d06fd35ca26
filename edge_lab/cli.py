"""The lab's commands: ``edge eval …``, ``edge bench`` and ``edge fleet simulate``.

Found by the ``edge`` command through the ``edge.lab`` entry points (pyproject.toml): ``register`` adds
``eval`` and ``bench`` to its parser; ``cmd_fleet_simulate`` runs under ``edge fleet``'s own parser."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.cli.common import (
    add_model_flags,
    parse_distances,
    parse_size,
    progress_bar,
    settings_from,
)
from edge.demo.assets import checkout_faces
from edge.errors import InputError

# The imaging conditions of edge_lab.conditions, named here so that the help loads no measuring module
# until one is asked for (tests/test_config.py checks the two lists agree).
CONDITIONS = ("none", "grey", "dark", "blur", "jpeg")


def cmd_fleet_simulate(args: argparse.Namespace) -> int:
    from edge_lab.fleet_sim import simulate

    out = simulate(args.devices, args.processes, args.heartbeat, args.identities, args.sites)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:<42} {v}")
    return 0 if out["all_on_new_version"] else 1


def cmd_eval_lfw(args: argparse.Namespace) -> int:
    from edge.capture.imageio import read_image
    from edge.recognition.match import Gallery
    from edge.recognition.pipeline import Recognizer
    from edge_lab import lfw
    from edge_lab.conditions import apply_condition

    root: Path = args.root
    image_root = root / "images" if (root / "images").is_dir() else root
    pairs_path: Path = args.pairs or next(
        (p for p in (root / "pairs.txt", root / "pairsDevTest.txt") if p.is_file()), root / "pairs.txt"
    )
    pairs = lfw.parse_pairs(pairs_path)
    settings = settings_from(
        args, detector=args.detector, embedder=args.embedder, threads=args.threads, fallback_detector=True
    )
    rec = Recognizer(settings)

    face_times: list[float] = []

    def embed_image(path: Path) -> tuple[Any, str]:
        image = apply_condition(read_image(path), args.condition)
        t0 = time.perf_counter()
        aligned, fallback = lfw.still_or_centre(rec, image)
        vec = rec.embed([aligned])[0]
        face_times.append(time.perf_counter() - t0)  # detect + align + embed: the whole per-face cost
        return vec, fallback

    data = lfw.embed_pairs_images(image_root, pairs, embed_image, progress_bar("embedding"))
    matcher = rec.matcher
    report = lfw.evaluate(pairs, data, matcher.snapshot(Gallery.empty()).threshold, matcher.per_identity_fmr(0))
    out = {
        "pairs_file": str(pairs_path),
        "pairs": report.pairs,
        "skipped": report.skipped,
        "images": len(data.keys),
        "missing_images": len(data.missing),
        "no_face": report.no_face,
        "no_face_handling": report.fallbacks,
        "folds": report.folds,
        "split": report.split,
        "accuracy_mean": round(report.accuracy_mean, 4),
        "accuracy_std": round(report.accuracy_std, 4),
        "tar_at_fmr_1e-3": round(report.tar_at_fmr["1e-3"], 4),
        "tar_at_fmr_1e-4": round(report.tar_at_fmr["1e-4"], 4),
        "default_threshold": round(report.default_threshold, 4),
        "stated_fmr": report.stated_fmr,
        "observed_fmr": report.observed_fmr,
        "impostor_pairs": report.impostor_pairs,
        "embedder": rec.embedder_name,
        "model_sha256": rec.embedder_sha256,
        "pipeline": rec.pipeline_id,
        "detector": rec.detector.kind,
        "ms_per_image_p50": round(float(np.median(face_times)) * 1000, 2) if face_times else None,
    }
    out["condition"] = args.condition
    if args.groups:
        from edge_lab.groups import group_report, read_groups

        # A grey picture is judged with the grey tables where the device has them (edge.vision.condition).
        tables = rec.matcher.by_condition.get("grey" if args.condition == "grey" else "colour", rec.matcher.calibration)
        out["tables"] = tables.condition
        table = tables.largest.table
        out.update(
            group_report(
                data.emb,
                data.person,
                [f"{n}_{i:04d}.jpg" for n, i in data.keys],
                read_groups(args.groups),
                report.default_threshold,
                table.threshold_for,
            )
        )
    if args.compare_dlib:
        from edge_lab.dlib_compare import compare

        out.update(compare(image_root, pairs, report, float(np.median(face_times)) * 1000))
    if args.plot:
        from edge_lab.plots import det_curve

        det_curve(out, args.plot)
    if args.json:
        print(json.dumps(out))
    else:
        cond = "" if args.condition == "none" else f", condition {args.condition}"
        print(f"LFW {pairs_path.name}: {report.pairs} pairs ({report.skipped} skipped), {len(data.keys)} images{cond}")
        print(f"  accuracy        {report.accuracy_mean * 100:.2f}% ± {report.accuracy_std * 100:.2f} ({report.split})")
        print(f"  TAR @ FMR 1e-3  {report.tar_at_fmr['1e-3'] * 100:.2f}%")
        print(f"  TAR @ FMR 1e-4  {report.tar_at_fmr['1e-4'] * 100:.2f}%")
        print(f"  no face         {report.no_face} {report.fallbacks or ''}")
        print(
            f"  calibration     threshold {report.default_threshold:.4f} promises FMR {report.stated_fmr:g}; "
            f"observed {report.observed_fmr:.2e} over {report.impostor_pairs} impostor pairs"
        )
        print(f"  model           {rec.embedder_sha256[:16]} ({rec.pipeline_id}, detector {rec.detector.kind})")
        if args.groups:
            print_groups(out)
        if args.compare_dlib:
            for key in [k for k in out if k.startswith(("dlib_", "edge_", "speedup"))]:
                print(f"  {key:<28} {out[key]}")
    return 0


def print_groups(out: dict[str, Any]) -> None:
    stated = out["stated_fmr"]
    print(
        f"\n  per group at the default threshold {out['default_threshold']:.4f} (stated FMR {stated:g}); "
        f"{out['labelled_images']} labelled images"
    )
    print(
        f"  {'group':<14} {'impostor pairs':>15} {'observed FMR':>13} {'x stated':>9} {'genuine pairs':>14} {'FNMR':>7}"
    )
    rows = [("all", out["all"]), *out["groups"].items(), ("cross_group", out["cross_group"])]
    for g, r in rows:
        fnmr = f"{r['fnmr'] * 100:6.2f}%" if r.get("fnmr") is not None else "      -"
        print(
            f"  {g:<14} {r['impostor_pairs']:>15,} {r['observed_fmr']:>13.2e} {r['observed_fmr'] / stated:>9.2f} "
            f"{r.get('genuine_pairs', 0):>14,} {fnmr:>7}"
        )
    print("\n  observed FMR at the device's threshold for each stated rate")
    names = ["all", *out["groups"]]
    print(f"  {'stated':>8} {'threshold':>9} " + " ".join(f"{n:>12}" for n in names))
    for f, row in out["fmr_at_stated"].items():
        print(f"  {f:>8} {row['threshold']:>9.4f} " + " ".join(f"{row[n]:>12.2e}" for n in names))


def cmd_eval_pairs(args: argparse.Namespace) -> int:
    from edge_lab import lfw

    lines = lfw.covering_pairs(lfw.people_photos(args.root), seed=args.seed)
    text = "\n".join(lines) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}: {lines[0]} same and {lines[0]} different pairs", file=sys.stderr)
    return 0


def cmd_bench_sealing(args: argparse.Namespace) -> int:
    from edge.device.runtime import load_manifest
    from edge_lab.sealing import sealing_bench

    settings = settings_from(args, detector=args.detector, embedder=args.embedder, threads=args.threads)
    dim = load_manifest(settings.models.dir).embedder(settings.models.embedder).dim
    if args.identities < 1 or args.templates < 1 or min(args.recipients) < 1:
        raise InputError("--identities, --templates and --recipients must be at least 1")
    out = sealing_bench(dim, args.identities, args.templates, tuple(sorted(set(args.recipients))))
    out["embedder"] = settings.models.embedder
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.identities} identities x {args.templates} templates ({dim}-d, int8), median of {out['repeats']}:")
    for name, row in out["cases"].items():  # type: ignore[attr-defined]
        print(
            f"  {name:<16} {row['bytes']:>10,} bytes  make {row['make_s'] * 1000:7.1f} ms  "
            f"apply {row['apply_s'] * 1000:7.1f} ms  (stored {row['stored_bytes']:,} bytes)"
        )
    if "bytes_per_extra_recipient" in out:
        print(f"  each further device: {out['bytes_per_extra_recipient']} bytes")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.sealing:
        return cmd_bench_sealing(args)
    from edge.demo.assets import workdir
    from edge.recognition.pipeline import Recognizer
    from edge_lab.bench import (
        audit_bench,
        bench,
        bundle_bench,
        peak_rss_mb,
        portraits,
        service_bench,
        synthetic_stream,
    )

    width, height = parse_size(args.size)
    settings = settings_from(args, detector=args.detector, embedder=args.embedder, threads=args.threads)
    rec = Recognizer(settings)
    rss_loaded = round(peak_rss_mb(), 1)
    faces = args.faces or checkout_faces()
    if args.cameras:
        return bench_cameras(args, rec, faces, width, height)
    if args.source is None and faces is None:
        raise InputError("bench needs --source FILE|DIR or --faces DIR (no test fixtures found beside the package)")
    result = bench(
        rec, args.source, faces, frames=args.frames, gallery_size=args.gallery_size, width=width, height=height
    )
    result["rss_after_loading_models_mb"] = rss_loaded
    if args.source is None and faces is not None:
        result.update(service_bench(rec, faces, workdir(), width, height, args.distance))
        result["peak_rss_mb_after_service"] = round(peak_rss_mb(), 1)
    audit_dir = workdir()
    try:
        result.update(audit_bench(audit_dir / "audit"))  # on the disk the state dir would use: /tmp here
    finally:
        shutil.rmtree(audit_dir, ignore_errors=True)
    if args.bundle:
        frame = (
            next(synthetic_stream(portraits(faces), 1, width, height))
            if faces
            else np.zeros((height, width, 3), np.uint8)
        )
        result.update(bundle_bench(rec, frame))
    if args.plot:
        from edge_lab.plots import stage_times

        stage_times(result, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:34} {value}")
    return 0


def bench_cameras(args: argparse.Namespace, rec: Any, faces: Path | None, width: int, height: int) -> int:
    from edge.demo.assets import workdir
    from edge_lab.cameras import cameras_bench

    if faces is None:
        raise InputError("bench --cameras needs --faces DIR (no test fixtures found beside the package)")
    out = cameras_bench(rec, faces, workdir(), args.cameras, width, height, args.distance, args.seconds, args.loops)
    out["embedder"] = rec.embedder_name
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"{args.cameras} cameras at {out['size']}, {out['seconds']} s live at 30 frames/s each, "
        f"{out['threads_per_interpreter']} interpreter thread(s)"
    )
    for mode in args.loops:
        print(f"  {mode} loop:")
        for c in out[f"live_{mode.replace('-', '_')}"]:  # type: ignore[attr-defined]
            print(
                f"    camera {c['camera']}: {c['fps']} frames/s, {c['dropped_frames']} dropped, {c['events']} events, "
                f"face -> event p50/p90/max {c['event_ms_p50']}/{c['event_ms_p90']}/{c['event_ms_max']} ms"
            )
    print(f"  capacity (every frame, as fast as processed): {out['capacity_fps_per_camera']} frames/s per camera")
    print(
        f"  nobody in view: {out['idle_ms_per_round']} ms a round, "
        f"{out['idle_cpu_pct_of_one_core_per_camera_at_30fps']}% of one core per camera at 30 frames/s"
    )
    return 0


def cmd_eval_range(args: argparse.Namespace) -> int:
    from edge.recognition.pipeline import Recognizer
    from edge_lab.range import evaluate

    width, height = parse_size(args.size)
    settings = settings_from(args, detector=args.detector, embedder=args.embedder, threads=args.threads)
    rec = Recognizer(settings)
    out = evaluate(
        rec,
        args.root,
        width,
        height,
        parse_distances(args.distances),
        args.hfov,
        args.people,
        args.strangers,
        args.distractors,
        args.frames,
        args.seed,
        args.cast,
        args.photos,
        args.scene,
        args.codec,
        args.cameras,
    )
    out["embedder"] = rec.embedder_name
    if args.plot:
        from edge_lab.plots import recall_by_distance

        recall_by_distance([out], args.plot)
    if args.json:
        print(json.dumps(out))
        return 0
    c: Any = out["cast"]
    print(
        f"range {width}x{height}, {args.hfov:g}° lens, scene {args.scene}, codec {args.codec}, gallery of "
        f"{out['gallery_identities']} identities, seed {args.seed}"
    )
    print(
        f"cast: {c['people']} people enrolled from {c['photos']} photo(s) each, rule '{c['rule']}' "
        f"({c['excluded_by_rule']} of {c['candidates']} candidates excluded by it; "
        f"{c['not_enrolled']} cast with no usable enrolment photo, counted as missed)"
    )
    print(f"{'distance':>8} {'face px':>8} {'recall':>7} {'false':>6} {'fps':>7} {'event ms p50/p90/max':>22}")
    for d, row in out["by_distance"].items():  # type: ignore[attr-defined]
        lat = "/".join(str(row.get(f"event_latency_ms_{k}", "-")) for k in ("p50", "p90", "max"))
        print(
            f"{d + ' m':>8} {row['face_px']:>8} {row['recall'] * 100:>6.1f}% {row['false_events']:>6} {row['fps']:>7} {lat:>22}"
        )
    return 0


def cmd_eval_identify(args: argparse.Namespace) -> int:
    from edge.recognition.pipeline import Recognizer
    from edge_lab.groups import read_groups
    from edge_lab.identify import evaluate

    settings = settings_from(args, detector=args.detector, embedder=args.embedder, threads=args.threads)
    rec = Recognizer(settings)
    groups = read_groups(args.groups) if args.groups else None
    out = evaluate(
        rec,
        args.root,
        args.photos,
        args.gallery_size,
        args.people,
        args.strangers,
        args.condition,
        args.seed,
        args.repeats,
        groups,
        args.min_photos,
    )
    out["embedder"] = rec.embedder_name
    if args.json:
        print(json.dumps(out))
        return 0
    cond = "" if args.condition == "none" else f", probes {args.condition}"
    print(
        f"identify: {args.people} people enrolled from {args.photos} photo(s) each, gallery of {args.gallery_size}, "
        f"{args.strangers} strangers{cond}; stated rate {out['max_false_match_rate']:g} per stranger"
    )
    for r in out["runs"]:  # type: ignore[attr-defined]
        missed = ", ".join(f"{k} {v}" for k, v in r["missed_by_reason"].items()) or "none"
        print(
            f"  seed {r['seed']}: identified {r['identified']} of {r['people']} ({r['recall'] * 100:.1f}%), "
            f"wrong identities {r['wrong_identities']}, missed: {missed}"
        )
    print(
        f"  recall {out['recall_mean'] * 100:.1f}% (lowest {out['recall_min'] * 100:.1f}%), "  # type: ignore[operator]
        f"wrong identities {out['wrong_identities']}"
    )
    for g, rec_g in out.get("recall_by_group", {}).items():  # type: ignore[attr-defined]
        print(f"  {g:<12} recall {rec_g * 100:.1f}%")
    return 0


def cmd_eval_soak(args: argparse.Namespace) -> int:
    from edge_lab.soak import soak

    faces = args.faces or checkout_faces()
    if faces is None:
        raise InputError("soak needs the face fixtures of a source checkout or --faces DIR")
    out = soak(faces, args.minutes, args.gallery_every, args.sample_every)
    if args.plot:
        from edge_lab.plots import memory_over_time

        memory_over_time(out, args.plot)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k != "rss_mb_samples":
                print(f"{k:<30} {v}")
        print("rss_mb_samples (s, MB):", " ".join(f"{t:.0f}:{mb}" for t, mb in out["rss_mb_samples"]))  # type: ignore[attr-defined]
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ev = sub.add_parser("eval", help="accuracy measurements").add_subparsers(dest="eval_command", required=True)
    lfw_p = ev.add_parser("lfw", help="the LFW verification protocol on a pairs.txt-format file")
    lfw_p.add_argument("--root", type=Path, required=True, help="LFW folder (name/name_NNNN.jpg, or with images/)")
    lfw_p.add_argument("--pairs", type=Path, help="pairs file (default: ROOT/pairs.txt or ROOT/pairsDevTest.txt)")
    lfw_p.add_argument("--json", action="store_true", help="print one JSON object")
    lfw_p.add_argument("--compare-dlib", action="store_true", help="also run face_recognition (dlib) on the same pairs")
    lfw_p.add_argument(
        "--groups", type=Path, help="CSV image,group (e.g. gender.csv): error rates per group and across groups"
    )
    lfw_p.add_argument(
        "--condition", choices=CONDITIONS, default="none", help="transform every image first (see edge_lab.conditions)"
    )
    lfw_p.add_argument(
        "--plot", type=Path, help="with --groups: draw the DET curve per group to this PNG (needs '.[plots]')"
    )
    add_model_flags(lfw_p)
    lfw_p.set_defaults(func=cmd_eval_lfw)

    pp = ev.add_parser("pairs", help="write a pairs.txt-format file naming every image (all impostor pairs count)")
    pp.add_argument("--root", type=Path, required=True, help="LFW-style folder (NAME/NAME_NNNN.jpg, or with images/)")
    pp.add_argument("--out", type=Path, help="file to write (default: standard output)")
    pp.add_argument("--seed", type=int, default=0, help="seed of the random different pairs")
    pp.set_defaults(func=cmd_eval_pairs)

    idp = ev.add_parser("identify", help="the share of enrolled people identified from one photo (person-level recall)")
    idp.add_argument("--root", type=Path, required=True, help="LFW-style folder (NAME/NAME_NNNN.jpg, or with images/)")
    idp.add_argument("--photos", type=int, default=1, help="enrolment photos per person")
    idp.add_argument("--gallery-size", type=int, default=100, help="identities in the gallery (the cast and others)")
    idp.add_argument("--people", type=int, default=60, help="enrolled people probed with a photo not enrolled")
    idp.add_argument("--strangers", type=int, default=60, help="people probed who are not enrolled")
    idp.add_argument(
        "--condition", choices=CONDITIONS, default="none", help="transform the probe photos (a camera's picture)"
    )
    idp.add_argument("--groups", type=Path, help="CSV image,group (e.g. gender.csv): recall per group")
    idp.add_argument(
        "--min-photos",
        type=int,
        default=0,
        help="cast only people with this many photos or more (the same people for every --photos)",
    )
    idp.add_argument("--repeats", type=int, default=3, help="casts, each with the next seed")
    idp.add_argument("--seed", type=int, default=0)
    idp.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_flags(idp)
    idp.set_defaults(func=cmd_eval_identify)

    rng = ev.add_parser("range", help="recall by distance on composited scenes, through the service's frame loop")
    rng.add_argument("--root", type=Path, required=True, help="LFW View 1 folder (people are taken from it)")
    rng.add_argument("--size", default="1280x720", help="frame size WIDTHxHEIGHT (default 1280x720)")
    rng.add_argument("--hfov", type=float, default=60.0, help="horizontal field of view of the lens, degrees")
    rng.add_argument("--distances", default="1,2,3,4,5,6", help="metres, comma-separated")
    rng.add_argument("--people", type=int, default=40, help="enrolled people shown (one visit each per distance)")
    rng.add_argument("--strangers", type=int, default=20, help="people shown who are not enrolled")
    rng.add_argument(
        "--distractors",
        type=int,
        default=20,
        help="enrolled people who never appear (gallery size = people + distractors)",
    )
    rng.add_argument("--frames", type=int, default=40, help="frames each person is in view")
    rng.add_argument("--seed", type=int, default=0)
    rng.add_argument(
        "--cast",
        choices=["any", "close-up"],
        default="any",
        help="'any': everyone picked is cast and counts (default); 'close-up': only people whose shown photo is "
        "accepted against their enrolment up close (recall then measures range alone; named in the output)",
    )
    rng.add_argument(
        "--photos", type=int, default=1, help="enrolment photos per person (people with one more are cast)"
    )
    rng.add_argument("--scene", choices=["hall", "wall"], default="hall", help="scene style (see edge_lab.range)")
    rng.add_argument(
        "--codec",
        choices=["none", "mp4v", "ffv1"],
        default="none",
        help="pass the frames through a video codec and back",
    )
    rng.add_argument("--json", action="store_true", help="print one JSON object")
    rng.add_argument("--plot", type=Path, help="draw recall against distance to this PNG (needs '.[plots]')")
    rng.add_argument("--cameras", type=int, default=1, help="the scenes on N cameras of one device at once")
    add_model_flags(rng)
    rng.set_defaults(func=cmd_eval_range)

    sk = ev.add_parser(
        "soak", help="the service for a long run: about 1 event/s, a gallery update every 5 min, RSS sampled"
    )
    sk.add_argument("--minutes", type=float, default=60.0)
    sk.add_argument("--gallery-every", type=float, default=300.0, help="seconds between gallery versions")
    sk.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    sk.add_argument("--faces", type=Path, help="face folder (default: the checkout's tests/fixtures/faces)")
    sk.add_argument("--json", action="store_true")
    sk.add_argument("--plot", type=Path, help="draw resident memory over time to this PNG (needs '.[plots]')")
    sk.set_defaults(func=cmd_eval_soak)

    b = sub.add_parser("bench", help="per-stage latency, frames per second, peak RSS")
    b.add_argument("--size", default="640x480", help="frame size WIDTHxHEIGHT of the composed streams")
    b.add_argument("--distance", type=float, default=1.2, help="metres from the camera of the service clip's people")
    b.add_argument("--source", type=Path, help="video file or image folder (default: a synthetic 640x480 stream)")
    b.add_argument("--faces", type=Path, help="face images to compose the synthetic stream from")
    b.add_argument("--frames", type=int, default=300)
    b.add_argument("--gallery-size", type=int, default=10_000)
    b.add_argument("--bundle", action="store_true", help="also time applying a 10,000 x 5 signed gallery bundle")
    b.add_argument(
        "--sealing",
        action="store_true",
        help="instead: size and make/apply time of a gallery in the clear and sealed to 1 and N devices (docs/privacy.md)",
    )
    b.add_argument("--identities", type=int, default=1000, help="with --sealing: identities in the gallery")
    b.add_argument("--templates", type=int, default=3, help="with --sealing: templates per identity")
    b.add_argument(
        "--recipients", type=int, nargs="+", default=[1, 500], help="with --sealing: devices each bundle is sealed to"
    )
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--plot", type=Path, help="draw the time of each stage to this PNG (needs '.[plots]')")
    b.add_argument("--cameras", type=int, default=0, help="N cameras on one device instead (see edge_lab.cameras)")
    b.add_argument("--seconds", type=float, default=20.0, help="with --cameras: seconds of live frames per camera")
    b.add_argument(
        "--loops",
        nargs="+",
        choices=["shared", "per-camera"],
        default=["shared", "per-camera"],
        help="with --cameras: one frame loop for every camera, and/or one per camera (measured in turn)",
    )
    add_model_flags(b)
    b.set_defaults(func=cmd_bench)
