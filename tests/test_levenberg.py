"""Per-atom normal matrices and the Levenberg–Marquardt optimizer, against dense
Jacobians and dense least-squares solves on tiny problems."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import separated_points

from atomjax import fit, levenberg
from atomjax.atoms import Atoms
from atomjax.blocks import atom_blocks
from atomjax.geometry import euler_from_tilts_deg
from atomjax.render import ImagingSetup, render_series, render_tilt_series

SETUP = ImagingSetup((40, 36), 0.3, max_width_A2=1.0)
EULER = jnp.asarray(
    np.deg2rad(np.c_[[4.0, -3, 0, 2, -6], np.linspace(-60, 60, 5), [0, 5, -2, 3, 1]])
)
DRIFT = jnp.asarray(np.random.default_rng(5).normal(0, 0.3, (5, 3)))


def _jacobian(atoms: Atoms):
    """The dense Jacobian (pixels, atoms, 5) of the images in (x, y, z, B, H)."""

    def images(theta):
        a = Atoms(theta[:, :3], theta[:, 3], theta[:, 4], atoms.alive)
        return render_series(a, EULER, DRIFT, None, SETUP).ravel()

    theta = jnp.concatenate([atoms.positions_A, atoms.widths_A2[:, None],
                             atoms.amplitudes[:, None]], 1)  # fmt: skip
    return jax.jacfwd(images)(theta)


def test_atom_blocks_equal_the_dense_jacobian():
    rng = np.random.default_rng(1)
    atoms = Atoms.create(rng.uniform(-3, 3, (3, 3)), rng.uniform(0.4, 0.9, 3),
                         rng.uniform(0.5, 1.5, 3), capacity=4)  # fmt: skip
    jac = _jacobian(atoms)
    weights = jnp.asarray([1.0, 0.5, 2.0, 0.0, 1.0])
    blocks = atom_blocks(atoms, EULER, DRIFT, SETUP, weights)
    w_pix = jnp.repeat(weights, SETUP.image_shape[0] * SETUP.image_shape[1])
    for i in range(3):
        dense = jac[:, i, :].T @ (w_pix[:, None] * jac[:, i, :])
        # to the window truncation (the render uses full profiles): ~1e-11 of the largest
        np.testing.assert_allclose(blocks[i], dense, rtol=1e-9, atol=1e-10 * float(dense.max()))
    assert float(jnp.abs(blocks[3]).max()) == 0.0  # a dead atom


def _problem(noise_A=0.3, n=6, seed=0, capacity=8):
    rng = np.random.default_rng(seed)
    truth = separated_points(n, rng, 4.0, 2.5)
    euler_deg = euler_from_tilts_deg(np.linspace(-60, 60, 6))
    setup = ImagingSetup((40, 40), 0.3, max_width_A2=1.0)
    observed = render_tilt_series(Atoms.create(truth, 0.6, 0.3), euler_deg, setup)
    start = Atoms.create(truth + rng.normal(0, noise_A, truth.shape), 0.5, 0.25, capacity)
    params = fit.Params(start, jnp.zeros((6, 3)), None, jnp.zeros(6))
    return truth, observed, jnp.asarray(np.deg2rad(euler_deg)), setup, params


def _run(params, observed, euler, setup, n_steps, **optim):
    config = fit.OptimConfig(method="lm", **optim)
    rates = fit.Rates.from_config(config, 0.25)
    state = levenberg.LMState.create(config, observed.dtype)
    keys = jax.random.split(jax.random.PRNGKey(0), n_steps)
    return levenberg.run_steps(params, state, keys, observed, euler, setup, config, rates)


def test_one_step_is_the_dense_damped_least_squares_solution():
    truth, observed, euler, setup, params = _problem(noise_A=0.05, n=3, capacity=3)
    lam = 1e-2
    new, *_ = _run(params, observed, euler, setup, 1, lm_lambda0=lam, lm_cg_iterations=40,
                   lm_cg_tol=1e-12, width_min_A2=0.01)  # fmt: skip
    diff, static = fit.trainable(params)

    def residual(theta):
        a, bg = theta[:15].reshape(3, 5), theta[15:]
        d = eqx.tree_at(
            lambda d: (d.atoms.positions_A, d.atoms.widths_A2, d.atoms.amplitudes, d.background),
            diff, (a[:, :3], a[:, 3], a[:, 4], bg),
        )  # fmt: skip
        return (eqx.combine(d, static).images(euler, setup) - observed).ravel()

    a = params.atoms
    theta = jnp.concatenate([jnp.concatenate([a.positions_A, a.widths_A2[:, None],
                                              a.amplitudes[:, None]], 1).ravel(),
                             params.background])  # fmt: skip
    jac = jax.jacfwd(residual)(theta)
    r = residual(theta)
    normal = jac.T @ jac
    # LM's damping: λ times the diagonal of the per-atom blocks, and of the background's
    damp = jnp.diag(normal)
    step = -jnp.linalg.solve(normal + lam * jnp.diag(damp), jac.T @ r)
    expected = (theta + step)[:15].reshape(3, 5)
    got = np.c_[new.atoms.positions_A, new.atoms.widths_A2, new.atoms.amplitudes]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_recovers_known_atoms_in_a_few_iterations():
    truth, observed, euler, setup, params = _problem(noise_A=0.3)
    new, state, losses, _ = _run(params, observed, euler, setup, 10)
    np.testing.assert_allclose(new.atoms.positions_A[: len(truth)], truth, atol=1e-6)
    assert float(losses[-1]) < 1e-10 * float(losses[0])


def test_frozen_groups_and_dead_atoms_do_not_move():
    truth, observed, euler, setup, params = _problem(noise_A=0.2, capacity=8)
    new, *_ = _run(params, observed, euler, setup, 3, lr_positions_A=0.0)
    np.testing.assert_array_equal(new.atoms.positions_A, params.atoms.positions_A)
    assert not np.allclose(new.atoms.widths_A2[:6], params.atoms.widths_A2[:6])
    np.testing.assert_array_equal(new.atoms.amplitudes[6:], 0.0)


def test_poisson_steps_reach_a_stationary_point_of_the_poisson_loss():
    from atomjax.loss import poisson

    truth, clean, euler, setup, params = _problem(noise_A=0.2)
    counts = jnp.asarray(np.random.default_rng(0).poisson(np.asarray(clean + 0.05) * 400) / 400)
    new, _, losses, _ = _run(params, counts, euler, setup, 25, loss="poisson")
    diff, static = fit.trainable(new)
    grad = jax.grad(lambda d: poisson(counts, eqx.combine(d, static).images(euler, setup)))(diff)
    assert float(jnp.max(jnp.abs(grad.atoms.positions_A))) < 1e-6
    assert float(losses[-1]) < float(losses[0])


def test_config_refuses_what_lm_cannot_fit():
    from atomjax.optimizers import resolve_method

    assert resolve_method(fit.OptimConfig(method="auto"), "direct") == "lm"
    assert resolve_method(fit.OptimConfig(method="auto"), "adaptive") == "lm"
    assert resolve_method(fit.OptimConfig(method="auto", lm_probe_steps=0), "adaptive") == "adam"
    assert resolve_method(fit.OptimConfig(method="auto", loss="l1"), "rigid") == "adam"
    with pytest.raises(ValueError, match="cannot be used here.*batch_angles"):
        resolve_method(fit.OptimConfig(method="lm", batch_angles=4), "direct")
    with pytest.raises(ValueError, match="lm_cg_iterations"):
        fit.OptimConfig(lm_cg_iterations=-1)
    with pytest.raises(ValueError, match="lm_probe_steps"):
        fit.OptimConfig(lm_probe_steps=1.5)


def test_no_recompilation_between_pieces_and_phases(compile_counter):
    truth, observed, euler, setup, params = _problem(noise_A=0.2)
    new, state, _, _ = _run(params, observed, euler, setup, 3)
    config = fit.OptimConfig(method="lm")
    rates = fit.Rates.from_config(config, 0.25)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    with compile_counter() as counter:
        levenberg.run_steps(new, state, keys, observed, euler, setup, config, rates)
    assert counter.count == 0


def test_lm_with_probe_fits_atoms_and_focus_together():
    """Adaptive mode through Levenberg–Marquardt: LM steps on the atoms with the probe
    held, Adam steps on the probe with the atoms held. From atoms 0.2 Å off and a focus
    20 Å off, both come back (widths and amplitudes held at the truth, or the widths
    absorb the focus); LM alone (the probe held) cannot reach the same loss."""
    from atomjax import optimizers
    from atomjax.probe import ProbeSettings
    from atomjax.render import PhysicalProbe

    rng = np.random.default_rng(2)
    truth = separated_points(6, rng, 4.0, 2.5)
    setup = ImagingSetup((40, 40), 0.3, n_slices=4, slice_thickness_A=4.0, max_width_A2=1.0)
    euler = jnp.asarray(np.deg2rad(euler_from_tilts_deg(np.linspace(-60, 60, 6))))
    true_probe = PhysicalProbe(ProbeSettings(semiangle_mrad=25.0, defocus_A=30.0))
    observed = render_series(Atoms.create(truth, 0.5, 0.3), euler, jnp.zeros((6, 3)),
                             true_probe, setup)  # fmt: skip
    start = Atoms.create(truth + rng.normal(0, 0.2, truth.shape), 0.5, 0.3, 8)
    probe = PhysicalProbe(ProbeSettings(semiangle_mrad=25.0, defocus_A=10.0), jnp.zeros(6))
    params = fit.Params(start, jnp.zeros((6, 3)), probe, None)
    config = fit.OptimConfig(lm_probe_steps=10, lr_astigmatism_A=0.0, lr_widths_A2=0.0,
                             lr_amplitudes_rel=0.0, lr_astigmatism_angle_rad=0.0)  # fmt: skip
    rates = fit.Rates.from_config(config, 0.3)
    data = optimizers.FitData(observed, euler, setup)
    keys = jax.random.split(jax.random.PRNGKey(0), 20)
    losses = {}
    for fits_probe in (False, True):
        opt = optimizers.make_optimizer("lm", config, rates, "probe" if fits_probe else None)
        new, state, loss, _ = opt.run(params, opt.init(params), 0, keys, data)
        losses[fits_probe] = float(jnp.mean((new.images(euler, setup) - observed) ** 2))
        if fits_probe:
            focus = float(new.probe.settings.defocus_A) + np.asarray(new.probe.focus_offsets_A)
            np.testing.assert_allclose(focus, 30.0, atol=3.0)
            err = np.linalg.norm(np.asarray(new.atoms.positions_A[:6]) - truth, axis=1)
            assert err.max() < 0.05, err
            assert set(opt.describe(state)) == {"lm_lambda", "lr_scale"}
        else:
            assert float(new.probe.settings.defocus_A) == 10.0  # held
    assert losses[True] < 0.1 * losses[False]
