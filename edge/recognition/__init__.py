"""From face templates to decisions: calibration (score → false-match rate), match
(gallery search), track (evidence over frames, K-of-M confirmation); ``pipeline``
chains the vision stages for one image, ``process`` runs one frame through all of it."""
