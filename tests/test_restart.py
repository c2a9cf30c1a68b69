"""Restarts from the fit's own atoms, jittered (atomjax.restart and the driver's use)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TWO_PHASES, noisy_small_au_series

from atomjax import restart, uncertainty
from atomjax.atoms import Atoms
from atomjax.fit import Params
from atomjax.reconstruct import ReconstructConfig, reconstruct

FAST = {**TWO_PHASES, "restarts": 1}


@pytest.fixture(scope="module")
def series():
    return noisy_small_au_series()


def _params(n=2000, capacity=2048):
    rng = np.random.default_rng(0)
    atoms = Atoms.create(
        rng.uniform(-10, 10, (n, 3)), np.full(n, 0.5), np.ones(n), capacity=capacity
    )
    return Params(atoms, jnp.zeros((3, 3)), None, None, None)


def test_jitter_moves_the_live_atoms_alone_by_the_given_spread():
    p = _params()
    q = restart.jittered(p, 0.3, restart.seed(0, 0))
    before, after = np.asarray(p.atoms.positions_A), np.asarray(q.atoms.positions_A)
    live = np.asarray(p.atoms.alive)
    offset = (after - before)[live]
    assert offset.std() == pytest.approx(0.3, rel=0.03)  # 6000 draws: ±1.6 % is one σ
    assert np.abs(offset.mean(0)).max() < 0.03
    np.testing.assert_array_equal(after[~live], before[~live])  # dead slots untouched
    for name in ("widths_A2", "amplitudes", "alive"):
        np.testing.assert_array_equal(getattr(q.atoms, name), getattr(p.atoms, name))
    again = restart.jittered(p, 0.3, restart.seed(0, 0))  # the seed fixes it
    np.testing.assert_array_equal(again.atoms.positions_A, q.atoms.positions_A)
    other = restart.jittered(p, 0.3, restart.seed(0, 1))
    assert not np.allclose(other.atoms.positions_A, q.atoms.positions_A)
    assert restart.seed(0, 0) != restart.seed(1, 0)


def test_jitter_is_a_multiple_of_each_atoms_sigma_between_the_floor_and_the_cap():
    p = _params(n=4, capacity=6)
    sig = {"sigma_x_A": np.array([0.01, 0.2, 1.0, 0.05]),
           "sigma_y_A": np.array([0.01, 0.2, 1.0, 0.05]),
           "sigma_z_A": np.array([0.02, 0.3, 1.0, 0.5])}  # fmt: skip
    j = restart.jitter_A(p.atoms, sig, 0.3, 3.0)
    assert j.shape == (6, 3)
    np.testing.assert_allclose(j[:4, 0], [0.3, 0.6, restart.MAX_JITTER_A, 0.3])
    np.testing.assert_allclose(j[:4, 2], [0.3, 0.9, restart.MAX_JITTER_A, 1.0])
    np.testing.assert_allclose(j[4:], 0.3)  # dead slots: the floor (not moved anyway)
    np.testing.assert_allclose(restart.jitter_A(p.atoms, None, 0.3, 3.0), 0.3)  # no σ
    q = restart.jittered(p, jnp.asarray(j, jnp.float32), 1)
    assert np.isfinite(np.asarray(q.atoms.positions_A)).all()


def test_the_likelihood_excess_is_the_chi2_or_the_deviance_of_the_worse_model():
    from atomjax.loss import mse, poisson
    from atomjax.uncertainty import noise_model

    rng = np.random.default_rng(1)
    mu = rng.uniform(0.2, 1.0, (6, 40, 40))
    off = mu + 0.05
    obs = mu + rng.normal(0, 0.1, mu.shape)  # Gaussian noise, σ 0.1
    losses = [float(mse(obs, mu)), float(mse(obs, off))]
    x = restart.likelihood_excess(losses, 0, obs.size, "mse", noise_model(obs, mu))
    r = obs - mu  # Σ ((r − 0.05)² − r²) / σ̂², σ̂² the mean squared residual
    assert x[0] == 0.0
    assert x[1] == pytest.approx(np.sum((r - 0.05) ** 2 - r**2) / np.mean(r**2), rel=1e-5)
    assert x[1] == pytest.approx(0.25 * mu.size, rel=0.15)  # N·0.05²/σ², ± 3 σ of noise
    kappa = 50.0  # counts per unit: the deviance in counts with the true κ
    y = rng.poisson(kappa * mu) / kappa
    losses = [float(poisson(y, mu)), float(poisson(y, off))]
    x = restart.likelihood_excess(losses, 0, y.size, "poisson", noise_model(y, mu))
    k = kappa * y
    deviance = 2 * np.sum(kappa * (off - mu) - k * np.log(off / mu))
    assert x[1] == pytest.approx(deviance, rel=0.1)  # κ from the residual: within 10 %


def test_the_lowest_loss_is_kept_and_a_nan_never_is():
    assert restart.kept([3.0, 1.0, 2.0]) == 1
    assert restart.kept([1.0, 1.0]) == 0
    assert restart.kept([np.nan, 2.0]) == 1


@pytest.mark.parametrize(
    "field, value",
    [("restarts", -1), ("restarts", restart.MAX_RESTARTS + 1), ("restarts", 1.5),
     ("restarts", True), ("restart_jitter_A", 0.0), ("restart_jitter_A", "big"),
     ("restart_phases", 0)],
)  # fmt: skip
def test_bad_restart_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        ReconstructConfig(**{field: value})


def test_a_restart_that_ends_lower_replaces_the_fit_and_its_atoms_widen_the_sigmas(series):
    # a fit stopped well short of its minimum: the restart's phases carry it further
    short = {**FAST, "optim": {"n_phases": 1, "steps_per_phase": 5, "converge": False}}
    alone = reconstruct(series, {**short, "restarts": 0}, progress=False, figures=False)
    result = reconstruct(series, {**short, "restarts": 1}, progress=False, figures=False)
    rec = result.report["restarts"]
    assert rec["n"] == 1 and len(rec["fits"]) == 1
    assert rec["loss_fit"] == pytest.approx(alone.report["history"]["loss"][-1], rel=0.05)
    assert rec["kept"] == restart.kept([rec["loss_fit"], rec["fits"][0]["loss"]]) == 1
    # the fit itself, beaten, is compared however far above (where the search stopped)
    assert rec["delta_chi2_fit"] > 0 and rec["fits"][0]["delta_chi2"] == 0.0
    assert rec["fits_compared"] == 1 and not rec["fits"][0]["compared"]
    same = result.positions_A.shape == alone.positions_A.shape and np.allclose(
        result.positions_A, alone.positions_A
    )
    assert not same  # the restart's atoms (one may have gone dark in it)
    # the σ: the kept fit's own, widened by its offsets to the other (the fit itself)
    var = uncertainty.search_variance(result.positions_A, [alone.positions_A])
    s = result.sigmas
    for j, axis in enumerate("xyz"):
        np.testing.assert_allclose(s[f"sigma_search_{axis}_A"] ** 2, var[:, j], rtol=1e-6)
    own = result.report["uncertainty"]["statistical"]["predicted_rmsd_pm"]
    assert result.report["uncertainty"]["predicted_rmsd_pm"] > own
    widened = np.sqrt(sum(s[f"sigma_{a}_A"] ** 2 for a in "xyz"))
    search = np.sqrt(sum(s[f"sigma_search_{a}_A"] ** 2 for a in "xyz"))
    assert np.all(widened >= search) and search.max() > 0
    assert "calibration" in result.report["uncertainty"]["statistical"]


def test_a_kept_fit_is_unchanged_by_its_restart_and_no_restart_adds_atoms(series):
    alone = reconstruct(series, {**FAST, "restarts": 0}, progress=False, figures=False)
    result = reconstruct(series, FAST, progress=False, figures=False)
    rec = result.report["restarts"]
    assert rec["fits"][0]["n_atoms"] <= len(alone.positions_A)  # no adapt step in a restart
    far = rec["fits"][0]["delta_chi2"] > rec["delta_chi2_allowed"]  # a restart not back
    assert rec["fits_compared"] == (0 if rec["kept"] == 0 and far else 1)
    if rec["kept"] == 0:  # the fit's own atoms, bit for bit, and its own σ under the search's
        np.testing.assert_array_equal(result.positions_A, alone.positions_A)
        for a in "xyz":
            np.testing.assert_allclose(
                result.sigmas[f"sigma_{a}_A"] ** 2,
                alone.sigmas[f"sigma_{a}_A"] ** 2 + result.sigmas[f"sigma_search_{a}_A"] ** 2,
                rtol=1e-6,
            )
    assert "sigma_search_x_A" not in alone.sigmas and "restarts" not in alone.report


def test_resume_runs_the_restart_again_bit_for_bit(series, tmp_path):
    whole = reconstruct(series, FAST, progress=False, figures=False)
    out = tmp_path / "run"
    first = reconstruct(series, FAST, out_dir=out, progress=False, figures=False, max_phases=1)
    assert first.report["status"] == "interrupted" and "restarts" not in first.report
    done = reconstruct(series, FAST, out_dir=out, resume=True, progress=False, figures=False)
    np.testing.assert_array_equal(done.positions_A, whole.positions_A)
    np.testing.assert_array_equal(done.sigmas["sigma_x_A"], whole.sigmas["sigma_x_A"])
    assert done.report["restarts"]["kept"] == whole.report["restarts"]["kept"]
    # the folder's atoms carry the search's share
    from atomjax.outputs import read_extxyz

    cols = read_extxyz(out / "atoms.extxyz")["columns"]
    np.testing.assert_allclose(cols["sigma_search_z_A"], done.sigmas["sigma_search_z_A"],
                               rtol=1e-6)  # fmt: skip


def test_the_settings_record_the_restarts():
    assert ReconstructConfig().restarts == 0  # off by default: it costs 35-105 % on crystals
    cfg = ReconstructConfig(**FAST)
    assert dataclasses.asdict(cfg)["restarts"] == 1
    d = cfg.to_dict()
    assert d["restart_jitter_A"] == 0.3 and d["restart_jitter_sigma"] == 3.0
    assert d["restart_phases"] == 2


def test_restarts_without_sigmas_move_every_atom_by_the_floor(series):
    cfg = {**FAST, "uncertainty": False}
    result = reconstruct(series, cfg, progress=False, figures=False)
    rec = result.report["restarts"]
    assert result.sigmas is None and "uncertainty" not in result.report
    assert rec["jitter_median_A"] == pytest.approx(0.3)  # the floor: no σ to scale by
    assert len(rec["fits"]) == 1


def test_a_signal_during_a_restart_keeps_the_fit_and_resume_finishes_it(
    series, tmp_path, monkeypatch
):
    import os
    import signal

    whole = reconstruct(series, FAST, progress=False, figures=False)
    alone = reconstruct(series, {**FAST, "restarts": 0}, progress=False, figures=False)
    original = restart.jittered

    def jittered_then_sigterm(*args, **kwargs):
        out = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # lands before the restart's first piece
        return out

    monkeypatch.setattr(restart, "jittered", jittered_then_sigterm)
    out = tmp_path / "run"
    part = reconstruct(series, FAST, out_dir=out, progress=False, figures=False)
    monkeypatch.setattr(restart, "jittered", original)
    assert part.report["status"] == "interrupted" and part.report["stopped_by"] == "SIGTERM"
    assert "restarts" not in part.report  # the fit's own atoms and σ
    np.testing.assert_array_equal(part.positions_A, alone.positions_A)
    np.testing.assert_array_equal(part.sigmas["sigma_x_A"], alone.sigmas["sigma_x_A"])
    done = reconstruct(series, FAST, out_dir=out, resume=True, progress=False, figures=False)
    assert done.report["status"] == "finished"
    np.testing.assert_array_equal(done.positions_A, whole.positions_A)
    assert done.report["restarts"]["kept"] == whole.report["restarts"]["kept"]


def test_the_console_table_says_which_fit_was_kept():
    from atomjax.pipeline import accuracy_rows

    rep = {"n_atoms": 3, "r_factor": {"mean": 0.1}, "run_time_s": 1.0,
           "restarts": {"n": 1, "kept": 1}}  # fmt: skip
    assert ("restarts", "1, kept restart 1 (lower loss)") in accuracy_rows(rep)
    rep["restarts"]["kept"] = 0
    assert ("restarts", "1, kept the fit") in accuracy_rows(rep)
