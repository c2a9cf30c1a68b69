"""Initial atoms for a reconstruction, by one of three methods.

* ``"grid"`` (LOT): a cubic lattice of spacing ``d_est_A`` (the estimated minimum
  atom spacing) filling the particle's support;
* ``"random"`` (gaussian-atoms): uniformly random points inside the support;
* ``"peaks"``: local maxima of a quick SIRT tomogram (:mod:`atomjax.tomogram`).

The support is where the Gaussian-smoothed tomogram exceeds ``support_fraction`` of
its maximum. The tomogram spans the field of view, (nu, nv, max(nu, nv)) ·
pixel_size_A along (x, y, z), or a box of ``box_A`` (x, y, z) Å (e.g. a film thinner
than it is wide), on the grid of :func:`atomjax.tomogram.volume_grid_A`.
Images are the normalised tilt series (values in [0, 1], see
:func:`atomjax.data.normalise_series`); angles in degrees; drift_A may be None.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from . import tomogram as tomo
from .atoms import DEFAULT_AMPLITUDE, DEFAULT_WIDTH_A2

METHODS = ("grid", "random", "peaks")

__all__ = [
    "METHODS",
    "InitConfig",
    "tomogram",
    "volume_shape",
    "support_mask",
    "initial_positions",
    "initial_atoms",
]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class InitConfig:
    """How to place the initial atoms (validated on construction).

    method: "grid" (LOT), "random" (gaussian-atoms) or "peaks" (tomogram peaks).
    d_est_A: grid spacing, LOT's estimated minimum atom spacing (Suppl. Table 1: 1 Å).
    width_A2, amplitude: initial B_i and H_i of every atom (LOT Suppl. Table 1).
    voxel_size_A, sirt_iterations: the tomogram.
    support_fraction: support = voxels where the smoothed tomogram exceeds this
      fraction of its maximum (grid and random).
    peak_fraction, min_distance_A: peaks must exceed this fraction of the tomogram's
      maximum and lie at least min_distance_A apart.
    n_random: number of random atoms; None: as many as the grid method would place.
    seed: random seed of the random method.
    box_A: (x, y, z) size in Å of the volume searched for atoms (the tomogram, and the
      residual searched for missing atoms); None: the field of view, (nu, nv, max(nu, nv))
      · pixel (a cube for square images).
    field_of_view: reconstruct only voxels every image sees (no streaks in the box's
      corners); False lets initial atoms lie where only some images look (a film
      extending past the crop, with a wide ``box_A``).
    """

    method: str = "peaks"
    d_est_A: float = 1.0
    width_A2: float = DEFAULT_WIDTH_A2
    amplitude: float = DEFAULT_AMPLITUDE
    voxel_size_A: float = 0.5
    sirt_iterations: int = 10
    support_fraction: float = 0.15
    peak_fraction: float = 0.2
    min_distance_A: float = 1.2
    n_random: int | None = None
    seed: int = 0
    box_A: tuple[float, float, float] | None = None
    field_of_view: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown init method {self.method!r}; choose one of {METHODS}")
        for name in ("d_est_A", "width_A2", "amplitude", "voxel_size_A", "min_distance_A"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                value, bool
            )
            if not (ok and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("support_fraction", "peak_fraction"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                value, bool
            )
            if not (ok and 0 < value < 1):
                raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
        if not _is_int(self.sirt_iterations) or self.sirt_iterations < 1:
            raise ValueError(
                f"sirt_iterations must be a positive integer, got {self.sirt_iterations!r}"
            )
        if self.n_random is not None and (not _is_int(self.n_random) or self.n_random < 1):
            raise ValueError(f"n_random must be None or a positive integer, got {self.n_random!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.box_A is not None:
            box = tuple(float(b) for b in np.ravel(np.asarray(self.box_A, dtype=float)))
            if len(box) != 3 or not all(math.isfinite(b) and b > 0 for b in box):
                raise ValueError(
                    f"box_A must be three positive sizes (x, y, z) in Å, got {self.box_A!r}"
                )
            object.__setattr__(self, "box_A", box)
        if not isinstance(self.field_of_view, (bool, np.bool_)):
            raise ValueError(f"field_of_view must be a bool, got {self.field_of_view!r}")


def _check_config(config) -> InitConfig:
    if config is None:
        return InitConfig()
    if not isinstance(config, InitConfig):
        raise ValueError(f"config must be an InitConfig, got {type(config).__name__}")
    return config


def volume_shape(
    image_shape, pixel_size_A: float, voxel_size_A: float, box_A=None
) -> tuple[int, int, int]:
    """Voxels per axis of the searched volume: ``box_A`` (x, y, z) Å, or the field of
    view, (nu, nv, max(nu, nv)) · pixel_size_A (x along u and y along v at zero tilt; a
    particle turned about y can be as deep as the field is wide); each size /
    voxel_size_A rounded, at least 1."""
    if box_A is None:
        nu, nv = image_shape
        box_A = (nu * pixel_size_A, nv * pixel_size_A, max(nu, nv) * pixel_size_A)
    return tuple(max(1, int(round(b / voxel_size_A))) for b in box_A)


def tomogram(
    images,
    euler_deg,
    drift_A,
    pixel_size_A: float,
    config: InitConfig | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, float]:
    """SIRT tomogram over the field of view (:func:`volume_shape`), or config.box_A.

    The voxel count per axis is that side / config.voxel_size_A rounded to an integer
    (at least 1, :func:`volume_shape`). Returns (volume (nx, ny, nz), voxel_size_A).
    """
    config = _check_config(config)
    images, euler_deg, drift, pixel_size_A = tomo.check_series(
        images, euler_deg, drift_A, pixel_size_A
    )
    shape = volume_shape(images.shape[1:], pixel_size_A, config.voxel_size_A, config.box_A)
    volume = tomo.sirt(
        images,
        euler_deg,
        drift,
        pixel_size_A,
        shape,
        config.voxel_size_A,
        n_iter=config.sirt_iterations,
        nonnegative=True,
        progress=progress,
        field_of_view=config.field_of_view,
    )
    return volume, config.voxel_size_A


def support_mask(volume, voxel_size_A: float, fraction: float, smooth_A: float = 1.0) -> np.ndarray:
    """Voxels where the tomogram, smoothed by a Gaussian of σ = smooth_A, exceeds
    ``fraction`` × its maximum. All False when the smoothed maximum is not positive."""
    volume = np.asarray(volume, dtype=float)
    if volume.ndim != 3:
        raise ValueError(f"volume must have shape (nx, ny, nz), got {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise ValueError("volume contains NaN or infinite values")
    if not (math.isfinite(voxel_size_A) and voxel_size_A > 0):
        raise ValueError(f"voxel_size_A must be a positive number, got {voxel_size_A}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}")
    if not (math.isfinite(smooth_A) and smooth_A >= 0):
        raise ValueError(f"smooth_A must be >= 0, got {smooth_A}")
    smooth = ndimage.gaussian_filter(volume, smooth_A / voxel_size_A, mode="constant")
    top = smooth.max()
    if not top > 0:
        return np.zeros(volume.shape, dtype=bool)
    return smooth > fraction * top


def voxel_index(points_A: np.ndarray, shape, voxel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest voxel index (p, 3) of each point and whether it lies inside the volume."""
    centre = np.array([n // 2 for n in shape])
    idx = np.rint(points_A / voxel_size_A).astype(int) + centre
    inside = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
    return idx, inside


def _grid_points(mask: np.ndarray, voxel_size_A: float, spacing_A: float) -> np.ndarray:
    """Points of the cubic lattice {k · spacing_A} whose nearest voxel is in ``mask``."""
    lo = np.array([-(n // 2) for n in mask.shape]) * voxel_size_A
    hi = np.array([n - 1 - n // 2 for n in mask.shape]) * voxel_size_A
    axes = [
        np.arange(math.ceil(a / spacing_A - 1e-9), math.floor(b / spacing_A + 1e-9) + 1) * spacing_A
        for a, b in zip(lo, hi, strict=True)
    ]
    grids = np.meshgrid(*axes, indexing="ij")
    points = np.stack([g.ravel() for g in grids], -1)
    idx, inside = voxel_index(points, mask.shape, voxel_size_A)
    keep = inside.copy()
    keep[inside] = mask[tuple(idx[inside].T)]
    return points[keep]


def _random_points(mask: np.ndarray, voxel_size_A: float, n: int, seed: int) -> np.ndarray:
    """n points uniform over the support: a random support voxel, then uniform within it."""
    voxels = np.argwhere(mask)
    if voxels.shape[0] == 0:
        raise ValueError("the support is empty: no voxel exceeds support_fraction of the max")
    rng = np.random.default_rng(seed)
    pick = voxels[rng.integers(0, voxels.shape[0], size=n)]
    centre = np.array([s // 2 for s in mask.shape])
    jitter = rng.uniform(-0.5, 0.5, size=(n, 3))
    return (pick - centre + jitter) * voxel_size_A


def initial_positions(
    images,
    euler_deg,
    drift_A,
    pixel_size_A: float,
    config: InitConfig | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Initial atom positions (n, 3) in Å in the object frame, by ``config.method``."""
    config = _check_config(config)
    volume, voxel = tomogram(images, euler_deg, drift_A, pixel_size_A, config, progress)
    top = float(volume.max())
    if not top > 0:
        raise ValueError("the tomogram is zero everywhere: the images carry no signal")
    mask = support_mask(volume, voxel, config.support_fraction)
    if config.method == "peaks":
        positions, _ = tomo.find_peaks(
            volume, voxel, config.peak_fraction * top, config.min_distance_A, refine=True
        )
        # noise peaks in the vacuum lie outside the support: keep peaks inside it
        idx, inside = voxel_index(positions, mask.shape, voxel)
        keep = inside.copy()
        keep[inside] = mask[tuple(idx[inside].T)]
        return positions[keep]
    grid = _grid_points(mask, voxel, config.d_est_A)
    if config.method == "grid":
        return grid
    n = config.n_random if config.n_random is not None else max(1, grid.shape[0])
    return _random_points(mask, voxel, n, config.seed)


def initial_atoms(
    images,
    euler_deg,
    drift_A,
    pixel_size_A: float,
    config: InitConfig | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions_A (n, 3), widths_A2 (n,), amplitudes (n,)) as numpy arrays.

    Widths and amplitudes are config.width_A2 and config.amplitude for every atom.
    """
    config = _check_config(config)
    positions = initial_positions(images, euler_deg, drift_A, pixel_size_A, config, progress)
    n = positions.shape[0]
    return (
        np.asarray(positions, dtype=float),
        np.full(n, float(config.width_A2)),
        np.full(n, float(config.amplitude)),
    )
