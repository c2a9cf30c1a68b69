"""The committed issue-18 series (benchmarks/regime/): what they claim to be, and
consistent with the model (the truth rendered by direct projection matches them)."""

import json
import pathlib

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from atomjax.atoms import Atoms
from atomjax.io import load_tilt_series
from atomjax.render import ImagingSetup, render_tilt_series

REGIME = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "regime"
ENTRIES = json.loads((REGIME / "series.json").read_text())
NAMES = [e["name"] for e in ENTRIES["series"] if (REGIME / f"{e['name']}.npz").is_file()]


def _ncc(a, b):
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_the_large_series_are_committed():
    assert {"pt_deca_d30_a25", "pt_deca_d50_a25", "pt_deca_d55_a35_edge"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_regime_series_matches_its_settings_and_the_truth(name):
    series = load_tilt_series(REGIME / f"{name}.npz")
    entry = {**ENTRIES["common"], **next(e for e in ENTRIES["series"] if e["name"] == name)}
    prov = series.provenance
    assert prov["regime_entry"] == entry
    assert prov["frozen_phonons"] == entry["frozen_phonons"]
    assert prov["n_atoms"] == len(series.atoms_positions_A) == len(series.atoms_species)
    assert float(series.probe.semiangle_mrad) == entry["semiangle_mrad"]
    inner, outer = prov["detector_mrad"]
    assert entry["semiangle_mrad"] < inner < outer <= prov["antialias_limit_mrad"] + 1e-6
    assert series.images.dtype == np.float32 and series.images.min() >= 0
    if entry.get("edge_on", False):  # every view at least 3° off the dense columns
        assert min(prov["column_margin_deg"]) >= 3.0
        extent = series.atoms_positions_A.max(0) - series.atoms_positions_A.min(0)
        assert extent[1] < 0.7 * min(extent[0], extent[2])  # the five-fold axis near y
    vacuum = np.median(series.images[:, :3, :])
    assert vacuum < 1e-3 * series.images.max()  # no bright-field beam on the detector
    # atom-scale detail (a 1.5 Å high-pass) of the truth's projection is in every image;
    # the particle mirrored in depth (a wrong convention) shares none of it
    setup = ImagingSetup(image_shape=series.image_shape, pixel_size_A=series.pixel_size_A)
    sigma_px = 1.5 / series.pixel_size_A
    controls = [(1, 0.5, 1.0)]
    if entry.get("off_zone", True):  # on its zone axis a decahedron is its own mirror image
        controls.append((-1, -0.2, 0.35))
    for sign, lo, hi in controls:
        pos = series.atoms_positions_A * [1, 1, sign]
        model = Atoms.create(pos, width_A2=0.4, amplitude=1.0)
        direct = np.asarray(render_tilt_series(model, series.euler_deg, setup))
        for j in range(series.n_angles):
            image = np.asarray(series.images[j], float)
            ncc = _ncc(
                image - gaussian_filter(image, sigma_px),
                direct[j] - gaussian_filter(direct[j], sigma_px),
            )
            assert lo < ncc < hi, (sign, j, ncc)


def test_phonon_floor_equals_the_spread_of_least_squares_positions():
    """bench_modes.phonon_floor_pm against Monte Carlo: atoms displaced afresh in every
    image, each position fitted by least squares to its projections."""
    import sys

    sys.path.insert(0, str(REGIME.parent))
    import bench_modes

    from atomjax.data import TiltSeries
    from atomjax.geometry import euler_from_tilts_deg, rotation_matrix

    euler = euler_from_tilts_deg(np.arange(-67.5, 68, 9.0))
    series = TiltSeries(
        np.zeros((len(euler), 8, 8)), euler, 0.5, atoms_positions_A=np.zeros((1, 3)),
        atoms_species=np.array(["Pt"]),
        provenance={"frozen_phonons": 1, "phonon_sigma_A": {"Pt": 0.064}},
    )  # fmt: skip
    floor = bench_modes.phonon_floor_pm(series)
    rng = np.random.default_rng(0)
    proj = np.asarray(rotation_matrix(np.deg2rad(euler)), float)[:, :2, :]  # (m, 2, 3)
    design = proj.reshape(-1, 3)
    trials = 20000
    delta = rng.normal(scale=0.064, size=(trials, len(euler), 3))
    observed = np.einsum("jai,tji->tja", proj, delta).reshape(trials, -1)
    fitted = np.linalg.lstsq(design, observed.T, rcond=None)[0].T
    monte_carlo = 100 * np.sqrt((fitted**2).sum(1).mean())
    assert floor == pytest.approx(monte_carlo, rel=0.02)
    assert bench_modes.phonon_floor_pm(series.replace(provenance={"frozen_phonons": 0})) is None


def test_linear_twin_recovers_the_model_that_made_the_images():
    """bench_modes.linear_twin on images rigid mode's own model made (two species, known
    width and amplitudes): it finds them again and matches the images (R ≈ 0); on
    images of a wider atom it picks that width instead."""
    import sys

    sys.path.insert(0, str(REGIME.parent))
    import bench_modes

    from atomjax.data import TiltSeries
    from atomjax.geometry import euler_from_tilts_deg
    from atomjax.probe import ProbeSettings
    from atomjax.problem import make_probe, make_setup
    from atomjax.reconstruct import ReconstructConfig

    rng = np.random.default_rng(3)
    pos = rng.uniform(-4.0, 4.0, size=(12, 3))
    species = np.array(["Pt"] * 6 + ["Ni"] * 6)
    euler = euler_from_tilts_deg(np.arange(-60.0, 61.0, 30.0))
    probe = ProbeSettings(energy_eV=300e3, semiangle_mrad=35.0)
    empty = TiltSeries(np.zeros((len(euler), 40, 40)), euler, 0.4, probe=probe,
                       atoms_positions_A=pos, atoms_species=species)  # fmt: skip
    config = ReconstructConfig(mode="rigid")
    setup = make_setup(empty, config)
    stack = make_probe(empty, config, setup)
    for width in (0.15, 0.4):
        amps = np.where(species == "Pt", 3.0, 1.2)
        images = render_tilt_series(Atoms.create(pos, width, amps), euler, setup, stack)
        twin = bench_modes.linear_twin(empty.replace(images=np.asarray(images, float)))
        info = twin.provenance["linear_twin"]
        assert info["width_A2"] == width
        assert info["amplitudes"]["Pt"] == pytest.approx(3.0, rel=1e-6)
        assert info["amplitudes"]["Ni"] == pytest.approx(1.2, rel=1e-6)
        assert info["r_factor_against_prism"] < 1e-6
        np.testing.assert_allclose(twin.images, images, atol=1e-9 * float(np.max(images)))
        assert twin.provenance["frozen_phonons"] is None


def test_scaled_twin_at_the_series_own_size_is_its_linear_twin():
    """bench_modes.scaled_twin rebuilds the particle from series.json: at the committed
    diameter it gives the same atoms, field of view and images as linear_twin."""
    import sys

    sys.path.insert(0, str(REGIME.parent))
    import bench_modes

    name = "pt_deca_d30_a35"
    clean = load_tilt_series(REGIME / f"{name}.npz")
    clean = clean.replace(images=np.asarray(clean.images, float))
    twin = bench_modes.linear_twin(clean)
    scaled = bench_modes.scaled_twin(name, clean, 30.0)
    np.testing.assert_allclose(scaled.atoms_positions_A, clean.atoms_positions_A, atol=1e-9)
    assert scaled.images.shape == clean.images.shape
    np.testing.assert_allclose(scaled.images, twin.images, rtol=0, atol=1e-9 * twin.images.max())
    bigger = bench_modes.scaled_twin(name, clean, 40.0)
    assert len(bigger.atoms_positions_A) > 1.5 * len(clean.atoms_positions_A)
    assert min(bigger.images.shape[1:]) > min(clean.images.shape[1:])
