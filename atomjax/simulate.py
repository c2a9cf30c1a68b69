"""Simulated tilt series with abTEM: a fast projected-potential path and HAADF-STEM.

Both simulators take an ``ase.Atoms`` particle in the object frame (x, y, z) in Å,
rotation centre at the origin (the builders in :mod:`atomjax.structures` put the
centre of mass there), and tilt angles; they return a :class:`atomjax.data.TiltSeries`
with the ground truth (positions in the object frame, species), the drift, the probe,
the dose and a provenance dict with every setting and the abTEM version.

Geometry (see :mod:`atomjax.geometry`): image j sees (u, v, w) = R_j (x, y, z) + drift_j,
the beam runs along +w, images are indexed ``[u, v]`` and pixel i sits at
u = (i - n // 2) · pixel_size_A. In abTEM, u → x, v → y, w → z (the beam enters at
z = 0); the rotation centre is placed at depth D = (cell depth) / 2 below the entrance,
so abTEM's defocus is ``probe.defocus_A + D``.

* :func:`simulate_fast` — the gaussian-atoms protocol: abTEM's projected potential
  (``abtem.Potential(...).project()``, Lobato parametrisation, infinite projection) on
  a grid ``oversampling`` times finer than the pixels, blurred by a Gaussian of
  standard deviation ``blur_sigma_A``, then Fourier-cropped to the pixel grid (exact
  samples of the blurred image at the pixel centres). Image units: V·Å.
* :func:`simulate_haadf` — HAADF-STEM by PRISM (``abtem.SMatrix``) or multislice
  (``abtem.Probe``), ``abtem.GridScan`` on the image pixel centres and an
  ``abtem.AnnularDetector``. Image units: the fraction of the incident probe intensity
  that reaches the detector.

Noise (both simulators; drawn after the drift from one ``numpy`` generator seeded
with ``seed``):

* ``dose_e_per_A2`` (Poisson): each pixel receives N0 = dose · pixel_size_A² incident
  electrons. For HAADF the expected count is N0 · (detected fraction); for the fast
  path, which has no physical detector fraction, the expected count is
  N0 · I / max(I) with max(I) the largest noiseless pixel of the whole series (the
  brightest pixel detects every electron). The returned images are then electron
  counts (float), with mean = variance = the expected count per pixel.
* ``noise_std_rel`` (Gaussian, added after any Poisson noise): standard deviation
  ``noise_std_rel`` × the largest expected pixel value of the series (in the units
  of the returned images).

Drift: per image, (u, v, w) drawn from N(0, drift_std_A²) per component (a scalar or a
3-tuple of stds in Å), added to the rotated positions before imaging and stored in
``TiltSeries.drift_A``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import ase
import numpy as np

from .data import TiltSeries
from .geometry import euler_from_tilts_deg, rotation_matrix
from .probe import ProbeSettings
from .units import wavelength_A

__all__ = [
    "TILT_PRESETS",
    "tilt_scheme",
    "fitted_image_shape",
    "max_detector_angle_mrad",
    "PHONON_SIGMA_A",
    "simulate_fast",
    "simulate_haadf",
]

#: Named tilt schemes (start_deg, stop_deg, step_deg), stop included.
TILT_PRESETS: dict[str, tuple[float, float, float]] = {
    "lot": (-72.0, 70.0, 2.0),  # LOT paper
    "full": (-90.0, 90.0, 1.0),  # gaussian-atoms, full range
    "wedge": (-70.0, 70.0, 3.0),  # gaussian-atoms, missing wedge
    "quick": (-60.0, 60.0, 30.0),  # five angles, for trying things out
}


# --------------------------------------------------------------------------- angles


def tilt_scheme(
    start_deg: float | str, stop_deg: float | None = None, step_deg: float | None = None
) -> np.ndarray:
    """Tilt angles in degrees, from ``start_deg`` to ``stop_deg`` (included when it lies on
    the grid) in steps of ``step_deg``; or ``tilt_scheme(name)`` for a preset in
    :data:`TILT_PRESETS` ("lot": -72..70 step 2, "full": ±90 step 1, "wedge": ±70 step 3)."""
    if isinstance(start_deg, str):
        if stop_deg is not None or step_deg is not None:
            raise ValueError("give either a preset name or start, stop and step, not both")
        if start_deg not in TILT_PRESETS:
            raise ValueError(f"unknown tilt preset {start_deg!r}; known: {sorted(TILT_PRESETS)}")
        start_deg, stop_deg, step_deg = TILT_PRESETS[start_deg]
    if stop_deg is None or step_deg is None:
        raise ValueError("tilt_scheme needs start_deg, stop_deg and step_deg (or a preset name)")
    start, stop, step = float(start_deg), float(stop_deg), float(step_deg)
    if not all(np.isfinite([start, stop, step])):
        raise ValueError(f"tilt angles must be finite, got {start}, {stop}, {step}")
    if step == 0 or (stop - start) * step < 0:
        raise ValueError(f"step_deg={step} does not lead from start_deg={start} to stop_deg={stop}")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    return np.round(start + step * np.arange(n), 10)


def parse_tilts(spec: str) -> np.ndarray:
    """A preset name or "start:stop:step" (degrees) → tilt angles in degrees."""
    if spec in TILT_PRESETS:
        return tilt_scheme(spec)
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(
            f"tilts must be a preset {sorted(TILT_PRESETS)} or 'start:stop:step', got {spec!r}"
        )
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError as err:
        raise ValueError(f"tilts {spec!r}: start, stop and step must be numbers") from err
    return tilt_scheme(start, stop, step)


def _as_euler_deg(angles_deg) -> np.ndarray:
    """(m,) tilts about y, (m, 3) Euler triples or a preset name → (m, 3) Euler in degrees."""
    if isinstance(angles_deg, str):
        return euler_from_tilts_deg(tilt_scheme(angles_deg))
    a = np.asarray(angles_deg, dtype=float)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim == 1:
        euler = euler_from_tilts_deg(a)
    elif a.ndim == 2 and a.shape[1] == 3:
        euler = a
    else:
        raise ValueError(
            f"angles_deg must be (m,) tilts about y or (m, 3) Euler triples, got shape {a.shape}"
        )
    if euler.shape[0] == 0:
        raise ValueError("angles_deg is empty: give at least one angle")
    if not np.all(np.isfinite(euler)):
        raise ValueError("angles_deg contains NaN or infinite values")
    return euler


# --------------------------------------------------------------------------- helpers


def _check_atoms(atoms: ase.Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(atoms, ase.Atoms):
        raise ValueError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError("atoms is empty: nothing to simulate")
    pos = np.asarray(atoms.positions, dtype=float)
    if not np.all(np.isfinite(pos)):
        raise ValueError("atom positions contain NaN or infinite values")
    return pos, np.asarray(atoms.numbers), np.asarray(atoms.get_chemical_symbols())


def _drift(m: int, drift_std_A, rng: np.random.Generator) -> np.ndarray:
    std = np.broadcast_to(np.asarray(drift_std_A, dtype=float), (3,)).copy()
    if not np.all(np.isfinite(std)) or np.any(std < 0):
        raise ValueError(
            f"drift_std_A must be non-negative (scalar or 3 values), got {drift_std_A}"
        )
    if np.all(std == 0):
        return np.zeros((m, 3))
    return rng.normal(size=(m, 3)) * std


def _rotations(euler_deg: np.ndarray) -> np.ndarray:
    return np.asarray(rotation_matrix(np.deg2rad(euler_deg)), dtype=float)


def _check_pixel(name: str, value: float) -> float:
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


def _image_shape(
    image_shape,
    radius_A: float,
    drift: np.ndarray,
    pixel_size_A: float,
    margin_A: float,
    views: np.ndarray | None = None,
) -> tuple[int, int]:
    """Given shape; "fit": the even shape holding every view's projection (``views``,
    (m, n, 3)) with drift and margin; None: a square even shape holding the bounding
    sphere, drift and margin."""
    if isinstance(image_shape, str):
        if image_shape != "fit":
            raise ValueError(f"image_shape must be (nu, nv), None or 'fit', got {image_shape!r}")
        half = np.abs(views[..., :2]).max(axis=(0, 1)) + np.abs(drift[:, :2]).max(0) + margin_A
        return tuple(2 * int(math.ceil(h / pixel_size_A)) for h in half)
    if image_shape is not None:
        shape = tuple(int(s) for s in np.broadcast_to(np.asarray(image_shape), (2,)))
        if min(shape) < 2:
            raise ValueError(f"image_shape must be at least (2, 2), got {image_shape}")
        return shape
    extent = radius_A + np.abs(drift[:, :2]).max() + margin_A
    n = 2 * int(math.ceil(extent / pixel_size_A))
    return n, n


def fitted_image_shape(
    positions_A, angles_deg, pixel_size_A: float, margin_A: float = 4.0, drift_A=None
) -> tuple[int, int]:
    """The (nu, nv) that ``image_shape="fit"`` gives the simulators: the even shape
    holding every view's projection of ``positions_A`` (Å, about the rotation centre)
    at ``angles_deg``, with ``drift_A`` ((m, 3) or None) and ``margin_A`` on each side."""
    euler = _as_euler_deg(angles_deg)
    drift = np.zeros((euler.shape[0], 3)) if drift_A is None else np.asarray(drift_A, float)
    views = np.einsum("mij,nj->mni", _rotations(euler), np.asarray(positions_A, float))
    return _image_shape("fit", 0.0, drift, _check_pixel("pixel_size_A", pixel_size_A),
                        margin_A, views=views)  # fmt: skip


def _check_inside(uvw: np.ndarray, shape, pixel_size_A: float, j: int) -> None:
    """Atoms must project inside the field of view (abTEM cells are periodic)."""
    lo = -(np.array(shape) // 2) * pixel_size_A
    hi = lo + np.array(shape) * pixel_size_A
    if np.any(uvw[:, :2] < lo) or np.any(uvw[:, :2] >= hi):
        raise ValueError(
            f"image {j}: atoms project outside the {shape[0]}×{shape[1]} field of view "
            f"({pixel_size_A} Å pixels) and would wrap around; enlarge image_shape "
            "(or pass image_shape=None)"
        )


def _abtem():
    import abtem

    abtem.config.set({"diagnostics.progress_bar": False})
    return abtem


def _cell_atoms(numbers, uvw, offset_xyz, cell_xyz) -> ase.Atoms:
    return ase.Atoms(numbers=numbers, positions=uvw + offset_xyz, cell=cell_xyz, pbc=True)


def _add_noise(
    clean: np.ndarray,
    expected_scale: float,
    dose_e_per_A2: float | None,
    noise_std_rel: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Expected images = clean · expected_scale; then Poisson and/or Gaussian noise."""
    if dose_e_per_A2 is None and not noise_std_rel:
        return clean
    images = clean * expected_scale if dose_e_per_A2 is not None else clean
    images = np.clip(images, 0.0, None) if dose_e_per_A2 is not None else images
    peak = float(np.max(np.abs(images)))
    if dose_e_per_A2 is not None:
        images = rng.poisson(images).astype(float)
    if noise_std_rel:
        images = images + rng.normal(scale=noise_std_rel * peak, size=images.shape)
    return images


def _check_noise(dose_e_per_A2, noise_std_rel) -> None:
    if dose_e_per_A2 is not None and not (np.isfinite(dose_e_per_A2) and dose_e_per_A2 > 0):
        raise ValueError(
            f"dose_e_per_A2 must be positive (or None for no Poisson noise), got {dose_e_per_A2}"
        )
    if not (np.isfinite(noise_std_rel) and noise_std_rel >= 0):
        raise ValueError(f"noise_std_rel must be >= 0, got {noise_std_rel}")


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="angle")


def _is_smooth(k: int) -> bool:
    for p in (2, 3, 5):
        while k % p == 0:
            k //= p
    return k == 1


def _smooth_size(n: int, multiple: int = 1) -> int:
    """Smallest m >= n with m = ``multiple`` · s and s having only 2, 3, 5 as prime factors
    (for a smooth ``multiple`` that is: m divisible by it and itself 2,3,5-smooth)."""
    s = max(math.ceil(int(n) / multiple), 1)
    while not _is_smooth(s):
        s += 1
    return multiple * s


# --------------------------------------------------------------------------- fast


def _fourier_crop(image_fine_fft: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Keep the frequencies of the coarse FFT grid (same frequency spacing)."""
    idx = []
    for n_fine, n in zip(image_fine_fft.shape, shape, strict=True):
        m = np.fft.fftfreq(n) * n  # integer frequency indices of the coarse grid
        idx.append(np.mod(np.round(m).astype(int), n_fine))
    return image_fine_fft[np.ix_(*idx)]


def _noise_provenance(
    dose_e_per_A2, noise_std_rel, drift_std_A, seed, scale, seconds_per_angle, atoms, clean_units
) -> dict:
    """The provenance entries both simulators share (noise, drift, seed, units, timing)."""
    return {
        "dose_e_per_A2": dose_e_per_A2,
        "noise_std_rel": float(noise_std_rel),
        "drift_std_A": np.broadcast_to(np.asarray(drift_std_A, float), (3,)).tolist(),
        "seed": int(seed),
        "image_units": "electron counts" if dose_e_per_A2 is not None else clean_units,
        "counts_per_unit_image": scale if dose_e_per_A2 is not None else None,
        "seconds_per_angle": seconds_per_angle,
        "chemical_formula": atoms.get_chemical_formula(),
    }


def simulate_fast(
    atoms: ase.Atoms,
    angles_deg,
    pixel_size_A: float = 0.25,
    blur_sigma_A: float = 0.5,
    image_shape: tuple[int, int] | str | None = None,
    margin_A: float = 4.0,
    oversampling: int = 2,
    dose_e_per_A2: float | None = None,
    noise_std_rel: float = 0.0,
    drift_std_A: float | Sequence[float] = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> TiltSeries:
    """Projected potential + Gaussian blur + noise (gaussian-atoms protocol), per angle.

    atoms: the particle, positions in Å about the rotation centre (origin).
    angles_deg: (m,) tilts about y, (m, 3) Euler triples (ψ, θ, φ), or a preset name.
    pixel_size_A: image pixel size in Å; the potential is computed at
        pixel_size_A / oversampling, blurred, and Fourier-cropped to the pixel grid.
    blur_sigma_A: standard deviation of the Gaussian blur (finite probe) in Å.
    image_shape: (nu, nv); default: square, the particle's bounding sphere + drift +
        margin_A on each side; "fit": per axis, every view's projection + drift + margin_A.
    Returns a TiltSeries with images (m, nu, nv) in V·Å (or counts, with a dose).
    """
    abtem = _abtem()
    pos, numbers, symbols = _check_atoms(atoms)
    euler = _as_euler_deg(angles_deg)
    pixel_size_A = _check_pixel("pixel_size_A", pixel_size_A)
    if not (np.isfinite(blur_sigma_A) and blur_sigma_A >= 0):
        raise ValueError(f"blur_sigma_A must be >= 0, got {blur_sigma_A}")
    if int(oversampling) != oversampling or oversampling < 1:
        raise ValueError(f"oversampling must be a positive integer, got {oversampling}")
    oversampling = int(oversampling)
    _check_noise(dose_e_per_A2, noise_std_rel)
    rng = np.random.default_rng(seed)
    m = euler.shape[0]
    drift = _drift(m, drift_std_A, rng)
    radius = float(np.linalg.norm(pos, axis=1).max())
    rot = _rotations(euler)
    shape = _image_shape(
        image_shape,
        radius,
        drift,
        pixel_size_A,
        margin_A,
        views=np.einsum("mij,nj->mni", rot, pos),
    )
    fine = (shape[0] * oversampling, shape[1] * oversampling)
    depth = 2.0 * (radius + np.abs(drift[:, 2]).max() + 2.0)
    cell = np.array([shape[0] * pixel_size_A, shape[1] * pixel_size_A, depth])
    offset = np.array([shape[0] // 2 * pixel_size_A, shape[1] // 2 * pixel_size_A, depth / 2])
    ku = np.fft.fftfreq(fine[0], d=pixel_size_A / oversampling)[:, None]
    kv = np.fft.fftfreq(fine[1], d=pixel_size_A / oversampling)[None, :]
    blur = np.exp(-2.0 * np.pi**2 * blur_sigma_A**2 * (ku**2 + kv**2))
    clean = np.empty((m,) + shape)
    t0 = time.perf_counter()
    for j in _progress(range(m), progress, "projected potential"):
        uvw = pos @ rot[j].T + drift[j]
        _check_inside(uvw, shape, pixel_size_A, j)
        cell_atoms = _cell_atoms(numbers, uvw, offset, cell)
        potential = abtem.Potential(
            cell_atoms, gpts=fine, slice_thickness=depth, projection="infinite"
        )
        fine_image = potential.project().compute(scheduler="synchronous").array
        spectrum = _fourier_crop(np.fft.fft2(fine_image) * blur, shape)
        clean[j] = np.fft.ifft2(spectrum).real / oversampling**2
    seconds = time.perf_counter() - t0
    scale = 1.0
    if dose_e_per_A2 is not None:
        scale = dose_e_per_A2 * pixel_size_A**2 / float(clean.max())
    images = _add_noise(clean, scale, dose_e_per_A2, noise_std_rel, rng)
    provenance = {
        "simulator": "atomjax.simulate.simulate_fast",
        "abtem_version": abtem.__version__,
        "protocol": "abtem projected potential (lobato, infinite projection) + Gaussian blur",
        "pixel_size_A": pixel_size_A,
        "blur_sigma_A": float(blur_sigma_A),
        "oversampling": oversampling,
        "image_shape": list(shape),
        "margin_A": float(margin_A),
        **_noise_provenance(
            dose_e_per_A2,
            noise_std_rel,
            drift_std_A,
            seed,
            scale,
            seconds / m,
            atoms,
            "V*A (projected potential)",
        ),
    }
    return TiltSeries(
        images=images,
        euler_deg=euler,
        pixel_size_A=pixel_size_A,
        probe=None,
        dose_e_per_A2=dose_e_per_A2,
        drift_A=drift,
        atoms_positions_A=pos,
        atoms_species=symbols,
        provenance=provenance,
    )


# --------------------------------------------------------------------------- HAADF


def max_detector_angle_mrad(potential_sampling_A: float, energy_eV: float) -> float:
    """Largest usable detector angle in mrad: abTEM's anti-aliasing cut-off,
    (2/3) · λ / (2 Δx), for potential sampling Δx in Å."""
    return 2.0 / 3.0 * wavelength_A(energy_eV) / (2.0 * potential_sampling_A) * 1e3


#: Room-temperature rms thermal displacement per direction, √U_iso in Å, from the
#: Debye–Waller factors B = 8π² U_iso at 293 K tabulated by Peng, Ren, Dudarev & Whelan,
#: Acta Cryst. A52 (1996) 456: Si 0.46, Pt 0.32, Au 0.62 Å².
PHONON_SIGMA_A: dict[str, float] = {
    "Si": math.sqrt(0.46 / (8 * math.pi**2)),
    "Pt": math.sqrt(0.32 / (8 * math.pi**2)),
    "Au": math.sqrt(0.62 / (8 * math.pi**2)),
}


def _phonon_sigmas(n_configs, sigma_A, symbols) -> dict[str, float] | None:
    """Per-element displacement σ for ``abtem.FrozenPhonons``, None for a static lattice."""
    if int(n_configs) != n_configs or n_configs < 0:
        raise ValueError(f"frozen_phonons must be an integer >= 0, got {n_configs}")
    if n_configs == 0:
        return None
    elements = sorted({str(e) for e in symbols})
    if sigma_A is None:
        missing = [e for e in elements if e not in PHONON_SIGMA_A]
        if missing:
            raise ValueError(
                f"no default thermal displacement for {missing}; give phonon_sigma_A "
                f"(Å, one value or a dict per element); defaults exist for {sorted(PHONON_SIGMA_A)}"
            )
        table = PHONON_SIGMA_A
    elif isinstance(sigma_A, dict):
        missing = [e for e in elements if e not in sigma_A]
        if missing:
            raise ValueError(f"phonon_sigma_A has no value for {missing}")
        table = sigma_A
    else:
        table = dict.fromkeys(elements, sigma_A)
    out = {e: float(table[e]) for e in elements}
    bad = {e: v for e, v in out.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise ValueError(f"phonon_sigma_A must be finite and >= 0 Å, got {bad}")
    return out


def _detector_message(outer: float, limit: float, dx: float, energy: float) -> str:
    return (
        f"detector outer angle {outer:g} mrad exceeds abTEM's anti-aliasing limit "
        f"{limit:.1f} mrad at potential_sampling_A={dx} and {energy / 1e3:g} keV "
        "(2/3 of the grid's Nyquist angle); "
        f"use potential_sampling_A <= {0.98 * wavelength_A(energy) / (3 * outer * 1e-3):.4f} "
        "or a smaller outer angle"
    )


def simulate_haadf(
    atoms: ase.Atoms,
    angles_deg,
    probe: ProbeSettings | None = None,
    detector_mrad: tuple[float, float | None] = (30.0, None),
    potential_sampling_A: float = 0.1,
    slice_thickness_A: float = 2.0,
    scan_pixel_size_A: float = 0.5,
    image_shape: tuple[int, int] | str | None = None,
    margin_A: float = 4.0,
    method: str = "prism",
    prism_interpolation: int | None = None,
    parametrization: str = "lobato",
    dose_e_per_A2: float | None = None,
    noise_std_rel: float = 0.0,
    drift_std_A: float | Sequence[float] = 0.0,
    seed: int = 0,
    progress: bool = True,
    frozen_phonons: int = 0,
    phonon_sigma_A: float | dict[str, float] | None = None,
) -> TiltSeries:
    """HAADF-STEM tilt series by PRISM or multislice (abTEM), one angle at a time.

    atoms: the particle, positions in Å about the rotation centre (origin).
    angles_deg: (m,) tilts about y, (m, 3) Euler triples (ψ, θ, φ), or a preset name.
    probe: settings at the plane w = 0 (default 300 keV, 25 mrad, in focus at the
        rotation centre).
    detector_mrad: (inner, outer) annular detector angles; the inner one (unless 0) must
        lie outside the probe's bright-field disc (≥ the semiangle); outer None = the largest
        usable angle, abTEM's anti-aliasing cut-off on the actual grid (PRISM: on the
        interpolation window), at most :func:`max_detector_angle_mrad` (65.6 mrad at
        0.1 Å, 300 keV; e.g. 64.6 on a small PRISM window). An outer angle above it
        raises ValueError: refine ``potential_sampling_A`` to ≤ λ / (3 · outer).
    potential_sampling_A, slice_thickness_A: abTEM potential grid in Å. The lateral
        grid size is rounded up to 2,3,5-smooth and divisible by the PRISM interpolation.
    scan_pixel_size_A: image pixel size (probe step) in Å.
    method: "prism" (abtem.SMatrix) or "multislice" (abtem.Probe, 5-10x slower).
    image_shape: (nu, nv) pixels; None: square, holding the particle's bounding sphere
        with ``margin_A``; "fit": per axis the smallest even size holding every view's
        projection with ``margin_A`` (cheaper for particles longer in one direction).
    prism_interpolation: PRISM interpolation factor; default, per axis: the largest
        2,3,5-smooth one of 1..9 that keeps the probe window (cell extent / factor) at
        least 6 Å wide.
    frozen_phonons: number of frozen-phonon configurations per image (``abtem.FrozenPhonons``,
        the image is their mean); 0 = the static lattice. Each image draws its own
        configurations (seeded from ``seed`` and the image index), as successive
        exposures would. The ground truth stays the mean positions.
    phonon_sigma_A: rms thermal displacement per direction in Å (√U_iso), one value or
        one per element; default :data:`PHONON_SIGMA_A` (room temperature).
    Returns a TiltSeries with images (m, nu, nv): detected fraction of the probe
    intensity (or counts, with a dose).
    """
    abtem = _abtem()
    pos, numbers, symbols = _check_atoms(atoms)
    euler = _as_euler_deg(angles_deg)
    probe = ProbeSettings() if probe is None else probe
    if not isinstance(probe, ProbeSettings):
        raise ValueError(f"probe must be an atomjax ProbeSettings, got {type(probe).__name__}")
    dx = _check_pixel("potential_sampling_A", potential_sampling_A)
    dz = _check_pixel("slice_thickness_A", slice_thickness_A)
    p = _check_pixel("scan_pixel_size_A", scan_pixel_size_A)
    if method not in ("prism", "multislice"):
        raise ValueError(f"method must be 'prism' or 'multislice', got {method!r}")
    _check_noise(dose_e_per_A2, noise_std_rel)
    energy = float(probe.energy_eV)
    semiangle = float(probe.semiangle_mrad)
    if len(detector_mrad) != 2:
        raise ValueError(f"detector_mrad must be (inner, outer), got {detector_mrad}")
    inner, outer = float(detector_mrad[0]), detector_mrad[1]
    nominal = max_detector_angle_mrad(dx, energy)
    if outer is not None and float(outer) > nominal:
        raise ValueError(_detector_message(float(outer), nominal, dx, energy))

    sigmas = _phonon_sigmas(frozen_phonons, phonon_sigma_A, symbols)

    rng = np.random.default_rng(seed)
    m = euler.shape[0]
    drift = _drift(m, drift_std_A, rng)
    radius = float(np.linalg.norm(pos, axis=1).max())
    rot = _rotations(euler)
    shape = _image_shape(
        image_shape, radius, drift, p, margin_A, views=np.einsum("mij,nj->mni", rot, pos)
    )
    scan_extent = np.array(shape, float) * p
    # lateral potential grid: covers the scan area, smooth size, divisible by interpolation
    if prism_interpolation is None:
        # per axis, the largest 2,3,5-smooth factor <= 9 that keeps the window >= 6 Å (no
        # 7: the window and the whole grid both stay FFT-friendly). Measured on a 287-atom
        # Pt decahedron at 35 mrad against a 12.5 Å window: 6.4 Å windows agree to 0.3 %
        # (after one scale), 4.8 Å ones lose 20 % of the signal and 1.9 % of its shape.
        interp = tuple(
            max(f for f in range(1, int(np.clip(e // 6.0, 1, 9)) + 1) if _is_smooth(f))
            if method == "prism"
            else 1
            for e in scan_extent
        )
    else:
        if int(prism_interpolation) != prism_interpolation or prism_interpolation < 1:
            raise ValueError(
                f"prism_interpolation must be a positive integer, got {prism_interpolation}"
            )
        interp = (int(prism_interpolation),) * 2
    gpts = tuple(
        _smooth_size(math.ceil(e / dx - 1e-9), f) for e, f in zip(scan_extent, interp, strict=True)
    )
    extent = np.array(gpts) * dx
    # abTEM's own cut-off on this (PRISM: interpolation window) grid, <= the nominal one
    window = abtem.Probe(
        semiangle_cutoff=semiangle,
        energy=energy,
        extent=tuple(extent / np.array(interp)),
        gpts=tuple(g // f for g, f in zip(gpts, interp, strict=True)),
    )
    limit = float(min(window.cutoff_angles))
    outer = limit if outer is None else float(outer)
    if outer > limit * (1 + 1e-9):
        raise ValueError(_detector_message(outer, limit, dx, energy))
    if not (0 <= inner < outer):
        raise ValueError(f"detector inner angle {inner} mrad must be in [0, outer={outer:.1f})")
    if 0 < inner < semiangle:
        raise ValueError(
            f"detector inner angle {inner:g} mrad lies inside the probe's bright-field disc "
            f"({semiangle:g} mrad): the annular detector would collect the unscattered beam "
            "(an ADF/BF mix, not HAADF); start it outside the disc, e.g. at "
            f"{1.25 * semiangle:g} mrad, or use inner 0 for a deliberate bright-field image"
        )
    if semiangle >= limit:
        raise ValueError(
            f"probe semiangle {semiangle} mrad exceeds the anti-aliasing limit {limit:.1f} mrad; "
            "refine potential_sampling_A"
        )
    n_slices = int(math.ceil(2.0 * (radius + np.abs(drift[:, 2]).max() + 2.0) / dz))
    depth = n_slices * dz
    centre = np.array([extent[0] / 2, extent[1] / 2, depth / 2])
    cell = np.array([extent[0], extent[1], depth])
    start = centre[:2] - (np.array(shape) // 2) * p
    scan = abtem.GridScan(start=tuple(start), end=tuple(start + scan_extent), gpts=shape)
    detector = abtem.AnnularDetector(inner=inner, outer=outer)
    aberrations = probe.abtem_aberrations()
    aberrations["C10"] = -(float(probe.defocus_A) + depth / 2)  # focus relative to entrance
    clean = np.empty((m,) + shape)
    t0 = time.perf_counter()
    for j in _progress(range(m), progress, f"HAADF ({method})"):
        uvw = pos @ rot[j].T + drift[j]
        _check_inside(uvw, shape, p, j)
        cell_atoms = _cell_atoms(numbers, uvw, centre, cell)
        if sigmas is not None:
            cell_atoms = abtem.FrozenPhonons(
                cell_atoms,
                num_configs=int(frozen_phonons),
                sigmas=sigmas,
                seed=[int(seed) * 1_000_003 + j * 1_009 + c for c in range(int(frozen_phonons))],
            )
        potential = abtem.Potential(
            cell_atoms,
            gpts=gpts,
            slice_thickness=dz,
            parametrization=parametrization,
        )
        if method == "prism":
            s_matrix = abtem.SMatrix(
                semiangle_cutoff=semiangle,
                energy=energy,
                potential=potential,
                interpolation=interp,
            )
            ctf = abtem.CTF(
                semiangle_cutoff=semiangle, energy=energy, aberration_coefficients=aberrations
            )
            measurement = s_matrix.scan(scan=scan, detectors=detector, ctf=ctf)
        else:
            wave = abtem.Probe(semiangle_cutoff=semiangle, energy=energy, aberrations=aberrations)
            measurement = wave.scan(potential, scan=scan, detectors=detector)
        clean[j] = np.asarray(measurement.compute().array, dtype=float).reshape(shape)
    seconds = time.perf_counter() - t0
    scale = dose_e_per_A2 * p**2 if dose_e_per_A2 is not None else 1.0
    images = _add_noise(clean, scale, dose_e_per_A2, noise_std_rel, rng)
    provenance: dict[str, Any] = {
        "simulator": "atomjax.simulate.simulate_haadf",
        "abtem_version": abtem.__version__,
        "method": method,
        "prism_interpolation": (
            (interp[0] if interp[0] == interp[1] else list(interp)) if method == "prism" else None
        ),
        "probe": probe.to_dict(),
        "abtem_aberrations": aberrations,
        "detector_mrad": [inner, outer],
        "antialias_limit_mrad": limit,
        "potential_sampling_A": dx,
        "potential_gpts": list(gpts),
        "slice_thickness_A": dz,
        "n_slices": n_slices,
        "entrance_depth_A": depth / 2,
        "parametrization": parametrization,
        "frozen_phonons": int(frozen_phonons),
        "phonon_sigma_A": sigmas,
        "scan_pixel_size_A": p,
        "image_shape": list(shape),
        "margin_A": float(margin_A),
        **_noise_provenance(
            dose_e_per_A2,
            noise_std_rel,
            drift_std_A,
            seed,
            scale,
            seconds / m,
            atoms,
            "detected fraction of the probe intensity",
        ),
    }
    return TiltSeries(
        images=images,
        euler_deg=euler,
        pixel_size_A=p,
        probe=probe,
        dose_e_per_A2=dose_e_per_A2,
        drift_A=drift,
        atoms_positions_A=pos,
        atoms_species=symbols,
        provenance=provenance,
    )
