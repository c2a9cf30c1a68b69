"""Species from fitted atoms: cluster the atoms by their fitted scattering strength.

Each fitted atom is an isotropic Gaussian with peak amplitude H and width B (Å²); its
projection integrates to π·H·B, which grows with the atomic number (≈ Z^1.6 in HAADF).
:func:`classify_species` clusters the atoms into ``len(names)`` groups and names the groups
from the weakest to the strongest scatterer.

Features
--------
``"integrated"`` (default)
    log(H·B), one dimension. The logarithm was chosen by a comparison on two overlapping
    populations with multiplicative scatter (the natural model for fitted intensities):
    in log space both populations have the same spread, so a mixture with one shared
    (tied) variance is the right model, and it came within about 1 % of the Bayes-optimal
    accuracy for balanced and 80/20 mixtures (ratio 1.35, 12 % scatter: 0.913 vs 0.918),
    while a linear feature fell to 0.83 when the strong species was the majority, because
    the strong population's larger absolute spread pulls the boundary towards the weak
    one. ``tests/test_species.py`` keeps this comparison.
``"amplitude_width"``
    (log H, log B), each standardised to zero mean and unit variance, for when H and B
    carry separate information (e.g. a heavy atom fitted narrower).

Methods
-------
``"gmm"`` (default)
    :class:`sklearn.mixture.GaussianMixture` with a tied covariance (one spread shared by
    all species, see above), several seeded initialisations.
``"kmeans"``
    :class:`sklearn.cluster.KMeans`, seeded, several initialisations. Its boundary lies
    midway between cluster centres, so it is worse than the mixture when the species are
    unbalanced and overlap.

Naming: the clusters are ordered by the mean H·B of their members (a cluster left empty is
placed by its centre) and ``names[0]`` goes to the weakest.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

METHODS = ("gmm", "kmeans")
FEATURES = ("integrated", "amplitude_width")
N_INIT = 8


# --------------------------------------------------------------------------- validation


def _as_values(x: Any, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (n,), got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries but amplitudes has {n}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN/inf value(s) "
            f"(first at index {int(np.flatnonzero(bad)[0])})"
        )
    return a


def _check_names(names: Any) -> list[str]:
    if isinstance(names, str):
        raise ValueError(f"names must be a sequence of species names, got the string {names!r}")
    names = [str(s) for s in names]
    if not names:
        raise ValueError("names is empty: give at least one species name")
    seen: set[str] = set()
    dup = [s for s in names if s in seen or seen.add(s)]
    if dup:
        raise ValueError(f"names has duplicates: {sorted(set(dup))}")
    return names


def _check_atoms(amplitudes: Any, widths_A2: Any) -> tuple[np.ndarray, np.ndarray]:
    h = _as_values(amplitudes, "amplitudes")
    b = _as_values(widths_A2, "widths_A2", n=h.shape[0])
    if h.shape[0] == 0:
        raise ValueError("no atoms: amplitudes is empty")
    if (b <= 0).any():
        k = np.flatnonzero(b <= 0)
        raise ValueError(
            f"widths_A2 must be positive (Å²); {k.size} are not (first at index {int(k[0])})"
        )
    return h, b


# --------------------------------------------------------------------------- clustering


def _features(h: np.ndarray, b: np.ndarray, features: str) -> np.ndarray:
    if features == "integrated":
        return np.log(h * b)[:, None]
    x = np.stack([np.log(h), np.log(b)], axis=1)
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0
    return (x - x.mean(axis=0)) / sd


def _cluster(x: np.ndarray, k: int, method: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,), centres (k, d)) in feature space."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        if method == "gmm":
            from sklearn.mixture import GaussianMixture

            model = GaussianMixture(
                n_components=k, covariance_type="tied", n_init=N_INIT, random_state=seed
            ).fit(x)
            return model.predict(x), model.means_
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(x)
        return model.labels_, model.cluster_centers_


def classify_species(
    amplitudes: Any,
    widths_A2: Any,
    names: Sequence[str],
    method: str = "gmm",
    features: str = "integrated",
    seed: int = 0,
) -> np.ndarray:
    """Species label (n,) str for each fitted atom, from its amplitude H and width B (Å²).

    ``names`` run from the weakest to the strongest scatterer (e.g. ``["Fe", "Pt"]``);
    clusters are named in the order of their mean H·B. One name labels every atom.
    ``method`` is ``"gmm"`` or ``"kmeans"``; ``features`` is ``"integrated"`` (log H·B) or
    ``"amplitude_width"`` (standardised log H, log B); see the module docstring. The result
    is deterministic for a given ``seed``.

    Raises ValueError for empty or duplicate names, more species than atoms (or than
    distinct feature values), shape mismatch, NaN/inf, non-positive widths or amplitudes,
    and an unknown method or features.
    """
    names = _check_names(names)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; expected one of {FEATURES}")
    h, b = _check_atoms(amplitudes, widths_A2)
    n, k = h.shape[0], len(names)
    if k > n:
        raise ValueError(f"{k} species requested but there are only {n} atom(s)")
    if k == 1:
        return np.asarray(names, dtype=str)[np.zeros(n, dtype=int)]
    if (h <= 0).any():
        i = np.flatnonzero(h <= 0)
        raise ValueError(
            f"amplitudes must be positive to classify by intensity; {i.size} are not "
            f"(first at index {int(i[0])}); remove dead or negative atoms first"
        )
    x = _features(h, b, features)
    distinct = np.unique(x, axis=0).shape[0]
    if distinct < k:
        raise ValueError(
            f"{k} species requested but the atoms have only {distinct} distinct "
            f"{features!r} feature value(s)"
        )
    labels, centres = _cluster(x, k, method, int(seed))

    hb = h * b
    key = np.empty(k)
    for c in range(k):
        member = labels == c
        if member.any():
            key[c] = hb[member].mean()
        elif features == "integrated":
            key[c] = math.exp(float(centres[c, 0]))
        else:  # centre in standardised (log H, log B): undo the standardisation
            logs = np.stack([np.log(h), np.log(b)], axis=1)
            sd = logs.std(axis=0)
            sd[sd == 0] = 1.0
            key[c] = math.exp(float((centres[c] * sd + logs.mean(axis=0)).sum()))
    order = np.argsort(key, kind="stable")  # order[j] = cluster with rank j
    rank = np.empty(k, dtype=int)
    rank[order] = np.arange(k)
    return np.asarray(names, dtype=str)[rank[labels]]


# --------------------------------------------------------------------------- summary


def species_summary(labels: Any, amplitudes: Any, widths_A2: Any) -> dict[str, dict[str, Any]]:
    """Per-species statistics, JSON-ready (plain Python types).

    ``{name: {"count", "fraction", "amplitude_mean", "amplitude_std", "width_A2_mean",
    "width_A2_std", "hb_mean", "hb_std"}}`` where hb = H·B (π·hb is the integrated
    intensity of the projection); standard deviations are population ones (ddof=0).
    Species appear in the order of increasing ``hb_mean``.
    """
    h = _as_values(amplitudes, "amplitudes")
    b = _as_values(widths_A2, "widths_A2", n=h.shape[0])
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != h.shape[0]:
        raise ValueError(
            f"labels must have shape ({h.shape[0]},) to match amplitudes, got {lab.shape}"
        )
    lab = lab.astype(str)
    hb = h * b
    rows = []
    for name in np.unique(lab):
        m = lab == name
        rows.append(
            (
                float(hb[m].mean()),
                str(name),
                {
                    "count": int(m.sum()),
                    "fraction": float(m.sum() / lab.size),
                    "amplitude_mean": float(h[m].mean()),
                    "amplitude_std": float(h[m].std()),
                    "width_A2_mean": float(b[m].mean()),
                    "width_A2_std": float(b[m].std()),
                    "hb_mean": float(hb[m].mean()),
                    "hb_std": float(hb[m].std()),
                },
            )
        )
    rows.sort(key=lambda r: (r[0], r[1]))
    return {name: stats for _, name, stats in rows}
