"""Per-atom standard deviations: against the inverse of the dense Fisher matrix, and
calibrated against the actual errors of fits over many noise seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import separated_points

from atomjax import fit, levenberg, outputs, uncertainty
from atomjax.atoms import Atoms
from atomjax.geometry import euler_from_tilts_deg
from atomjax.render import ImagingSetup, render_series

SETUP = ImagingSetup((40, 36), 0.3, max_width_A2=1.0)


def _cluster(n, min_distance_A, seed=0, m=7, capacity=None):
    rng = np.random.default_rng(seed)
    pts = separated_points(n, rng, 3.5, min_distance_A)
    euler = jnp.asarray(np.deg2rad(euler_from_tilts_deg(np.linspace(-60, 60, m))))
    drift = jnp.asarray(rng.normal(0, 0.2, (m, 3)))
    atoms = Atoms.create(np.array(pts), rng.uniform(0.4, 0.7, n), rng.uniform(0.5, 1.5, n),
                         capacity=capacity or n)  # fmt: skip
    return fit.Params(atoms, drift, None, jnp.full(m, 0.1)), euler


def _dense_covariance(params, euler, weights, positions_only=False, setup=SETUP):
    """The live atoms' 5 × 5 blocks of F⁻¹, F = Jᵀ W J of every atom parameter and every
    background (or of the positions alone), J by forward-mode autodiff of the renderer
    (the slow reference; with the params' probe, e.g. the profile tail)."""
    atoms = params.atoms
    n, m = atoms.capacity, euler.shape[0]

    def images(theta, bg):
        a = Atoms(theta[:, :3], theta[:, 3], theta[:, 4], atoms.alive)
        calc = render_series(a, euler, params.drift_A, params.probe, setup)
        return (calc + bg[:, None, None]).ravel()

    theta = jnp.concatenate([atoms.positions_A, atoms.widths_A2[:, None],
                             atoms.amplitudes[:, None]], 1)  # fmt: skip
    ja, jb = jax.jacfwd(images, argnums=(0, 1))(theta, params.background)
    jac = np.concatenate([np.asarray(ja).reshape(-1, n * 5), np.asarray(jb)], 1)
    per_atom = np.array([1, 1, 1, not positions_only, not positions_only], bool)
    keep = np.r_[np.outer(np.asarray(atoms.alive), per_atom).ravel(),
                 np.full(m, not positions_only)]  # fmt: skip
    jac = jac[:, keep]
    cov = np.linalg.inv(jac.T @ (np.asarray(weights).ravel()[:, None] * jac))
    q = int(per_atom.sum())
    blocks = np.zeros((atoms.n_alive, 5, 5))
    for i in range(atoms.n_alive):
        blocks[i][np.ix_(per_atom, per_atom)] = cov[q * i : q * i + q, q * i : q * i + q]
    return blocks


def _noisy(params, euler, std, seed):
    clean = params.images(euler, SETUP)
    return clean + np.random.default_rng(seed).normal(0, std, clean.shape)


@pytest.mark.parametrize("n, spacing_A, noise", [(6, 2.5, "gaussian"), (10, 1.6, "gaussian"),
                                                 (6, 2.5, "poisson")])  # fmt: skip
def test_patch_covers_everything_equals_the_dense_inverse(n, spacing_A, noise):
    params, euler = _cluster(n, spacing_A, capacity=n + 2)  # two dead atoms
    if noise == "gaussian":  # uniform weights: the separable sums
        observed = _noisy(params, euler, 0.3, 0)
    else:  # weights 1 / (a + b μ) per pixel
        clean = np.asarray(params.images(euler, SETUP))
        observed = np.random.default_rng(1).poisson(clean * 20.0) / 20.0
    out = uncertainty.atom_sigmas(params, observed, None, euler, SETUP, k=n - 1, cutoff_A=1e3,
                                  truncation=None)  # the renderer's own window  # fmt: skip
    assert (out["noise"]["b"] == 0) == (noise == "gaussian")
    weights = uncertainty.pixel_weights(params.images(euler, SETUP), out["noise"])
    dense = _dense_covariance(params, euler, weights)
    np.testing.assert_allclose(out["covariance"], dense, rtol=1e-6, atol=1e-9 * np.abs(dense).max())
    assert out["sigma_x_A"].shape == (n,)  # the dead atoms get none
    # the positions alone (widths, amplitudes, backgrounds known): the bound of bench_asi_208
    fixed = uncertainty.atom_sigmas(
        params,
        observed,
        None,
        euler,
        SETUP,
        k=n - 1,
        cutoff_A=1e3,
        truncation=None,
        known=("widths", "amplitudes", "background"),
    )
    dense_xyz = _dense_covariance(params, euler, weights, positions_only=True)
    np.testing.assert_allclose(fixed["covariance"], dense_xyz, rtol=1e-6,
                               atol=1e-9 * np.abs(dense_xyz).max())  # fmt: skip
    assert np.all(fixed["sigma_x_A"] < out["sigma_x_A"])  # knowing more, less uncertain
    # the default window, sized to the widest atom, changes σ by far less than 1 %
    narrow = uncertainty.atom_sigmas(params, observed, None, euler, SETUP, k=n - 1, cutoff_A=1e3)
    assert uncertainty.window_setup(SETUP, params.atoms.widths_A2).radius_px < SETUP.radius_px
    for name in uncertainty.SIGMA_NAMES:
        np.testing.assert_allclose(narrow[name], out[name], rtol=1e-3)
    # a smaller patch leaves couplings out: σ a little small, never large
    small = uncertainty.atom_sigmas(params, observed, None, euler, SETUP, k=3, cutoff_A=1e3)
    ratio = np.stack([small[k] / np.sqrt(np.diagonal(dense, axis1=1, axis2=2))[:, j]
                      for j, k in enumerate(uncertainty.SIGMA_NAMES)])  # fmt: skip
    assert ratio.max() < 1 + 1e-6 and ratio.min() > 0.85


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_with_the_profile_tail_the_patch_equals_the_dense_inverse(noise):
    """Direct mode's profile tail (atomjax.tail): each footprint the sum of two
    Gaussians, and σ from the patches equal the dense inverse of the renderer's own
    Jacobian, kernel and all; the tail's wider footprint carries less information."""
    from atomjax import tail

    plain, euler = _cluster(6, 2.5, capacity=8)
    params = fit.Params(plain.atoms, plain.drift_A, tail.TailKernel.create(0.35, 1.2),
                        plain.background)  # fmt: skip
    setup = ImagingSetup((56, 52), 0.3, max_width_A2=1.0)  # no tail reaches round
    clean = np.asarray(params.images(euler, setup))
    rng = np.random.default_rng(2)
    if noise == "gaussian":
        observed = clean + rng.normal(0, 0.3, clean.shape)
    else:
        observed = rng.poisson(clean * 20.0) / 20.0
    out = uncertainty.atom_sigmas(params, observed, None, euler, setup, k=5, cutoff_A=1e3,
                                  truncation=None)  # fmt: skip
    weights = uncertainty.pixel_weights(params.images(euler, setup), out["noise"])
    dense = _dense_covariance(params, euler, weights, setup=setup)
    # to the renderer's window truncation (1e-6 of a core's peak, then convolved)
    np.testing.assert_allclose(out["covariance"], dense, rtol=1e-4, atol=1e-5 * np.abs(dense).max())
    var = np.diagonal(dense, axis1=1, axis2=2)
    np.testing.assert_allclose(out["sigma_x_A"], np.sqrt(var[:, 0]), rtol=1e-5)
    # the default window (sized to the widest footprint) changes σ by far less than 1 %
    default = uncertainty.atom_sigmas(params, observed, None, euler, setup, k=5, cutoff_A=1e3)
    np.testing.assert_allclose(default["sigma_x_A"], out["sigma_x_A"], rtol=1e-3)
    without = uncertainty.atom_sigmas(plain, observed, None, euler, setup, k=5, cutoff_A=1e3)
    assert np.all(out["sigma_x_A"] > without["sigma_x_A"])


def test_noise_model_tells_gaussian_from_shot_noise():
    rng = np.random.default_rng(3)
    mu = rng.uniform(0.0, 5.0, 200_000)
    gauss = uncertainty.noise_model(mu + rng.normal(0, 0.2, mu.shape), mu)
    assert gauss["a"] == pytest.approx(0.04, rel=0.02) and abs(gauss["b"]) < 2e-3
    scale = 40.0  # counts per unit
    shot = uncertainty.noise_model(rng.poisson(mu * scale) / scale, mu)
    assert shot["b"] == pytest.approx(1 / scale, rel=0.03) and shot["a"] < 1e-3


def _fit(params, observed, euler, n_steps=12):
    config = fit.OptimConfig(method="lm", lm_cg_iterations=8, width_min_A2=0.05)
    rates = fit.Rates.from_config(config, 0.3)
    state = levenberg.LMState.create(config, observed.dtype)
    keys = jax.random.split(jax.random.PRNGKey(0), n_steps)
    out, *_ = levenberg.run_steps(params, state, keys, observed, euler, SETUP, config, rates)
    return out


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_sigmas_are_calibrated_over_noise_seeds(noise):
    truth, euler = _cluster(8, 2.4, seed=4)
    clean = np.asarray(truth.images(euler, SETUP))
    z = []
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        if noise == "gaussian":
            observed = clean + rng.normal(0, 0.15, clean.shape)
        else:  # about 4 counts at an atom's peak
            observed = rng.poisson(clean * 4.0) / 4.0
        found = _fit(truth, jnp.asarray(observed), euler)
        out = uncertainty.atom_sigmas(found, observed, None, euler, SETUP)
        sig = np.stack([out[k] for k in uncertainty.SIGMA_NAMES[:3]], 1)
        dev = np.asarray(found.atoms.positions_A - truth.atoms.positions_A)
        z.append(dev / sig)
    z = np.concatenate(z)  # 96 atoms' errors over their σ, per axis
    std = z.std(0)
    assert np.all((std > 0.8) & (std < 1.25)), std
    assert 0.6 < np.mean(np.abs(z) < 1) < 0.76


def test_sigma_columns_round_trip_and_calibration(tmp_path):
    pos = np.random.default_rng(0).uniform(-5, 5, (20, 3))
    sig = {k: np.full(20, 0.02) for k in uncertainty.SIGMA_NAMES}
    outputs.write_extxyz(tmp_path / "a.extxyz", pos, np.full(20, 0.5), np.full(20, 1.0),
                         columns=sig)  # fmt: skip
    back = outputs.read_extxyz(tmp_path / "a.extxyz")["columns"]
    assert set(back) == set(uncertainty.SIGMA_NAMES)
    np.testing.assert_array_equal(back["sigma_x_A"], sig["sigma_x_A"])
    with pytest.raises(ValueError, match="taken"):
        outputs.write_extxyz(tmp_path / "b.extxyz", pos, np.ones(20), np.ones(20),
                             columns={"amplitude": np.ones(20)})  # fmt: skip
    # truth displaced by exactly 1σ along x: every |z| is 1 in x, 0 in y and z
    cal = uncertainty.calibrate(pos, sig, pos - [0.02, 0, 0])
    np.testing.assert_allclose(cal["z_mean"], [1.0, 0.0, 0.0], atol=1e-9)
    assert cal["rmsd_over_sigma"] == pytest.approx(1 / np.sqrt(3))


def test_an_atom_the_data_do_not_see_gets_a_huge_finite_sigma():
    params, euler = _cluster(5, 2.5)
    observed = _noisy(params, euler, 0.3, 0)
    ghost = params.atoms.amplitudes.at[2].set(0.0)  # no signal: no information
    params = fit.Params(params.atoms.__class__(params.atoms.positions_A, params.atoms.widths_A2,
                                               ghost, params.atoms.alive),
                        params.drift_A, None, params.background)  # fmt: skip
    out = uncertainty.atom_sigmas(params, observed, None, euler, SETUP)
    for name in uncertainty.SIGMA_NAMES:
        assert np.all(np.isfinite(out[name])), name
    assert out["sigma_x_A"][2] > 1e2 and np.all(np.delete(out["sigma_x_A"], 2) < 0.5)
    s = uncertainty.summary(out)
    assert s["n_unsupported"] == 1 and s["predicted_rmsd_pm"] < 50


# ------------------------------------------------------ the search's error (several starts)


def test_search_variance_is_the_mean_squared_offset_over_fits_and_neighbours():
    from atomjax.uncertainty import search_variance

    rng = np.random.default_rng(0)
    win = rng.uniform(-10, 10, (60, 3))
    shift = np.array([0.1, -0.2, 0.3])
    # two other fits: one shifted by `shift`, one identical but for a missing atom
    one, two = win + shift, np.delete(win, 7, axis=0)
    var = search_variance(win, [one, two], neighbours=1)
    expected = np.tile(shift**2 / 2, (60, 1))  # (shift² + 0) / 2 fits
    expected[7] = shift**2  # only the first fit has atom 7
    np.testing.assert_allclose(var, expected, atol=1e-12)
    # averaged over each atom and its nearest atoms: one atom's offset is shared out
    odd = win.copy()
    odd[3] += [0.0, 0.0, 0.4]
    var = search_variance(win, [odd], neighbours=5)
    from scipy.spatial import cKDTree

    near = cKDTree(win).query(win, 5)[1]
    dense = np.zeros((60, 3))
    dense[3, 2] = 0.16
    np.testing.assert_allclose(var, dense[near].mean(1), atol=1e-12)
    # offsets beyond the cutoff are another atom, not an offset; no other fit: zero
    assert np.all(search_variance(win, [win + 50.0]) == 0)
    assert np.all(search_variance(win, []) == 0)
