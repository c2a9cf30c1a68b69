"""The atoms' profile tail (direct mode): the kernel against the analytic two-Gaussian
profile, its Gauss–Newton fit against known values, and a run that resumes bit for bit."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import separated_points, small_au_series

from atomjax import optimizers, pose, tail
from atomjax.atoms import Atoms
from atomjax.fit import Params
from atomjax.reconstruct import ReconstructConfig, reconstruct
from atomjax.render import ImagingSetup, render_tilt_series

TILTS = np.c_[np.zeros(5), np.linspace(-60, 60, 5), np.zeros(5)]


def _atoms(n=6, seed=0, width=0.5):
    rng = np.random.default_rng(seed)
    pos = separated_points(n, rng, 3.0, 1.8)
    return Atoms.create(pos, width, rng.uniform(0.5, 1.5, n), dtype=jnp.float64)


def test_kernel_renders_the_two_gaussian_profile():
    """Atoms H·exp(−r²/B) convolved with the kernel equal two plain direct renders:
    (1 − w)·H at width B and w·H·B/(B + ΔB) at width B + ΔB (Gaussians convolve into
    a Gaussian of the summed width), and the integrated intensity is unchanged (the
    convolution is circular; the image is wide enough that no tail reaches round)."""
    setup = ImagingSetup((96, 96), 0.25, max_width_A2=3.0)
    atoms = _atoms()
    w, db = 0.35, 1.2
    kernel = tail.TailKernel.create(w, db, jnp.float64)
    got = np.asarray(render_tilt_series(atoms, TILTS, setup, probe=kernel))
    x, b, h = atoms.positions_A, atoms.widths_A2, atoms.amplitudes
    core = Atoms.create(x, b, (1 - w) * h, dtype=jnp.float64)
    wide = Atoms.create(x, b + db, w * h * b / (b + db), dtype=jnp.float64)
    want = np.asarray(render_tilt_series(core, TILTS, setup)) + np.asarray(
        render_tilt_series(wide, TILTS, setup)
    )
    np.testing.assert_allclose(got, want, atol=1e-9 * want.max())
    plain = np.asarray(render_tilt_series(atoms, TILTS, setup))
    np.testing.assert_allclose(got.sum((1, 2)), plain.sum((1, 2)), rtol=1e-9)
    assert got.min() >= 0.0  # the FFT's round-off below zero is clamped
    # the profile helper says the same along a line through an isolated atom
    r = np.linspace(0, 2.5, 6)
    ratio = tail.profile(0.5, w, db, r) / np.exp(-(r**2) / 0.5)
    assert ratio[0] == pytest.approx(1 - w + w * 0.5 / 1.7) and np.all(np.diff(ratio) > 0)


@pytest.mark.parametrize("loss", ["mse", "poisson"])
def test_refine_recovers_a_known_tail(loss):
    """Images rendered with w = 0.45, ΔB = 1.6 Å²; from the default start (0.3, 1.0)
    with the atoms held at the truth, the Gauss–Newton steps land on the truth."""
    setup = ImagingSetup((56, 56), 0.3, max_width_A2=1.5)
    atoms = _atoms(seed=1)
    euler = jnp.asarray(np.deg2rad(TILTS))
    truth = tail.TailKernel.create(0.45, 1.6, jnp.float64)
    drift = jnp.zeros((len(TILTS), 3))
    params = Params(atoms, drift, truth, jnp.full(len(TILTS), 0.05))
    observed = params.images(euler, setup) * (20.0 if loss == "poisson" else 1.0)
    start = Params(atoms, drift, tail.TailKernel.create(dtype=jnp.float64), params.background)
    if loss == "poisson":  # counts: the atoms and background on the counts' scale
        counts = Atoms.create(atoms.positions_A, atoms.widths_A2, 20.0 * atoms.amplitudes,
                              dtype=jnp.float64)  # fmt: skip
        start = Params(counts, drift, start.probe, 20.0 * params.background)
    fitted = tail.refine(start, observed, euler, setup, loss, n_iter=12).probe
    assert float(fitted.share) == pytest.approx(0.45, abs=1e-4)
    assert float(fitted.width_A2) == pytest.approx(1.6, abs=1e-3)
    # nothing but the kernel moved
    again = tail.refine(start, observed, euler, setup, loss, n_iter=1)
    np.testing.assert_array_equal(again.atoms.positions_A, start.atoms.positions_A)


def test_kernel_settings_and_depth():
    with pytest.raises(ValueError, match="share"):
        tail.TailKernel.create(1.0, 1.0)
    with pytest.raises(ValueError, match="width"):
        tail.TailKernel.create(0.3, 20.0)
    params = Params(_atoms(), jnp.zeros((5, 3)), tail.TailKernel.create())
    assert not pose.has_depth(params)  # the kernel is the same at every depth
    assert optimizers.fitted_extra(params.probe) == "tail"
    assert optimizers.fitted_extra(None) is None
    with pytest.raises(ValueError, match="fitted"):
        optimizers.make_optimizer("lm", ReconstructConfig().optim, None, "kernel")
    with pytest.raises(ValueError, match="profile_tail is for mode 'direct'"):
        ReconstructConfig(mode="rigid", probe={"semiangle_mrad": 25.0}, profile_tail=True)
    with pytest.raises(ValueError, match="profile_tail must be a bool"):
        ReconstructConfig(profile_tail="yes")
    # the default: on where the pose is refined in direct mode, and recorded resolved
    assert ReconstructConfig().profile_tail is False
    assert ReconstructConfig(refine_pose=True).profile_tail is True
    assert ReconstructConfig(refine_pose=True, profile_tail=False).profile_tail is False
    rigid = ReconstructConfig(mode="rigid", probe={"semiangle_mrad": 25.0}, refine_pose=True)
    assert rigid.profile_tail is False
    assert ReconstructConfig.from_dict(ReconstructConfig(refine_pose=True).to_dict()).profile_tail


@pytest.fixture(scope="module")
def series():
    return small_au_series(5.5, 9, margin_A=3.0)


def test_a_run_with_the_tail_fits_it_and_resumes_bit_identical(series, tmp_path):
    config = ReconstructConfig(profile_tail=True, optim={"n_phases": 2, "steps_per_phase": 15},
                               init={"sirt_iterations": 5}, uncertainty=False)  # fmt: skip
    kw = dict(progress=False, figures=False)
    full = reconstruct(series, config, out_dir=tmp_path / "a", **kw)
    m = full.report["metrics"]
    assert m["tp_rate"] == 1.0 and m["fp_rate"] == 0.0 and m["rmsd_pm"] < 10.0, m
    probe = full.report["probe"]
    assert probe["kind"] == "tail"
    # fitted: moved off the start, towards the projected potential's heavier tail
    assert abs(probe["share"] - tail.SHARE0) > 1e-3 and 0.05 < probe["share"] < 0.9
    reconstruct(series, config, out_dir=tmp_path / "b", max_phases=1, **kw)
    resumed = reconstruct(series, config, out_dir=tmp_path / "b", resume=True, **kw)
    np.testing.assert_array_equal(resumed.positions_A, full.positions_A)
    assert resumed.report["probe"] == probe
    assert resumed.report["history"]["loss"] == full.report["history"]["loss"]


def test_adam_fits_the_tail_as_its_own_group(series, tmp_path):
    """Where Adam runs (mini-batches of angles, as the Ta film preset's), the tail is a
    parameter group with ``optim.lr_tail``: it moves with the rate, stays put without."""
    optim = {"n_phases": 1, "steps_per_phase": 40, "batch_angles": 4}
    kw = dict(progress=False, figures=False)
    runs = {}
    for lr in (0.05, 0.0):
        config = ReconstructConfig(profile_tail=True, optim={**optim, "lr_tail": lr},
                                   init={"sirt_iterations": 5}, uncertainty=False)  # fmt: skip
        assert config.optim.method == "adam"
        runs[lr] = reconstruct(series, config, out_dir=tmp_path / str(lr), **kw).report["probe"]
    assert abs(runs[0.05]["share"] - tail.SHARE0) > 1e-3
    assert runs[0.0]["share"] == pytest.approx(tail.SHARE0, abs=1e-6)
    assert runs[0.0]["width_A2"] == pytest.approx(tail.WIDTH0_A2, abs=1e-6)
