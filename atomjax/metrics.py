"""Accuracy metrics against a ground-truth atom list (host-side numpy/scipy).

Conventions: positions are (n, 3) arrays in Å; a deviation is ``found - offset - truth``
(Å, or pm where the name says so); the offset is the mean ``found - truth`` of matched
pairs when it is removed, else zero.

Two matchings are provided:

* :func:`match_atoms` — optimal one-to-one assignment within a cut-off: first the largest
  possible number of matched pairs, then, among those, the smallest total distance.
  Each found and each true atom is used at most once, so duplicates count as false
  positives.
* :func:`aet_score` — the published AET pipeline's own scoring, reproduced as written in
  its supplementary MATLAB scripts: every traced atom is paired with its *nearest* true
  atom within the cut-off (not one-to-one: two traced atoms may share one true atom, and
  both count), the mean offset is removed and the matching repeated until the offset
  update is below 1e-4 Å, and RMSD = sqrt(Σ_axes var(d_axis)) with MATLAB's default
  *sample* variance (N - 1).

Everything is vectorised (KD-trees, sparse graphs); 200,000 atoms take a few seconds.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

PM_PER_A = 100.0
DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)

# --------------------------------------------------------------------------- validation


def as_points(x: Any, name: str) -> np.ndarray:
    """`x` as a finite float64 (n, 3) array with n >= 1, or a ValueError naming it."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3) in Å, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one atom")
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} atom(s) with NaN/inf coordinates "
            f"(first at index {int(np.flatnonzero(bad)[0])})"
        )
    return a


def _check_cutoff(cutoff_A: float) -> float:
    c = float(cutoff_A)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"cutoff_A must be a positive finite length in Å, got {cutoff_A!r}")
    return c


def _as_deviations(deviation_A: Any) -> np.ndarray:
    d = np.asarray(deviation_A, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != 3:
        raise ValueError(f"deviations must have shape (k, 3) in Å, got shape {d.shape}")
    if d.shape[0] == 0:
        raise ValueError("no deviations: no atoms were matched")
    if not np.isfinite(d).all():
        raise ValueError("deviations contain NaN/inf")
    return d


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Match:
    """Result of :func:`match_atoms`.

    found_index, truth_index: (k,) indices of matched pairs (sorted by found index).
    deviation_A: (k, 3) ``found - offset_A - truth`` for each pair, Å.
    offset_A: (3,) mean offset removed from the found atoms (zeros if not removed), Å.
    unmatched_found: indices of found atoms with no partner (false positives).
    unmatched_truth: indices of true atoms with no partner (missed atoms).
    """

    found_index: np.ndarray
    truth_index: np.ndarray
    deviation_A: np.ndarray
    offset_A: np.ndarray
    unmatched_found: np.ndarray
    unmatched_truth: np.ndarray
    n_found: int
    n_truth: int
    cutoff_A: float
    n_iter: int
    converged: bool

    @property
    def n_matched(self) -> int:
        return int(self.found_index.size)

    @property
    def deviation_pm(self) -> np.ndarray:
        """(k, 3) deviations in pm."""
        return self.deviation_A * PM_PER_A

    @property
    def distance_A(self) -> np.ndarray:
        """(k,) |deviation| in Å."""
        return np.linalg.norm(self.deviation_A, axis=1)

    @property
    def tp_rate(self) -> float:
        """Matched true atoms / true atoms."""
        return self.n_matched / self.n_truth

    @property
    def fp_rate(self) -> float:
        """Unmatched found atoms / found atoms."""
        return self.unmatched_found.size / self.n_found


def _candidate_pairs(
    found: np.ndarray, truth: np.ndarray, cutoff_A: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (found i, truth j, distance) with distance <= cutoff_A."""
    sdm = cKDTree(found).sparse_distance_matrix(cKDTree(truth), cutoff_A, output_type="ndarray")
    return (
        np.asarray(sdm["i"], dtype=np.int64),
        np.asarray(sdm["j"], dtype=np.int64),
        np.asarray(sdm["v"], dtype=np.float64),
    )


def _one_to_one(
    i: np.ndarray, j: np.ndarray, d: np.ndarray, n: int, m: int, cutoff_A: float
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-cardinality, then minimum-total-distance matching on candidate edges."""
    if i.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    # Connected components of the bipartite candidate graph (found 0..n-1, truth n..n+m-1).
    graph = coo_matrix((np.ones(i.size), (i, j + n)), shape=(n + m, n + m))
    n_comp, label = connected_components(graph, directed=False)
    nf = np.bincount(label[:n], minlength=n_comp)
    nt = np.bincount(label[n:], minlength=n_comp)
    comp = label[i]
    trivial = (nf[comp] == 1) & (nt[comp] == 1)  # an isolated pair: exactly one edge
    fi, tj = [i[trivial]], [j[trivial]]

    hard = ~trivial
    if hard.any():
        ih, jh, dh = i[hard], j[hard], d[hard]
        uf, li = np.unique(ih, return_inverse=True)
        ut, lj = np.unique(jh, return_inverse=True)
        a, b = uf.size, ut.size
        # Augmented square problem (LAPJVsp needs a full matching):
        # rows = found (a) + truth dummies (b); cols = truth (b) + found dummies (a).
        # Leaving an atom unmatched costs P; a real pair costs its distance. With
        # 2P > (largest possible matching in a component + 1) * cutoff, every extra pair
        # is worth more than any change in total distance, so cardinality comes first.
        hard_comps = np.unique(comp[hard])
        k_max = int(np.minimum(nf[hard_comps], nt[hard_comps]).max())
        penalty = cutoff_A * (k_max + 1)
        ar_a, ar_b = np.arange(a), np.arange(b)
        rows = np.concatenate([li, ar_a, a + ar_b, a + lj])
        cols = np.concatenate([lj, b + ar_a, ar_b, b + li])
        # +1 on every weight: a perfect matching always has a + b edges, so the optimum
        # is unchanged, and no weight is zero (zeros are dropped by sparse formats).
        w = np.concatenate([dh, np.full(a + b, penalty), np.zeros(lj.size)]) + 1.0
        mat = csr_matrix((w, (rows, cols)), shape=(a + b, a + b))
        r, c = min_weight_full_bipartite_matching(mat)
        real = (r < a) & (c < b)
        fi.append(uf[r[real]])
        tj.append(ut[c[real]])
    fi_all, tj_all = np.concatenate(fi), np.concatenate(tj)
    order = np.argsort(fi_all, kind="stable")
    return fi_all[order], tj_all[order]


def match_atoms(
    found_A: Any,
    truth_A: Any,
    cutoff_A: float = 0.75,
    remove_offset: bool = False,
    max_iter: int = 100,
    tol_A: float = 1e-6,
) -> Match:
    """Optimal one-to-one matching of found atoms (n, 3) to true atoms (m, 3), Å.

    Pairs farther apart than `cutoff_A` are never matched. Among all admissible
    matchings the one with the most pairs is chosen, and among those the one with the
    smallest total distance (exact: scipy's sparse Jonker-Volgenant solver on each
    non-trivial connected component of the candidate graph).

    With `remove_offset`, the mean ``found - truth`` of the matched pairs is subtracted
    from the found atoms and the matching repeated until the pairs no longer change or
    the offset moves by less than `tol_A` (at most `max_iter` re-matchings), as the AET
    pipeline does. Returned deviations are then about that offset (their mean is zero).
    """
    found = as_points(found_A, "found_A")
    truth = as_points(truth_A, "truth_A")
    cutoff_A = _check_cutoff(cutoff_A)
    n, m = found.shape[0], truth.shape[0]

    offset = np.zeros(3)
    fi, tj = _one_to_one(*_candidate_pairs(found, truth, cutoff_A), n, m, cutoff_A)
    n_iter, converged = 0, True
    if remove_offset:
        converged = False
        while n_iter < max_iter and fi.size:
            n_iter += 1
            new = np.mean(found[fi] - truth[tj], axis=0)
            fi2, tj2 = _one_to_one(*_candidate_pairs(found - new, truth, cutoff_A), n, m, cutoff_A)
            same = fi2.size == fi.size and np.array_equal(fi2, fi) and np.array_equal(tj2, tj)
            small = np.max(np.abs(new - offset)) <= tol_A
            offset, fi, tj = new, fi2, tj2
            if same or small:
                converged = True
                break
        if fi.size == 0:
            converged = True

    dev = found[fi] - offset - truth[tj]
    unmatched_found = np.setdiff1d(np.arange(n), fi, assume_unique=True)
    unmatched_truth = np.setdiff1d(np.arange(m), tj, assume_unique=True)
    return Match(
        found_index=fi,
        truth_index=tj,
        deviation_A=dev,
        offset_A=offset,
        unmatched_found=unmatched_found,
        unmatched_truth=unmatched_truth,
        n_found=n,
        n_truth=m,
        cutoff_A=cutoff_A,
        n_iter=n_iter,
        converged=converged,
    )


# --------------------------------------------------------------------------- RMSD etc.


def rmsd_pm(deviation_A: Any) -> float:
    """Plain RMSD in pm: sqrt(mean_k |d_k|²) for deviations (k, 3) in Å."""
    d = _as_deviations(deviation_A)
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))) * PM_PER_A)


def rmsd_per_axis_var_pm(deviation_A: Any, ddof: int = 1) -> float:
    """AET-style RMSD in pm: sqrt(Σ_{x,y,z} var(d_axis)) for deviations (k, 3) in Å.

    The variance is about the mean, so a constant offset does not count. Default
    ``ddof=1`` (sample variance, N - 1) because that is what MATLAB's ``std(dif,0,2)``
    in the AET scripts computes, so numbers compare with the published ones; use
    ``ddof=0`` for the population form (it differs by sqrt((k-1)/k)).
    """
    d = _as_deviations(deviation_A)
    if d.shape[0] <= ddof:
        raise ValueError(f"need more than {ddof} matched pair(s) for variance with ddof={ddof}")
    return float(np.sqrt(np.sum(np.var(d, axis=0, ddof=ddof))) * PM_PER_A)


def deviation_distribution(
    deviation_A: Any,
    bin_width_pm: float = 1.0,
    max_pm: float | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> dict[str, Any]:
    """Histogram and percentiles of |deviation| (pm) for deviations (k, 3) in Å.

    Bins start at 0 with width `bin_width_pm` and cover `max_pm` (default: the largest
    deviation). Returns plain lists: ``bin_edges_pm``, ``counts``, ``percentiles_pm``
    ({"p50": ...}), ``mean_pm``, ``max_pm``.
    """
    dist = np.linalg.norm(_as_deviations(deviation_A), axis=1) * PM_PER_A
    if not bin_width_pm > 0:
        raise ValueError(f"bin_width_pm must be positive, got {bin_width_pm}")
    top = max(float(dist.max()), float(max_pm or 0.0))
    n_bins = max(1, math.ceil(top / bin_width_pm - 1e-9))
    edges = np.arange(n_bins + 1) * float(bin_width_pm)
    if edges[-1] < top:
        edges = np.append(edges, edges[-1] + bin_width_pm)
    counts, _ = np.histogram(dist, bins=edges)
    pct = np.percentile(dist, list(percentiles))
    return {
        "bin_edges_pm": edges.tolist(),
        "counts": counts.astype(int).tolist(),
        "percentiles_pm": {f"p{p:g}": float(v) for p, v in zip(percentiles, pct, strict=True)},
        "mean_pm": float(dist.mean()),
        "max_pm": float(dist.max()),
    }


def _species_array(s: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(s)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match its positions, got {a.shape}")
    return a


def _labels_as_str(values: np.ndarray) -> np.ndarray:
    """Species as strings; integral floats print as ints ('1' not '1.0')."""
    if values.dtype.kind == "f" and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    return values.astype(str)


def species_confusion(truth_species: Any, found_species: Any, match: Match) -> dict[str, Any]:
    """Confusion matrix over matched pairs: rows = truth species, columns = found species.

    Species may be symbols or numbers (compared as strings). Returns ``labels`` (sorted;
    numerically if all are numbers), ``matrix`` (list of lists of counts) and
    ``accuracy`` (fraction of matched pairs with the same species; None if none matched).
    """
    ts = _labels_as_str(_species_array(truth_species, match.n_truth, "truth_species"))
    fs = _labels_as_str(_species_array(found_species, match.n_found, "found_species"))
    labels = np.union1d(ts, fs)
    try:
        labels = labels[np.argsort(labels.astype(np.float64), kind="stable")]
    except ValueError:
        pass  # not all numeric: keep lexical order
    lookup = {lab: k for k, lab in enumerate(labels.tolist())}
    index = np.vectorize(lookup.__getitem__, otypes=[np.int64])
    L = labels.size
    t_idx = index(ts[match.truth_index]) if match.n_matched else np.empty(0, np.int64)
    f_idx = index(fs[match.found_index]) if match.n_matched else np.empty(0, np.int64)
    mat = np.bincount(t_idx * L + f_idx, minlength=L * L).reshape(L, L)
    acc = float(np.trace(mat) / match.n_matched) if match.n_matched else None
    return {
        "labels": labels.tolist(),
        "matrix": mat.astype(int).tolist(),
        "rows": "truth",
        "columns": "found",
        "accuracy": acc,
    }


# --------------------------------------------------------------------------- AET scoring


def aet_score(
    found_A: Any,
    truth_A: Any,
    cutoff_A: float = 0.9,
    tol_A: float = 1e-4,
    max_iter: int = 1000,
) -> dict[str, Any]:
    """The published AET pipeline's self-scoring, reproduced faithfully.

    Steps (their MATLAB, vectorised): centre both sets on their own means; repeat
    { pair every traced atom with its nearest true atom (after the current shift) and keep
    pairs with distance <= `cutoff_A`; shift += mean difference } while the L1 norm of
    the update exceeds `tol_A` (1e-4 Å in their scripts); RMSD = sqrt(Σ_{x,y,z} var) of
    the differences of the last matching, with sample variance (N - 1) as MATLAB's ``std``.

    Unlike :func:`match_atoms`, this is nearest-neighbour matching: a true atom can be
    claimed by several traced atoms and all of them count, so ``n_matched`` can exceed
    the number of distinct true atoms and ``matched_fraction`` (their "accuracy",
    n_matched / n_truth) can exceed 1. Ties for nearest go to an arbitrary candidate
    (MATLAB takes the lowest index).

    Returns a JSON-ready dict: rmsd_pm, n_matched, n_truth_matched (distinct), n_found,
    n_truth, matched_fraction, offset_A (mean found - truth after centring), n_iter,
    converged, cutoff_A.
    """
    found = as_points(found_A, "found_A")
    truth = as_points(truth_A, "truth_A")
    cutoff_A = _check_cutoff(cutoff_A)
    f = found - found.mean(axis=0)
    t = truth - truth.mean(axis=0)
    tree = cKDTree(t)
    shift = np.zeros(3)  # their `shift`: truth - shift ≈ found
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        dist, idx = tree.query(f + shift, k=1, distance_upper_bound=cutoff_A * (1 + 1e-9))
        ok = dist <= cutoff_A
        if not ok.any():
            raise ValueError(f"aet_score: no traced atom lies within {cutoff_A} Å of a true atom")
        dif = t[idx[ok]] - shift - f[ok]
        step = dif.mean(axis=0)
        shift = shift + step
        if np.sum(np.abs(step)) <= tol_A:
            converged = True
            break
    n_ok = int(ok.sum())
    rmsd = float(np.sqrt(np.sum(np.var(dif, axis=0, ddof=1))) * PM_PER_A) if n_ok > 1 else None
    return {
        "rmsd_pm": rmsd,
        "n_matched": n_ok,
        "n_truth_matched": int(np.unique(idx[ok]).size),
        "n_found": int(found.shape[0]),
        "n_truth": int(truth.shape[0]),
        "matched_fraction": n_ok / truth.shape[0],
        "offset_A": (-shift).tolist(),
        "n_iter": n_iter,
        "converged": converged,
        "cutoff_A": cutoff_A,
        "matching": "nearest-neighbour (not one-to-one)",
        "variance": "sample (N-1)",
    }


# --------------------------------------------------------------------------- R-factor


class RFactor(NamedTuple):
    per_image: np.ndarray  # (m,)
    mean: float


def r_factor_series(observed: Any, calculated: Any) -> RFactor:
    """R-factor (LOT eq. 11) of each image of two (m, nu, nv) tilt series, and its mean."""
    obs = np.asarray(observed)
    cal = np.asarray(calculated)
    if obs.ndim != 3 or cal.ndim != 3 or obs.shape != cal.shape:
        raise ValueError(
            "observed and calculated must both have shape (m, nu, nv) and agree; got "
            f"observed {obs.shape} and calculated {cal.shape}"
        )
    if obs.size == 0:
        raise ValueError(f"empty tilt series: shape {obs.shape}")
    for name, a in (("observed", obs), ("calculated", cal)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN/inf")
    zero = np.flatnonzero(np.abs(obs).sum(axis=(1, 2)) == 0)
    if zero.size:
        raise ValueError(f"R-factor undefined: observed image(s) {zero.tolist()} are all zero")
    from atomjax.loss import r_factor  # lazy: keeps jax out of the CLI start-up

    per = np.asarray(r_factor(obs, cal), dtype=np.float64)
    return RFactor(per_image=per, mean=float(per.mean()))


class R1Factor(NamedTuple):
    r1: float  # the mean over the images
    scale: float  # k
    per_image: np.ndarray  # (m,), each at the series' k


def _l1_scale(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    """The k ≥ 0 minimising Σ w·|a − k·b| (a, b, w ≥ 0): the median of a / b weighted
    by w·b (exact: the sum is convex and piecewise linear in k)."""
    keep = (b > 0) & (w > 0)
    if not keep.any():
        return 0.0
    ratio, weight = a[keep] / b[keep], (w * b)[keep]
    order = np.argsort(ratio)
    cum = np.cumsum(weight[order])
    return float(ratio[order][np.searchsorted(cum, 0.5 * cum[-1])])


def r1_factor_series(observed: Any, calculated: Any) -> R1Factor:
    """The R1 factor the Materials Data Bank checks a model against its projections with:
    each image's R1_i = Σ | |obs| − k·|calc| | / Σ |obs| over its pixels, and their mean,
    with one scale k for the series fitted to minimise that mean (a weighted median,
    exact). Unlike the R-factor (LOT eq. 11), R1 does not depend on the model's scale."""
    obs = np.abs(np.asarray(observed, dtype=np.float64))
    cal = np.abs(np.asarray(calculated, dtype=np.float64))
    r_factor_series(obs, cal)  # the same checks: shapes, finite, no all-zero image
    total = obs.sum(axis=(1, 2))
    w = np.broadcast_to(1.0 / total[:, None, None], obs.shape)
    k = _l1_scale(obs.ravel(), cal.ravel(), w.ravel())
    per = np.abs(obs - k * cal).sum(axis=(1, 2)) / total
    return R1Factor(float(per.mean()), k, per)


# --------------------------------------------------------------------------- evaluate


def evaluate(
    found: Any,
    truth: Any,
    found_species: Any = None,
    truth_species: Any = None,
    cutoff_A: float = 0.75,
    remove_offset: bool = False,
    aet_cutoff_A: float = 0.9,
    bin_width_pm: float = 1.0,
) -> dict[str, Any]:
    """All accuracy metrics of found (n, 3) vs true (m, 3) atoms (Å) as a JSON-ready dict.

    One-to-one matching at `cutoff_A` (optionally removing the mean offset) gives
    n_matched, tp_rate, fp_rate, rmsd_pm (plain), rmsd_per_axis_var_pm (sample variance),
    offset_A, the deviation histogram/percentiles and, when both species arrays are
    given, the species confusion matrix. ``aet_score`` holds the published pipeline's
    nearest-neighbour score at `aet_cutoff_A`. Undefined values are None.
    """
    if (found_species is None) != (truth_species is None):
        raise ValueError("give both found_species and truth_species, or neither")
    match = match_atoms(found, truth, cutoff_A=cutoff_A, remove_offset=remove_offset)
    k = match.n_matched
    out: dict[str, Any] = {
        "cutoff_A": match.cutoff_A,
        "remove_offset": bool(remove_offset),
        "n_found": match.n_found,
        "n_truth": match.n_truth,
        "n_matched": k,
        "n_false_positive": int(match.unmatched_found.size),
        "n_missed": int(match.unmatched_truth.size),
        "tp_rate": match.tp_rate,
        "fp_rate": match.fp_rate,
        "rmsd_pm": rmsd_pm(match.deviation_A) if k else None,
        "rmsd_per_axis_var_pm": rmsd_per_axis_var_pm(match.deviation_A) if k > 1 else None,
        "variance": "sample (N-1), as MATLAB std in the AET scripts",
        "mean_deviation_pm": (match.deviation_pm.mean(axis=0).tolist() if k else None),
        "offset_A": match.offset_A.tolist(),
        "offset_iterations": match.n_iter,
        "offset_converged": match.converged,
        "deviation_histogram": (
            deviation_distribution(
                match.deviation_A, bin_width_pm=bin_width_pm, max_pm=cutoff_A * PM_PER_A
            )
            if k
            else None
        ),
        "confusion": (
            species_confusion(truth_species, found_species, match)
            if found_species is not None
            else None
        ),
    }
    try:
        out["aet_score"] = aet_score(found, truth, cutoff_A=aet_cutoff_A)
    except ValueError as e:  # e.g. nothing within the AET cut-off
        out["aet_score"] = {"error": str(e)}
    return out


# --------------------------------------------------------------------------- files + CLI

_TEXT_SUFFIXES = {".txt", ".dat", ".csv"}


def _read_text_atoms(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray | None]:
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        s = line.split("%", 1)[0].split("#", 1)[0].replace(",", " ").split()
        if not s:
            continue
        if len(s) not in (3, 4):
            raise ValueError(
                f"{path}:{lineno}: expected 3 columns (x y z) or 4 (type x y z), "
                f"got {len(s)}: {line.strip()!r}"
            )
        rows.append(s)
    if not rows:
        raise ValueError(f"{path}: no atoms found (only comments or blank lines)")
    ncol = {len(r) for r in rows}
    if len(ncol) != 1:
        raise ValueError(f"{path}: mixed column counts {sorted(ncol)}; use one format")
    arr = np.array(rows, dtype=str)
    try:
        pos = arr[:, -3:].astype(np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: coordinates are not numbers ({e})") from None
    species = arr[:, 0] if arr.shape[1] == 4 else None
    return pos, species


def read_atoms(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions (n, 3) in Å and species (n,) strings or None, from an atom file.

    Species are None when the file has none, or only ase's dummy symbol "X".

    .txt/.dat/.csv: whitespace columns ``x y z`` or ``type x y z``; text after ``%`` or
    ``#`` is a comment (the aSi ``ground_truth.txt`` format). Anything else goes through
    ``ase.io.read`` (extxyz, xyz, cif, ...), falling back to the text reader.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"atom file not found: {p}")
    if p.suffix.lower() in _TEXT_SUFFIXES:
        return _read_text_atoms(p)
    try:
        import ase.io

        atoms = ase.io.read(p)
    except Exception as ase_err:  # unknown format: try plain columns
        try:
            return _read_text_atoms(p)
        except ValueError as txt_err:
            raise ValueError(
                f"cannot read {p}: ase.io.read failed ({ase_err}); as text: {txt_err}"
            ) from None
    symbols = np.asarray(atoms.get_chemical_symbols(), dtype=str)
    # "X" is ase's dummy element: atoms written without a species (unclassified)
    species = None if symbols.size and np.all(symbols == "X") else symbols
    return np.asarray(atoms.get_positions(), dtype=np.float64), species


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def format_table(result: dict[str, Any]) -> str:
    """A short human-readable summary of an :func:`evaluate` result."""
    r = result
    aet = r.get("aet_score", {})
    lines = [
        f"found atoms            {r['n_found']}",
        f"true atoms             {r['n_truth']}",
        f"{'matched (<= ' + format(r['cutoff_A'], 'g') + ' Å)':<23}{r['n_matched']}",
        f"TP rate                {_fmt(r['tp_rate'], '.4f')}",
        f"FP rate                {_fmt(r['fp_rate'], '.4f')}",
        f"RMSD (plain)           {_fmt(r['rmsd_pm'])} pm",
        f"RMSD (per-axis var)    {_fmt(r['rmsd_per_axis_var_pm'])} pm",
        "offset removed         " + " ".join(f"{v:+.4f}" for v in r["offset_A"]) + " Å",
    ]
    if "error" in aet:
        lines.append(f"AET score              {aet['error']}")
    else:
        lines.append(
            f"AET score (NN, {aet['cutoff_A']:g} Å)  {aet['n_matched']} traced matched "
            f"({aet['n_truth_matched']} distinct true), RMSD {_fmt(aet['rmsd_pm'])} pm"
        )
    if r.get("confusion"):
        c = r["confusion"]
        lines.append(f"species accuracy       {_fmt(c['accuracy'], '.4f')}  labels {c['labels']}")
    return "\n".join(lines)
