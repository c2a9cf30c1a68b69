"""Geometry: Euler rotations, per-image drift, image pixel grid and depth slicing.

Conventions (the one place they are written down)
-------------------------------------------------
* Object frame (x, y, z) in Å about the rotation centre.
* Euler triple (ψ, θ, φ) rotates about the x, y and z axes. The rotation matrix is

      R(ψ, θ, φ) = R_z(φ) · R_y(θ) · R_x(ψ)

  i.e. first about x by ψ, then about the (fixed) y axis by θ, then about the
  (fixed) z axis by φ — extrinsic "xyz", the same as
  ``scipy.spatial.transform.Rotation.from_euler("xyz", [ψ, θ, φ])``. Each
  elementary rotation is right-handed (active): R_y(θ) maps (1, 0, 0) to
  (cos θ, 0, −sin θ).
* Image j sees (u, v, w) = R(ψ_j, θ_j, φ_j) · (x, y, z) + drift_j. The beam runs
  along +w; (u, v) are the image axes. A single-axis tilt series tilts θ about y.
* Image arrays are indexed ``[u, v]`` (axis 0 is u, like abTEM's ``[x, y]``); a
  tilt series is ``[angle, u, v]``. Pixel i along an axis of n pixels sits at
  ``(i - n // 2) * pixel_size_A``: the rotation centre falls on pixel n // 2.
* Depth slices: n slices of thickness dz centred on w = 0; slice k covers
  w in [(k - n/2) dz, (k + 1 - n/2) dz) and its centre is (k + 1/2 - n/2) dz.
  Atoms beyond the first or last slice are counted in that edge slice.
* Angles are in degrees at public boundaries, radians inside jit-compiled code.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


def _matrix(*rows):
    return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def _rx(a):
    c, s = jnp.cos(a), jnp.sin(a)
    o, z = jnp.ones_like(a), jnp.zeros_like(a)
    return _matrix([o, z, z], [z, c, -s], [z, s, c])


def _ry(a):
    c, s = jnp.cos(a), jnp.sin(a)
    o, z = jnp.ones_like(a), jnp.zeros_like(a)
    return _matrix([c, z, s], [z, o, z], [-s, z, c])


def _rz(a):
    c, s = jnp.cos(a), jnp.sin(a)
    o, z = jnp.ones_like(a), jnp.zeros_like(a)
    return _matrix([c, -s, z], [s, c, z], [z, z, o])


def rotation_matrix(euler_rad: Float[Array, "... 3"]) -> Float[Array, "... 3 3"]:
    """R = R_z(φ) R_y(θ) R_x(ψ) for Euler triples (ψ, θ, φ) in radians."""
    euler_rad = jnp.asarray(euler_rad)
    psi, theta, phi = euler_rad[..., 0], euler_rad[..., 1], euler_rad[..., 2]
    return _rz(phi) @ _ry(theta) @ _rx(psi)


def to_image_frame(
    positions_A: Float[Array, "n 3"], euler_rad: Float[Array, 3], drift_A: Float[Array, 3]
) -> Float[Array, "n 3"]:
    """(u, v, w) = R · (x, y, z) + drift for one image."""
    return positions_A @ rotation_matrix(euler_rad).T + drift_A


def euler_from_tilts_deg(tilts_deg, axis: str = "y") -> np.ndarray:
    """Euler triples (m, 3) in degrees for a single-axis tilt series about ``axis``."""
    tilts = np.asarray(tilts_deg, dtype=float).reshape(-1)
    col = {"x": 0, "y": 1, "z": 2}.get(axis)
    if col is None:
        raise ValueError(f"tilt axis must be 'x', 'y' or 'z', got {axis!r}")
    euler = np.zeros((tilts.size, 3))
    euler[:, col] = tilts
    return euler


def pixel_coordinates_A(n_pixels: int, pixel_size_A: float) -> np.ndarray:
    """Coordinates of the pixel centres along one image axis, in Å (centre at n // 2)."""
    return (np.arange(n_pixels) - n_pixels // 2) * pixel_size_A


def slice_centres_A(n_slices: int, slice_thickness_A: float) -> np.ndarray:
    """Depth w of the centre of each slice, in Å, relative to the rotation centre."""
    return (np.arange(n_slices) + 0.5 - n_slices / 2) * slice_thickness_A


def hard_slice_index(
    w_A: Float[Array, " n"], n_slices: int, slice_thickness_A: float
) -> Int[Array, " n"]:
    """Slice that contains each depth w (the paper's hard assignment), clamped to [0, n)."""
    k = jnp.floor(w_A / slice_thickness_A + n_slices / 2).astype(jnp.int32)
    return jnp.clip(k, 0, n_slices - 1)


def linear_slice_weights(
    w_A: Float[Array, " n"], n_slices: int, slice_thickness_A: float
) -> tuple[Int[Array, "n 2"], Float[Array, "n 2"]]:
    """Split each atom between the two slices whose centres bracket its depth.

    Returns slice indices (n, 2) and weights (n, 2) that sum to 1. The weights are
    linear in w, so the rendered image has a non-zero derivative in depth. Atoms
    beyond the outermost slice centres go wholly to the edge slice.
    """
    t = w_A / slice_thickness_A + n_slices / 2 - 0.5  # fractional slice-centre index
    t = jnp.clip(t, 0.0, n_slices - 1.0)
    k0 = jnp.clip(jnp.floor(t), 0, max(n_slices - 2, 0)).astype(jnp.int32)
    frac = t - k0
    if n_slices == 1:
        frac = jnp.zeros_like(t)
    k1 = jnp.minimum(k0 + 1, n_slices - 1)
    return jnp.stack([k0, k1], -1), jnp.stack([1.0 - frac, frac], -1)


def check_views(euler_deg, drift_A=None, n_images: int | None = None):
    """Host-side check of (m, 3) Euler triples in degrees and (m, 3) drift (None: zeros).

    Returns float numpy copies (euler_deg, drift_A); raises ValueError naming the
    problem: wrong shapes, no angles, NaN/inf, or a count that differs from n_images.
    """
    euler = np.asarray(euler_deg, dtype=float)
    if euler.ndim != 2 or euler.shape[1] != 3:
        raise ValueError(
            f"euler_deg must have shape (angles, 3), got {euler.shape}; for a single-axis "
            "series use atomjax.geometry.euler_from_tilts_deg"
        )
    m = euler.shape[0]
    if m == 0:
        raise ValueError("euler_deg is empty: no tilt angles")
    if n_images is not None and m != n_images:
        raise ValueError(
            f"{m} Euler triples for {n_images} images: the numbers of angles and images must match"
        )
    if not np.all(np.isfinite(euler)):
        raise ValueError("euler_deg contains NaN or infinite values")
    drift = np.zeros((m, 3)) if drift_A is None else np.asarray(drift_A, dtype=float)
    if drift.shape != (m, 3):
        raise ValueError(f"drift_A must have shape ({m}, 3) to match {m} angles, got {drift.shape}")
    if not np.all(np.isfinite(drift)):
        raise ValueError("drift_A contains NaN or infinite values")
    return euler, drift
