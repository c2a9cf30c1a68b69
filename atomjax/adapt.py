"""One Gaussian per atom: merge close Gaussians, prune faint ones, add missing ones.

Host-side (numpy + scipy) step run between jit-compiled fitting phases. Every
operation is vectorised with :class:`scipy.spatial.cKDTree` and numpy scatter
operations; the only Python loops run over a few *rounds*, never over atoms.

Conventions: an atom is an isotropic Gaussian with position x_i (Å), width B_i
(Å²) and amplitude H_i; its projection is H_i·exp(−r²/B_i) and its integrated
intensity is π·H_i·B_i, so "intensity" below means I_i = H_i·B_i (π dropped).
"Within d" and "closer than d" both mean a distance strictly less than d.

Merge rule (:func:`merge_close`)
--------------------------------
1. Seeds: greedy non-maximum suppression (:func:`suppress_close`) with score
   I_i = H_i·B_i, the conserved, physically meaningful quantity (a narrow noise
   spike with a large H but a tiny B does not outrank a real atom). Ties go to the
   lower index.
2. Every non-seed is absorbed into its nearest seed (ties: lower distance, then
   lower seed index). NMS guarantees each non-seed has a seed within d; this is
   checked.
3. Cluster values, with weights w_i = max(H_i, 0) (equal weights if a cluster's
   weights sum to 0): centre = Σ w_i x_i / Σ w_i, width B = Σ w_i B_i / Σ w_i, and
   amplitude "sum": H = Σ H_i B_i / B, so the integrated intensity is conserved
   (for non-negative H this is H = Σ H_i); "mean": H = mean H_i.
4. A merged atom inherits the optimizer state of its seed (``source``); merged
   atoms are ordered by seed index.
5. Merged centres may again be closer than d, so rounds repeat until no pair is;
   each round with a close pair removes at least one atom, so this terminates, and
   ``source`` is composed across rounds to index the original input. For
   non-negative H the "sum" rule is associative: the result of several rounds is
   the H-weighted mean position/width and Σ H of all original members.

A greedy NMS is inherently sequential along chains of monotonically ranked
neighbours (e.g. equal amplitudes on a line, ranked by index): the round-based
version then needs about (chain length)/2 rounds. Random or physical inputs settle
in a handful of rounds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "AdaptConfig",
    "AdaptResult",
    "adapt_atoms",
    "add_missing",
    "choose_candidates",
    "bucket_capacity",
    "merge_close",
    "prune_faint",
    "suppress_close",
]

AMPLITUDE_RULES = ("sum", "mean")


RESIDUALS = ("signed", "positive")
DETECTION_RULES = ("likelihood", "threshold")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Settings of :func:`adapt_atoms`."""

    min_distance_A: float = 1.8  # no two atoms closer than this after merge
    # which atoms stay and which candidates are added (atomjax.detection): "likelihood"
    # (an atom's Δχ² = z² ≥ significance_z², None: the information criterion BIC, 5 ln N
    # for 5 parameters an atom and N pixels) or "threshold" (the fractions and add_sigma)
    rule: str = "likelihood"
    significance_z: float | None = None
    candidate_sigma: float = 2.0  # likelihood: test residual peaks this many robust σ up
    min_intensity_fraction: float = 0.1  # likelihood: and need H·B ≥ this × the median
    # likelihood: atoms wider than this × the median width are tested as pairs (None: never)
    split_width_ratio: float | None = 1.3
    amplitude_rule: str = "sum"  # "sum": Σ H_i B_i conserved; "mean": mean H (gaussian-atoms)
    prune_fraction: float = 0.1  # prune when H·B < prune_fraction × reference
    prune_percentile: float = 90.0  # reference = this percentile of H·B over the atoms
    add: bool = True
    add_fraction: float = 0.5  # add a candidate scoring ≥ add_fraction × median H of the atoms
    max_add_fraction: float = 0.2  # add at most this fraction of the atom count (at least 1)
    # likelihood: prune at most this fraction of the atoms a step, the least supported
    # first (None: no cap). Early on the residual, hence the noise the test measures
    # against, is mostly misfit: on a 1,442-atom Pt decahedron the first step would drop
    # 59 % of the true atoms (z 7.4 against z* 7.7), and adding back is capped too.
    max_prune_fraction: float | None = 0.2
    max_add_distance_A: float | None = 4.0  # ignore candidates farther from every atom (vacuum)
    # the residual searched for missing atoms: "signed" (noise averages out over the
    # tilts) or "positive" (clipped at 0 first: blind to nearby over-fitted atoms, but
    # shot noise then adds up to a bias that passes for atoms in noisy data)
    residual: str = "signed"
    # ... and must exceed this many robust standard deviations of its back-projection
    add_sigma: float = 5.0
    # divide the back-projected residual by the fraction of images that see each voxel
    # (a film past the crop: atoms only the high tilts see can still reach the cut; where
    # few views look, their streaks can pass too)
    coverage: bool = False

    def __post_init__(self):
        _check_positive_finite("min_distance_A", self.min_distance_A)
        if self.rule not in DETECTION_RULES:
            raise ValueError(f"rule must be one of {DETECTION_RULES}, got {self.rule!r}")
        if self.significance_z is not None:
            _check_nonnegative_finite("significance_z", self.significance_z)
        _check_nonnegative_finite("candidate_sigma", self.candidate_sigma)
        _check_fraction("min_intensity_fraction", self.min_intensity_fraction)
        if self.split_width_ratio is not None:
            _check_positive_finite("split_width_ratio", self.split_width_ratio)
        if self.amplitude_rule not in AMPLITUDE_RULES:
            raise ValueError(
                f"amplitude_rule must be one of {AMPLITUDE_RULES}, got {self.amplitude_rule!r}"
            )
        _check_fraction("prune_fraction", self.prune_fraction)
        _check_percentile(self.prune_percentile)
        if not isinstance(self.add, (bool, np.bool_)):
            raise ValueError(f"add must be a bool, got {self.add!r}")
        _check_nonnegative_finite("add_fraction", self.add_fraction)
        _check_fraction("max_add_fraction", self.max_add_fraction)
        if self.max_prune_fraction is not None:
            _check_fraction("max_prune_fraction", self.max_prune_fraction)
        if self.max_add_distance_A is not None:
            _check_positive_finite("max_add_distance_A", self.max_add_distance_A)
        _check_nonnegative_finite("add_sigma", self.add_sigma)
        if not isinstance(self.coverage, (bool, np.bool_)):
            raise ValueError(f"coverage must be a bool, got {self.coverage!r}")
        if self.residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {self.residual!r}")


class AdaptResult(NamedTuple):
    """Atoms after :func:`adapt_atoms`, with bookkeeping.

    ``source[k]`` is the index into the *input* arrays of the atom whose optimizer
    state atom k inherits (its merge seed, or itself); -1 for newly added atoms.
    """

    positions_A: np.ndarray  # (n, 3)
    widths_A2: np.ndarray  # (n,)
    amplitudes: np.ndarray  # (n,)
    source: np.ndarray  # (n,) int64
    n_merged: int  # input atoms absorbed into another
    n_pruned: int
    n_added: int


# ----------------------------------------------------------------------------
# validation


def _is_real_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _check_positive_finite(name, value):
    if not _is_real_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_nonnegative_finite(name, value):
    if not _is_real_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")


def _check_fraction(name, value):
    if not _is_real_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _check_percentile(value):
    if not _is_real_number(value) or not 0.0 <= value <= 100.0:
        raise ValueError(f"prune_percentile must lie in [0, 100], got {value!r}")


def _positions(name, array) -> np.ndarray:
    try:
        arr = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array of shape (n, 3): {err}") from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _vector(name, array, n, positive=False) -> np.ndarray:
    try:
        arr = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array of shape ({n},): {err}") from None
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name} must be positive; minimum is {arr.min()!r}")
    return arr


def _atoms(positions_A, widths_A2, amplitudes):
    pos = _positions("positions_A", positions_A)
    n = pos.shape[0]
    widths = _vector("widths_A2", widths_A2, n, positive=True)
    amps = _vector("amplitudes", amplitudes, n)
    return pos, widths, amps


def _count(name, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------
# building blocks


def _close_pairs(points: np.ndarray, min_distance_A: float):
    """Pairs (i, j), i < j, with |x_i − x_j| < d (strictly), and their squared distances."""
    if points.shape[0] < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    pairs = cKDTree(points).query_pairs(r=min_distance_A, output_type="ndarray")
    i = pairs[:, 0].astype(np.int64)
    j = pairs[:, 1].astype(np.int64)
    d2 = np.sum((points[i] - points[j]) ** 2, axis=1)
    close = d2 < min_distance_A * min_distance_A
    return i[close], j[close], d2[close]


def _priority_rank(scores: np.ndarray) -> np.ndarray:
    """rank[i] = position of i when sorted by descending score, ties by ascending index."""
    order = np.lexsort((np.arange(scores.shape[0]), -scores))
    rank = np.empty(scores.shape[0], dtype=np.int64)
    rank[order] = np.arange(scores.shape[0])
    return rank


def _nms(n: int, rank: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Boolean keep mask of greedy NMS on the graph with edges (i, j), by ascending rank."""
    # orient every edge from the higher-priority end a to the lower-priority end b
    swap = rank[i] > rank[j]
    a = np.where(swap, j, i)
    b = np.where(swap, i, j)
    kept = np.zeros(n, dtype=bool)
    decided = np.zeros(n, dtype=bool)
    while True:
        # a node is blocked while an undecided neighbour outranks it
        blocked = np.zeros(n, dtype=bool)
        blocked[b] = True
        new = ~decided & ~blocked
        kept |= new
        decided |= new
        # neighbours of newly kept nodes are suppressed (they are all lower-ranked)
        decided[b[new[a]]] = True
        # the top-ranked undecided node is never blocked, so every round decides one
        live = ~decided[a] & ~decided[b]
        a, b = a[live], b[live]
        if a.size == 0:
            break
    kept |= ~decided  # nodes that never had a live edge left
    return kept


def suppress_close(points_A, scores, min_distance_A) -> np.ndarray:
    """Indices (ascending) of the points kept by greedy non-maximum suppression.

    Greedy by descending score, ties by lower index: a point is kept unless a kept
    point with higher priority lies closer than ``min_distance_A``. Computed in
    rounds: each round keeps every undecided point that outranks all its undecided
    neighbours and suppresses their neighbours; this equals the greedy result.
    """
    pts = _positions("points_A", points_A)
    sc = _vector("scores", scores, pts.shape[0])
    _check_positive_finite("min_distance_A", min_distance_A)
    i, j, _ = _close_pairs(pts, float(min_distance_A))
    keep = _nms(pts.shape[0], _priority_rank(sc), i, j)
    return np.flatnonzero(keep).astype(np.int64)


def _merge_round(pos, widths, amps, min_distance_A, amplitude_rule):
    """One merge round. Returns (pos, widths, amps, source) or None when nothing is close."""
    n = pos.shape[0]
    i, j, d2 = _close_pairs(pos, min_distance_A)
    if i.size == 0:
        return None
    keep = _nms(n, _priority_rank(amps * widths), i, j)
    # candidate (member, seed) links: pairs with exactly one seed end
    ik, jk = keep[i], keep[j]
    link = ik != jk
    member = np.where(jk[link], i[link], j[link])
    seed = np.where(jk[link], j[link], i[link])
    dist2 = d2[link]
    # nearest seed per member; ties by lower seed index
    order = np.lexsort((seed, dist2, member))
    member, seed = member[order], seed[order]
    first = np.ones(member.shape[0], dtype=bool)
    first[1:] = member[1:] != member[:-1]
    label = np.arange(n, dtype=np.int64)
    label[member[first]] = seed[first]
    orphans = ~keep & (label == np.arange(n))
    if orphans.any():
        raise RuntimeError(f"{int(orphans.sum())} non-seed atoms have no seed within range")

    seeds = np.flatnonzero(keep)  # ascending: output order = seed index order
    cluster = np.full(n, -1, dtype=np.int64)
    cluster[seeds] = np.arange(seeds.size)
    c = cluster[label]
    m = seeds.size

    w = np.maximum(amps, 0.0)
    wsum = np.bincount(c, weights=w, minlength=m)
    flat = wsum <= 0
    if flat.any():  # clusters without positive weight: plain means
        w = np.where(flat[c], 1.0, w)
        wsum = np.bincount(c, weights=w, minlength=m)
    new_pos = np.stack(
        [np.bincount(c, weights=w * pos[:, k], minlength=m) for k in range(3)], axis=1
    )
    new_pos /= wsum[:, None]
    new_widths = np.bincount(c, weights=w * widths, minlength=m) / wsum
    if amplitude_rule == "sum":
        new_amps = np.bincount(c, weights=amps * widths, minlength=m) / new_widths
    else:
        new_amps = np.bincount(c, weights=amps, minlength=m) / np.bincount(c, minlength=m)
    return new_pos, new_widths, new_amps, seeds


def merge_close(positions_A, widths_A2, amplitudes, min_distance_A, amplitude_rule="sum"):
    """Merge Gaussians closer than ``min_distance_A`` (see the module docstring).

    Returns ``(positions_A, widths_A2, amplitudes, source)``; ``source`` (int64)
    indexes the input atom (the seed) whose optimizer state each merged atom
    inherits, composed across rounds. Afterwards no two atoms are closer than
    ``min_distance_A``.
    """
    pos, widths, amps = _atoms(positions_A, widths_A2, amplitudes)
    _check_positive_finite("min_distance_A", min_distance_A)
    if amplitude_rule not in AMPLITUDE_RULES:
        raise ValueError(f"amplitude_rule must be one of {AMPLITUDE_RULES}, got {amplitude_rule!r}")
    d = float(min_distance_A)
    source = np.arange(pos.shape[0], dtype=np.int64)
    while True:
        step = _merge_round(pos, widths, amps, d, amplitude_rule)
        if step is None:
            break
        pos, widths, amps, seeds = step
        source = source[seeds]
    return pos, widths, amps, source


def prune_faint(widths_A2, amplitudes, fraction, percentile) -> np.ndarray:
    """Boolean keep mask: keep atom i unless H_i·B_i < fraction × percentile(H·B).

    With ``fraction`` ≤ 1 and a non-negative reference, the brightest atom is
    always kept. Empty input gives an empty mask.
    """
    widths = np.asarray(widths_A2, dtype=np.float64)
    if widths.ndim != 1:
        raise ValueError(f"widths_A2 must have shape (n,), got {widths.shape}")
    widths = _vector("widths_A2", widths, widths.shape[0], positive=True)
    amps = _vector("amplitudes", amplitudes, widths.shape[0])
    _check_fraction("fraction", fraction)
    _check_percentile(percentile)
    if widths.size == 0:
        return np.zeros(0, dtype=bool)
    intensity = amps * widths
    reference = np.percentile(intensity, percentile)
    return intensity >= fraction * reference


def choose_candidates(
    existing_positions_A,
    candidate_positions_A,
    candidate_scores,
    min_distance_A,
    score_threshold,
    max_new,
    max_distance_A=None,
) -> np.ndarray:
    """Indices (k,) of the candidates to add as new atoms, strongest first.

    A candidate qualifies if its score is ≥ ``score_threshold``, no existing atom is
    closer than ``min_distance_A`` and (when ``max_distance_A`` is given and atoms
    exist) some atom lies within ``max_distance_A`` — a particle is connected, and a
    residual peak far out in the vacuum is noise, not a missing atom. Qualifying
    candidates closer than ``min_distance_A`` to each other are thinned by
    :func:`suppress_close`; at most ``max_new`` are returned (ties in score by lower
    candidate index).
    """
    existing = _positions("existing_positions_A", existing_positions_A)
    cand = _positions("candidate_positions_A", candidate_positions_A)
    scores = _vector("candidate_scores", candidate_scores, cand.shape[0])
    _check_positive_finite("min_distance_A", min_distance_A)
    if not _is_real_number(score_threshold) or not math.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold!r}")
    max_new = _count("max_new", max_new)
    d = float(min_distance_A)

    ok = scores >= score_threshold
    if existing.shape[0] and ok.any():
        dist, _ = cKDTree(existing).query(cand[ok], k=1, distance_upper_bound=d)
        ok[np.flatnonzero(ok)[dist < d]] = False
    if max_distance_A is not None and existing.shape[0] and ok.any():
        far = float(max_distance_A)
        dist, _ = cKDTree(existing).query(cand[ok], k=1, distance_upper_bound=far)
        ok[np.flatnonzero(ok)[~(dist <= far)]] = False
    idx = np.flatnonzero(ok)
    if idx.size == 0 or max_new == 0:
        return np.zeros(0, dtype=np.int64)
    pts, sc = cand[idx], scores[idx]
    i, j, _ = _close_pairs(pts, d)
    rank = _priority_rank(sc)
    keep = np.flatnonzero(_nms(idx.size, rank, i, j))
    keep = keep[np.argsort(rank[keep])][:max_new]
    return idx[keep].astype(np.int64)


def add_missing(existing_positions_A, candidate_positions_A, candidate_scores, min_distance_A,
                score_threshold, max_new, max_distance_A=None) -> np.ndarray:  # fmt: skip
    """Positions (k, 3) of the candidates :func:`choose_candidates` picks, strongest first."""
    chosen = choose_candidates(existing_positions_A, candidate_positions_A, candidate_scores,
                               min_distance_A, score_threshold, max_new,
                               max_distance_A)  # fmt: skip
    if chosen.size == 0:
        return np.zeros((0, 3))
    return _positions("candidate_positions_A", candidate_positions_A)[chosen].copy()


def adapt_atoms(
    positions_A,
    widths_A2,
    amplitudes,
    config: AdaptConfig,
    candidates=None,
    new_width_A2=0.5,
    new_amplitude=None,
) -> AdaptResult:
    """Merge, then prune, then add atoms (see :class:`AdaptConfig`).

    ``candidates`` is ``(positions (c, 3), scores (c,))`` or None; scores are in
    amplitude units (compared with H). New atoms get width ``new_width_A2`` and
    amplitude ``new_amplitude``, by default the median H of the atoms after pruning.
    The add threshold is ``add_fraction × median H`` of the atoms after pruning;
    when no atom is left it is ``add_fraction × new_amplitude`` and, if
    ``new_amplitude`` is None too, the reference (and the new amplitude) is the
    highest candidate score. At most ``max(1, floor(max_add_fraction × n))`` atoms
    are added, n = atoms after pruning.
    """
    if not isinstance(config, AdaptConfig):
        raise ValueError(f"config must be an AdaptConfig, got {type(config).__name__}")
    pos, widths, amps = _atoms(positions_A, widths_A2, amplitudes)
    _check_positive_finite("new_width_A2", new_width_A2)
    if new_amplitude is not None and (
        not _is_real_number(new_amplitude) or not math.isfinite(new_amplitude)
    ):
        raise ValueError(f"new_amplitude must be a finite number or None, got {new_amplitude!r}")
    if candidates is not None:
        try:
            cand_pos, cand_scores = candidates
        except (TypeError, ValueError):
            raise ValueError("candidates must be a pair (positions (c, 3), scores (c,))") from None
        cand_pos = _positions("candidate_positions_A", cand_pos)
        cand_scores = _vector("candidate_scores", cand_scores, cand_pos.shape[0])
    n_in = pos.shape[0]

    pos, widths, amps, source = merge_close(
        pos, widths, amps, config.min_distance_A, config.amplitude_rule
    )
    n_merged = n_in - pos.shape[0]

    keep = prune_faint(widths, amps, config.prune_fraction, config.prune_percentile)
    pos, widths, amps, source = pos[keep], widths[keep], amps[keep], source[keep]
    n_pruned = int(keep.size - keep.sum())

    added = np.zeros((0, 3))
    if config.add and candidates is not None and cand_pos.shape[0] > 0:
        n = pos.shape[0]
        if new_amplitude is None:
            new_amplitude = float(np.median(amps)) if n else float(cand_scores.max())
        reference = float(np.median(amps)) if n else float(new_amplitude)
        max_new = max(1, int(math.floor(config.max_add_fraction * n)))
        added = add_missing(
            pos,
            cand_pos,
            cand_scores,
            config.min_distance_A,
            config.add_fraction * reference,
            max_new,
            config.max_add_distance_A,
        )
    k = added.shape[0]
    if k:
        pos = np.concatenate([pos, added])
        widths = np.concatenate([widths, np.full(k, float(new_width_A2))])
        amps = np.concatenate([amps, np.full(k, float(new_amplitude))])
        source = np.concatenate([source, np.full(k, -1, dtype=np.int64)])
    return AdaptResult(
        positions_A=pos,
        widths_A2=widths,
        amplitudes=amps,
        source=source.astype(np.int64),
        n_merged=int(n_merged),
        n_pruned=n_pruned,
        n_added=int(k),
    )


def bucket_capacity(n, minimum=64) -> int:
    """Smallest size ≥ n in the series ceil(minimum·{1, 1.25, 1.5, 1.75}·2^k), k ≥ 0.

    Buffers sized this way grow in steps of at most 25 %, so shapes (and jit
    recompiles) change rarely.
    """
    n = _count("n", n)
    minimum = _count("minimum", minimum)
    if minimum == 0:
        raise ValueError("minimum must be positive")
    k = 0
    while True:
        for quarters in (4, 5, 6, 7):
            size = -(-(minimum * quarters << k) // 4)  # exact integer ceil
            if size >= n:
                return size
        k += 1
