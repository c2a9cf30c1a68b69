"""The driver: convergence ends a converged fit early and lets an unconverged one run,
the reason is recorded, and both optimizers sit behind one interface."""

import json

import numpy as np
import pytest

from atomjax import optimizers, simulate, structures
from atomjax.reconstruct import ReconstructConfig, reconstruct


@pytest.fixture(scope="module")
def series():
    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", 4.5), seed=3)
    return simulate.simulate_fast(particle, np.linspace(-60, 60, 7), pixel_size_A=0.35,
                                  progress=False)  # fmt: skip


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
