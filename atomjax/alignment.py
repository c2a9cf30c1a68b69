"""Pre-alignment of a single-axis tilt series: per-image shifts and the tilt axis.

Before the fit, on the host (numpy), from the images alone:

* **Shifts.** The particle's centre of mass in each image, (u, v) in Å from the image
  centre. For a projection, the centroid of image j is R_j · c + d_j, with c the
  particle's 3-D centre of mass and d_j the image's shift; putting the rotation centre
  at c (a free choice: a common shift of the particle is not observable) makes the
  centroid the shift itself. The intensity is taken above the vacuum level
  (:func:`atomjax.background.estimate_background`) and inside a mask where the
  smoothed image exceeds ``mask_fraction`` of its maximum, so vacuum noise adds
  nothing. HAADF intensity grows with the atoms' mass (about Z^1.7), so this is the
  centre of the scattering power; a particle cut by the image edge biases it.
* **Tilt axis.** Every projection about one axis has the same profile along that axis
  (the sum across it is the particle's projection onto the axis, whatever the tilt):
  the common line. The in-plane direction α of the axis is where the images' profiles
  along it agree best, found by a coarse-to-fine search of the spread of the profiles,
  the shifts taken out. In atomjax's geometry an axis at α is the Euler angle φ = α of
  every image (R = R_z(φ) R_y(θ) R_x(ψ): the image turned by φ after the tilt).

An :class:`Alignment` is saved as a small JSON file, loaded by a later run and applied
with :func:`apply`: the images shifted onto the rotation centre and φ += α for every
image. Or it is the fit's starting point (:func:`starting_values`, the setting
``reconstruct.align``): the shifts become the starting per-image drift and α the
starting φ, the images left as they are (no resampling); a fit that refines the pose
(:mod:`atomjax.pose`) writes what it refined as an alignment again (:func:`refined`),
with per-image tilt and in-plane rotation corrections.

Measured on a 14 Å amorphous Si particle (29 tilts ±70°, 5 % noise, tilt axis off by
1° and −3.3°, shifts of σ 1 Å): shifts to 0.03 Å (u) and 0.02 Å (v) RMS, the axis to
0.3-0.5°. A compact particle's profiles change little with the axis, so the
angle is the weak part: the fit's angle refinement is to finish it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np
from scipy import ndimage

from .background import estimate_background
from .data import TiltSeries

__all__ = ["Alignment", "apply", "centre_shifts_A", "estimate", "load", "refined",
           "starting_values", "tilt_axis_deg"]  # fmt: skip

FORMAT = "atomjax-alignment/1"


@dataclasses.dataclass(frozen=True)
class Alignment:
    """tilt_axis_deg: the in-plane angle α of the tilt axis (Euler φ of every image);
    shifts_A: (m, 2) the particle's centre (u, v) in each image, Å from the image centre;
    method and what it measured (``info``), for the record; tilt_offsets_deg and
    rotation_offsets_deg: (m,) corrections to each image's tilt θ and in-plane rotation φ
    (None: none; a fit that refines the pose writes them)."""

    tilt_axis_deg: float
    shifts_A: np.ndarray
    pixel_size_A: float
    method: str = "centre of mass + common line"
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    tilt_offsets_deg: np.ndarray | None = None
    rotation_offsets_deg: np.ndarray | None = None

    def __post_init__(self):
        shifts = np.asarray(self.shifts_A, dtype=float)
        if shifts.ndim != 2 or shifts.shape[1] != 2 or not np.all(np.isfinite(shifts)):
            raise ValueError(f"shifts_A must be finite with shape (images, 2), got {shifts.shape}")
        if not np.isfinite(self.tilt_axis_deg):
            raise ValueError(f"tilt_axis_deg must be finite, got {self.tilt_axis_deg}")
        object.__setattr__(self, "shifts_A", shifts)
        object.__setattr__(self, "tilt_axis_deg", float(self.tilt_axis_deg))
        for name in ("tilt_offsets_deg", "rotation_offsets_deg"):
            v = getattr(self, name)
            if v is None:
                continue
            v = np.asarray(v, dtype=float)
            if v.shape != (shifts.shape[0],) or not np.all(np.isfinite(v)):
                raise ValueError(
                    f"{name} must be finite with one value per image ({shifts.shape[0]}), "
                    f"got shape {v.shape}"
                )
            object.__setattr__(self, name, v)

    def euler_deg(self, euler_deg) -> np.ndarray:
        """A series' Euler angles (m, 3) in degrees with this alignment's angles applied:
        φ += α (+ each image's rotation offset), θ += each image's tilt offset."""
        euler = np.array(euler_deg, dtype=float)
        euler[:, 2] += self.tilt_axis_deg
        if self.rotation_offsets_deg is not None:
            euler[:, 2] += self.rotation_offsets_deg
        if self.tilt_offsets_deg is not None:
            euler[:, 1] += self.tilt_offsets_deg
        return euler

    @property
    def n_images(self) -> int:
        return self.shifts_A.shape[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "tilt_axis_deg": self.tilt_axis_deg,
            "shifts_A": self.shifts_A.tolist(),
            "pixel_size_A": self.pixel_size_A,
            "method": self.method,
            "info": self.info,
            "tilt_offsets_deg": _as_list(self.tilt_offsets_deg),
            "rotation_offsets_deg": _as_list(self.rotation_offsets_deg),
        }

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write the alignment as JSON (atomically: a crash leaves the old file)."""
        path = pathlib.Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path


def load(path: str | os.PathLike) -> Alignment:
    """The alignment saved in ``path`` by :meth:`Alignment.save`."""
    path = pathlib.Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no alignment file at {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not an alignment file (not JSON: {err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not an alignment file (format {FORMAT!r} expected)")
    return Alignment(record["tilt_axis_deg"], np.asarray(record["shifts_A"], float),
                     float(record["pixel_size_A"]), record.get("method", ""),
                     record.get("info", {}), record.get("tilt_offsets_deg"),
                     record.get("rotation_offsets_deg"))  # fmt: skip


def _as_list(x):
    return None if x is None else np.asarray(x, float).tolist()


def _check_single_axis(series: TiltSeries) -> None:
    euler = series.euler_deg
    if np.ptp(euler[:, 0]) > 1e-9 or np.ptp(euler[:, 2]) > 1e-9:
        raise ValueError(
            "pre-alignment needs a single-axis series (Euler ψ and φ the same for every "
            f"image, the tilt in θ); got ψ over {np.ptp(euler[:, 0]):.3g}° and φ over "
            f"{np.ptp(euler[:, 2]):.3g}°"
        )


def _signal(images, pixel_size_A: float, smooth_A: float, mask_fraction: float) -> np.ndarray:
    """The intensity above the vacuum level inside each image's particle mask."""
    images = np.asarray(images, dtype=float)
    signal = images - estimate_background(images)[:, None, None]
    sigma = (0.0, smooth_A / pixel_size_A, smooth_A / pixel_size_A)
    smooth = ndimage.gaussian_filter(signal, sigma)
    peak = smooth.reshape(len(images), -1).max(axis=1)[:, None, None]
    return np.where(smooth > mask_fraction * peak, signal, 0.0)


def _pixel_coords_A(shape, pixel_size_A: float):
    nu, nv = shape
    u = (np.arange(nu) - nu // 2) * pixel_size_A
    v = (np.arange(nv) - nv // 2) * pixel_size_A
    return np.meshgrid(u, v, indexing="ij")


def centre_shifts_A(images, pixel_size_A: float, smooth_A: float = 2.0,
                    mask_fraction: float = 0.05) -> np.ndarray:  # fmt: skip
    """(m, 2): each image's centre of mass (u, v) in Å from the image centre (pixel
    n // 2), of the intensity above the vacuum level inside the particle's mask (the
    image smoothed by ``smooth_A`` above ``mask_fraction`` of its maximum)."""
    w = _signal(images, pixel_size_A, smooth_A, mask_fraction)
    total = w.sum(axis=(1, 2))
    if np.any(total <= 0):
        bad = np.nonzero(total <= 0)[0]
        raise ValueError(f"images {bad.tolist()[:10]} hold no intensity above the vacuum level")
    u, v = _pixel_coords_A(w.shape[1:], pixel_size_A)
    return np.stack([(w * u).sum((1, 2)) / total, (w * v).sum((1, 2)) / total], axis=1)


def _profiles(w, u, v, shifts_A, alpha_deg: float, pixel_size_A: float) -> np.ndarray:
    """(m, bins): each image's profile along an axis at ``alpha_deg`` (the sum across
    it), its centre ``shifts_A`` taken out, binned at the pixel size (linear weights),
    zero-padded to twice its reach (no wrap-around when shifted)."""
    a = np.deg2rad(alpha_deg)
    m = w.shape[0]
    # the axis R_z(α) ŷ = (−sin α, cos α) in (u, v), each image's centre taken out
    du = u[None] - shifts_A[:, 0, None, None]
    dv = v[None] - shifts_A[:, 1, None, None]
    x = (-du * np.sin(a) + dv * np.cos(a)) / pixel_size_A
    reach = int(np.ceil(np.abs(x).max())) + 2
    width = 4 * reach
    x = x + 2 * reach
    lo = np.floor(x).astype(np.int64)
    frac = x - lo
    offset = (np.arange(m) * width)[:, None, None]
    profiles = np.bincount((lo + offset).ravel(), (w * (1 - frac)).ravel(), m * width)
    profiles += np.bincount((lo + 1 + offset).ravel(), (w * frac).ravel(), m * width)
    return profiles.reshape(m, width)


def _register_profiles(profiles: np.ndarray, n_iter: int = 3) -> tuple[np.ndarray, float]:
    """Shifts (m,) in bins that bring every profile onto their mean (cross-correlation
    peaks, parabolic sub-bin), and the spread left after them: Σ_j ‖P_j − mean‖² over
    Σ_j ‖P_j‖² (0: all profiles alike)."""
    m, n = profiles.shape
    spectra = np.fft.rfft(profiles, axis=1)
    k = np.fft.rfftfreq(n)
    delta = np.zeros(m)
    for _ in range(n_iter):
        aligned = spectra * np.exp(2j * np.pi * k[None] * delta[:, None])  # shifted by −δ
        ref = aligned.mean(axis=0)
        xc = np.fft.irfft(spectra * np.conj(ref)[None], n, axis=1)
        peak = np.argmax(xc, axis=1)
        left, mid, right = (xc[np.arange(m), (peak + d) % n] for d in (-1, 0, 1))
        curv = left - 2 * mid + right
        sub = np.where(curv < 0, 0.5 * (left - right) / np.where(curv < 0, curv, -1), 0.0)
        delta = np.where(peak > n // 2, peak - n, peak) + sub
        delta -= delta.mean()  # the mean profile's position is not observable
    aligned = np.fft.irfft(spectra * np.exp(2j * np.pi * k[None] * delta[:, None]), n, axis=1)
    spread = np.sum((aligned - aligned.mean(axis=0)) ** 2) / np.sum(aligned**2)
    return delta, float(spread)


def tilt_axis_deg(images, pixel_size_A: float, shifts_A, search_deg: float = 10.0,
                  smooth_A: float = 2.0, mask_fraction: float = 0.05,
                  tolerance_deg: float = 0.002) -> tuple[float, np.ndarray, dict]:  # fmt: skip
    """The in-plane direction α (degrees, within ±``search_deg``) of the tilt axis where
    the images' profiles along it agree best (the common line) once each is shifted
    along the axis onto their mean, starting from the centres ``shifts_A`` (m, 2): a 1°
    scan, then golden-section refinement to ``tolerance_deg``. Returns (α, the shifts
    refined along the axis (m, 2) Å, {"scan_deg", "scan_spread"}: the coarse scan)."""
    w = _signal(images, pixel_size_A, smooth_A, mask_fraction)
    u, v = _pixel_coords_A(w.shape[1:], pixel_size_A)
    shifts = np.asarray(shifts_A, float)

    def spread(alpha):
        return _register_profiles(_profiles(w, u, v, shifts, alpha, pixel_size_A))[1]

    scan = np.arange(-search_deg, search_deg + 0.5, 1.0)
    values = np.array([spread(a) for a in scan])
    k = int(np.argmin(values))
    lo, hi = scan[max(k - 1, 0)], scan[min(k + 1, len(scan) - 1)]
    g = (np.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = spread(c), spread(d)
    while hi - lo > tolerance_deg:
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = spread(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = spread(d)
    alpha = float((lo + hi) / 2)
    delta, _ = _register_profiles(_profiles(w, u, v, shifts, alpha, pixel_size_A))
    a = np.deg2rad(alpha)
    refined = shifts + delta[:, None] * pixel_size_A * np.array([-np.sin(a), np.cos(a)])
    return alpha, refined, {"scan_deg": scan.tolist(), "scan_spread": values.tolist()}


def estimate(series: TiltSeries, search_deg: float = 10.0, smooth_A: float = 2.0,
             mask_fraction: float = 0.05) -> Alignment:  # fmt: skip
    """Shifts (centre of mass) and the tilt axis (common line) of a single-axis
    ``series``; see the module docstring."""
    _check_single_axis(series)
    shifts = centre_shifts_A(series.images, series.pixel_size_A, smooth_A, mask_fraction)
    alpha, shifts, scan = tilt_axis_deg(series.images, series.pixel_size_A, shifts,
                                        search_deg, smooth_A, mask_fraction)  # fmt: skip
    if abs(alpha) > search_deg - 0.5:
        raise ValueError(
            f"the tilt axis came out at the edge of the search ({alpha:.2f}° of ±{search_deg}°): "
            "widen search_deg, or check that the series is a single-axis tilt about v"
        )
    info = {"smooth_A": smooth_A, "mask_fraction": mask_fraction, "search_deg": search_deg,
            **scan}  # fmt: skip
    return Alignment(alpha, shifts, series.pixel_size_A, info=info)


def apply(series: TiltSeries, alignment: Alignment) -> TiltSeries:
    """``series`` aligned: every image shifted by minus its measured centre (cubic
    splines, edges continued), so the particle's centre of mass sits on the rotation
    centre, and φ += α for every image. The series' own ``drift_A`` no longer describes
    the images and is dropped (the alignment is kept in ``provenance["alignment"]``).
    Per-image tilt and rotation offsets, where the alignment holds them, are added to θ
    and φ."""
    _check_belongs(series, alignment)
    shift_px = -alignment.shifts_A / series.pixel_size_A
    images = np.stack([ndimage.shift(np.asarray(im, float), d, order=3, mode="nearest")
                       for im, d in zip(series.images, shift_px, strict=True)])  # fmt: skip
    euler = alignment.euler_deg(series.euler_deg)
    record = alignment.to_dict()
    record["info"] = {}
    provenance = {**series.provenance, "alignment": record}
    return series.replace(images=images.astype(series.images.dtype, copy=False), euler_deg=euler,
                          drift_A=None, provenance=provenance)  # fmt: skip


def _check_belongs(series: TiltSeries, alignment: Alignment) -> None:
    if alignment.n_images != series.n_angles:
        raise ValueError(
            f"the alignment holds {alignment.n_images} images' shifts and the series "
            f"{series.n_angles} images: it belongs to another series"
        )
    if not np.isclose(alignment.pixel_size_A, series.pixel_size_A, rtol=1e-6):
        raise ValueError(
            f"the alignment was measured at {alignment.pixel_size_A} Å per pixel and the "
            f"series has {series.pixel_size_A}: it belongs to another series"
        )


#: ``reconstruct.align`` values besides a file path
ALIGN_CHOICES = ("estimate",)


def starting_values(series: TiltSeries, align: str | os.PathLike | Alignment | None):
    """Where a fit starts for the setting ``align``: (Euler angles (m, 3) in degrees,
    drift (m, 3) in Å, the :class:`Alignment` or None). ``align``: None (the series'
    angles, no drift), "estimate" (:func:`estimate` on the images), an alignment file,
    or an :class:`Alignment`. The images are not resampled: the fit's drift starts at the
    measured shifts."""
    if align is None:
        return series.euler_deg.copy(), np.zeros((series.n_angles, 3)), None
    if isinstance(align, Alignment):
        al = align
    elif str(align) == "estimate":
        al = estimate(series)
    else:
        al = load(align)
    _check_belongs(series, al)
    drift = np.zeros((series.n_angles, 3))
    drift[:, :2] = al.shifts_A
    return al.euler_deg(series.euler_deg), drift, al


def refined(series: TiltSeries, euler_deg, drift_A, start: Alignment | None) -> Alignment:
    """The alignment a fit ended with, relative to the series' own angles: its Euler
    angles ``euler_deg`` (m, 3) (θ and φ corrected) and its drift (m, 3) in Å. The mean
    φ correction is the tilt axis, the rest per-image rotations."""
    euler = np.asarray(euler_deg, float)
    tilt = euler[:, 1] - series.euler_deg[:, 1]
    phi = euler[:, 2] - series.euler_deg[:, 2]
    axis = float(np.mean(phi))
    info = {"start": None if start is None else start.to_dict()}
    return Alignment(axis, np.asarray(drift_A, float)[:, :2], series.pixel_size_A,
                     method="refined in the fit", info=info, tilt_offsets_deg=tilt,
                     rotation_offsets_deg=phi - axis)  # fmt: skip
