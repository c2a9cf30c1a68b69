"""Tests of atomjax.adapt: merge close Gaussians, prune faint ones, add missing ones."""

import time

import numpy as np
import pytest
from scipy.spatial import cKDTree

from atomjax.adapt import (
    AdaptConfig,
    AdaptResult,
    _merge_round,
    adapt_atoms,
    add_missing,
    bucket_capacity,
    merge_close,
    prune_faint,
    suppress_close,
)

D = 1.8


def greedy_nms(points, scores, d):
    """Slow reference: plain loop, descending score, ties by lower index."""
    order = sorted(range(len(scores)), key=lambda k: (-scores[k], k))
    kept = []
    for k in order:
        if all(np.linalg.norm(points[k] - points[m]) >= d for m in kept):
            kept.append(k)
    return np.array(sorted(kept), dtype=np.int64)


def min_pair_distance(points):
    tree = cKDTree(points)
    dist, _ = tree.query(points, k=2)
    return dist[:, 1].min()


def grid(n_side, spacing):
    r = np.arange(n_side) * spacing
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)


# ----------------------------------------------------------------------------
# suppress_close


@pytest.mark.parametrize("seed", range(6))
def test_suppress_close_equals_greedy_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    pts = rng.uniform(0, 6, (n, 3))
    # few distinct values so that ties (broken by index) are frequent
    scores = rng.integers(0, 4, n).astype(float) if seed % 2 else rng.normal(size=n)
    got = suppress_close(pts, scores, D)
    np.testing.assert_array_equal(got, greedy_nms(pts, scores, D))


def test_suppress_close_ties_by_index_and_chain():
    # equal scores on a line at 0.6 d: greedy by index keeps every other point
    pts = np.zeros((9, 3))
    pts[:, 0] = np.arange(9) * 0.6 * D
    got = suppress_close(pts, np.ones(9), D)
    np.testing.assert_array_equal(got, [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(got, greedy_nms(pts, np.ones(9), D))


def test_suppress_close_distance_is_strict():
    pts = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    np.testing.assert_array_equal(suppress_close(pts, [1.0, 2.0], 1.0), [0, 1])
    np.testing.assert_array_equal(suppress_close(pts, [1.0, 2.0], 1.0 + 1e-9), [1])


def test_suppress_close_empty_and_single():
    assert suppress_close(np.zeros((0, 3)), np.zeros(0), D).shape == (0,)
    np.testing.assert_array_equal(suppress_close(np.zeros((1, 3)), [3.0], D), [0])


# ----------------------------------------------------------------------------
# merge_close


def test_two_close_gaussians_sum_rule():
    pos = np.array([[0.0, 0, 0], [1.0, 0.5, 0]])
    B = np.array([0.5, 0.8])
    H = np.array([1.0, 3.0])
    p, w, h, src = merge_close(pos, B, H, D, "sum")
    assert p.shape == (1, 3)
    np.testing.assert_allclose(p[0], (H[:, None] * pos).sum(0) / H.sum())
    np.testing.assert_allclose(w[0], (H * B).sum() / H.sum())
    np.testing.assert_allclose(h[0] * w[0], (H * B).sum())  # integrated intensity
    np.testing.assert_array_equal(src, [1])  # the brighter (H·B) atom is the seed


def test_two_close_gaussians_mean_rule():
    pos = np.array([[0.0, 0, 0], [1.0, 0.5, 0]])
    B = np.array([0.5, 0.8])
    H = np.array([1.0, 3.0])
    p, w, h, src = merge_close(pos, B, H, D, "mean")
    np.testing.assert_allclose(p[0], (H[:, None] * pos).sum(0) / H.sum())
    np.testing.assert_allclose(w[0], (H * B).sum() / H.sum())
    np.testing.assert_allclose(h[0], 2.0)
    assert src.dtype == np.int64


def test_seed_is_integrated_intensity_not_peak():
    # narrow spike (H large, B tiny) vs broad atom with more intensity
    pos = np.array([[0.0, 0, 0], [0.5, 0, 0]])
    _, _, _, src = merge_close(pos, [0.05, 0.6], [4.0, 1.0], D)
    np.testing.assert_array_equal(src, [1])


def test_member_joins_nearest_seed_ties_to_lower_index():
    # seeds at x = 2 (index 0) and x = 0 (index 2), 2 Å apart; weak members in between
    pos = np.array([[2.0, 0, 0], [0.8, 0, 0], [0.0, 0, 0]])
    B = np.full(3, 0.5)
    H = np.array([1.0, 0.1, 1.0])
    p, _, h, src = merge_close(pos, B, H, D)
    np.testing.assert_array_equal(src, [0, 2])
    np.testing.assert_allclose(h, [1.0, 1.1])  # member 0.8 Å from seed 2, 1.2 Å from seed 0
    np.testing.assert_allclose(p[1], [0.08 / 1.1, 0, 0])
    pos[1, 0] = 1.0  # equidistant: the lower seed index wins
    p, _, h, src = merge_close(pos, B, H, D)
    np.testing.assert_allclose(h, [1.1, 1.0])
    np.testing.assert_allclose(p[0], [2.1 / 1.1, 0, 0])


def test_chain_does_not_collapse():
    n = 21
    pos = np.zeros((n, 3))
    pos[:, 0] = np.arange(n) * 0.6 * D
    B = np.full(n, 0.5)
    H = np.ones(n)
    p, w, h, src = merge_close(pos, B, H, D)
    assert 5 <= p.shape[0] <= n // 2 + 1
    assert min_pair_distance(p) >= D
    # every original atom lies within d of a merged atom; the chain ends are covered
    dist, _ = cKDTree(p).query(pos)
    assert dist.max() < D
    assert p[:, 0].min() < pos[0, 0] + D and p[:, 0].max() > pos[-1, 0] - D
    np.testing.assert_allclose((h * w).sum(), (H * B).sum())
    assert np.all(np.diff(src) > 0)


def test_well_separated_atoms_untouched():
    rng = np.random.default_rng(1)
    pos = grid(4, 2.2) + rng.uniform(-0.1, 0.1, (64, 3))
    B = rng.uniform(0.3, 0.7, 64)
    H = rng.uniform(0.5, 2.0, 64)
    p, w, h, src = merge_close(pos, B, H, D)
    np.testing.assert_array_equal(src, np.arange(64))
    np.testing.assert_array_equal(p, pos)
    np.testing.assert_array_equal(w, B)
    np.testing.assert_array_equal(h, H)


def test_source_composed_across_rounds():
    # Round 1: seeds s1 (index 0) and s2 (index 3) are 2.1 d apart, each absorbs a bright
    # narrow member that pulls its centre towards the other; the centres end up 0.39 d
    # apart, so round 2 merges them with the s2 cluster (more H·B) as the seed.
    x = np.array([0.0, 0.95, 1.15, 2.1]) * D
    pos = np.stack([x, np.zeros(4), np.zeros(4)], axis=1)
    B = np.array([10.0, 0.5, 0.5, 10.0])
    H = np.array([1.0, 9.0, 9.0, 1.2])
    one = _merge_round(pos, B, H, D, "sum")
    np.testing.assert_array_equal(one[3], [0, 3])
    assert min_pair_distance(one[0]) < D  # a second round is needed
    p, w, h, src = merge_close(pos, B, H, D, "sum")
    np.testing.assert_array_equal(src, [3])  # not 1: composed through round 1
    # "sum" with positive H is associative: overall H-weighted means and Σ H
    np.testing.assert_allclose(p[0], (H[:, None] * pos).sum(0) / H.sum())
    np.testing.assert_allclose(w[0], (H * B).sum() / H.sum())
    np.testing.assert_allclose(h[0], H.sum())


@pytest.mark.parametrize("seed", range(4))
def test_merge_random_invariants(seed):
    rng = np.random.default_rng(seed)
    n = 300
    pos = rng.uniform(0, 10, (n, 3))
    B = rng.uniform(0.3, 0.7, n)
    H = rng.uniform(0.2, 2.0, n)
    p, w, h, src = merge_close(pos, B, H, D)
    assert 0 < p.shape[0] < n
    assert min_pair_distance(p) >= D
    assert src.dtype == np.int64
    assert np.all((src >= 0) & (src < n)) and np.unique(src).size == src.size
    np.testing.assert_allclose((h * w).sum(), (H * B).sum())
    np.testing.assert_allclose(h.sum(), H.sum())
    np.testing.assert_allclose((h[:, None] * p).sum(0), (H[:, None] * pos).sum(0))
    assert np.all(w > 0)


def test_merge_nonpositive_amplitudes_stay_finite():
    pos = np.array([[0.0, 0, 0], [0.5, 0, 0], [10.0, 0, 0], [10.4, 0, 0]])
    B = np.array([0.5, 0.5, 0.4, 0.6])
    H = np.array([0.0, 0.0, -1.0, 2.0])
    p, w, h, src = merge_close(pos, B, H, D)
    assert np.all(np.isfinite(p)) and np.all(w > 0)
    np.testing.assert_allclose(p[0], [0.25, 0, 0])  # zero weights: plain mean
    np.testing.assert_allclose(p[1], [10.4, 0, 0])  # negative H gets weight 0
    np.testing.assert_allclose((h * w).sum(), (H * B).sum())


def test_merge_200k_atoms():
    rng = np.random.default_rng(0)
    n = 200_000
    pos = rng.uniform(0, 60, (n, 3))
    B = rng.uniform(0.3, 0.7, n)
    H = rng.uniform(0.5, 1.5, n)
    t0 = time.perf_counter()
    p, w, h, src = merge_close(pos, B, H, D)
    elapsed = time.perf_counter() - t0
    print(f"merge_close: {n} atoms -> {p.shape[0]} in {elapsed:.2f} s")
    assert len(cKDTree(p).query_pairs(D * (1 - 1e-12))) == 0
    assert np.all((src >= 0) & (src < n)) and np.unique(src).size == src.size
    np.testing.assert_allclose((h * w).sum(), (H * B).sum(), rtol=1e-10)
    np.testing.assert_allclose((h[:, None] * p).sum(0), (H[:, None] * pos).sum(0), rtol=1e-10)


# ----------------------------------------------------------------------------
# prune, add


def test_prune_faint():
    B = np.full(11, 0.5)
    H = np.ones(11)
    H[4] = 0.01
    keep = prune_faint(B, H, 0.1, 90.0)
    expected = np.ones(11, bool)
    expected[4] = False
    np.testing.assert_array_equal(keep, expected)
    # a wide, low-peak Gaussian with the same H·B as the others is kept
    B[4], H[4] = 50.0, 0.01
    assert prune_faint(B, H, 0.1, 90.0).all()
    assert prune_faint(np.ones(0), np.ones(0), 0.1, 90.0).shape == (0,)


def test_add_missing_rules():
    existing = grid(3, 3.0)
    cand = np.array(
        [
            [7.5, 7.5, 7.5],  # far, strong: added
            [1.0, 0.0, 0.0],  # 1 Å from an existing atom: not added
            [-4.0, -4.0, -4.0],  # far but under threshold: not added
            [7.5, 7.5, 8.5],  # 1 Å from the first, weaker: suppressed
        ]
    )
    scores = np.array([5.0, 9.0, 0.5, 4.0])
    got = add_missing(existing, cand, scores, D, 1.0, 10)
    np.testing.assert_array_equal(got, cand[:1])
    # the weaker neighbour survives when the strong one is not a candidate
    got = add_missing(existing, cand[1:], scores[1:], D, 1.0, 10)
    np.testing.assert_array_equal(got, cand[3:])


def test_add_missing_max_new_strongest_first():
    cand = np.array([[10.0 * k, 0, 0] for k in range(6)])
    scores = np.array([1.0, 6.0, 3.0, 6.0, 2.0, 5.0])
    got = add_missing(np.zeros((0, 3)), cand, scores, D, 0.0, 3)
    np.testing.assert_array_equal(got, cand[[1, 3, 5]])
    assert add_missing(np.zeros((0, 3)), cand, scores, D, 0.0, 0).shape == (0, 3)


def test_adapt_atoms_adds_missing_atom():
    pos = grid(3, 2.5)
    hole = 13  # centre atom removed
    true = pos[hole].copy()
    pos = np.delete(pos, hole, axis=0)
    n = pos.shape[0]
    B = np.full(n, 0.5)
    H = np.linspace(0.8, 1.2, n)
    cand = np.array([true + 0.1, pos[0] + 0.3, [20.0, 20, 20]])
    scores = np.array([1.0, 5.0, 0.3])  # near-existing strong one and faint far one rejected
    res = adapt_atoms(pos, B, H, AdaptConfig(), candidates=(cand, scores), new_width_A2=0.7)
    assert isinstance(res, AdaptResult)
    assert (res.n_merged, res.n_pruned, res.n_added) == (0, 0, 1)
    np.testing.assert_allclose(res.positions_A[-1], true + 0.1)
    assert res.widths_A2[-1] == 0.7
    np.testing.assert_allclose(res.amplitudes[-1], np.median(H))
    np.testing.assert_array_equal(res.source, np.r_[np.arange(n), -1])
    assert res.source.dtype == np.int64


def test_adapt_atoms_max_add_fraction():
    pos = grid(2, 3.0)  # 8 atoms
    cand = np.array([[20.0 + 5 * k, 0, 0] for k in range(10)])
    scores = np.arange(10.0) + 1
    cfg = AdaptConfig(max_add_fraction=0.25, max_add_distance_A=None)
    res = adapt_atoms(pos, np.full(8, 0.5), np.ones(8), cfg, candidates=(cand, scores))
    assert res.n_added == 2
    np.testing.assert_array_equal(res.positions_A[8:], cand[[9, 8]])
    # far out in the vacuum (> max_add_distance_A from every atom): nothing is added
    res = adapt_atoms(pos, np.full(8, 0.5), np.ones(8), AdaptConfig(), candidates=(cand, scores))
    assert res.n_added == 0
    cfg = AdaptConfig(max_add_fraction=0.0, max_add_distance_A=None)  # still at least one
    res = adapt_atoms(pos, np.full(8, 0.5), np.ones(8), cfg, candidates=(cand, scores))
    assert res.n_added == 1
    res = adapt_atoms(
        pos, np.full(8, 0.5), np.ones(8), AdaptConfig(add=False), candidates=(cand, scores)
    )
    assert res.n_added == 0 and res.positions_A.shape == (8, 3)


def test_adapt_atoms_merge_prune_bookkeeping():
    pos = np.concatenate([grid(3, 3.0), [[0.5, 0, 0], [3.0, 3.0, 0.4]]])
    n = pos.shape[0]
    B = np.full(n, 0.5)
    H = np.ones(n)
    H[n - 2] = 0.5  # merged into atom 0
    H[n - 1] = 0.4  # merged into atom 12 (at [3, 3, 0])
    H[5] = 0.001  # pruned
    cfg = AdaptConfig(amplitude_rule="sum")
    res = adapt_atoms(pos, B, H, cfg)
    assert (res.n_merged, res.n_pruned, res.n_added) == (2, 1, 0)
    expected = np.delete(np.arange(27), 5)
    np.testing.assert_array_equal(res.source, expected)
    np.testing.assert_allclose(res.amplitudes[0], 1.5)
    np.testing.assert_allclose(res.positions_A[0], [0.5 * 0.5 / 1.5, 0, 0])


def test_adapt_atoms_without_atoms():
    cand = np.array([[0.0, 0, 0], [5.0, 0, 0]])
    scores = np.array([1.0, 3.0])
    empty = (np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    res = adapt_atoms(*empty, AdaptConfig(), candidates=(cand, scores), new_amplitude=2.0)
    assert res.n_added == 1  # at least one, threshold 0.5 × 2.0
    np.testing.assert_array_equal(res.positions_A, cand[1:])
    np.testing.assert_array_equal(res.amplitudes, [2.0])
    np.testing.assert_array_equal(res.source, [-1])
    res = adapt_atoms(*empty, AdaptConfig(), candidates=(cand, scores), new_amplitude=7.0)
    assert res.n_added == 0  # 3 < 0.5 × 7
    res = adapt_atoms(*empty, AdaptConfig(), candidates=(cand, scores))
    np.testing.assert_array_equal(res.amplitudes, [3.0])  # highest candidate score
    res = adapt_atoms(*empty, AdaptConfig())
    assert res.positions_A.shape == (0, 3) and res.source.shape == (0,)


# ----------------------------------------------------------------------------
# bucket_capacity


def test_bucket_capacity():
    series = sorted({64 * m * 2**k for k in range(12) for m in (1, 1.25, 1.5, 1.75)})
    assert all(float(s).is_integer() for s in series)
    prev = 0
    for n in range(0, 5000, 7):
        c = bucket_capacity(n)
        assert c >= n and c in series and c >= prev
        assert all(s < n for s in series if s < c)  # smallest such
        prev = c
    assert [bucket_capacity(n) for n in (0, 64, 65, 80, 81, 113, 129)] == [
        64,
        64,
        80,
        80,
        96,
        128,
        160,
    ]
    assert bucket_capacity(5, minimum=10) == 10
    assert bucket_capacity(11, minimum=10) == 13  # ceil(12.5)
    assert bucket_capacity(10**6) in {
        64 * m * 2**k for k in range(20) for m in (1, 1.25, 1.5, 1.75)
    }


# ----------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_raise():
    pos = np.zeros((2, 3))
    pos[1, 0] = 5.0
    B = np.ones(2)
    H = np.ones(2)
    with pytest.raises(ValueError, match="positions_A"):
        merge_close(np.zeros((2, 2)), B, H, D)
    with pytest.raises(ValueError, match="widths_A2"):
        merge_close(pos, np.ones(3), H, D)
    with pytest.raises(ValueError, match="amplitudes"):
        merge_close(pos, B, np.array([1.0, np.nan]), D)
    with pytest.raises(ValueError, match="positions_A"):
        merge_close(np.array([[0, 0, np.inf], [1, 1, 1]]), B, H, D)
    with pytest.raises(ValueError, match="widths_A2"):
        merge_close(pos, np.array([1.0, 0.0]), H, D)
    with pytest.raises(ValueError, match="widths_A2"):
        prune_faint(np.array([1.0, -1.0]), H, 0.1, 90)
    with pytest.raises(ValueError, match="min_distance_A"):
        merge_close(pos, B, H, 0.0)
    with pytest.raises(ValueError, match="amplitude_rule"):
        merge_close(pos, B, H, D, "max")
    with pytest.raises(ValueError, match="scores"):
        suppress_close(pos, np.ones(3), D)
    with pytest.raises(ValueError, match="candidate_scores"):
        add_missing(pos, pos, np.array([1.0, np.inf]), D, 0.5, 1)
    with pytest.raises(ValueError, match="max_new"):
        add_missing(pos, pos, H, D, 0.5, -1)
    with pytest.raises(ValueError, match="candidate_positions_A"):
        adapt_atoms(pos, B, H, AdaptConfig(), candidates=(np.zeros((2, 4)), H))
    with pytest.raises(ValueError, match="new_width_A2"):
        adapt_atoms(pos, B, H, AdaptConfig(), new_width_A2=0.0)
    with pytest.raises(ValueError, match="n must be non-negative"):
        bucket_capacity(-1)
    with pytest.raises(ValueError, match="minimum"):
        bucket_capacity(3, minimum=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_distance_A": 0.0}, "min_distance_A"),
        ({"min_distance_A": float("nan")}, "min_distance_A"),
        ({"amplitude_rule": "median"}, "amplitude_rule"),
        ({"prune_fraction": -0.1}, "prune_fraction"),
        ({"prune_fraction": 1.5}, "prune_fraction"),
        ({"prune_percentile": 101.0}, "prune_percentile"),
        ({"add": "yes"}, "add"),
        ({"add_fraction": -1.0}, "add_fraction"),
        ({"max_add_fraction": 2.0}, "max_add_fraction"),
        ({"max_prune_fraction": -0.5}, "max_prune_fraction"),
    ],
)
def test_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdaptConfig(**kwargs)


def test_add_missing_ignores_candidates_in_the_vacuum():
    existing = np.array([[0.0, 0, 0], [2.8, 0, 0]])
    cand = np.array([[5.6, 0, 0], [12.0, 0, 0]])  # a neighbour site, and one far away
    out = add_missing(existing, cand, np.array([1.0, 5.0]), 1.8, 0.5, 10, max_distance_A=4.0)
    np.testing.assert_array_equal(out, cand[:1])
    out = add_missing(existing, cand, np.array([1.0, 5.0]), 1.8, 0.5, 10)
    assert len(out) == 2
    with pytest.raises(ValueError, match="max_add_distance_A"):
        AdaptConfig(max_add_distance_A=-1.0)
