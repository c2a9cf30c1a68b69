"""The vacuum level of each image: where a reconstruction's per-image background starts.

After normalisation (LOT eq. 6) the vacuum does not sit at 0 once there is noise: the
minimum that eq. 6 subtracts lies below it. The fit refines a constant per image
(:class:`atomjax.fit.Params` ``background``); these functions give its starting value.
"""

from __future__ import annotations

import numpy as np

BACKGROUND_INITS = ("border", "min", "zero")


def estimate_background(images: np.ndarray, border_fraction: float = 0.06) -> np.ndarray:
    """Vacuum level per image: the median of a frame of border pixels (m,)."""
    m, nu, nv = images.shape
    b = max(2, int(round(border_fraction * min(nu, nv))))
    frame = np.ones((nu, nv), bool)
    frame[b:-b, b:-b] = False
    return np.median(images[:, frame], axis=1)


def initial_background(images: np.ndarray, how: str = "border") -> np.ndarray:
    """Starting vacuum level per image (m,): "border" (:func:`estimate_background`: a
    particle in vacuum), "min" (the 1st percentile of each image: a film with no vacuum
    in view) or "zero"."""
    if how == "border":
        return estimate_background(images)
    if how == "min":
        return np.percentile(images, 1.0, axis=(1, 2))
    if how == "zero":
        return np.zeros(images.shape[0])
    raise ValueError(f"background_init must be one of {BACKGROUND_INITS}, got {how!r}")
