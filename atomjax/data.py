"""The TiltSeries type and intensity normalisation.

A tilt series holds images indexed ``[angle, u, v]`` (see :mod:`atomjax.geometry`
for the axis and Euler conventions), the Euler triple (ψ, θ, φ) of every image in
degrees, and the pixel size in Å. Everything else is optional metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from .probe import ProbeSettings


@dataclasses.dataclass(frozen=True, eq=False)
class TiltSeries:
    """A tilt series on the host (numpy arrays), validated on construction.

    images: (m, nu, nv) intensities, ``[angle, u, v]``.
    euler_deg: (m, 3) Euler triples (ψ, θ, φ) in degrees, one per image.
    pixel_size_A: pixel size in Å (square pixels).
    probe: probe settings used to record or simulate the images, if known.
    dose_e_per_A2: electron dose per image, if known.
    drift_A: (m, 3) per-image drift (u, v, w) in Å, if known.
    atoms_positions_A: (n, 3) ground-truth (or reference) atom positions, if known.
    atoms_species: (n,) element symbols of those atoms, if known.
    provenance: free-form, JSON-serialisable description of where the data came from.
    """

    images: np.ndarray
    euler_deg: np.ndarray
    pixel_size_A: float
    probe: ProbeSettings | None = None
    dose_e_per_A2: float | None = None
    drift_A: np.ndarray | None = None
    atoms_positions_A: np.ndarray | None = None
    atoms_species: np.ndarray | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        images = np.asarray(self.images)
        if images.ndim != 3:
            raise ValueError(f"images must have shape (angles, nu, nv), got {images.shape}")
        if images.shape[0] == 0:
            raise ValueError(
                f"the tilt series holds no images (images of shape {images.shape}): give at "
                "least one image"
            )
        if images.shape[1] == 0 or images.shape[2] == 0:
            raise ValueError(
                f"the images are {images.shape[1]} × {images.shape[2]} px (images of shape "
                f"{images.shape}): every image needs at least one pixel along u and v"
            )
        if not np.issubdtype(images.dtype, np.number):
            raise ValueError(f"images must be numeric, got dtype {images.dtype}")
        if not np.all(np.isfinite(images)):
            bad = np.unique(np.nonzero(~np.isfinite(images))[0])
            raise ValueError(f"images contain NaN or infinite values (images {bad.tolist()[:10]})")
        euler = np.asarray(self.euler_deg, dtype=float)
        if euler.ndim == 1:
            raise ValueError(
                "euler_deg must have shape (angles, 3); for a single-axis series use "
                "atomjax.geometry.euler_from_tilts_deg(tilts_deg)"
            )
        if euler.ndim != 2 or euler.shape[1] != 3:
            raise ValueError(f"euler_deg must have shape (angles, 3), got {euler.shape}")
        if euler.shape[0] != images.shape[0]:
            raise ValueError(
                f"{euler.shape[0]} Euler triples for {images.shape[0]} images: "
                "the numbers of angles and images must match"
            )
        if not np.all(np.isfinite(euler)):
            raise ValueError("euler_deg contains NaN or infinite values")
        if not (np.isfinite(self.pixel_size_A) and self.pixel_size_A > 0):
            raise ValueError(f"pixel_size_A must be a positive number, got {self.pixel_size_A}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "euler_deg", euler)
        object.__setattr__(self, "pixel_size_A", float(self.pixel_size_A))
        if self.drift_A is not None:
            drift = np.asarray(self.drift_A, dtype=float)
            if drift.shape != (images.shape[0], 3):
                raise ValueError(
                    f"drift_A must have shape ({images.shape[0]}, 3), got {drift.shape}"
                )
            object.__setattr__(self, "drift_A", drift)
        if self.atoms_positions_A is not None:
            pos = np.asarray(self.atoms_positions_A, dtype=float)
            if pos.ndim != 2 or pos.shape[1] != 3:
                raise ValueError(f"atoms_positions_A must have shape (n, 3), got {pos.shape}")
            object.__setattr__(self, "atoms_positions_A", pos)
            if self.atoms_species is not None:
                species = np.asarray(self.atoms_species).astype(str)
                if species.shape != (pos.shape[0],):
                    raise ValueError(
                        f"atoms_species must have shape ({pos.shape[0]},), got {species.shape}"
                    )
                object.__setattr__(self, "atoms_species", species)

    @property
    def n_angles(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]

    @property
    def euler_rad(self) -> np.ndarray:
        return np.deg2rad(self.euler_deg)

    def replace(self, **changes) -> TiltSeries:
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of what a reconstruction reads: the images (values, dtype,
        shape), the Euler angles and the pixel size. Two series with the same
        fingerprint give the same fit; a flipped image or one changed angle does not."""
        h = hashlib.sha256()
        images = np.ascontiguousarray(self.images)
        h.update(f"{images.dtype.str}{images.shape}{self.pixel_size_A!r}".encode())
        h.update(memoryview(images).cast("B"))
        h.update(memoryview(np.ascontiguousarray(self.euler_deg, dtype="<f8")).cast("B"))
        return h.hexdigest()


def normalise_series(images, keep_zero: bool = False) -> np.ndarray:
    """Scale a whole tilt series to [0, 1] with one offset and one scale (LOT eq. 6).

    (I - min) / (max - min) over all images: eq. 6 as printed divides by the raw
    maximum, which reaches 1 only when the minimum is 0; we divide by the range so the
    stated intent, [0, 1], holds. Relative intensities between images are kept.

    keep_zero: I / max, with no offset (counts for a Poisson likelihood, whose zero
    level matters); the images must then be non-negative.
    """
    images = np.asarray(images, dtype=float)
    if images.size == 0:
        raise ValueError(f"no pixels to normalise: images of shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or infinite values")
    lo, hi = images.min(), images.max()
    if keep_zero:
        if lo < 0:
            bad = np.unique(np.nonzero(images < 0)[0])
            raise ValueError(
                f"images {bad.tolist()[:10]} have negative values (min {lo:g}): a Poisson "
                "likelihood needs counts; use loss 'mse' for background-subtracted data"
            )
        lo = 0.0
    if hi <= lo:
        raise ValueError("images are constant: cannot normalise a tilt series with no contrast")
    return (images - lo) / (hi - lo)
