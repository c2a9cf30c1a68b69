"""The detection rule (atomjax.detection): the amplitude sums against a dense reference,
the null distribution of z on noise alone, and the rule on faint, spurious and missing
atoms at Gaussian noise and at about one count per pixel."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from atomjax import detection, fit, structures
from atomjax.adapt import AdaptConfig
from atomjax.atoms import Atoms
from atomjax.data import TiltSeries
from atomjax.geometry import euler_from_tilts_deg
from atomjax.reconstruct import ReconstructConfig, make_setup
from atomjax.render import render_tilt_series

M = 15
SHAPE = (48, 48)
PIXEL_A = 0.4


def geometry(m=M):
    euler_deg = euler_from_tilts_deg(np.linspace(-70, 70, m))
    shell = TiltSeries(np.zeros((m, *SHAPE)), euler_deg, PIXEL_A)
    config = ReconstructConfig(mode="direct")
    return euler_deg, jnp.asarray(np.deg2rad(euler_deg)), make_setup(shell, config), config


def render(pos, widths, amps, euler_deg, setup, background=0.0):
    atoms = Atoms.create(np.reshape(pos, (-1, 3)), widths, amps)
    return np.asarray(render_tilt_series(atoms, euler_deg, setup, None)) + background


@pytest.mark.parametrize("uniform, poisson", [(True, False), (False, False), (False, True)])
def test_amplitude_sums_equal_the_dense_sums_over_each_footprint(uniform, poisson):
    """s, f and the removal's rise in the negative log-likelihood against sums over each
    atom's whole rendered footprint (background eliminated per image in s and f), one
    atom near the image edge."""
    from atomjax.loss import POISSON_FLOOR

    euler_deg, euler, setup, _ = geometry(5)
    rng = np.random.default_rng(1)
    pos = np.vstack([rng.uniform(-4, 4, (6, 3)), [[9.0, 1.0, 0.5]]])
    widths = rng.uniform(0.4, 0.9, len(pos))
    amps = rng.uniform(0.1, 0.5, len(pos))
    calc = render(pos, widths, amps, euler_deg, setup, background=0.05)
    observed = rng.poisson(20 * calc) / 20 if poisson else calc + rng.normal(size=calc.shape)
    weights = np.full(calc.shape, 2.5) if uniform else rng.uniform(0.5, 2.0, calc.shape)
    kappa = 20.0
    atoms = Atoms.create(pos, widths, amps, capacity=9)
    images = jnp.asarray(observed), jnp.asarray(calc), jnp.asarray(weights)
    s, f, drop = detection.amplitude_sums(atoms, euler, jnp.zeros((5, 3)), *images, setup,
                                          uniform=uniform, poisson=poisson,
                                          counts_per_unit=kappa)  # fmt: skip
    residual = observed - calc
    want = []
    for p, b, h in zip(pos, widths, amps, strict=True):
        t = render(p, b, 1.0, euler_deg, setup)
        wt, w_sum = (weights * t).sum((1, 2)), weights.sum((1, 2))
        wr = (weights * residual).sum((1, 2))
        s_i = np.sum((weights * residual * t).sum((1, 2)) - wt * wr / w_sum)
        f_i = np.sum((weights * t * t).sum((1, 2)) - wt**2 / w_sum)
        if poisson:
            mu = np.maximum(calc, POISSON_FLOOR)
            mu0 = np.maximum(mu - h * t, POISSON_FLOOR)
            d_i = kappa * np.sum(observed * np.log(mu / mu0) - (mu - mu0))
        else:
            d_i = 0.5 * np.sum(weights * ((residual + h * t) ** 2 - residual**2))
        want.append((s_i, f_i, d_i))
    want = np.array(want)
    np.testing.assert_allclose(np.asarray(s)[:7], want[:, 0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(f)[:7], want[:, 1], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(drop)[:7], want[:, 2], rtol=1e-4, atol=1e-3)
    assert np.all(np.asarray(s)[7:] == 0) and np.all(np.asarray(drop)[7:] == 0)  # dead


def noisy(clean, kind, rng, background):
    """Gaussian noise of 5 % of the peak, or Poisson counts of ~1 per background pixel."""
    if kind == "gaussian":
        return clean + background + rng.normal(0, 0.05 * clean.max(), clean.shape)
    per_unit = 1.0 / background
    return rng.poisson(per_unit * (clean + background)) / per_unit


@pytest.mark.parametrize("kind", ["gaussian", "poisson"])
def test_z_is_standard_normal_where_there_is_no_atom(kind):
    """Noise alone: z at fixed empty positions, over noise seeds, has mean 0 and
    standard deviation 1 (the null distribution the threshold refers to)."""
    euler_deg, euler, setup, _ = geometry()
    truth = structures.fcc_sphere("Au", 4.5).get_positions()
    clean = render(truth, 0.6, 0.3, euler_deg, setup)
    background = 0.2 * clean.max()
    calc = clean + background
    rng = np.random.default_rng(0)
    empty = np.array([[x, y, z] for x in (-7.0, 7.0) for y in (-7.0, 7.0) for z in (-6.0, 6.0)])
    zs = []
    for _ in range(25):
        observed = noisy(clean, kind, rng, background)
        loss = "poisson" if kind == "poisson" else "mse"
        out = detection.significance(empty, 0.6, 0.0, observed, calc, euler, jnp.zeros((M, 3)),
                                     setup, loss)  # fmt: skip
        zs.append(out["z"])
    zs = np.concatenate(zs)
    assert abs(zs.mean()) < 0.25 and 0.8 < zs.std() < 1.2, (zs.mean(), zs.std())


@pytest.mark.parametrize("kind, faint_amplitude, m", [("gaussian", 0.06, M), ("poisson", 0.2, 45)])
def test_rule_keeps_a_faint_supported_atom_and_drops_a_spurious_one(kind, faint_amplitude, m):
    """A faint atom stays and an atom where the data hold none goes, all true atoms pass:
    1/5 of the others at 5 % Gaussian noise over 15 images; 2/3 of them at ~1 count per
    background pixel over 45 images (over 15, the others sit at z ≈ 7-12, at the edge of
    the information criterion's 7.2)."""
    euler_deg, euler, setup, config = geometry(m)
    heavy = structures.fcc_sphere("Au", 4.5).get_positions()
    faint = np.array([[0.0, 0.0, 5.5]])
    spurious = np.array([[5.0, -5.0, -4.0]])
    truth = np.vstack([heavy, faint])
    amps = np.r_[np.full(len(heavy), 0.3), faint_amplitude]
    clean = render(truth, 0.6, amps, euler_deg, setup)
    background = 0.2 * clean.max()
    observed = noisy(clean, kind, np.random.default_rng(3), background)
    model = np.vstack([truth, spurious])
    model_amps = np.r_[amps, faint_amplitude]
    calc = render(model, 0.6, model_amps, euler_deg, setup, background)
    loss = "poisson" if kind == "poisson" else "mse"
    z = detection.significance(model, 0.6, model_amps, observed, calc, euler, jnp.zeros((m, 3)),
                               setup, loss)["z"]  # fmt: skip
    threshold = detection.threshold_z(AdaptConfig(), observed.size)
    assert z[len(heavy)] > threshold and z[-1] < threshold, (z[len(heavy)], z[-1])
    assert np.all(z[: len(heavy)] > threshold), (np.sort(z[: len(heavy)])[:4], threshold)


def cluster_with_one_more(extra_amplitude, euler_deg, setup):
    """A 19-atom Au cluster (amplitude 0.3) and one more atom 2.5 Å above its top atom:
    (heavy positions, the extra one, all positions, amplitudes, clean images, background)."""
    heavy = structures.fcc_sphere("Au", 4.5).get_positions()
    extra = heavy[np.argmax(heavy[:, 2])] + np.array([0.0, 0.0, 2.5])
    truth = np.vstack([heavy, extra])
    amps = np.r_[np.full(len(heavy), 0.3), extra_amplitude]
    clean = render(truth, 0.6, amps, euler_deg, setup)
    return heavy, extra, truth, amps, clean, 0.2 * clean.max()


def test_a_missing_light_atom_next_to_heavy_ones_is_added():
    """A light atom (1/5 of the heavy amplitude) 2.5 Å from heavy ones, missing from the
    model: the likelihood rule adds it, with about its amplitude, and nothing else."""
    from atomjax.adapt_step import adapt_step

    euler_deg, euler, setup, config = geometry()
    heavy, light, _, _, clean, background = cluster_with_one_more(0.06, euler_deg, setup)
    observed = jnp.asarray(noisy(clean, "gaussian", np.random.default_rng(5), background))
    cfg = dataclasses.replace(config, adapt=AdaptConfig(rule="likelihood"))
    params = fit.Params(Atoms.create(heavy, 0.6, 0.3, capacity=64), jnp.zeros((M, 3)), None,
                        jnp.full(M, background))  # fmt: skip
    new, source, counts = adapt_step(params, observed, euler, setup, cfg)
    assert counts["added"] == 1 and counts["pruned"] == 0, counts
    a = new.atoms.alive_numpy()
    assert np.linalg.norm(a["positions_A"][-1] - light) < 0.5
    assert 0.5 * 0.06 < a["amplitudes"][-1] < 1.5 * 0.06
    assert source[-1] == -1


def test_rules_are_chosen_by_name():
    assert isinstance(detection.make_rule("likelihood"), detection.LikelihoodRule)
    assert isinstance(detection.make_rule("threshold"), detection.ThresholdRule)
    with pytest.raises(ValueError, match="detection rule"):
        detection.make_rule("bayes")
    with pytest.raises(ValueError, match="rule must be one of"):
        AdaptConfig(rule="bayes")


def test_atoms_below_the_intensity_floor_go_even_when_significant():
    """A real but very faint atom (H·B 1/20 of the others, z far above the threshold at
    this noise) is dropped by the floor on the integrated intensity, and kept without it."""
    from atomjax.adapt_step import adapt_step

    euler_deg, euler, setup, config = geometry()
    _, _, truth, amps, clean, background = cluster_with_one_more(0.015, euler_deg, setup)
    noise = np.random.default_rng(2).normal(0, 1e-4, clean.shape)
    observed = jnp.asarray(clean + background + noise)
    params = fit.Params(Atoms.create(truth, 0.6, amps, capacity=64), jnp.zeros((M, 3)), None,
                        jnp.full(M, background))  # fmt: skip
    counts = {}
    for fraction in (0.1, 0.0):
        cfg = dataclasses.replace(config, adapt=AdaptConfig(min_intensity_fraction=fraction,
                                                            add=False))  # fmt: skip
        counts[fraction] = adapt_step(params, observed, euler, setup, cfg)[2]["pruned"]
    assert counts == {0.1: 1, 0.0: 0}, counts


def test_pruning_is_capped_and_the_least_supported_go_first():
    """The threshold set above every true atom's z (as when misfit inflates the noise
    early in a fit), ten atoms where the data hold none: without a cap all 29 go; with
    max_prune_fraction 0.2 only the ten unsupported go (z < 0), and the true atoms
    (z* / 2 ≤ z < z*) are deferred to the next step."""
    from atomjax.adapt_step import adapt_step

    euler_deg, euler, setup, config = geometry()
    heavy, _, _, _, _, _ = cluster_with_one_more(0.06, euler_deg, setup)
    clean = render(heavy, 0.6, np.full(len(heavy), 0.3), euler_deg, setup)
    background = 0.2 * clean.max()
    observed = jnp.asarray(noisy(clean, "gaussian", np.random.default_rng(4), background))
    spurious = np.random.default_rng(0).uniform(-9, 9, (40, 3))
    far = np.min(np.linalg.norm(spurious[:, None] - heavy, axis=2), 1) > 3.0
    spurious = spurious[far][:10]
    model = np.vstack([heavy, spurious])
    amps = np.r_[np.full(len(heavy), 0.3), np.full(len(spurious), 0.03)]
    calc = render(model, 0.6, amps, euler_deg, setup, background)
    z = detection.significance(model, 0.6, amps, observed, calc, euler, jnp.zeros((M, 3)),
                               setup)["z"]  # fmt: skip
    z_star = 1.2 * z[: len(heavy)].min()
    assert np.all(z[: len(heavy)] >= detection.DEFER_Z_FRACTION * z_star), z[: len(heavy)]
    assert np.all(z[len(heavy) :] < detection.DEFER_Z_FRACTION * z_star), z[len(heavy) :]
    params = fit.Params(Atoms.create(model, 0.6, amps, capacity=64), jnp.zeros((M, 3)), None,
                        jnp.full(M, background))  # fmt: skip
    pruned = {}
    for cap in (None, 0.2):
        cfg = dataclasses.replace(config, adapt=AdaptConfig(
            significance_z=float(z_star), max_prune_fraction=cap, add=False,
            split_width_ratio=None))  # fmt: skip
        new, _, counts = adapt_step(params, observed, euler, setup, cfg)
        pruned[cap] = counts["pruned"]
        if cap is not None:  # every true atom deferred
            kept = new.atoms.alive_numpy()["positions_A"]
            assert len(kept) == len(heavy)
            assert all(np.min(np.linalg.norm(kept - h, axis=1)) < 1e-4 for h in heavy)
    assert pruned == {None: len(model), 0.2: len(spurious)}, pruned
    # the cap alone: 1 of 4 may go, the two of the highest finite scores are deferred
    keep = np.array([True, False, False, False])
    assert detection.capped_prune(keep, [9.0, 1.0, 3.0, 2.0], 0.25).tolist() == [
        True, False, True, True]  # fmt: skip
    assert detection.capped_prune(keep, [9.0, 1.0, -np.inf, 2.0], 0.25).tolist() == [
        True, True, False, True]  # fmt: skip
    assert detection.capped_prune(keep, [9.0, 1.0, 3.0, 2.0], None).tolist() == keep.tolist()


@pytest.mark.parametrize("poisson", [False, True])
def test_split_gains_equal_the_dense_likelihood_change(poisson):
    """The gain in 2 log L of replacing an atom by a pair, against the two models
    rendered in full (Gaussian with per-pixel weights, and Poisson counts)."""
    from atomjax.loss import POISSON_FLOOR

    euler_deg, euler, setup, _ = geometry(5)
    rng = np.random.default_rng(4)
    pos = rng.uniform(-4, 4, (4, 3))
    widths, amps = rng.uniform(0.5, 1.2, 4), rng.uniform(0.1, 0.5, 4)
    calc = render(pos, widths, amps, euler_deg, setup, background=0.05)
    observed = rng.poisson(20 * calc) / 20 if poisson else calc + rng.normal(0, 0.02, calc.shape)
    weights = np.full(calc.shape, 20.0) / np.maximum(calc, POISSON_FLOOR) if poisson else (
        rng.uniform(0.5, 2.0, calc.shape))  # fmt: skip
    offsets = rng.normal(0, 0.8, (4, 3, 3))
    new_w, new_h = np.full(4, 0.5), amps * widths / 1.0
    gain = detection.split_gains(
        *(jnp.asarray(x) for x in (pos, widths, amps, offsets, new_w, new_h)), euler,
        jnp.zeros((5, 3)), jnp.asarray(observed), jnp.asarray(calc), jnp.asarray(weights),
        dataclasses.replace(setup, window_radius_px=16), poisson=poisson, counts_per_unit=20.0,
    )  # fmt: skip

    def nll(model):  # −log L up to a constant
        if poisson:
            mu = np.maximum(model, POISSON_FLOOR)
            return 20.0 * np.sum(mu - observed * np.log(mu))
        return 0.5 * np.sum(weights * (observed - model) ** 2)

    for i in range(4):
        for k in range(3):
            rest = np.delete(np.arange(4), i)
            pair = np.vstack([pos[rest], pos[i] + offsets[i, k], pos[i] - offsets[i, k]])
            w_k = np.r_[widths[rest], new_w[i], new_w[i]]
            h_k = np.r_[amps[rest], new_h[i], new_h[i]]
            model = render(pair, w_k, h_k, euler_deg, setup, 0.05)
            want = 2 * (nll(calc) - nll(model))
            np.testing.assert_allclose(float(gain[i, k]), want, rtol=2e-3, atol=0.05)


def pair_case(separation_A, seed):
    """The 19-atom Au cluster and a pair of atoms (amplitude 0.3, B 0.6 Å²)
    ``separation_A`` apart 3.5 Å above its top atom along a random direction: (heavy
    atoms, pair (2, 3), the one wide atom with the pair's second moment and H·B, clean
    images, background)."""
    euler_deg, _, setup, _ = geometry()
    heavy = structures.fcc_sphere("Au", 4.5).get_positions()
    centre = heavy[np.argmax(heavy[:, 2])] + np.array([0.0, 0.0, 3.5])
    d = np.random.default_rng(seed).normal(size=3)
    d *= separation_A / 2 / np.linalg.norm(d)
    pair = np.stack([centre + d, centre - d])
    wide_b = 0.6 + 2 * (separation_A / 2) ** 2 / 3  # isotropic: the trace of the covariance
    wide_h = 2 * 0.3 * 0.6 / wide_b
    clean = render(np.vstack([heavy, pair]), 0.6, 0.3, euler_deg, setup)
    return heavy, pair, (centre, wide_b, wide_h), clean, 0.2 * clean.max()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_wide_atom_that_is_a_pair_is_split_into_it(seed):
    """A pair 2.4 Å apart fitted as one wide atom: the adapt step splits it into two
    atoms within 0.5 Å of the true ones, and changes nothing else."""
    from atomjax.adapt_step import adapt_step

    euler_deg, euler, setup, config = geometry()
    heavy, pair, (centre, wide_b, wide_h), clean, background = pair_case(2.4, seed)
    observed = jnp.asarray(noisy(clean, "gaussian", np.random.default_rng(seed), background))
    atoms = Atoms.create(np.vstack([heavy, centre]), np.r_[np.full(len(heavy), 0.6), wide_b],
                         np.r_[np.full(len(heavy), 0.3), wide_h], capacity=64)  # fmt: skip
    params = fit.Params(atoms, jnp.zeros((M, 3)), None, jnp.full(M, background))
    cfg = dataclasses.replace(config, adapt=AdaptConfig(add=False))
    new, source, counts = adapt_step(params, observed, euler, setup, cfg)
    assert counts["split"] == 1 and counts["pruned"] == counts["merged"] == 0, counts
    a = new.atoms.alive_numpy()
    halves = a["positions_A"][-2:]
    err = np.linalg.norm(halves[:, None] - pair[None], axis=-1)
    assert min(err[0, 0] + err[1, 1], err[0, 1] + err[1, 0]) < 2 * 0.5, err
    np.testing.assert_allclose(a["widths_A2"][-2:], 0.6)
    np.testing.assert_allclose(a["amplitudes"][-2:] * 0.6 * 2, wide_h * wide_b, rtol=1e-5)
    assert list(source[-2:]) == [-1, -1] and list(source[:-2]) == list(range(len(heavy)))
    off = dataclasses.replace(config, adapt=AdaptConfig(add=False, split_width_ratio=None))
    assert adapt_step(params, observed, euler, setup, off)[2]["split"] == 0


def test_a_wide_atom_that_is_one_atom_stays_whole():
    """A genuinely wide atom (B 1.5 Å² where the others have 0.6), modelled as it is:
    no pair fits the images better, nothing is split."""
    from atomjax.adapt_step import adapt_step

    euler_deg, euler, setup, config = geometry()
    heavy, _, (centre, _, _), _, _ = pair_case(2.4, 0)
    pos = np.vstack([heavy, centre])
    widths, amps = np.r_[np.full(len(heavy), 0.6), 1.5], np.r_[np.full(len(heavy), 0.3), 0.24]
    clean = render(pos, widths, amps, euler_deg, setup)
    background = 0.2 * clean.max()
    observed = jnp.asarray(noisy(clean, "gaussian", np.random.default_rng(7), background))
    params = fit.Params(Atoms.create(pos, widths, amps, capacity=64), jnp.zeros((M, 3)), None,
                        jnp.full(M, background))  # fmt: skip
    cfg = dataclasses.replace(config, adapt=AdaptConfig(add=False))
    counts = adapt_step(params, observed, euler, setup, cfg)[2]
    assert counts["split"] == 0 and counts["pruned"] == 0, counts
