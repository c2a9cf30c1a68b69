"""Species classification from fitted amplitudes and widths."""

import json

import numpy as np
import pytest

from atomjax.species import classify_species, species_summary

Z_FE, Z_PT = 26, 78


def _two_species(n_fe=300, n_pt=200, scatter=0.10, seed=0, shuffle=True):
    """Fe/Pt atoms with H·B in ratio (Z_Pt/Z_Fe)^1.6 and `scatter` relative spread."""
    rng = np.random.default_rng(seed)
    truth = np.array(["Fe"] * n_fe + ["Pt"] * n_pt)
    hb = np.where(truth == "Fe", Z_FE**1.6, Z_PT**1.6) * 1e-4
    hb = hb * (1 + scatter * rng.standard_normal(truth.size))
    b = 0.5 * (1 + 0.05 * rng.standard_normal(truth.size))
    h = hb / b
    if shuffle:
        p = rng.permutation(truth.size)
        truth, h, b = truth[p], h[p], b[p]
    return h, b, truth


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
@pytest.mark.parametrize("features", ["integrated", "amplitude_width"])
def test_fe_pt_accuracy(method, features):
    h, b, truth = _two_species()
    labels = classify_species(h, b, ["Fe", "Pt"], method=method, features=features)
    assert labels.shape == truth.shape
    assert labels.dtype.kind == "U"
    assert np.mean(labels == truth) >= 0.98


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
def test_names_follow_intensity_not_input_order(method):
    h, b, truth = _two_species(n_fe=50, n_pt=250, shuffle=False)
    # Pt first in the input, a minority species, and reversed order: the names must still
    # go to the clusters by intensity.
    for perm in (np.arange(truth.size), np.arange(truth.size)[::-1]):
        labels = classify_species(h[perm], b[perm], ["Fe", "Pt"], method=method)
        assert np.mean(labels == truth[perm]) >= 0.98
    for seed in range(4):  # cluster indices differ between seeds; names must not
        labels = classify_species(h, b, ["Fe", "Pt"], method=method, seed=seed)
        assert np.mean(labels == truth) >= 0.98


def test_three_species_named_in_order():
    rng = np.random.default_rng(3)
    z = np.repeat([14, 42, 79], 100)
    hb = z**1.6 * (1 + 0.08 * rng.standard_normal(z.size))
    p = rng.permutation(z.size)
    z, hb = z[p], hb[p]
    labels = classify_species(hb, np.ones_like(hb), ["Si", "Mo", "Au"])
    expect = np.select([z == 14, z == 42], ["Si", "Mo"], "Au")
    assert np.mean(labels == expect) >= 0.98


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
def test_deterministic_with_seed(method):
    hb, _, _ = _overlapping(300, 300)  # overlapping, so the result depends on the fit
    h, b = hb / 0.5, np.full(hb.size, 0.5)
    a = classify_species(h, b, ["Fe", "Pt"], method=method, seed=7)
    c = classify_species(h, b, ["Fe", "Pt"], method=method, seed=7)
    np.testing.assert_array_equal(a, c)


def test_one_species():
    h, b, _ = _two_species(n_fe=5, n_pt=5)
    labels = classify_species(h, b, ["Au"])
    assert labels.tolist() == ["Au"] * 10
    assert classify_species([0.1], [0.5], ["C"]).tolist() == ["C"]


def _overlapping(n_weak, n_strong, ratio=1.35, scatter=0.12, seed=0):
    """Two log-normal populations (multiplicative scatter) and the Bayes-optimal labels."""
    rng = np.random.default_rng(seed)
    weak = np.exp(rng.normal(0.0, scatter, n_weak))
    strong = ratio * np.exp(rng.normal(0.0, scatter, n_strong))
    hb = np.concatenate([weak, strong])
    truth = np.array(["A"] * n_weak + ["B"] * n_strong)
    p_weak = n_weak / (n_weak + n_strong)
    d = np.log(ratio)
    threshold = d / 2 + scatter**2 * np.log(p_weak / (1 - p_weak)) / d
    bayes = np.where(np.log(hb) > threshold, "B", "A")
    return hb, truth, bayes


@pytest.mark.parametrize("n_weak,n_strong", [(300, 300), (480, 120), (120, 480)])
def test_overlapping_populations_near_bayes(n_weak, n_strong):
    """Why log(H·B) and a tied mixture: near the best possible accuracy, also unbalanced.

    A linear feature (with a full-covariance mixture) reached only ~0.83 in the (120, 480)
    case where this gets within 2 % of the Bayes-optimal classifier (~0.92).
    """
    accs, bayes_accs = [], []
    for seed in range(5):
        hb, truth, bayes = _overlapping(n_weak, n_strong, seed=seed)
        labels = classify_species(hb, np.ones_like(hb), ["A", "B"], seed=seed)
        accs.append(np.mean(labels == truth))
        bayes_accs.append(np.mean(bayes == truth))
    assert np.mean(accs) >= np.mean(bayes_accs) - 0.02


def test_kmeans_balanced_overlap_near_bayes():
    accs, bayes_accs = [], []
    for seed in range(5):
        hb, truth, bayes = _overlapping(300, 300, seed=seed)
        labels = classify_species(hb, np.ones_like(hb), ["A", "B"], method="kmeans")
        accs.append(np.mean(labels == truth))
        bayes_accs.append(np.mean(bayes == truth))
    assert np.mean(accs) >= np.mean(bayes_accs) - 0.02


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(names=[]), "names is empty"),
        (dict(names=["Fe", "Fe"]), "duplicates"),
        (dict(names="Fe"), "sequence"),
        (dict(names=["A", "B", "C", "D", "E"]), "only 4 atom"),
        (dict(widths_A2=[0.5, 0.5, 0.5]), "widths_A2 has 3 entries"),
        (dict(amplitudes=[[1.0, 2.0, 3.0, 4.0]]), "1-D"),
        (dict(amplitudes=[1.0, np.nan, 3.0, 4.0]), "NaN/inf"),
        (dict(widths_A2=[0.5, np.inf, 0.5, 0.5]), "NaN/inf"),
        (dict(widths_A2=[0.5, 0.0, 0.5, 0.5]), "positive"),
        (dict(amplitudes=[1.0, -2.0, 3.0, 4.0]), "amplitudes must be positive"),
        (dict(amplitudes=[1.0, 1.0, 1.0, 1.0], widths_A2=[1.0] * 4), "distinct"),
        (dict(method="dbscan"), "unknown method"),
        (dict(features="volume"), "unknown features"),
        (dict(amplitudes=[], widths_A2=[], names=["A"]), "no atoms"),
    ],
)
def test_errors(kwargs, match):
    args = dict(amplitudes=[1.0, 2.0, 3.0, 4.0], widths_A2=[0.5] * 4, names=["Fe", "Pt"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        classify_species(**args)


def test_species_summary():
    h, b, truth = _two_species(n_fe=30, n_pt=20)
    s = species_summary(truth, h, b)
    assert list(s) == ["Fe", "Pt"]  # by increasing H·B
    assert s["Fe"]["count"] == 30 and s["Pt"]["count"] == 20
    assert s["Pt"]["fraction"] == pytest.approx(0.4)
    fe = truth == "Fe"
    assert s["Fe"]["amplitude_mean"] == pytest.approx(h[fe].mean())
    assert s["Fe"]["width_A2_std"] == pytest.approx(b[fe].std())
    assert s["Pt"]["hb_mean"] == pytest.approx((h * b)[~fe].mean())
    for stats in s.values():
        assert type(stats["count"]) is int
        assert all(type(v) is float for k, v in stats.items() if k != "count")
    assert json.loads(json.dumps(s)) == s
    with pytest.raises(ValueError, match="labels must have shape"):
        species_summary(truth[:-1], h, b)
