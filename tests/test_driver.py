"""The driver: convergence ends a converged fit early and lets an unconverged one run,
the reason is recorded, and both optimizers sit behind one interface."""

import json

import numpy as np
import pytest
from helpers import small_au_series

from atomjax import optimizers
from atomjax.reconstruct import ReconstructConfig, reconstruct


@pytest.fixture(scope="module")
def series():
    return small_au_series(4.5, 7, orientation_seed=3)


def test_a_converged_fit_ends_early_and_says_why(series, tmp_path):
    config = ReconstructConfig(optim={"n_phases": 6})  # the defaults: LM, 10 steps a phase
    assert config.optim.method == "lm" and config.optim.steps_per_phase == 15
    result = reconstruct(series, config, out_dir=tmp_path, progress=False, figures=False)
    phases = result.report["history"]["phases"]
    assert result.report["ended_by"] == "converged" and len(phases) < 6
    assert phases[-1]["converged"] and phases[-1]["n_steps"] < 10
    assert result.report["metrics"]["tp_rate"] == 1.0 and result.report["metrics"]["rmsd_pm"] < 5
    assert json.loads((tmp_path / "report.json").read_text())["ended_by"] == "converged"


def test_an_unconverged_fit_runs_its_whole_budget(series):
    # Adam from the tomogram's peaks: after 2 × 25 steps the loss is still falling fast
    config = ReconstructConfig(optim={"method": "adam", "n_phases": 2, "steps_per_phase": 25})
    result = reconstruct(series, config, progress=False, figures=False)
    phases = result.report["history"]["phases"]
    assert result.report["ended_by"] == "budget"
    assert [p["n_steps"] for p in phases] == [25, 25] and not any(p["converged"] for p in phases)
    # the same fit with convergence off: the same steps
    off = ReconstructConfig(optim={**config.optim.__dict__, "converge": False})
    again = reconstruct(series, off, progress=False, figures=False)
    assert again.report["history"]["loss"] == result.report["history"]["loss"]


def test_the_driver_holds_either_optimizer_behind_one_interface(series):
    from atomjax import fit

    for method in ("adam", "lm"):
        config = ReconstructConfig(optim={"method": method, "n_phases": 1, "steps_per_phase": 10})
        result = reconstruct(series, config, progress=False, figures=False)
        assert result.report["optimizer"] == method
        assert result.report["history"]["loss"][-1] < result.report["history"]["loss"][0]
    rates = fit.Rates.from_config(fit.OptimConfig(), 1.0)
    for method in ("adam", "lm"):
        opt = optimizers.make_optimizer(method, fit.OptimConfig(method=method), rates)
        assert all(callable(getattr(opt, name)) for name in ("init", "resize", "run", "describe"))
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizers.make_optimizer("sgd", fit.OptimConfig(), rates)


def test_atoms_the_fit_switched_off_are_dropped_without_changing_the_images():
    """Amplitude 0 atoms add nothing: dropped at the end (species need H > 0)."""
    import jax.numpy as jnp

    from atomjax import fit
    from atomjax.atoms import Atoms
    from atomjax.data import TiltSeries
    from atomjax.driver import without_dark_atoms
    from atomjax.geometry import euler_from_tilts_deg
    from atomjax.reconstruct import make_setup

    euler_deg = euler_from_tilts_deg(np.linspace(-60, 60, 3))
    setup = make_setup(TiltSeries(np.zeros((3, 32, 32)), euler_deg, 0.4), ReconstructConfig())
    pos = np.array([[0.0, 0.0, 0.0], [2.5, 0.0, 0.0], [0.0, 2.5, 1.0]])
    atoms = Atoms.create(pos, 0.6, np.array([0.3, 0.0, 0.2]), capacity=8)
    params = fit.Params(atoms, jnp.zeros((3, 3)), None, jnp.full(3, 0.1))
    euler = jnp.asarray(np.deg2rad(euler_deg))
    kept, n = without_dark_atoms(params)
    assert n == 1 and kept.atoms.n_alive == 2
    np.testing.assert_array_equal(kept.images(euler, setup), params.images(euler, setup))
    assert without_dark_atoms(kept)[1] == 0
