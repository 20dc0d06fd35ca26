"""Quality gate: size, sharpness, pose and exposure, with the reason for a rejection.

Pose comes from keypoint geometry: yaw from where the nose tip sits between the
eyes (0 frontal, ±1 over an eye; about tan(yaw), since the nose tip stands out
from the eye plane by about half the eye distance), roll from the eye line. Sharpness is
the variance of the Laplacian of the aligned crop; exposure its mean brightness.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.device.settings import QualitySettings
from edge.types import Face, FloatArray, ImageArray, Quality
from edge.vision.condition import condition_of

NOT_A_FACE = "not a face"


def assess(
    face: Face,
    crop: ImageArray,
    limits: QualitySettings,
    points: FloatArray | None = None,
    presence: float | None = None,
) -> Quality:
    """Judge one aligned face. ``points`` (right eye, left eye, nose first) are the
    refined landmarks when the pipeline has them; else the detector's keypoints.
    ``presence`` is the face mesh's face-presence score, when the mesh ran: detections
    it rejects (clutter the detector took for a face) are not judged at all."""
    if limits.max_yaw is None:  # the recognizer fills it in from the calibration (Recognizer.limits)
        raise ValueError("a quality gate without its head-turn limit: fill it in from the calibration first")
    kp = face.keypoints if points is None else points
    right_eye, left_eye, nose = kp[0], kp[1], kp[2]
    eye_vec = left_eye - right_eye
    eye_dist = float(np.hypot(*eye_vec))
    roll = math.degrees(math.atan2(float(eye_vec[1]), float(eye_vec[0])))
    if eye_dist > 1e-6:
        # Position of the nose along the eye line: 0 at the right eye, 1 at the left.
        t = float(np.dot(nose - right_eye, eye_vec)) / (eye_dist**2)
        yaw = (t - 0.5) * 2.0
    else:
        yaw = 1.0
    face_px = float(max(face.box.width, face.box.height))
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    centre = gray[16:96, 16:96]
    sharpness = float(cv2.Laplacian(centre, cv2.CV_32F).var())
    brightness = float(centre.mean())
    reason = ""
    if presence is not None and presence < limits.min_presence:
        reason = f"{NOT_A_FACE} (face mesh presence {presence:.2f} < {limits.min_presence:.2f})"
    elif face_px < limits.min_face_px:
        reason = f"face too small ({face_px:.0f} px < {limits.min_face_px:.0f})"
    elif abs(yaw) > limits.max_yaw:
        reason = f"head turned (yaw {yaw:+.2f}, limit ±{limits.max_yaw:.2f})"
    elif abs(roll) > limits.max_roll_deg:
        reason = f"head tilted (roll {roll:+.0f}°, limit ±{limits.max_roll_deg:.0f}°)"
    elif sharpness < limits.min_sharpness:
        reason = f"blurred (sharpness {sharpness:.0f} < {limits.min_sharpness:.0f})"
    elif brightness < limits.min_brightness:
        reason = f"too dark (brightness {brightness:.0f} < {limits.min_brightness:.0f})"
    elif brightness > limits.max_brightness:
        reason = f"over-exposed (brightness {brightness:.0f} > {limits.max_brightness:.0f})"
    return Quality(
        ok=not reason,
        reason=reason,
        face_px=face_px,
        sharpness=sharpness,
        yaw=yaw,
        roll=roll,
        brightness=brightness,
        presence=1.0 if presence is None else presence,
        condition=condition_of(crop),
    )
