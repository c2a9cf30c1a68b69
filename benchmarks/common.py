"""Machinery the benchmarks share: the voxel baselines (FBP / SART + atom tracing), the
scoring every method gets, and the description of the machine a run was measured on.

The baselines follow the conventional AET pipeline: a voxel reconstruction of a
single-axis series with scikit-image, then atom tracing (local maxima, greedy
minimum-distance thinning, Otsu's threshold, sub-voxel refinement). They were first
written for ``bench_missing_wedge.py``; ``bench_time_to_result.py`` runs the same ones.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

#: skimage's ``theta`` is minus atomjax's tilt θ when a reconstructed slice is indexed
#: [z, x] (row = depth along the beam at θ = 0, column = x). Checked against the truth
#: in tests/test_bench_missing_wedge.py (the other sign mirrors the particle in z).
SKIMAGE_THETA_SIGN = -1.0

METRIC_KEYS = ("n_truth", "n_found", "n_matched", "tp_rate", "fp_rate", "rmsd_pm")


def single_axis_tilts_deg(euler_deg: np.ndarray) -> np.ndarray:
    """θ of a single-axis tilt series about y; refuses anything else."""
    euler = np.asarray(euler_deg, dtype=float)
    if euler.ndim != 2 or euler.shape[1] != 3 or np.any(euler[:, [0, 2]] != 0):
        raise ValueError("the voxel baselines need a single-axis tilt series about y (ψ = φ = 0)")
    return euler[:, 1]


# --------------------------------------------------------------------------- baselines


def _sinogram(images: np.ndarray, v: int) -> np.ndarray:
    """skimage's sinogram (detector u, angle) of image column v (the plane y = y_v)."""
    return np.ascontiguousarray(images[:, :, v].T, dtype=np.float64)


def fbp_volume(images: np.ndarray, tilts_deg: np.ndarray, filter_name: str = "ramp") -> np.ndarray:
    """Filtered back-projection of a single-axis series (m, nu, nv) → volume [x, y, z].

    One 2D FBP per image column v (a y-plane); the volume has nu × nv × nu voxels of the
    image pixel size, voxel i along an axis at (i − n // 2) · pixel size (atomjax's grid).
    """
    from skimage.transform import iradon

    images = np.asarray(images, dtype=np.float64)
    m, nu, nv = images.shape
    theta = SKIMAGE_THETA_SIGN * np.asarray(tilts_deg, dtype=float)
    vol = np.empty((nu, nv, nu))
    for v in range(nv):
        sl = iradon(
            _sinogram(images, v), theta=theta, filter_name=filter_name, circle=True, output_size=nu
        )
        vol[:, v, :] = sl.T  # slice is [z, x]
    return vol


def sart_volume(
    images: np.ndarray, tilts_deg: np.ndarray, n_iter: int = 5, relaxation: float = 0.15
) -> np.ndarray:
    """SART (``iradon_sart``, ``n_iter`` sweeps over all angles) per y-plane → [x, y, z]."""
    from skimage.transform import iradon_sart

    images = np.asarray(images, dtype=np.float64)
    m, nu, nv = images.shape
    theta = SKIMAGE_THETA_SIGN * np.asarray(tilts_deg, dtype=float)
    vol = np.empty((nu, nv, nu))
    for v in range(nv):
        sino = _sinogram(images, v)
        sl = None
        for _ in range(n_iter):
            sl = iradon_sart(sino, theta=theta, image=sl, relaxation=relaxation)
        vol[:, v, :] = sl.T
    return vol


# --------------------------------------------------------------------------- tracing


def local_maxima(volume: np.ndarray, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Voxels that are the maximum of their 3 × 3 × 3 neighbourhood and > ``floor``.

    Returns voxel indices (p, 3) and values (p,), strongest first.
    """
    from skimage.feature import peak_local_max

    idx = peak_local_max(
        volume, min_distance=1, threshold_abs=floor, exclude_border=False, p_norm=np.inf
    )
    idx = idx[volume[tuple(idx.T)] > floor]
    values = volume[tuple(idx.T)]
    order = np.argsort(-values, kind="stable")
    return idx[order], values[order]


def greedy_separation(points: np.ndarray, min_separation: float) -> np.ndarray:
    """Indices of points kept when taken in order and dropped if closer than
    ``min_separation`` to a point kept before (points must be sorted strongest first)."""
    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    neighbours = cKDTree(points).query_ball_point(points, r=min_separation * (1 - 1e-9))
    dropped = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if dropped[i]:
            continue
        keep.append(i)
        dropped[neighbours[i]] = True
    return np.asarray(keep, dtype=np.int64)


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of a set of peak values (0 when fewer than two distinct values).

    Histogram-based like ``skimage.filters.threshold_otsu``, but when several cuts give
    the same between-class variance (an empty stretch of the histogram: well separated
    atom and noise peaks) the threshold is the middle of that stretch, not its low end.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2 or np.ptp(values) == 0:
        return 0.0
    hist, edges = np.histogram(values, bins=nbins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)[:-1].astype(float)  # class "below" = bins 0..k
    w1 = values.size - w0
    s0 = np.cumsum(hist * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - s0) / np.maximum(w1, 1)
    var = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (m0 - m1) ** 2, -1.0)
    best = np.flatnonzero(var >= var.max() * (1 - 1e-12))
    cuts = edges[1:-1]  # cut k lies between bin k and bin k + 1
    return float(0.5 * (cuts[best[0]] + cuts[best[-1]]))


def subvoxel_offsets(volume: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sub-voxel offsets (p, 3) of peaks at voxel ``idx`` (p, 3), in voxels.

    Along each axis, a three-point fit through the peak voxel and its two neighbours:
    a parabola in log-intensity (exact for an isotropic Gaussian peak) when all three
    values are positive, else a parabola in intensity. Offsets are clipped to ±0.5;
    peaks on the volume's border are not moved along that axis.
    """
    idx = np.asarray(idx, dtype=np.int64).reshape(-1, 3)
    out = np.zeros(idx.shape, dtype=float)
    shape = np.asarray(volume.shape)
    for axis in range(3):
        inner = (idx[:, axis] > 0) & (idx[:, axis] < shape[axis] - 1)
        if not inner.any():
            continue
        lo, hi = idx[inner].copy(), idx[inner].copy()
        lo[:, axis] -= 1
        hi[:, axis] += 1
        a = volume[tuple(lo.T)]
        b = volume[tuple(idx[inner].T)]
        c = volume[tuple(hi.T)]
        positive = (a > 0) & (b > 0) & (c > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            la, lb, lc = (np.log(np.where(positive, x, 1.0)) for x in (a, b, c))
            fa, fb, fc = (
                np.where(positive, la, a),
                np.where(positive, lb, b),
                np.where(positive, lc, c),
            )
            den = fa - 2.0 * fb + fc
            off = np.where(den < 0, 0.5 * (fa - fc) / den, 0.0)
        out[inner, axis] = np.clip(np.nan_to_num(off), -0.5, 0.5)
    return out


def trace_atoms(
    volume: np.ndarray,
    voxel_size_A: float,
    min_separation_A: float = 2.0,
    threshold: float | str = "otsu",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Atom positions (p, 3) in Å on atomjax's object frame from a volume indexed [x, y, z].

    Local maxima (3 × 3 × 3, value > 0), strongest first, greedily thinned to
    ``min_separation_A``; kept if above ``threshold`` ("otsu": Otsu's threshold of the
    thinned peaks' values; a float: an absolute value); refined to sub-voxel precision
    (:func:`subvoxel_offsets`). Voxel i along an axis of n sits at (i − n // 2) · voxel.
    Returns the positions and a dict describing the tracing.
    """
    volume = np.asarray(volume, dtype=float)
    idx, values = local_maxima(volume, floor=0.0)
    keep = greedy_separation(idx * voxel_size_A, min_separation_A)
    idx, values = idx[keep], values[keep]
    thr = otsu_threshold(values) if threshold == "otsu" else float(threshold)
    above = values > thr
    n_candidates = int(idx.shape[0])
    idx, values = idx[above], values[above]
    pos_vox = idx + subvoxel_offsets(volume, idx)
    centre = np.array([n // 2 for n in volume.shape], dtype=float)
    positions_A = (pos_vox - centre) * voxel_size_A
    info = {
        "n_local_maxima_after_separation": n_candidates,
        "threshold": thr,
        "threshold_rel_to_max_peak": thr / float(volume.max()) if volume.max() > 0 else None,
        "threshold_rule": "otsu on peak values" if threshold == "otsu" else "absolute",
        "min_separation_A": float(min_separation_A),
        "n_atoms": int(idx.shape[0]),
        "peak_values": values,
    }
    return positions_A, info


# --------------------------------------------------------------------------- methods


def score(found_A: np.ndarray, truth_A: np.ndarray, cutoff_A: float = 0.75) -> dict[str, Any]:
    """The benchmark's metrics (same function for every method)."""
    from atomjax import metrics

    if len(found_A) == 0:
        n = int(len(truth_A))
        return {"n_truth": n, "n_found": 0, "n_matched": 0, "tp_rate": 0.0, "fp_rate": None,
                "rmsd_pm": None, "aet_rmsd_pm": None, "rmsd_xyz_pm": None}  # fmt: skip
    m = metrics.evaluate(found_A, truth_A, cutoff_A=cutoff_A)
    out = {k: m[k] for k in METRIC_KEYS}
    out["aet_rmsd_pm"] = m["aet_score"].get("rmsd_pm")
    # per-axis RMSD of the same one-to-one pairs: the missing wedge blurs along z
    dev_A = metrics.match_atoms(found_A, truth_A, cutoff_A=cutoff_A).deviation_A
    out["rmsd_xyz_pm"] = (
        (np.sqrt(np.mean(dev_A**2, axis=0)) * 100.0).tolist() if len(dev_A) else None
    )
    return out


def best_time(fn, *args, repeat=3):
    """The best of ``repeat`` timed calls of ``fn(*args)`` (s), after one to compile and
    warm up."""
    import time

    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with the values of ``over``, nested dicts merged key by key (a new dict;
    neither argument changes)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_seeds(text: str, parser) -> list[int]:
    """The seeds of a ``--seeds 0,1,2`` option; ``parser.error`` on anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {text!r}")
    if not seeds:
        parser.error("--seeds names no seed")
    return seeds


def over_seeds(rows: list[dict], fields: tuple[str, ...], by: tuple[str, ...] = ("case", "method")
               ) -> list[dict]:  # fmt: skip
    """One row per group of ``rows`` sharing the values of ``by`` (in first-seen order):
    the seeds it holds and the mean, min and max of each of ``fields`` over them (None
    values left out; a field with none gives None)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip(by, key, strict=True))
        row["seeds"] = [m.get("seed") for m in members]
        for f in fields:
            v = np.array([m[f] for m in members if m.get(f) is not None], float)
            row[f] = (
                {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
                if v.size
                else None
            )
        out.append(row)
    return out


def add_settings_option(parser) -> None:
    """``--settings JSON``: atomjax settings merged over every case's (:func:`parse_settings`)."""
    parser.add_argument("--settings", default="{}",
                        help="JSON of atomjax settings merged over every case's, e.g. "
                        "'{\"adapt\": {\"min_distance_A\": 1.5}}'")  # fmt: skip


def parse_settings(text: str, parser) -> dict:
    """The ``--settings`` JSON object, or the parser's error naming what is wrong."""
    import json

    try:
        settings = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f"--settings is not JSON ({e}): {text!r}")
    if not isinstance(settings, dict):
        parser.error(f"--settings must be a JSON object, got {text!r}")
    return settings


def add_starts_option(parser) -> None:
    """``--starts K``: each atomjax fit from K start tomograms (:func:`fit`)."""
    parser.add_argument("--starts", type=int, default=1, choices=range(1, 5), metavar="K",
                        help="atomjax.reconstruct_starts with K starts (1-4), the lowest final "
                        "loss kept; 1 (the default): one atomjax.reconstruct")  # fmt: skip


def fit(series, config, n_starts: int = 1):
    """atomjax's fit of ``series`` with its default output off: :func:`atomjax.reconstruct`,
    or with ``n_starts`` > 1 :func:`atomjax.reconstruct_starts`."""
    from atomjax.reconstruct import reconstruct
    from atomjax.starts import reconstruct_starts

    if n_starts == 1:
        return reconstruct(series, config, progress=False, figures=False)
    return reconstruct_starts(series, config, n_starts, progress=False, figures=False)


def machine() -> dict[str, Any]:
    """Where a benchmark ran: processor, cores, Python, JAX and its devices."""
    import jax

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.uname().machine,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
    }
