"""The jit-compiled fit: convergence, parameter groups, NaN steps, compiles, state edits."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import separated_points

from atomjax import fit
from atomjax.atoms import Atoms
from atomjax.geometry import euler_from_tilts_deg
from atomjax.probe import ProbeSettings
from atomjax.render import FixedProbe, ImagingSetup, PhysicalProbe, render_tilt_series

SETUP = ImagingSetup((40, 40), 0.3, max_width_A2=1.0)
EULER_DEG = euler_from_tilts_deg(np.linspace(-60, 60, 6))
EULER = jnp.asarray(np.deg2rad(EULER_DEG))


def _truth(n=8, seed=0):
    # well separated atoms (≥ 2.5 Å apart) inside ±4 Å
    return separated_points(n, np.random.default_rng(seed), 4.0, 2.5)


def _problem(n=8, seed=0, capacity=16, noise_A=0.2):
    truth = _truth(n, seed)
    observed = render_tilt_series(Atoms.create(truth, 0.6, 0.3), EULER_DEG, SETUP)
    rng = np.random.default_rng(seed + 1)
    start = Atoms.create(truth + rng.normal(0, noise_A, truth.shape), 0.5, 0.25, capacity)
    return truth, observed, fit.Params(start, jnp.zeros((len(EULER_DEG), 3)))


def _phase(params, state, config, rates, observed, phase=0, scale=1.0, n_steps=None):
    return fit.run_phase(
        params,
        state,
        jnp.asarray(scale),
        jnp.asarray(1.0),
        jax.random.PRNGKey(phase),
        observed,
        EULER,
        SETUP,
        config,
        rates,
        n_steps or config.steps_per_phase,
    )


def test_phase_recovers_known_atoms():
    truth, observed, params = _problem()
    config = fit.OptimConfig(steps_per_phase=150)
    rates = fit.Rates.from_config(config, 0.25)
    state = fit.init_state(params, config, rates)
    for phase in range(2):
        params, state, scale, losses, n_bad = _phase(params, state, config, rates, observed, phase)
    assert int(n_bad) == 0 and float(scale) == 1.0
    assert losses[-1] < 1e-4 * losses[0] or losses[-1] < 1e-9
    a = params.atoms.alive_numpy()
    err = np.linalg.norm(a["positions_A"] - truth, axis=1)
    assert err.max() < 0.01, err
    np.testing.assert_allclose(a["widths_A2"], 0.6, atol=0.01)
    np.testing.assert_allclose(a["amplitudes"], 0.3, rtol=0.02)


def test_tied_widths_stay_one_value_and_fit_the_common_width():
    truth, observed, params = _problem()
    rng = np.random.default_rng(5)
    widths = rng.uniform(0.4, 0.8, params.atoms.capacity)  # start unequal, dead slots too
    params = eqx.tree_at(lambda p: p.atoms.widths_A2, params, jnp.asarray(widths))
    config = fit.OptimConfig(steps_per_phase=150, tie_widths=True)
    rates = fit.Rates.from_config(config, 0.25)
    state = fit.init_state(params, config, rates)
    for phase in range(2):
        params, state, *_ = _phase(params, state, config, rates, observed, phase)
    b = params.atoms.alive_numpy()["widths_A2"]
    assert np.ptp(b) == 0.0  # one shared value ...
    assert b[0] == pytest.approx(0.6, abs=0.01)  # ... the true common width
    err = np.linalg.norm(params.atoms.alive_numpy()["positions_A"] - truth, axis=1)
    assert err.max() < 0.01, err
    with pytest.raises(ValueError, match="tie_widths"):
        fit.OptimConfig(tie_widths="yes")


def test_frozen_groups_do_not_move_and_widths_are_projected():
    truth, observed, params = _problem()
    config = fit.OptimConfig(steps_per_phase=20, lr_widths_A2=0.0, lr_positions_A=0.0)
    rates = fit.Rates.from_config(config, 0.25)
    state = fit.init_state(params, config, rates)
    new, *_ = _phase(params, state, config, rates, observed)
    np.testing.assert_array_equal(new.atoms.widths_A2, params.atoms.widths_A2)
    np.testing.assert_array_equal(new.atoms.positions_A, params.atoms.positions_A)
    assert not np.allclose(new.atoms.amplitudes, params.atoms.amplitudes)

    # a huge width step is clipped into [width_min_A2, max_width_A2]
    config = fit.OptimConfig(steps_per_phase=5, lr_widths_A2=10.0)
    rates = fit.Rates.from_config(config, 0.25)
    new, *_ = _phase(params, fit.init_state(params, config, rates), config, rates, observed)
    w = np.asarray(new.atoms.widths_A2)
    assert w.min() >= config.width_min_A2 - 1e-12 and w.max() <= SETUP.max_width_A2 + 1e-12


def test_rigid_probe_stack_is_not_fitted():
    setup = ImagingSetup((40, 40), 0.3, n_slices=4, slice_thickness_A=3.0, max_width_A2=1.0)
    probe = FixedProbe.from_settings(ProbeSettings(semiangle_mrad=20.0), setup)
    truth = _truth()
    observed = render_tilt_series(Atoms.create(truth, 0.6, 0.3), EULER_DEG, setup, probe)
    params = fit.Params(Atoms.create(truth, 0.5, 0.25), jnp.zeros((6, 3)), probe)
    config = fit.OptimConfig(steps_per_phase=10)
    rates = fit.Rates.from_config(config, 0.25)
    state = fit.init_state(params, config, rates)
    new, *_ = fit.run_phase(
        params, state, jnp.asarray(1.0), jnp.asarray(1.0), jax.random.PRNGKey(0),
        observed, EULER, setup, config, rates, 10,
    )  # fmt: skip
    np.testing.assert_array_equal(new.probe.stack, probe.stack)
    assert not np.allclose(new.atoms.amplitudes, params.atoms.amplitudes)


def test_nan_step_is_rejected_and_lowers_the_learning_rate():
    truth, observed, params = _problem()
    bad = observed.at[2, 5, 5].set(jnp.nan)  # one corrupted image
    config = fit.OptimConfig(steps_per_phase=40, batch_angles=2)
    rates = fit.Rates.from_config(config, 0.25)
    state = fit.init_state(params, config, rates)
    new, state, scale, losses, n_bad = _phase(params, state, config, rates, bad)
    n_nan = int(np.sum(~np.isfinite(np.asarray(losses))))
    assert n_nan > 0, "the corrupted image was never drawn; the test lost its point"
    assert int(n_bad) == n_nan
    assert float(scale) == pytest.approx(config.nan_lr_factor**n_nan)
    for leaf in jax.tree.leaves(new):
        assert np.all(np.isfinite(np.asarray(leaf)))
    # the run went on: the clean images fit better than before
    clean = jnp.asarray([0, 1, 3, 4, 5])

    def clean_loss(p):
        return float(fit.objective(p, observed, EULER, clean, SETUP, "mse"))

    assert clean_loss(new) < 0.9 * clean_loss(params)


def test_no_recompilation_across_phases_of_equal_capacity(compile_counter):
    truth, observed, params = _problem()
    config = fit.OptimConfig(steps_per_phase=5)
    rates = fit.Rates.from_config(config, 0.25)
    state = fit.init_state(params, config, rates)
    counts = []
    with compile_counter() as c:
        for phase in range(3):
            params, state, scale, *_ = _phase(params, state, config, rates, observed, phase)
            counts.append(c.count)
        # a different capacity must compile again (the counter works)
        bigger = fit.Params(
            Atoms.create(params.atoms.alive_numpy()["positions_A"], capacity=32),
            params.drift_A,
        )
        _phase(bigger, fit.init_state(bigger, config, rates), config, rates, observed)
        counts.append(c.count)
    assert counts[1] == counts[0] and counts[2] == counts[0], counts
    assert counts[3] > counts[2]


def test_resize_state_moves_moments_with_atoms():
    truth, observed, params = _problem(capacity=8)
    config = fit.OptimConfig(steps_per_phase=5)
    rates = fit.Rates.from_config(config, 0.25)
    state = fit.init_state(params, config, rates)
    params, state, *_ = _phase(params, state, config, rates, observed)
    source = np.array([3, 0, -1, 5])  # keep 3 atoms in a new order, add one
    a = params.atoms.alive_numpy()
    new_pos = np.concatenate([a["positions_A"][[3, 0]], [[0.0, 0.0, 0.0]], a["positions_A"][[5]]])
    new_params = fit.Params(Atoms.create(new_pos, capacity=16), params.drift_A)
    new_state = fit.resize_state(state, new_params, source, config, rates)

    def atom_leaves(st):
        found = {}

        def visit(path, leaf):
            names = fit._names(path)
            if "atoms" in names and hasattr(leaf, "shape"):
                found.setdefault(names[-1], []).append(np.asarray(leaf))

        jax.tree_util.tree_map_with_path(visit, st)
        return found

    old, new = atom_leaves(state), atom_leaves(new_state)
    assert set(old) >= {"positions_A", "widths_A2", "amplitudes"}
    for name in old:
        for o, n in zip(old[name], new[name], strict=True):
            assert n.shape[0] == 16
            np.testing.assert_array_equal(n[[0, 1, 3]], o[[3, 0, 5]])
            assert np.all(n[2] == 0) and np.all(n[4:] == 0)
            assert np.any(o[[3, 0, 5]] != 0)
    # the new state works with the new parameters
    _phase(new_params, new_state, config, rates, observed)


def test_physical_probe_fits_a_focus_change():
    setup = ImagingSetup((40, 40), 0.3, n_slices=4, slice_thickness_A=4.0, max_width_A2=1.0)
    truth = _truth()
    true_probe = PhysicalProbe(ProbeSettings(semiangle_mrad=25.0, defocus_A=30.0))
    observed = render_tilt_series(Atoms.create(truth, 0.5, 0.3), EULER_DEG, setup, true_probe)
    start = PhysicalProbe(ProbeSettings(semiangle_mrad=25.0, defocus_A=10.0), jnp.zeros(6))
    params = fit.Params(Atoms.create(truth, 0.5, 0.3), jnp.zeros((6, 3)), start)
    config = fit.OptimConfig(
        steps_per_phase=60, lr_positions_A=0.0, lr_widths_A2=0.0, lr_amplitudes_rel=0.0,
        lr_defocus_A=1.0, lr_astigmatism_A=0.0, lr_astigmatism_angle_rad=0.0,
    )  # fmt: skip
    rates = fit.Rates.from_config(config, 0.3)
    state = fit.init_state(params, config, rates)
    new, state, scale, losses, _ = fit.run_phase(
        params, state, jnp.asarray(1.0), jnp.asarray(1.0), jax.random.PRNGKey(0),
        observed, EULER, setup, config, rates, 60,
    )  # fmt: skip
    focus = float(new.probe.settings.defocus_A) + np.asarray(new.probe.focus_offsets_A)
    assert abs(float(np.mean(np.asarray(new.probe.focus_offsets_A)))) < 1e-9  # zero mean
    assert losses[-1] < 0.05 * losses[0]
    np.testing.assert_allclose(focus, 30.0, atol=3.0)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown loss"):
        fit.OptimConfig(loss="l3")
    with pytest.raises(ValueError, match="lr_positions_A"):
        fit.OptimConfig(lr_positions_A=-1.0)
    with pytest.raises(ValueError, match="unknown OptimConfig settings"):
        fit.OptimConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="steps_per_phase"):
        fit.OptimConfig(steps_per_phase=0)


def test_background_level_is_fitted():
    truth, observed, params = _problem(noise_A=0.0)
    level = np.array([0.05, 0.1, 0.0, 0.2, 0.07, 0.12])
    shifted = observed + jnp.asarray(level)[:, None, None]
    params = fit.Params(params.atoms, params.drift_A, None, jnp.zeros(6))
    config = fit.OptimConfig(steps_per_phase=300, lr_background=5e-3)
    rates = fit.Rates.from_config(config, 0.25)
    state = fit.init_state(params, config, rates)
    new, *_ = _phase(params, state, config, rates, shifted)
    np.testing.assert_allclose(np.asarray(new.background), level, atol=2e-3)
