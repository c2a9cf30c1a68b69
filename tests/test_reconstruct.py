"""End-to-end reconstruction on a tiny abTEM series: accuracy, outputs, resume, errors."""

import json

import numpy as np
import pytest
from helpers import small_au_series

from atomjax import metrics, simulate, structures
from atomjax.outputs import read_extxyz
from atomjax.reconstruct import ReconstructConfig, reconstruct

FAST = {
    "optim": {"n_phases": 3, "steps_per_phase": 60},
    "init": {"method": "peaks", "sirt_iterations": 5},
}


@pytest.fixture(scope="module")
def series():
    return small_au_series(5.5, 9, margin_A=3.0)


def test_direct_fit_finds_every_atom_and_writes_the_run_folder(series, tmp_path):
    out = tmp_path / "run"
    result = reconstruct(series, ReconstructConfig(**FAST), out_dir=out, progress=False)
    m = result.report["metrics"]
    assert m["n_truth"] == len(series.atoms_positions_A)
    assert m["tp_rate"] == 1.0 and m["fp_rate"] == 0.0, m
    assert m["rmsd_pm"] < 15.0, m["rmsd_pm"]
    # the loss went down and the history is complete
    loss = result.report["history"]["loss"]
    phases = result.report["history"]["phases"]
    assert len(loss) == sum(p["n_steps"] for p in phases) <= 3 * 60 and loss[-1] < 0.2 * loss[0]
    assert len(result.report["r_factor"]["per_image"]) == series.n_angles
    # run folder: atoms, report, figures, checkpoint
    for name in ("atoms.extxyz", "report.json", "projections.png", "loss.png", "atoms.png",
                 "atoms_sigma.png"):  # fmt: skip
        assert (out / name).is_file(), name
    back = read_extxyz(out / "atoms.extxyz")
    np.testing.assert_allclose(back["positions_A"], result.positions_A, atol=1e-6)
    # every atom has its error bars; the report their distribution and calibration
    sigma_x = back["columns"]["sigma_x_A"]
    assert sigma_x.shape == (len(result.positions_A),) and np.all(sigma_x > 0)
    u = result.report["uncertainty"]
    assert 0 < u["predicted_rmsd_pm"] < 15 and len(u["calibration"]["z_std"]) == 3
    report = json.loads((out / "report.json").read_text())
    assert report["n_atoms"] == len(result.positions_A)
    # and its detection z, every atom above the threshold the report names
    det = report["detection"]
    assert det["rule"] == "likelihood" and det["threshold_z"] > 5
    z = back["columns"]["z_detection"]
    assert z.shape == (len(result.positions_A),)
    assert det["n_below_threshold"] == int(np.sum(z < det["threshold_z"]))
    assert det["z_quantiles"]["0.0"] == pytest.approx(float(z.min()), rel=1e-5)
    assert report["settings"]["mode"] == "direct"
    assert (out / "checkpoint" / "checkpoint.json").is_file()
    # the atoms file is what the evaluation CLI reads
    found, _ = metrics.read_atoms(out / "atoms.extxyz")
    assert len(found) == len(result.positions_A)


def test_resume_equals_uninterrupted(series, tmp_path):
    config = ReconstructConfig(**FAST)
    full = reconstruct(series, config, out_dir=tmp_path / "a", progress=False, figures=False)
    part = reconstruct(
        series, config, out_dir=tmp_path / "b", progress=False, figures=False, max_phases=2
    )
    assert len(part.report["history"]["phases"]) == 2
    first = part.report["history"]["phases"][0]  # each phase's wall time, fit and adapt step
    assert first["fit_seconds"] > 0 and first["adapt_seconds"] > 0, first
    resumed = reconstruct(
        series, config, out_dir=tmp_path / "b", resume=True, progress=False, figures=False
    )
    np.testing.assert_array_equal(resumed.positions_A, full.positions_A)
    np.testing.assert_array_equal(resumed.amplitudes, full.amplitudes)
    assert resumed.report["history"]["loss"] == full.report["history"]["loss"]


def test_bad_requests_raise_clearly(series, tmp_path):
    with pytest.raises(ValueError, match="interaction mode"):
        ReconstructConfig(mode="ddi")
    with pytest.raises(ValueError, match="unknown InitConfig settings"):
        ReconstructConfig.from_dict({"init": {"methd": "grid"}})
    no_probe = series.replace(probe=None)
    with pytest.raises(ValueError, match="needs probe settings"):
        reconstruct(no_probe, ReconstructConfig(mode="rigid", **FAST), progress=False)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        reconstruct(series, ReconstructConfig(**FAST), out_dir=tmp_path, resume=True)


def test_noisy_series_gives_no_atoms_in_the_vacuum(tmp_path):
    """With noise the normalised vacuum sits above 0; the fitted background absorbs it."""
    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", 5.5), seed=2)
    noisy = simulate.simulate_fast(
        particle, np.linspace(-60, 60, 9), pixel_size_A=0.35, margin_A=3.0,
        noise_std_rel=0.05, seed=2, progress=False,
    )  # fmt: skip
    result = reconstruct(noisy, ReconstructConfig(**FAST), progress=False)
    m = result.report["metrics"]
    assert m["tp_rate"] == 1.0 and m["fp_rate"] == 0.0, m
    assert min(result.report["background"]) > 0.01  # the vacuum level was not zero


def test_species_are_classified_and_reported(series):
    config = ReconstructConfig(species=("Au",), **FAST)
    result = reconstruct(series, config, progress=False, figures=False)
    assert set(result.species) == {"Au"} and len(result.species) == len(result.positions_A)
    assert result.report["species"]["Au"]["count"] == len(result.positions_A)
    assert result.report["metrics"]["confusion"] is not None


def test_an_alloy_gets_its_species_and_a_confusion_matrix(tmp_path):
    """FePt L1₀ (Fe Z = 26, Pt Z = 78): every atom classified from its fitted intensity,
    the confusion matrix against the truth in the report, the symbols in the extxyz."""
    particle = structures.rotate_off_zone_axes(structures.fept_sphere(6.0), seed=2)
    series = simulate.simulate_fast(particle, np.linspace(-60, 60, 13), pixel_size_A=0.35,
                                    margin_A=3.0, noise_std_rel=0.02, progress=False)  # fmt: skip
    out = tmp_path / "run"
    result = reconstruct(series, ReconstructConfig(species=("Fe", "Pt"), **FAST), out_dir=out,
                         progress=False, figures=False)  # fmt: skip
    m = result.report["metrics"]
    assert m["tp_rate"] == 1.0 and m["fp_rate"] == 0.0, m
    c = m["confusion"]
    assert c["labels"] == ["Fe", "Pt"] and (c["rows"], c["columns"]) == ("truth", "found")
    truth_counts = [int(np.sum(series.atoms_species == s)) for s in c["labels"]]
    assert [sum(row) for row in c["matrix"]] == truth_counts  # every true atom matched once
    assert c["accuracy"] >= 0.95, c
    back = read_extxyz(out / "atoms.extxyz")
    assert list(back["species"]) == list(result.species)
    assert set(result.species) == {"Fe", "Pt"}


def test_resume_refuses_other_settings_or_another_series(series, tmp_path):
    config = ReconstructConfig(**FAST)
    reconstruct(series, config, out_dir=tmp_path, progress=False, figures=False, max_phases=1)
    other = ReconstructConfig(
        mode="direct", init=FAST["init"], optim={**FAST["optim"], "loss": "l1"}
    )
    with pytest.raises(ValueError, match="optim.loss"):
        reconstruct(series, other, out_dir=tmp_path, resume=True, progress=False)
    drift = None if series.drift_A is None else series.drift_A[:5]
    fewer = series.replace(images=series.images[:5], euler_deg=series.euler_deg[:5], drift_A=drift)
    with pytest.raises(ValueError, match="same tilt series"):
        reconstruct(fewer, config, out_dir=tmp_path, resume=True, progress=False)
    # more phases is allowed (without convergence, so that all four run)
    whole = {**FAST["optim"], "converge": False}
    reconstruct(series, ReconstructConfig(init=FAST["init"], optim=whole), out_dir=tmp_path / "w",
                progress=False, figures=False, max_phases=1)  # fmt: skip
    longer = ReconstructConfig(init=FAST["init"], optim={**whole, "n_phases": 4})
    result = reconstruct(series, longer, out_dir=tmp_path / "w", resume=True, progress=False,
                         figures=False)  # fmt: skip
    assert len(result.report["history"]["phases"]) == 4


@pytest.mark.parametrize("mode", ["direct", "rigid"])
def test_adapt_step_adds_the_missing_atom_from_the_residual(mode):
    """The residual's back-projection, scaled by one atom's image peak, finds a gap (the
    threshold rule: on noise-free images the likelihood rule has no noise to refer to;
    tests/test_detection.py tests it on noisy ones)."""
    import jax.numpy as jnp

    from atomjax import fit
    from atomjax.adapt_step import adapt_step as step
    from atomjax.atoms import Atoms
    from atomjax.data import TiltSeries
    from atomjax.geometry import euler_from_tilts_deg
    from atomjax.probe import ProbeSettings
    from atomjax.reconstruct import make_probe, make_setup
    from atomjax.render import render_tilt_series

    truth = structures.fcc_sphere("Au", 4.5).get_positions()
    euler_deg = euler_from_tilts_deg(np.linspace(-60, 60, 9))
    shell = TiltSeries(np.zeros((9, 56, 56)), euler_deg, 0.35, probe=ProbeSettings())
    config = ReconstructConfig(mode=mode, n_slices=4, slice_thickness_A=4.0,
                               adapt={"rule": "threshold"})  # fmt: skip
    setup = make_setup(shell, config)
    probe = make_probe(shell, config, setup)
    observed = render_tilt_series(Atoms.create(truth, 0.6, 0.3), euler_deg, setup, probe)
    missing = 3
    kept = np.delete(truth, missing, axis=0)
    params = fit.Params(Atoms.create(kept, 0.6, 0.3, capacity=64), jnp.zeros((9, 3)), probe)
    euler = jnp.asarray(np.deg2rad(euler_deg))
    new, _, counts = step(params, observed, euler, setup, config)
    assert counts["added"] == 1 and counts["merged"] == 0 and counts["pruned"] == 0, counts
    added = new.atoms.alive_numpy()["positions_A"][-1]
    assert np.linalg.norm(added - truth[missing]) < 0.5
    # with nothing missing, nothing is added
    full = fit.Params(Atoms.create(truth, 0.6, 0.3, capacity=64), jnp.zeros((9, 3)), probe)
    _, _, counts = step(full, observed, euler, setup, config)
    assert counts["added"] == 0, counts


def test_signed_residual_adds_no_atoms_from_shot_noise_but_finds_a_missing_one():
    """At a few counts per pixel the residual clipped at 0 back-projects to a bias that
    passes for atoms everywhere; the signed residual averages the noise out."""
    import dataclasses

    import jax.numpy as jnp

    from atomjax import fit
    from atomjax.adapt import AdaptConfig
    from atomjax.adapt_step import adapt_step as step
    from atomjax.atoms import Atoms
    from atomjax.data import TiltSeries
    from atomjax.geometry import euler_from_tilts_deg
    from atomjax.reconstruct import make_setup
    from atomjax.render import render_tilt_series

    truth = structures.fcc_sphere("Au", 4.5).get_positions()
    m = 30
    euler_deg = euler_from_tilts_deg(np.linspace(-87, 87, m))
    shell = TiltSeries(np.zeros((m, 56, 56)), euler_deg, 0.35)
    config = ReconstructConfig(mode="direct")
    setup = make_setup(shell, config)
    clean = np.asarray(render_tilt_series(Atoms.create(truth, 0.6, 0.3), euler_deg, setup, None))
    background = 0.5 * clean.max()
    counts_per_unit = 4.0 / clean.max()  # atom columns: ~6 counts over a background of 2
    rng = np.random.default_rng(0)
    observed = jnp.asarray(rng.poisson(counts_per_unit * (clean + background)) / counts_per_unit)
    euler = jnp.asarray(np.deg2rad(euler_deg))
    bg = jnp.full(m, background)

    def added(kept, residual):
        cfg = dataclasses.replace(config, adapt=AdaptConfig(residual=residual, rule="threshold"))
        params = fit.Params(Atoms.create(kept, 0.6, 0.3, capacity=64), jnp.zeros((m, 3)), None, bg)
        new, _, counts = step(params, observed, euler, setup, cfg)
        return counts["added"], new.atoms.alive_numpy()["positions_A"][len(kept) :]

    n_positive, _ = added(truth, "positive")
    n_signed, _ = added(truth, "signed")
    assert n_positive >= 3 and n_signed == 0, (n_positive, n_signed)
    missing = 3
    n, new = added(np.delete(truth, missing, axis=0), "signed")
    assert n == 1 and np.linalg.norm(new[0] - truth[missing]) < 0.5, (n, new)


def test_initial_background_options():
    from atomjax.background import initial_background

    rng = np.random.default_rng(0)
    images = rng.uniform(0.2, 1.0, (3, 40, 40))
    images[:, :3, :] = 0.1  # a border band at 0.1 (one of four edges)
    np.testing.assert_allclose(initial_background(images, "zero"), 0.0)
    np.testing.assert_allclose(
        initial_background(images, "min"), np.percentile(images, 1, axis=(1, 2))
    )
    assert np.all(initial_background(images, "border") > 0.1)  # the median of the frame
    with pytest.raises(ValueError, match="background_init"):
        ReconstructConfig(background_init="vacuum")


def test_coverage_lets_an_atom_seen_by_few_images_be_added():
    """An atom outside the crop at most tilts: its back-projection is diluted by the
    images that miss it (4 of 17 see it) unless divided by that coverage."""
    import dataclasses

    import jax.numpy as jnp

    from atomjax import fit
    from atomjax.adapt import AdaptConfig
    from atomjax.adapt_step import adapt_step as step
    from atomjax.atoms import Atoms
    from atomjax.data import TiltSeries
    from atomjax.geometry import euler_from_tilts_deg
    from atomjax.init import InitConfig
    from atomjax.reconstruct import make_setup
    from atomjax.render import render_tilt_series

    core = structures.fcc_sphere("Au", 4.5).get_positions()
    outside = np.array([15.0, 0.3, 0.2])  # inside the 9.8 Å half-width at |θ| ≥ 52.5° only
    m = 17
    euler_deg = euler_from_tilts_deg(np.linspace(-60, 60, m))
    shell = TiltSeries(np.zeros((m, 56, 56)), euler_deg, 0.35)
    base = ReconstructConfig(mode="direct", init=InitConfig(box_A=(40.0, 20.0, 20.0)))
    setup = make_setup(shell, base)
    truth = np.vstack([core, outside])
    observed = render_tilt_series(Atoms.create(truth, 0.6, 0.3), euler_deg, setup, None)
    euler = jnp.asarray(np.deg2rad(euler_deg))

    def added(coverage):
        cfg = dataclasses.replace(
            base, adapt=AdaptConfig(coverage=coverage, max_add_distance_A=None, rule="threshold")
        )
        params = fit.Params(Atoms.create(core, 0.6, 0.3, capacity=64), jnp.zeros((m, 3)), None)
        new, _, counts = step(params, observed, euler, setup, cfg)
        return new.atoms.alive_numpy()["positions_A"][len(core) :]

    assert len(added(False)) == 0
    new = added(True)
    # found; voxels seen by only the two ±60° views also pick up its streaks (the fit
    # and the next merge / prune deal with those)
    assert np.min(np.linalg.norm(new - outside, axis=1)) < 0.1, new
    assert len(new) <= 3, new


def test_poisson_loss_fits_counts(series):
    counts = series.replace(images=np.random.default_rng(0).poisson(200 * series.images))
    config = ReconstructConfig(init=FAST["init"], optim={**FAST["optim"], "loss": "poisson"})
    result = reconstruct(counts, config, progress=False, figures=False)
    m = result.report["metrics"]
    assert m["tp_rate"] == 1.0 and m["fp_rate"] == 0.0 and m["rmsd_pm"] < 15.0, m
    # the fit saw the counts divided by their maximum: no offset removed
    from atomjax.reconstruct import observed_images

    np.testing.assert_allclose(observed_images(counts, config), counts.images / counts.images.max())


def test_given_start_with_frozen_positions_keeps_them():
    """A published model refitted for its own R-factor: positions stay, B and H move."""
    from atomjax.reconstruct import model_images

    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", 4.5), seed=2)
    small = simulate.simulate_fast(particle, np.linspace(-60, 60, 7), progress=False)
    start = small.atoms_positions_A + 0.05
    config = ReconstructConfig(
        optim={"n_phases": 2, "steps_per_phase": 20, "lr_positions_A": 0.0},
        adapt_between_phases=False,
    )
    result = reconstruct(small, config, progress=False, figures=False, initial_positions_A=start)
    np.testing.assert_allclose(result.positions_A, start, atol=1e-12)
    assert not np.allclose(result.widths_A2, config.init.width_A2)
    assert model_images(result, small, config).shape == small.images.shape
    with pytest.raises(ValueError, match="initial_positions_A"):
        reconstruct(small, config, progress=False, initial_positions_A=np.zeros((3, 2)))


def test_adaptive_pixel_probe_with_priors_resumes_bit_identical_and_stays_centred(series, tmp_path):
    """The default pixel probe (a rank-2 correction of the physical probe, each slice
    centred) through a run, a checkpoint and a resume."""
    from atomjax.render import centroids_px

    config = ReconstructConfig(
        mode="adaptive", probe={"semiangle_mrad": 25.0}, n_slices=3, slice_thickness_A=4.0,
        optim={"n_phases": 2, "steps_per_phase": 20}, init=FAST["init"], uncertainty=False,
    )  # fmt: skip
    assert (config.probe_depth_rank, config.probe_centred) == (2, True)
    kw = dict(progress=False, figures=False)
    full = reconstruct(series, config, out_dir=tmp_path / "a", **kw)
    reconstruct(series, config, out_dir=tmp_path / "b", max_phases=1, **kw)
    resumed = reconstruct(series, config, out_dir=tmp_path / "b", resume=True, **kw)
    np.testing.assert_array_equal(resumed.positions_A, full.positions_A)
    assert resumed.report["history"]["loss"] == full.report["history"]["loss"]
    probe = full.params.probe
    assert probe.logits.shape[0] == 2 and probe.base.shape[0] == 3 and probe.centred
    assert float(np.abs(probe.logits).max()) > 0  # the correction was fitted
    from atomjax.render import ImagingSetup

    stack = probe.intensities(ImagingSetup(series.image_shape, series.pixel_size_A, 3, 4.0))
    np.testing.assert_allclose(centroids_px(stack), 0.0, atol=5e-3)  # pixels: 0.2 pm
