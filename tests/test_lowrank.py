"""The low-rank depth interaction against the full per-slice model (the oracle)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atomjax import Atoms, ImagingSetup, ProbeSettings, euler_from_tilts_deg, make_probe
from atomjax.render import FixedProbe, PhysicalProbe, depth_basis, depth_rank_error, render_series

SETTINGS = ProbeSettings(energy_eV=300e3, semiangle_mrad=25.0, defocus_A=10.0)


def _problem(n_slices=12):
    rng = np.random.default_rng(3)
    atoms = Atoms.create(rng.uniform(-5, 5, (30, 3)), width_A2=0.5, amplitude=1.0)
    setup = ImagingSetup((48, 48), 0.3, n_slices=n_slices, slice_thickness_A=1.5, angle_chunk=3)
    euler = jnp.asarray(np.deg2rad(euler_from_tilts_deg([-50.0, 0.0, 35.0])))
    drift = jnp.zeros((3, 3))
    return atoms, setup, euler, drift


def _low_rank(setup, stack, rank):
    return dataclasses.replace(setup, depth_basis=depth_basis(stack, rank))


def test_full_rank_equals_the_per_slice_model():
    atoms, setup, euler, drift = _problem()
    probe = make_probe("rigid", SETTINGS, setup)
    want = render_series(atoms, euler, drift, probe, setup)
    full = _low_rank(setup, probe.stack, setup.n_slices)
    got = render_series(atoms, euler, drift, probe, full)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-10 * float(want.max()))


def test_error_falls_with_rank_and_follows_the_stack_error():
    atoms, setup, euler, drift = _problem()
    probe = make_probe("rigid", SETTINGS, setup)
    want = np.asarray(render_series(atoms, euler, drift, probe, setup))
    image_errors, stack_errors = [], []
    for rank in (1, 2, 3, 4, 6):
        low = _low_rank(setup, probe.stack, rank)
        got = np.asarray(render_series(atoms, euler, drift, probe, low))
        image_errors.append(np.linalg.norm(got - want) / np.linalg.norm(want))
        stack_errors.append(depth_rank_error(probe.stack, low.depth_basis))
    assert all(a > b for a, b in zip(image_errors, image_errors[1:], strict=False))
    assert all(a > b for a, b in zip(stack_errors, stack_errors[1:], strict=False))
    assert image_errors[3] < 1e-2  # 4 components for 12 slices of a 25 mrad probe
    assert image_errors[-1] <= 1.5 * stack_errors[-1] + 1e-12


def test_physical_probe_with_focus_per_image_uses_the_same_basis():
    atoms, setup, euler, drift = _problem()
    offsets = jnp.asarray([-8.0, 0.0, 8.0])
    probe = PhysicalProbe(SETTINGS, offsets)
    want = np.asarray(render_series(atoms, euler, drift, probe, setup))
    basis_from = FixedProbe.from_settings(SETTINGS, setup).stack
    low = _low_rank(setup, basis_from, 6)
    got = np.asarray(render_series(atoms, euler, drift, probe, low))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2


def test_low_rank_image_is_differentiable_in_depth():
    atoms, setup, euler, drift = _problem()
    probe = make_probe("rigid", SETTINGS, setup)
    low = _low_rank(setup, probe.stack, 4)
    j, eps = 5, 1e-4

    def f(z):
        moved = eqx.tree_at(lambda a: a.positions_A, atoms, atoms.positions_A.at[j, 2].set(z))
        return jnp.sum(render_series(moved, euler[1:2], drift[1:2], probe, low) ** 2)

    z0 = atoms.positions_A[j, 2]
    grad = float(jax.grad(f)(z0))
    fd = (float(f(z0 + eps)) - float(f(z0 - eps))) / (2 * eps)
    assert grad != 0.0
    assert grad == pytest.approx(fd, rel=1e-5)


def test_bad_bases_are_refused():
    _, setup, _, _ = _problem(n_slices=4)
    with pytest.raises(ValueError, match=r"depth_basis must have shape \(n_slices, R\)"):
        dataclasses.replace(setup, depth_basis=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="finite"):
        dataclasses.replace(setup, depth_basis=np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="rank must lie between 1 and n_slices = 4"):
        depth_basis(np.ones((4, 8, 8)), 5)


@pytest.mark.slow
def test_reconstruction_with_low_rank_depth_matches_the_full_model():
    from atomjax import reconstruct, simulate, structures

    particle = structures.fcc_sphere("Au", 4.5)
    series = simulate.simulate_fast(particle, np.linspace(-60, 60, 7), progress=False)
    settings = {
        "mode": "rigid",
        "probe": {"energy_eV": 300e3, "semiangle_mrad": 25.0},
        "optim": {"n_phases": 2, "steps_per_phase": 25},
        "checkpoint": False,
    }
    full = reconstruct(series, settings, progress=False)
    low = reconstruct(series, {**settings, "depth_rank": 3}, progress=False)
    assert low.report["imaging_setup"]["depth_rank"] == 3
    assert full.report["imaging_setup"]["depth_rank"] is None
    assert low.report["metrics"]["tp_rate"] == 1.0 and low.report["metrics"]["fp_rate"] == 0.0
    from test_sharding import assert_same_atoms

    assert_same_atoms(low.positions_A, full.positions_A, 5e-3)
    assert low.report["r_factor"]["mean"] == pytest.approx(
        full.report["r_factor"]["mean"], rel=0.05
    )
