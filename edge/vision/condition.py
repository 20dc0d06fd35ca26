"""The imaging condition of a face, read from its own pixels.

A camera in night mode (infrared) delivers grey pictures: its three channels carry the same
values, up to compression. Skin in a colour picture never does (red over green over blue), so
the aligned crop's mean channel difference tells the two apart at a cost of a few microseconds
per face. A grey face is judged with the tables calibrated for grey probes
(``edge.recognition.calibration``), where the manifest has them.
"""

from __future__ import annotations

import numpy as np

from edge.types import ImageArray

GREY_CHROMA = (
    6.0  # mean |B-G| + |G-R| (0-255) below which a crop is grey: colour skin measures 16 and more (LFW View 1)
)


def chroma(crop: ImageArray) -> float:
    """Mean of |B - G| + |G - R| over the centre of an aligned crop."""
    centre = crop[16:96, 16:96].astype(np.int16)
    b, g, r = centre[..., 0], centre[..., 1], centre[..., 2]
    return float(np.abs(b - g).mean() + np.abs(g - r).mean())


def condition_of(crop: ImageArray) -> str:
    """ "grey" for a picture without colour (a night camera), else "colour"."""
    return "grey" if chroma(crop) < GREY_CHROMA else "colour"
