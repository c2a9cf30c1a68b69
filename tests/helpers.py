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


def small_au_series(radius_A: float, n_tilts: int, orientation_seed: int = 1, **kwargs):
    """A fast-protocol series of a small Au sphere turned off its zone axes, tilted
    ±60° in ``n_tilts`` steps at 0.35 Å pixels (``kwargs`` go to simulate_fast)."""
    from atomjax import simulate, structures

    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", radius_A),
                                               seed=orientation_seed)  # fmt: skip
    kwargs.setdefault("progress", False)
    return simulate.simulate_fast(particle, np.linspace(-60, 60, n_tilts), pixel_size_A=0.35,
                                  **kwargs)  # fmt: skip


#: two short phases from a quick SIRT-peak start (the starts' and restarts' tests)
TWO_PHASES = {
    "optim": {"n_phases": 2, "steps_per_phase": 30},
    "init": {"method": "peaks", "sirt_iterations": 3},
}


def noisy_small_au_series():
    """The 5.5 Å Au sphere, 9 tilts, 5 % Gaussian noise (the starts' and restarts' tests)."""
    return small_au_series(5.5, 9, margin_A=3.0, noise_std_rel=0.05)
