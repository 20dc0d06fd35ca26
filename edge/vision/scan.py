"""Which parts of each frame the detector looks at: detection at the resolution faces need.

BlazeFace sees a 128×128 input and finds a face when its box is about 1/8 to 3/4
of the window it was given (measured: 14–104 px at the input). Letterboxing a
1280×720 frame into 128 px shrinks it tenfold, so a face at 3 m (59 px) becomes
6 px: invisible. The scanner therefore runs the same detector over windows of the
frame chosen so that every face lands in some window at a size it can find:

- **Layout** (per frame size, computed once): the whole frame, then levels of
  overlapping square tiles, each level about 2–4× smaller, down to tiles in which
  the smallest face worth judging (``quality.min_face_px``) is ``REACH`` × 1/8 of the
  window (where the detector still finds it).
  Tiles of a level overlap by the largest face the coarser level cannot see, so
  every face lies whole inside at least one window of the right level.
- **Tracks**: each live track is re-detected in a crop of 2.5× its face (every frame
  while seen lately, then every third: ``Tracker.followed``), so the face fills the
  input (its keypoints, hence its alignment, are as precise as at 1 m) and a far face
  costs one invoke, not a tile scan. A track that needs no evidence this frame, whose
  face's pixels have not changed since it was found (at most ``SETTLE_FRAMES`` frames
  ago), is kept as it was: someone standing still costs nothing between the looks their
  track needs. A lost track is looked for only where its crop changed since.
- **Motion**: a 1/8-scale grey image against a running background marks where
  something changed; a pixel steady for ``SETTLE_FRAMES`` is background again (what
  someone who left uncovered stops counting at once). Changes explained by a face
  found this frame or in the last ``SETTLE_FRAMES`` (its head, and its body below it:
  a walker's trail) are set aside; windows over the other changes are scanned, up to
  ``windows_per_frame``, the levels taking turns (coarse first) and the least recently
  scanned first within a level: a near face is found at once, and someone walking in
  view costs the crop around their face, not the tiles over their body.
- **First round**: the motion model takes the first frame as its background, so whoever
  is in view when watching begins is found by looking: until every window has been
  scanned once, up to ``windows_per_frame`` not yet scanned are added each frame (coarse
  first), what motion takes not counted.
- **Background sweep**: one window every ``idle_every`` frames, every other time the
  next in turn (so a face that appeared without moving is still found, and nobody in
  view stays cheap), else the least recently scanned window whose changes a face
  explained (someone may stand behind a tracked person). A window scanned since the
  sweep in turn last passed it (for motion, or in the first round) is passed over without
  a detector run: every window is still looked at at least once between two turns.

Detections of all windows are merged in frame coordinates: overlapping boxes are
one face, kept from the window that resolved it best (the face nearest 48 px at
the input). A face cut by a tile edge inside the frame is dropped by the detector;
the neighbouring tile sees it whole. Stills (enrolment, ``edge identify``, eval)
scan every window of their layout once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from edge.device.settings import DetectionSettings
from edge.types import Box, Face, Follow, ImageArray
from edge.vision.detect import Detector, Region

# A face is found when its box side is between these fractions of the window side.
FIND_MIN = 1 / 8
FIND_MAX = 3 / 4
# A window answers for faces down to this share of FIND_MIN (found there too, less surely): the
# finest tiles are laid out so that the smallest face judged is just that.
REACH = 0.85
# Consecutive levels differ by at most this factor (each level covers a 6× size range).
MAX_LEVEL_RATIO = 4.0
BEST_INPUT_PX = 48.0
MOTION_WIDTH = 160  # the motion image is about this wide
SETTLE_FRAMES = 10  # a motion-image pixel steady this many frames is taken into the background
HOLD_STEADY = 0.75  # a tracked face is where it was when this share of its pixels is unchanged since
LOST_STEADY = 0.98  # a lost face is not looked for again while this share of its crop is unchanged since
CENTRED = 0.12  # a nested box this close to the centre of a large one (× its side) is the same face boxed tighter
NEST_RATIO = 1.6  # a detection this many times the side of another that lies inside it is not the same face


@dataclass(frozen=True, slots=True)
class Layout:
    """The windows of one frame size: ``windows[0]`` is the whole frame."""

    width: int
    height: int
    windows: tuple[Region, ...]
    levels: tuple[int, ...]  # window side of each level, coarse to fine
    level_of: tuple[int, ...]  # the level of each window (0: the whole frame)

    def __len__(self) -> int:
        return len(self.windows)


def _positions(length: int, side: float, overlap: float) -> list[float]:
    """Start offsets of tiles of ``side`` covering ``length`` with at least ``overlap``."""
    if side >= length:
        return [0.0]
    stride = max(side - overlap, 1.0)
    count = math.ceil((length - side) / stride) + 1
    return [i * (length - side) / (count - 1) for i in range(count)]


def layout(width: int, height: int, min_face: float) -> Layout:
    """Whole frame, then tile levels down to windows that answer for faces of ``min_face``
    (``REACH`` × 1/8 of their side)."""
    long_side = float(max(width, height))
    finest = min_face / (FIND_MIN * REACH)
    sides = [long_side]
    if long_side > finest * 1.25:
        n = math.ceil(math.log(long_side / finest) / math.log(MAX_LEVEL_RATIO))
        ratio = (long_side / finest) ** (1.0 / n)
        sides += [long_side / ratio**k for k in range(1, n + 1)]
    # Without tiles (a small image) the frame is the finest window: it answers down to min_face.
    frame_min = long_side * FIND_MIN * REACH if len(sides) > 1 else min(long_side * FIND_MIN * REACH, min_face)
    windows = [Region(0.0, 0.0, float(width), float(height), min_face=frame_min, kind="frame")]
    level_of = [0]
    for k in range(1, len(sides)):
        side, coarser = sides[k], sides[k - 1]
        # Faces below what the coarser level finds must fit whole in some tile: overlap by them.
        overlap = coarser * FIND_MIN * 1.15
        for y in _positions(height, side, overlap):
            for x in _positions(width, side, overlap):
                windows.append(
                    Region(
                        x,
                        y,
                        min(x + side, width),
                        min(y + side, height),
                        min_face=side * FIND_MIN * REACH,
                        max_face=side * FIND_MAX * 1.1,
                        kind="tile",
                    )
                )
                level_of.append(k)
    return Layout(width, height, tuple(windows), tuple(round(s) for s in sides), tuple(level_of))


def track_region(box: Box, crop_scale: float) -> Region:
    """A square around a tracked face, ``crop_scale`` times its side, where it is re-detected."""
    side = max(box.width, box.height) * crop_scale
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    return Region(
        cx - side / 2,
        cy - side / 2,
        cx + side / 2,
        cy + side / 2,
        min_face=side * 0.12,
        max_face=side * 0.9,
        kind="track",
    )


def _overlap(a: Box, b: Box) -> tuple[float, float]:
    """(IoU, intersection over the smaller box)."""
    iw = min(a.x1, b.x1) - max(a.x0, b.x0)
    ih = min(a.y1, b.y1) - max(a.y0, b.y0)
    if iw <= 0 or ih <= 0:
        return 0.0, 0.0
    inter = iw * ih
    area_a, area_b = a.width * a.height, b.width * b.height
    return inter / (area_a + area_b - inter), inter / max(min(area_a, area_b), 1e-9)


def _side(face: Face) -> float:
    return max(face.box.width, face.box.height)


def _window_side(face: Face, input_size: int) -> float:
    """Side of the window that found ``face`` (its box side over its size at the input, times the input)."""
    return _side(face) * input_size / face.input_px if face.input_px else float("inf")


def _nested(small: Face, big: Face) -> bool:
    """``small`` is far smaller than ``big`` (``NEST_RATIO``) and lies in its head region (the box
    grown by half its side): one of them is not a face of its own."""
    s, b = small.box, big.box
    bside = _side(big)
    if bside < NEST_RATIO * _side(small):
        return False
    grow = 0.5 * bside
    return b.x0 - grow <= s.x0 and s.x1 <= b.x1 + grow and b.y0 - grow <= s.y0 and s.y1 <= b.y1 + grow


def _fragment_of(small: Face, big: Face, input_size: int) -> bool:
    """``small`` lies in the real face ``big``'s head region and was found by a window too small to
    see ``big`` whole: a part of that face (an eye and brow, a mouth and chin) taken for a face."""
    return _nested(small, big) and _window_side(small, input_size) < 2.0 * _side(big)


def _centred_in(small: Face, big: Face, tolerance: float = CENTRED) -> bool:
    """``small``'s centre within ``tolerance`` of ``big``'s side from ``big``'s centre: the inner face
    boxed tightly, not a part of it (an eye and brow, a mouth and chin lie a quarter side off)."""
    s, b = small.box, big.box
    limit = tolerance * _side(big)
    return abs((s.x0 + s.x1 - b.x0 - b.x1) / 2) <= limit and abs((s.y0 + s.y1 - b.y0 - b.y1) / 2) <= limit


IsFace = Callable[[Face], bool]
FaceCheck = Callable[[ImageArray, Face], bool]  # is this detection in this image a face? (the face mesh)


def merge(
    faces: Sequence[Face],
    input_size: int = 128,
    iou: float = 0.3,
    contained: float = 0.6,
    is_face: IsFace | None = None,
) -> list[Face]:
    """One face per cluster of overlapping detections of about the same size, from the window that
    resolved it best. A much smaller detection inside a large one is either a fragment of that face
    (dropped) or a real face inside clutter that the detector boxed whole (a door, a smooth textured
    wall: then the large box goes), or the same face boxed loosely by a coarse window and tightly by
    a finer one that could have seen it whole or that is centred in it (the better resolved box
    stays). ``is_face`` (the face mesh's presence check) says which, and is asked only for such
    boxes; without it the large box is taken for a face."""

    def preference(f: Face) -> tuple[float, float]:
        resolved = -abs(math.log(max(f.input_px, 1.0) / BEST_INPUT_PX)) if f.input_px else -10.0
        return (resolved, f.score)

    def same(a: Face, b: Face) -> bool:
        if max(_side(a), _side(b)) >= NEST_RATIO * min(_side(a), _side(b)):
            return False  # nested detections of very different sizes: resolved below
        over, inside = _overlap(a.box, b.box)
        return over >= iou or inside >= contained

    kept: list[Face] = []
    for face in sorted(faces, key=preference, reverse=True):
        if not any(same(face, k) for k in kept):
            kept.append(face)
    dropped: set[int] = set()
    for big in sorted(kept, key=_side, reverse=True):
        if id(big) in dropped:
            continue
        # What this box would hide if it is a face: detections mostly inside it, and parts of it.
        hidden = [
            s
            for s in kept
            if s is not big
            and id(s) not in dropped
            and _nested(s, big)
            and (_overlap(s.box, big.box)[1] >= contained or _fragment_of(s, big, input_size))
        ]
        if not hidden:
            continue
        if is_face is None:
            dropped.update(id(s) for s in hidden)
        elif not is_face(big):
            dropped.add(id(big))
        else:
            # The same face boxed twice: loosely by a coarse window that barely resolved it, tightly by
            # a finer one (that could have seen the large box whole, or a track's crop centred on the
            # face, where a fragment is off centre). The better measured one stays.
            tighter = [
                s
                for s in hidden
                if preference(s) > preference(big)
                and (not _fragment_of(s, big, input_size) or _centred_in(s, big))
                and is_face(s)
            ]
            keep = max(tighter, key=preference) if tighter else big
            dropped.update(id(f) for f in (big, *hidden) if f is not keep)
    return [f for f in kept if id(f) not in dropped]


class Motion:
    """Where the frame changed against a running background, on a ~160 px wide grey image."""

    def __init__(self, threshold: float, alpha: float = 0.1, settle: int = SETTLE_FRAMES) -> None:
        self.threshold = threshold
        self.alpha = alpha
        self.settle = settle
        self.step = 1
        self._bg: npt.NDArray[np.float32] | None = None
        self._prev: npt.NDArray[np.float32] | None = None
        self._still: npt.NDArray[np.uint8] | None = None  # frames each pixel has not changed, up to settle
        self._changed: npt.NDArray[np.uint8] | None = None
        self._explained: npt.NDArray[np.uint8] | None = None  # frames since a face explained each pixel
        self._integral: npt.NDArray[np.int32] | None = None

    def update(self, image: ImageArray) -> None:
        h, w = image.shape[:2]
        step = max(1, w // MOTION_WIDTH)
        # Every step-th pixel: image[::step, ::step] where step divides the frame (no strided copy).
        size = (-(-w // step), -(-h // step))
        small = cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_NEAREST), cv2.COLOR_BGR2GRAY)
        grey = cv2.blur(small, (3, 3)).astype(np.float32)
        self._integral = None
        if self._bg is None or self._bg.shape != grey.shape or step != self.step or self._prev is None:
            self.step, self._bg, self._prev, self._changed = step, grey.copy(), grey, None
            self._still = np.zeros(grey.shape, np.uint8)
            self._explained = np.full(grey.shape, 255, np.uint8)
            return
        assert self._still is not None
        # A pixel steady for ``settle`` frames is background now: what someone who left uncovered
        # stops counting as motion at once, not after the running average has caught up.
        steady = cv2.absdiff(grey, self._prev) < self.threshold / 2
        still = self._still  # in place: +1 up to settle where steady, else 0
        np.add(still, 1, out=still, where=still < self.settle)
        still *= steady
        np.copyto(self._bg, grey, where=still >= self.settle)
        self._changed = np.greater(cv2.absdiff(grey, self._bg), self.threshold).view(np.uint8)
        cv2.accumulateWeighted(grey, self._bg, self.alpha)
        self._prev = grey

    def explain(self, boxes: Sequence[Box], grow: float = 3.0, body: float = 3.5) -> None:
        """Forget changes explained by these faces (found this frame), and by those of the last
        ``settle`` frames (what a walker uncovers changes until it has settled): the head and
        hair, a square ``grow`` times the face, and the body, a column ``body`` faces wide from
        the chin down."""
        if self._changed is None or self._explained is None:
            return
        h, w = self._changed.shape
        age = self._explained
        np.add(age, 1, out=age, where=age < 255)
        for b in boxes:
            cx, cy = (b.x0 + b.x1) / 2 / self.step, (b.y0 + b.y1) / 2 / self.step
            side = max(b.width, b.height) / self.step
            half = side * grow / 2
            y0, y1 = max(0, int(cy - half)), min(h, int(cy + half) + 1)
            x0, x1 = max(0, int(cx - half)), min(w, int(cx + half) + 1)
            age[y0:y1, x0:x1] = 0
            half = side * body / 2
            x0, x1 = max(0, int(cx - half)), min(w, int(cx + half) + 1)
            age[max(0, int(cy + side * 0.5)) :, x0:x1] = 0
        self._changed *= age > self.settle + 1
        self._integral = None

    def steady(self, box: Box, frames: int, fraction: float) -> bool:
        """Has at least ``fraction`` of ``box`` (frame pixels) been steady, frame to frame, for the
        last ``frames`` frames (at most ``settle``)? Then what was there is still there."""
        if self._still is None or frames > self.settle:
            return False
        s = self.step
        h, w = self._still.shape
        x0, y0 = max(0, int(box.x0 / s)), max(0, int(box.y0 / s))
        x1, y1 = min(w, math.ceil(box.x1 / s)), min(h, math.ceil(box.y1 / s))
        patch = self._still[y0:y1, x0:x1]
        return patch.size > 0 and int(np.count_nonzero(patch >= frames)) >= fraction * patch.size

    def bounds(self, windows: Sequence[Region]) -> npt.NDArray[np.intp]:
        """(n, 4) window corners on the motion image (x0, y0, x1, y1), inside it: computed once per
        layout, after the first update (which sets the motion image's size)."""
        assert self._still is not None
        h, w = self._still.shape
        s = self.step
        corners = np.array(
            [(int(r.x0 / s), int(r.y0 / s), math.ceil(r.x1 / s), math.ceil(r.y1 / s)) for r in windows], np.intp
        )
        return np.clip(corners, 0, np.array([w, h, w, h], np.intp))

    def changed_in(self, bounds: npt.NDArray[np.intp], min_pixels: int = 3) -> npt.NDArray[np.bool_]:
        """For every window at once: did at least ``min_pixels`` of its motion-image pixels change?"""
        if self._changed is None:
            return np.zeros(len(bounds), bool)
        if self._integral is None:
            self._integral = np.asarray(cv2.integral(self._changed), np.int32)
        ii = self._integral
        x0, y0, x1, y1 = bounds.T
        total = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
        changed: npt.NDArray[np.bool_] = total >= min_pixels
        return changed


@dataclass(frozen=True, slots=True)
class ScanStats:
    """What one frame's detection cost: detector invokes by kind."""

    track_windows: int
    motion_windows: int
    sweep_windows: int  # the background sweep and, at first, the first round
    unchanged: int = 0  # tracks not re-detected, nothing in their crop having changed: no invoke

    @property
    def invokes(self) -> int:
        return self.track_windows + self.motion_windows + self.sweep_windows


class Scanner:
    """Per camera: the layout of its frame size, the motion model, and when each window was last scanned."""

    def __init__(
        self, detector: Detector, settings: DetectionSettings, min_face: float, face_check: FaceCheck | None = None
    ) -> None:
        self.detector = detector
        self.settings = settings
        self.min_face = min_face
        self.face_check = face_check  # asked only where a large box would hide a smaller detection
        self.motion = Motion(settings.motion_threshold)
        self._layout: Layout | None = None
        self._bounds: npt.NDArray[np.intp] | None = None  # the layout's windows on the motion image
        self._level: npt.NDArray[np.intp] = np.zeros(0, np.intp)  # the layout's level of each window
        self._last_scan: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._swept: npt.NDArray[np.int64] = np.zeros(0, np.int64)  # when the sweep in turn last passed each window
        self._sweep_next = 0
        self._first_round = True  # every window not yet scanned once since the layout was made
        self._sweeps = 0
        self._frame = 0
        self.last = ScanStats(0, 0, 0)

    @property
    def first_round(self) -> bool:
        """Still looking at every window once since watching began (or the frame size changed)."""
        return self._first_round and self.settings.mode != "whole"

    def layout_for(self, width: int, height: int) -> Layout:
        if self._layout is None or (self._layout.width, self._layout.height) != (width, height):
            self._layout = layout(width, height, self.min_face)
            self._bounds = None
            self._last_scan = np.full(len(self._layout), -(10**9), np.int64)
            self._level = np.array(self._layout.level_of, np.intp)
            self._swept = np.full(len(self._layout), -(10**9), np.int64)
            self._sweep_next = 0
            self._first_round = True
        return self._layout

    def detect(self, image: ImageArray, tracked: Sequence[Follow] = ()) -> list[Face]:
        """Faces of one video frame: crops around ``tracked`` faces (or the face itself when nothing
        in it changed), changed windows no face found this frame explains, one sweep window."""
        if self.settings.mode == "whole":  # the whole frame letterboxed, nothing else
            self.last = ScanStats(0, 0, 1)
            return self.detector.detect(image)
        h, w = image.shape[:2]
        lay = self.layout_for(w, h)
        self._frame += 1
        self.motion.update(image)
        faces, explaining, unchanged = self._follow(image, tracked)
        if self._bounds is None:  # the motion image's scale is known after its first update
            self._bounds = self.motion.bounds(lay.windows)
        sweep_due = self._frame % self.settings.idle_every == 0
        moved = self.motion.changed_in(self._bounds) if sweep_due else None
        self.motion.explain([f.box for f in explaining])  # what the faces found this frame explain
        unexplained = self.motion.changed_in(self._bounds)
        changed = np.flatnonzero(unexplained)
        chosen = [int(i) for i in self._by_level_in_turn(changed)[: self.settings.windows_per_frame]]
        sweep = 0
        if self._first_round:  # what was in view when watching began is the motion model's background
            never = [int(i) for i in np.flatnonzero(self._last_scan < 0) if int(i) not in chosen]
            first = never[: max(0, self.settings.windows_per_frame - len(chosen))]
            chosen += first
            sweep += len(first)
            self._first_round = len(never) > len(first)
        if moved is not None:
            i = self._sweep_window(np.flatnonzero(moved & ~unexplained), set(chosen))
            if i is not None:
                chosen.append(i)
                sweep += 1
        for i in chosen:
            faces += self.detector.detect(image, lay.windows[i])
            self._last_scan[i] = self._frame
        self.last = ScanStats(len(tracked) - unchanged, len(chosen) - sweep, sweep, unchanged)
        return self._merge(image, faces)

    def _follow(self, image: ImageArray, tracked: Sequence[Follow]) -> tuple[list[Face], list[Face], int]:
        """Re-detect each tracked face in a crop around its box: the face fills the input, so its
        keypoints are as precise as at 1 m, whatever the frame size. A face offered as ``unchanged_face``
        whose pixels have not changed since it was found is kept as it was (someone standing
        still costs nothing between the looks their track needs), and a lost face is looked for
        again only where its crop changed. Returns the faces, those of them that explain the motion
        around them (not those of tracks the face mesh called not a face), and how many tracks cost
        no invoke."""
        faces: list[Face] = []
        explaining: list[Face] = []
        unchanged = 0
        for f in tracked:
            if f.unchanged_face is not None and self.motion.steady(
                f.unchanged_face.box, f.unchanged_frames + 1, HOLD_STEADY
            ):
                found = [f.unchanged_face]
                unchanged += 1
            else:
                crop = track_region(f.box, self.settings.track_crop)
                if f.lost and self.motion.steady(Box(crop.x0, crop.y0, crop.x1, crop.y1), f.lost, LOST_STEADY):
                    unchanged += 1  # not found there, and nothing there changed since: it is not there now
                    continue
                found = self.detector.detect(image, crop)
            faces += found
            if f.face:
                explaining += found
        return faces, explaining, unchanged

    def _sweep_window(self, explained: npt.NDArray[np.intp], taken: set[int]) -> int | None:
        """The background sweep's window this time: every other time, the least recently scanned
        window whose changes a face explained (someone could stand behind a tracked person); else
        the next window in turn. None when every candidate is already scanned this frame, or when
        the window in turn was scanned since the sweep last passed it (nothing to catch up on)."""
        assert self._layout is not None
        self._sweeps += 1
        fresh = [int(i) for i in explained if int(i) not in taken]
        if fresh and self._sweeps % 2 == 0:
            return min(fresh, key=lambda i: int(self._last_scan[i]))
        for _ in range(len(self._layout)):
            i = self._sweep_next
            self._sweep_next = (self._sweep_next + 1) % len(self._layout)
            if i not in taken:
                looked_since = self._last_scan[i] > self._swept[i]  # since the sweep last passed it
                self._swept[i] = self._frame
                return None if looked_since else i
        return None

    def _by_level_in_turn(self, changed: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        """Changed windows in scan order: levels take turns, coarse first, and within a level the least
        recently scanned first. A near face (found by a coarse window) then does not wait behind the
        many fine tiles over a moving body, and fine tiles still get most of the slots."""
        level, last = self._level[changed], self._last_scan[changed]
        by_level = np.lexsort((last, level))  # by level, then least recently scanned
        lv = level[by_level]
        rank = np.arange(len(lv)) - np.searchsorted(lv, lv)  # position within its level
        ordered: npt.NDArray[np.intp] = changed[by_level][np.lexsort((lv, rank))]
        return ordered

    def detect_still(self, image: ImageArray) -> list[Face]:
        """Every face of a still image: every window of its layout, merged."""
        if self.settings.mode == "whole":
            return self.detector.detect(image)
        h, w = image.shape[:2]
        lay = layout(w, h, self.min_face)
        faces: list[Face] = []
        for win in lay.windows:
            faces += self.detector.detect(image, win)
        return self._merge(image, faces)

    def _merge(self, image: ImageArray, faces: list[Face]) -> list[Face]:
        check = self.face_check
        return merge(faces, self.detector.spec.size, is_face=None if check is None else lambda f: check(image, f))
