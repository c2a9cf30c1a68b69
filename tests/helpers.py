"""Shared helpers of the tests (not fixtures): imported as ``from helpers import ...``."""

import numpy as np


def separated_points(n: int, rng, half_width_A: float, min_distance_A: float) -> np.ndarray:
    """(n, 3) points uniform in ±``half_width_A``, each more than ``min_distance_A`` from
    the others (rejection sampling)."""
    pts: list[np.ndarray] = []
    while len(pts) < n:
        p = rng.uniform(-half_width_A, half_width_A, 3)
        if all(np.linalg.norm(p - q) > min_distance_A for q in pts):
            pts.append(p)
    return np.array(pts)
