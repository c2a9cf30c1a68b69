"""Tests for atomjax.metrics: hand-made cases with known answers, brute-force references."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from atomjax.metrics import (
    aet_score,
    deviation_distribution,
    evaluate,
    match_atoms,
    r_factor_series,
    read_atoms,
    rmsd_per_axis_var_pm,
    rmsd_pm,
    species_confusion,
)


def lattice(n_side: int, spacing_A: float = 3.0) -> np.ndarray:
    g = np.arange(n_side) * spacing_A
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)


@pytest.fixture
def truth() -> np.ndarray:
    return lattice(4)  # 64 atoms, 3 Å apart


# --------------------------------------------------------------------------- matching


def test_exact_copy(truth):
    r = evaluate(truth.copy(), truth)
    assert r["n_matched"] == 64 and r["tp_rate"] == 1.0 and r["fp_rate"] == 0.0
    assert r["rmsd_pm"] == 0.0 and r["rmsd_per_axis_var_pm"] == 0.0
    assert r["aet_score"]["rmsd_pm"] == pytest.approx(0.0, abs=1e-9)
    assert r["aet_score"]["n_matched"] == 64


def test_constant_shift(truth):
    shift = np.array([0.3, -0.2, 0.1])
    found = truth + shift
    m = match_atoms(found, truth)
    assert m.n_matched == 64
    assert rmsd_pm(m.deviation_A) == pytest.approx(np.linalg.norm(shift) * 100)
    np.testing.assert_allclose(m.offset_A, 0.0)
    # the variance form ignores a constant offset even without removal
    assert rmsd_per_axis_var_pm(m.deviation_A) == pytest.approx(0.0, abs=1e-9)

    m2 = match_atoms(found, truth, remove_offset=True)
    assert m2.converged
    np.testing.assert_allclose(m2.offset_A, shift, atol=1e-12)
    assert rmsd_pm(m2.deviation_A) == pytest.approx(0.0, abs=1e-9)
    r = evaluate(found, truth, remove_offset=True)
    np.testing.assert_allclose(r["offset_A"], shift, atol=1e-12)


def test_offset_removal_recovers_pairs_beyond_cutoff(truth):
    # a 0.8 Å shift puts every pair beyond the 0.75 Å cut-off: nothing matches and
    # there is nothing to iterate on; at 0.6 Å, removal brings all deviations to 0.
    assert match_atoms(truth + [0.8, 0, 0], truth, remove_offset=True).n_matched == 0
    rng = np.random.default_rng(1)
    found = truth + [0.6, 0.0, 0.0] + rng.normal(0, 0.02, truth.shape)
    m = match_atoms(found, truth, remove_offset=True)
    assert m.n_matched == 64
    np.testing.assert_allclose(m.deviation_A.mean(axis=0), 0.0, atol=1e-12)


def test_gaussian_jitter_rmsd():
    truth = lattice(17)  # 4913 atoms
    sigma = 0.05
    found = truth + np.random.default_rng(0).normal(0, sigma, truth.shape)
    m = match_atoms(found, truth)
    expected_pm = np.sqrt(3) * sigma * 100
    assert m.n_matched == truth.shape[0]
    assert rmsd_per_axis_var_pm(m.deviation_A) == pytest.approx(expected_pm, rel=0.03)
    assert rmsd_pm(m.deviation_A) == pytest.approx(expected_pm, rel=0.03)
    # sample vs population variance differ by sqrt(k / (k - 1))
    k = m.n_matched
    ratio = rmsd_per_axis_var_pm(m.deviation_A) / rmsd_per_axis_var_pm(m.deviation_A, ddof=0)
    assert ratio == pytest.approx(np.sqrt(k / (k - 1)))


def test_missing_atom(truth):
    m = match_atoms(np.delete(truth, 5, axis=0), truth)
    assert m.tp_rate == pytest.approx(63 / 64) and m.fp_rate == 0.0
    assert m.unmatched_truth.tolist() == [5]


def test_spurious_atom(truth):
    found = np.vstack([truth, [[1.5, 1.5, 1.5]]])  # 2.6 Å from every true atom
    m = match_atoms(found, truth)
    assert m.tp_rate == 1.0 and m.fp_rate == pytest.approx(1 / 65)
    assert m.unmatched_found.tolist() == [64]


def test_two_found_compete_for_one_truth():
    truth = np.array([[0.0, 0, 0], [10.0, 0, 0]])
    found = np.array([[0.3, 0, 0], [-0.1, 0, 0], [10.0, 0, 0]])
    m = match_atoms(found, truth)
    assert m.n_matched == 2
    assert dict(zip(m.found_index.tolist(), m.truth_index.tolist(), strict=True)) == {1: 0, 2: 1}
    assert m.unmatched_found.tolist() == [0]


def test_one_to_one_prefers_more_pairs_then_less_distance():
    # both found atoms are nearest to T0, but the optimum pairs A-T1 and B-T0
    truth = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    found = np.array([[0.4, 0, 0], [0.3, 0, 0]])  # A, B
    m = match_atoms(found, truth)
    assert m.found_index.tolist() == [0, 1] and m.truth_index.tolist() == [1, 0]
    # cardinality first: (B-T0 0.3) + (A-T1 0.6) beats leaving one out even if a single
    # pair would be shorter
    truth = np.array([[0.0, 0, 0], [1.4, 0, 0]])
    found = np.array([[0.7, 0, 0], [0.05, 0, 0]])
    m = match_atoms(found, truth)
    assert m.n_matched == 2 and m.truth_index.tolist() == [1, 0]


def test_beyond_cutoff_not_matched():
    truth = np.array([[0.0, 0, 0], [5.0, 0, 0]])
    found = np.array([[0.76, 0, 0], [5.74, 0, 0]])
    m = match_atoms(found, truth, cutoff_A=0.75)
    assert m.n_matched == 1 and m.found_index.tolist() == [1]
    assert match_atoms(found, truth, cutoff_A=0.8).n_matched == 2


def brute_force(found, truth, cutoff):
    """Max-cardinality, then min-distance matching via dense linear_sum_assignment."""
    d = cdist(found, truth)
    big = 1e3  # > any total distance here, so every admissible pair is worth taking
    cost = np.where(d <= cutoff, d - big, 0.0)
    r, c = linear_sum_assignment(cost)
    ok = d[r, c] <= cutoff
    return int(ok.sum()), float(d[r[ok], c[ok]].sum())


@pytest.mark.parametrize("seed", range(30))
def test_matching_is_optimal_vs_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(3, 15, size=2)
    truth = rng.uniform(0, 2.5, (m, 3))
    found = rng.uniform(0, 2.5, (n, 3))
    res = match_atoms(found, truth, cutoff_A=0.75)
    k_ref, dist_ref = brute_force(found, truth, 0.75)
    assert res.n_matched == k_ref
    assert res.distance_A.sum() == pytest.approx(dist_ref, abs=1e-9)
    # a valid one-to-one matching within the cut-off
    assert len(set(res.found_index.tolist())) == res.n_matched
    assert len(set(res.truth_index.tolist())) == res.n_matched
    assert np.all(res.distance_A <= 0.75)
    assert res.n_matched + res.unmatched_found.size == n
    assert res.n_matched + res.unmatched_truth.size == m


# --------------------------------------------------------------------------- metrics


def test_species_confusion_swapped():
    truth = lattice(2)[:5]
    ts = np.array(["Pt", "Pt", "Ni", "Ni", "Ni"])
    perm = np.array([3, 0, 4, 1, 2])  # found listed in another order
    found = truth[perm]
    fs = ts[perm].copy()
    fs[perm == 0] = "Ni"  # true Pt (atom 0) called Ni
    fs[perm == 2] = "Pt"  # true Ni (atom 2) called Pt
    c = species_confusion(ts, fs, match_atoms(found, truth))
    assert c["labels"] == ["Ni", "Pt"]
    assert c["matrix"] == [[2, 1], [1, 1]]  # rows truth, columns found
    assert c["accuracy"] == pytest.approx(3 / 5)
    r = evaluate(found, truth, found_species=fs, truth_species=ts)
    assert r["confusion"]["matrix"] == [[2, 1], [1, 1]]


def test_species_numeric_labels_sorted_numerically():
    truth = lattice(3)[:11]
    ts = np.arange(11) % 11 + 1  # 1..11
    c = species_confusion(ts, ts.astype(float), match_atoms(truth, truth))
    assert c["labels"] == [str(i) for i in range(1, 12)]
    assert np.array_equal(np.array(c["matrix"]), np.eye(11, dtype=int))


def test_deviation_distribution():
    dev = np.array([[0.001, 0, 0], [0, 0.015, 0], [0, 0, 0.025], [0.03, 0.04, 0]])  # 0.1..5 pm
    h = deviation_distribution(dev, bin_width_pm=1.0, max_pm=6.0)
    assert h["bin_edges_pm"] == [0, 1, 2, 3, 4, 5, 6]
    assert h["counts"] == [1, 1, 1, 0, 0, 1]  # 0.1, 1.5, 2.5, 5.0 pm (last edge closed)
    assert h["max_pm"] == pytest.approx(5.0)
    assert h["percentiles_pm"]["p50"] == pytest.approx(2.0)


# --------------------------------------------------------------------------- AET score


def aet_reference(found, truth, cutoff, tol=1e-4):
    """Line-by-line translation of the AET MATLAB loop (Python loops, small inputs)."""
    ref = (truth - truth.mean(0)).T
    pos = (found - found.mean(0)).T
    shift = np.zeros((3, 1))
    mag = 1.0
    while mag > tol:
        m1 = ref - shift
        difarr, c1 = [], []
        for i in range(pos.shape[1]):
            dif = m1 - pos[:, i : i + 1]
            dis = np.sqrt((dif**2).sum(0))
            ind = int(np.argmin(dis))
            if dis[ind] <= cutoff:
                difarr.append(dif[:, ind])
                c1.append(ind)
        difarr = np.array(difarr).T
        shift = shift + difarr.mean(1, keepdims=True)
        mag = np.abs(difarr.mean(1)).sum()
    sig = difarr.std(axis=1, ddof=1)
    return np.sqrt((sig**2).sum()) * 100, len(c1), len(set(c1))


@pytest.mark.parametrize("seed", range(5))
def test_aet_score_matches_matlab_translation(seed):
    rng = np.random.default_rng(seed)
    truth = lattice(3, 2.4) + rng.normal(0, 0.2, (27, 3))
    found = truth + rng.normal(0, 0.15, truth.shape) + [0.2, -0.1, 0.05]
    extra = truth[:4] + rng.normal(0, 0.3, (4, 3))  # duplicates near true atoms
    found = np.vstack([found, extra, [[30.0, 0, 0]]])
    rmsd, n, n_unique = aet_reference(found, truth, 0.9)
    s = aet_score(found, truth, cutoff_A=0.9)
    assert s["rmsd_pm"] == pytest.approx(rmsd, rel=1e-10)
    assert (s["n_matched"], s["n_truth_matched"]) == (n, n_unique)


def test_aet_nearest_neighbour_differs_from_one_to_one(truth):
    found = np.vstack([truth, truth[0] + [0.3, 0, 0]])  # a duplicate next to atom 0
    s = aet_score(found, truth, cutoff_A=0.9)
    assert s["n_matched"] == 65 and s["n_truth_matched"] == 64  # both count
    assert s["matched_fraction"] == pytest.approx(65 / 64)
    assert s["rmsd_pm"] > 3.0  # the duplicate's 30 pm enters their RMSD
    m = match_atoms(found, truth, cutoff_A=0.9)
    assert m.n_matched == 64 and m.unmatched_found.tolist() == [64]
    assert rmsd_pm(m.deviation_A) == 0.0


@pytest.mark.data
def test_aet_score_reproduces_published_asi(shared_data):
    """Published figure for aSi_208 at dose 1.6e4: 208 of 208 atoms, RMSD 17.3 pm."""
    scipy_io = pytest.importorskip("scipy.io")
    d = shared_data / "aSi_208"
    truth, _ = read_atoms(d / "ground_truth.txt")
    vox = scipy_io.loadmat(d / "published_model_dose1p6e4.mat")["temp_model"]
    a = (vox / 3 - 2) * 0.195
    found = np.stack([a[1], a[0], a[2]], axis=1)  # their model is stored (y, x, z)
    s = aet_score(found, truth, cutoff_A=0.9)
    assert s["n_matched"] == 208 and s["n_truth_matched"] == 208
    assert s["rmsd_pm"] == pytest.approx(17.3, abs=0.05)


# --------------------------------------------------------------------------- R-factor


def test_r_factor_series_known_images():
    obs = np.ones((3, 4, 4))
    cal = obs.copy()
    cal[0] *= 0.9  # R = 0.1
    cal[1, 0, 0] = 3.0  # |1 - 3| / 16 = 0.125
    r = r_factor_series(obs, cal)
    np.testing.assert_allclose(r.per_image, [0.1, 0.125, 0.0])
    assert r.mean == pytest.approx(0.075)


def test_r_factor_series_shape_error():
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        r_factor_series(np.ones((2, 4, 4)), np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match="all zero"):
        r_factor_series(np.zeros((1, 2, 2)), np.ones((1, 2, 2)))


def test_r1_factor_fits_the_scale_and_matches_a_brute_force_minimum():
    from atomjax.metrics import r1_factor_series

    rng = np.random.default_rng(0)
    cal = rng.uniform(0.1, 2.0, (3, 5, 6))
    obs = 2.5 * cal  # a model right up to its scale: R1 = 0 at k = 2.5
    r1 = r1_factor_series(obs, cal)
    assert r1.scale == pytest.approx(2.5) and r1.r1 == pytest.approx(0.0, abs=1e-12)
    obs = 2.5 * cal + rng.normal(0, 0.3, cal.shape)
    r1 = r1_factor_series(obs, cal)
    ks = np.linspace(1.5, 3.5, 20001)  # the oracle: the sum on a fine grid of k
    total = np.abs(obs).sum(axis=(1, 2))

    def mean_r1(k):  # the Materials Data Bank's form: the mean of the images' R1
        return float(np.mean(np.abs(np.abs(obs) - k * cal).sum(axis=(1, 2)) / total))

    values = [mean_r1(k) for k in ks]
    assert r1.scale == pytest.approx(ks[int(np.argmin(values))], abs=2e-4)
    assert r1.r1 == pytest.approx(min(values), rel=1e-6)
    per = np.abs(np.abs(obs) - r1.scale * cal).sum(axis=(1, 2)) / total
    np.testing.assert_allclose(r1.per_image, per)
    assert r1.r1 == pytest.approx(per.mean())
    with pytest.raises(ValueError, match="all zero"):
        r1_factor_series(np.zeros((1, 2, 2)), np.ones((1, 2, 2)))


# --------------------------------------------------------------------------- validation


def test_input_errors(truth):
    with pytest.raises(ValueError, match=r"found_A must have shape \(n, 3\)"):
        match_atoms(np.ones((4, 2)), truth)
    with pytest.raises(ValueError, match="truth_A is empty"):
        match_atoms(truth, np.empty((0, 3)))
    bad = truth.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="found_A has 1 atom.*NaN.*index 3"):
        match_atoms(bad, truth)
    with pytest.raises(ValueError, match="cutoff_A"):
        match_atoms(truth, truth, cutoff_A=-1)
    with pytest.raises(ValueError, match="both"):
        evaluate(truth, truth, found_species=["Si"] * 64)
    with pytest.raises(ValueError, match=r"truth_species must have shape \(64,\)"):
        evaluate(truth, truth, found_species=["Si"] * 64, truth_species=["Si"] * 3)


def test_evaluate_json_serialisable_and_no_match(truth):
    r = evaluate(truth + [5.0, 5.0, 5.0], truth[:8] * 10)
    assert r["n_matched"] == 0 and r["rmsd_pm"] is None and r["deviation_histogram"] is None
    assert "error" in r["aet_score"] or r["aet_score"]["n_matched"] >= 0
    json.dumps(r, allow_nan=False)


# --------------------------------------------------------------------------- files + CLI


def write_text_atoms(path, pos, types=None):
    lines = ["% comment line", f"% {len(pos)}"]
    for i, p in enumerate(pos):
        prefix = f"{types[i]}  " if types is not None else ""
        lines.append(prefix + " ".join(f"{v:.8f}" for v in p))
    path.write_text("\n".join(lines) + "\n# trailing comment\n")


def test_read_atoms_formats(tmp_path, truth):
    write_text_atoms(tmp_path / "a.txt", truth, ["1"] * len(truth))
    pos, sp = read_atoms(tmp_path / "a.txt")
    np.testing.assert_allclose(pos, truth)
    assert sp.tolist() == ["1"] * 64
    write_text_atoms(tmp_path / "b.dat", truth)
    pos, sp = read_atoms(tmp_path / "b.dat")
    np.testing.assert_allclose(pos, truth)
    assert sp is None

    import ase
    import ase.io

    ase.io.write(tmp_path / "c.xyz", ase.Atoms(["Si"] * 64, positions=truth), format="extxyz")
    pos, sp = read_atoms(tmp_path / "c.xyz")
    np.testing.assert_allclose(pos, truth)
    assert set(sp.tolist()) == {"Si"}

    (tmp_path / "bad.txt").write_text("% c\n1 2 3 4 5\n")
    with pytest.raises(ValueError, match="bad.txt:2: expected 3 columns.*got 5"):
        read_atoms(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_atoms(tmp_path / "missing.xyz")


def test_evaluate_app_writes_json(tmp_path, truth, capsys):
    from atomjax.apps import evaluate_task

    def settings(found, truth_file, **kw):
        base = {"cutoff_A": 0.75, "aet_cutoff_A": 0.9, "remove_offset": False, "json": None}
        return {**base, "found": str(found), "truth": str(truth_file), **kw}

    found = np.vstack([truth[1:], [[1.5, 1.5, 1.5]]]) + [0.1, 0.0, 0.0]
    write_text_atoms(tmp_path / "found.txt", found, ["1"] * len(found))
    write_text_atoms(tmp_path / "truth.txt", truth, ["1"] * len(truth))
    out = tmp_path / "out.json"
    evaluate_task(
        settings(tmp_path / "found.txt", tmp_path / "truth.txt", remove_offset=True, json=str(out))
    )
    r = json.loads(out.read_text())
    assert r["n_matched"] == 63 and r["n_found"] == 64 and r["n_truth"] == 64
    assert r["tp_rate"] == pytest.approx(63 / 64) and r["fp_rate"] == pytest.approx(1 / 64)
    np.testing.assert_allclose(r["offset_A"], [0.1, 0, 0], atol=1e-7)
    assert r["rmsd_pm"] == pytest.approx(0.0, abs=1e-4)
    assert r["confusion"]["labels"] == ["1"]
    assert "TP rate" in capsys.readouterr().out

    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate_task(settings(tmp_path / "found.txt", tmp_path / "nope.txt"))


# --------------------------------------------------------------------------- scale


def test_200k_atoms_fast():
    rng = np.random.default_rng(0)
    truth = lattice(59, 2.5)[:200_000]
    sigma = 0.05
    found = truth + rng.normal(0, sigma, truth.shape)
    t0 = time.perf_counter()
    r = evaluate(found, truth, remove_offset=True)
    elapsed = time.perf_counter() - t0
    assert r["n_matched"] == 200_000
    assert r["rmsd_per_axis_var_pm"] == pytest.approx(np.sqrt(3) * sigma * 100, rel=0.01)
    assert r["aet_score"]["rmsd_pm"] == pytest.approx(np.sqrt(3) * sigma * 100, rel=0.01)
    assert elapsed < 30, f"evaluate on 200k atoms took {elapsed:.1f} s"
