"""Simulated tilt series: tilt schemes, the fast projected-potential path, HAADF, noise, CLI."""

import json

import ase
import numpy as np
import pytest

from atomjax import simulate, structures
from atomjax.geometry import rotation_matrix


def _projected(series, j):
    """(n, 2) projected (u, v) of the true atoms in image j, drift included."""
    rot = np.asarray(rotation_matrix(np.deg2rad(series.euler_deg[j])))
    uvw = series.atoms_positions_A @ rot.T + series.drift_A[j]
    return uvw[:, :2]


def _ncc(a, b):
    a = np.asarray(a, float).ravel() - np.mean(a)
    b = np.asarray(b, float).ravel() - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _centroid_A(image, pixel_size_A):
    """Intensity-weighted centre (u, v) in Å of an image (pixel n // 2 at 0)."""
    nu, nv = image.shape
    u = (np.arange(nu) - nu // 2) * pixel_size_A
    v = (np.arange(nv) - nv // 2) * pixel_size_A
    w = image / image.sum()
    return np.array([(w.sum(1) * u).sum(), (w.sum(0) * v).sum()])


def _sparse_atoms():
    """Six Pt atoms ≥ 4 Å apart in projection at the angles used below."""
    pos = np.array(
        [
            [0.0, 0.0, 0.0],
            [4.6, 1.3, -2.0],
            [-3.9, 4.4, 1.5],
            [1.2, -5.1, 3.0],
            [-4.8, -3.7, -1.0],
            [5.3, 5.6, 0.7],
        ]
    )
    return ase.Atoms("Pt6", positions=pos)


# --------------------------------------------------------------------------- tilts


def test_tilt_scheme_presets_and_grid():
    lot = simulate.tilt_scheme("lot")
    assert lot[0] == -72 and lot[-1] == 70 and len(lot) == 72
    np.testing.assert_allclose(np.diff(lot), 2.0)
    assert len(simulate.tilt_scheme("full")) == 181
    wedge = simulate.tilt_scheme("wedge")
    assert wedge[0] == -70 and wedge[-1] == 68 and len(wedge) == 47  # 70 is off the grid
    tenths = simulate.tilt_scheme(0, 1, 0.1)
    np.testing.assert_array_equal(tenths, np.round(np.arange(11) * 0.1, 10))
    np.testing.assert_array_equal(simulate.tilt_scheme(10, -10, -10), [10, 0, -10])
    np.testing.assert_array_equal(simulate.parse_tilts("-60:60:60"), [-60, 0, 60])
    for bad in [(0, 10, 0), (0, 10, -1), (0, np.nan, 1)]:
        with pytest.raises(ValueError):
            simulate.tilt_scheme(*bad)
    with pytest.raises(ValueError, match="unknown tilt preset"):
        simulate.tilt_scheme("nope")
    with pytest.raises(ValueError, match="start:stop:step"):
        simulate.parse_tilts("1:2")


# --------------------------------------------------------------------------- fast


@pytest.mark.parametrize("euler_deg", [(0.0, 0.0, 0.0), (12.0, 37.0, -25.0)])
def test_fast_matches_direct_projection(euler_deg):
    """The conventions check: abTEM placement = atomjax's render (direct mode)."""
    from atomjax.atoms import Atoms
    from atomjax.render import ImagingSetup, render_tilt_series

    atoms = _sparse_atoms()
    series = simulate.simulate_fast(atoms, np.array([euler_deg]), progress=False)
    image = series.images[0]
    p = series.pixel_size_A
    setup = ImagingSetup(image_shape=series.image_shape, pixel_size_A=p)
    # B = 2σ² with σ ≈ 0.59 Å: the 0.5 Å blur widened by the projected potential itself
    model = Atoms.create(series.atoms_positions_A, width_A2=0.7, amplitude=1.0)
    direct = np.asarray(render_tilt_series(model, series.euler_deg, setup))[0]
    assert _ncc(image, direct) >= 0.99  # a one-pixel shift gives 0.954

    uv = _projected(series, 0)
    n = np.array(series.image_shape)
    for u, v in uv:
        i0 = np.round(np.array([u, v]) / p).astype(int) + n // 2
        win = (slice(i0[0] - 4, i0[0] + 5), slice(i0[1] - 4, i0[1] + 5))
        peak_sim = np.unravel_index(np.argmax(image[win]), image[win].shape)
        peak_dir = np.unravel_index(np.argmax(direct[win]), direct[win].shape)
        assert np.abs(np.subtract(peak_sim, peak_dir)).max() <= 1
        # sub-pixel: the local centroid sits on the projected atom
        w = image[win] - image[win].min()
        centre = _centroid_A(w, p) + (i0 - n // 2) * p
        assert np.linalg.norm(centre - [u, v]) < 0.1 * p + 0.02


def test_fast_metadata_and_shape():
    atoms = structures.fcc_sphere("Au", radius_A=6.0)
    series = simulate.simulate_fast(atoms, [0.0, 30.0], pixel_size_A=0.3, progress=False)
    assert series.images.shape[0] == 2 and series.image_shape[0] == series.image_shape[1]
    r = np.linalg.norm(atoms.positions, axis=1).max()
    assert series.image_shape[0] * 0.3 >= 2 * (r + 4.0)
    np.testing.assert_array_equal(series.euler_deg, [[0, 0, 0], [0, 30, 0]])
    np.testing.assert_array_equal(series.atoms_positions_A, atoms.positions)
    assert list(series.atoms_species) == atoms.get_chemical_symbols()
    np.testing.assert_array_equal(series.drift_A, 0.0)
    prov = series.provenance
    assert prov["abtem_version"] and prov["blur_sigma_A"] == 0.5 and prov["seed"] == 0
    json.dumps(prov)
    # one atom at the rotation centre peaks on pixel n // 2
    single = simulate.simulate_fast(
        ase.Atoms("Au", positions=[[0, 0, 0]]), [0.0, 50.0], progress=False
    )
    n = single.image_shape[0]
    for img in single.images:
        assert np.unravel_index(img.argmax(), img.shape) == (n // 2, n // 2)


def test_poisson_noise_statistics():
    atoms = structures.fcc_sphere("Au", radius_A=5.0)
    clean = simulate.simulate_fast(atoms, [0.0, 45.0], progress=False)
    dose = 2000.0
    noisy = simulate.simulate_fast(atoms, [0.0, 45.0], dose_e_per_A2=dose, seed=7, progress=False)
    scale = noisy.provenance["counts_per_unit_image"]
    expected = np.clip(clean.images * scale, 0, None)
    # the brightest pixel of the series receives dose · pixel area electrons
    np.testing.assert_allclose(expected.max(), dose * 0.25**2, rtol=1e-9)
    assert noisy.dose_e_per_A2 == dose
    assert np.all(noisy.images == np.round(noisy.images)) and noisy.images.min() >= 0
    resid = noisy.images - expected
    bright = expected > 20
    assert abs(resid[bright].mean()) < 0.05 * np.sqrt(expected[bright].mean())
    # variance = mean (Poisson), pooled over pixels
    ratio = (resid[bright] ** 2).sum() / expected[bright].sum()
    assert 0.9 < ratio < 1.1
    again = simulate.simulate_fast(atoms, [0.0, 45.0], dose_e_per_A2=dose, seed=7, progress=False)
    np.testing.assert_array_equal(again.images, noisy.images)


def test_gaussian_noise_level():
    atoms = structures.fcc_sphere("Au", radius_A=5.0)
    clean = simulate.simulate_fast(atoms, [0.0], progress=False).images
    noisy = simulate.simulate_fast(atoms, [0.0], noise_std_rel=0.05, progress=False).images
    np.testing.assert_allclose((noisy - clean).std(), 0.05 * clean.max(), rtol=0.05)


def test_drift_shifts_image():
    atoms = _sparse_atoms()
    tilts = [0.0, 20.0, 40.0]
    shape = (96, 96)
    still = simulate.simulate_fast(atoms, tilts, image_shape=shape, progress=False)
    moved = simulate.simulate_fast(
        atoms, tilts, image_shape=shape, drift_std_A=1.5, seed=2, progress=False
    )
    drift = moved.drift_A
    assert drift.shape == (3, 3) and np.abs(drift).max() > 0.3
    for j in range(3):
        shift = _centroid_A(moved.images[j], 0.25) - _centroid_A(still.images[j], 0.25)
        np.testing.assert_allclose(shift, drift[j, :2], atol=0.01)
        assert not np.allclose(moved.images[j], still.images[j])


def test_fast_errors():
    atoms = structures.fcc_sphere("Au", radius_A=6.0)
    with pytest.raises(ValueError, match="angles_deg"):
        simulate.simulate_fast(atoms, np.zeros((2, 2)), progress=False)
    with pytest.raises(ValueError, match="empty"):
        simulate.simulate_fast(atoms, [], progress=False)
    with pytest.raises(ValueError, match="pixel_size_A"):
        simulate.simulate_fast(atoms, [0.0], pixel_size_A=-0.1, progress=False)
    with pytest.raises(ValueError, match="outside"):
        simulate.simulate_fast(atoms, [0.0], image_shape=(20, 20), progress=False)
    with pytest.raises(ValueError, match="dose_e_per_A2"):
        simulate.simulate_fast(atoms, [0.0], dose_e_per_A2=-1.0, progress=False)
    with pytest.raises(ValueError, match="drift_std_A"):
        simulate.simulate_fast(atoms, [0.0], drift_std_A=-1.0, progress=False)
    with pytest.raises(ValueError, match="ase.Atoms"):
        simulate.simulate_fast(np.zeros((3, 3)), [0.0], progress=False)


# --------------------------------------------------------------------------- HAADF


def test_haadf_detector_limit_errors():
    atoms = structures.fcc_sphere("Au", radius_A=4.0)
    assert abs(simulate.max_detector_angle_mrad(0.1, 300e3) - 65.6) < 0.1
    with pytest.raises(ValueError, match="anti-aliasing"):
        simulate.simulate_haadf(
            atoms, [0.0], detector_mrad=(30, 195), potential_sampling_A=0.1, progress=False
        )
    with pytest.raises(ValueError, match="inner"):
        simulate.simulate_haadf(
            atoms, [0.0], detector_mrad=(50, 40), potential_sampling_A=0.1, progress=False
        )
    with pytest.raises(ValueError, match="method"):
        simulate.simulate_haadf(atoms, [0.0], method="bloch", progress=False)
    with pytest.raises(ValueError, match="prism_interpolation"):
        simulate.simulate_haadf(atoms, [0.0], prism_interpolation=0, progress=False)


def test_haadf_tiny_physical():
    """~40 Au atoms, two tilts, coarse sampling (0.15 Å, detector 30–43 mrad)."""
    from atomjax.atoms import Atoms
    from atomjax.render import ImagingSetup, render_tilt_series

    atoms = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", radius_A=5.0), seed=1)
    series = simulate.simulate_haadf(
        atoms, [0.0, 40.0], potential_sampling_A=0.15, scan_pixel_size_A=0.4, progress=False
    )
    prov = series.provenance
    assert series.images.shape[0] == 2 and series.pixel_size_A == 0.4
    assert 40 < prov["detector_mrad"][1] <= 43.75 and prov["detector_mrad"][0] == 30
    assert all(g % prov["prism_interpolation"] == 0 for g in prov["potential_gpts"])
    assert series.probe is not None and float(series.probe.semiangle_mrad) == 25.0
    assert prov["abtem_aberrations"]["C10"] == -prov["entrance_depth_A"]
    json.dumps(prov)
    assert 0 <= series.images.min() and series.images.max() < 1  # detected fractions
    setup = ImagingSetup(image_shape=series.image_shape, pixel_size_A=0.4)
    model = Atoms.create(series.atoms_positions_A, width_A2=0.35, amplitude=1.0)
    direct = np.asarray(render_tilt_series(model, series.euler_deg, setup))
    for j in range(2):
        image = series.images[j]
        assert _ncc(image, direct[j]) > 0.85
        n = np.array(series.image_shape)
        brightest = (np.array(np.unravel_index(image.argmax(), image.shape)) - n // 2) * 0.4
        assert np.linalg.norm(_projected(series, j) - brightest, axis=1).min() < 0.4
        # the bright region is where the particle is
        assert np.linalg.norm(_centroid_A(image - image.min(), 0.4)) < 0.6


def test_haadf_frozen_phonons():
    """abTEM's FrozenPhonons: σ = 0 is the static lattice; thermal σ changes the images
    (their total little), each image with its own configurations."""
    atoms = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", radius_A=4.0), seed=1)
    kw = dict(potential_sampling_A=0.15, scan_pixel_size_A=0.5, progress=False)
    static = simulate.simulate_haadf(atoms, [0.0, 30.0], **kw)
    still = simulate.simulate_haadf(atoms, [0.0, 30.0], frozen_phonons=2, phonon_sigma_A=0.0, **kw)
    np.testing.assert_allclose(still.images, static.images, rtol=1e-5, atol=1e-7)
    hot = simulate.simulate_haadf(atoms, [0.0, 30.0], frozen_phonons=2, **kw)
    assert hot.provenance["frozen_phonons"] == 2
    assert hot.provenance["phonon_sigma_A"] == {"Au": pytest.approx(0.0886, abs=1e-3)}
    change = np.abs(hot.images - static.images).max() / static.images.max()
    assert 1e-3 < change < 0.6  # 0.33 measured: thermal scattering is much of HAADF
    np.testing.assert_allclose(hot.images.sum((1, 2)), static.images.sum((1, 2)), rtol=0.1)
    assert np.array_equal(hot.atoms_positions_A, static.atoms_positions_A)  # the mean sites
    # the same view twice: one image of the static lattice, two exposures with phonons
    twice = simulate.simulate_haadf(atoms, [0.0, 0.0], frozen_phonons=1, **kw)
    assert np.abs(twice.images[0] - twice.images[1]).max() > 1e-3 * twice.images.max()


def test_haadf_input_errors_name_the_problem():
    atoms = structures.fcc_sphere("Au", radius_A=4.0)
    with pytest.raises(ValueError, match="bright-field disc"):
        simulate.simulate_haadf(atoms, [0.0], detector_mrad=(20, None), progress=False)
    with pytest.raises(ValueError, match="frozen_phonons"):
        simulate.simulate_haadf(atoms, [0.0], frozen_phonons=-1, progress=False)
    cu = structures.fcc_sphere("Cu", radius_A=4.0)
    with pytest.raises(ValueError, match=r"no default thermal displacement for \['Cu'\]"):
        simulate.simulate_haadf(cu, [0.0], frozen_phonons=1, progress=False)
    with pytest.raises(ValueError, match="no value for"):
        simulate.simulate_haadf(cu, [0.0], frozen_phonons=1, phonon_sigma_A={"Au": 0.1})


def test_smooth_grid_sizes_end_for_every_interpolation():
    """Interpolation 7 used to loop for ever (no 2,3,5-smooth number is divisible by 7)."""
    for multiple in range(1, 13):
        for n in (37, 100, 353):
            m = simulate._smooth_size(n, multiple)
            assert m >= n and m % multiple == 0 and simulate._is_smooth(m // multiple)
    assert simulate._smooth_size(353) == 360


def test_fitted_image_shape_holds_every_view_and_crops_the_square_one():
    """image_shape="fit": an edge-on decahedron is narrower along the tilt axis; the
    fitted images are the centre of the square ones."""
    atoms = structures.rotate_off_columns(
        structures.decahedron("Pt", diameter_A=20.0), [-60.0, 0.0, 60.0], align=(0, 0, 1)
    )
    kw = dict(pixel_size_A=0.5, progress=False)
    square = simulate.simulate_fast(atoms, [-60.0, 0.0, 60.0], **kw)
    fit = simulate.simulate_fast(atoms, [-60.0, 0.0, 60.0], image_shape="fit", **kw)
    (nu, nv), (su, sv) = fit.image_shape, square.image_shape
    assert nv < sv - 8 and nu <= su and nu % 2 == 0 and nv % 2 == 0
    a, b = (su - nu) // 2, (sv - nv) // 2
    crop = square.images[:, a : a + nu, b : b + nv]
    assert np.abs(crop - fit.images).max() < 1e-3 * fit.images.max()
    assert simulate.fitted_image_shape(atoms.positions, [-60.0, 0.0, 60.0], 0.5) == (nu, nv)
    with pytest.raises(ValueError, match="'fit'"):
        simulate.simulate_fast(atoms, [0.0], image_shape="tight", **kw)


def test_prism_interpolation_per_axis_keeps_6A_windows():
    """A field much narrower along one axis gets its own (smaller) PRISM factor."""
    atoms = structures.fcc_sphere("Au", radius_A=3.0)
    series = simulate.simulate_haadf(
        atoms, [0.0], image_shape=(96, 40), potential_sampling_A=0.15, progress=False
    )
    prov = series.provenance
    f = prov["prism_interpolation"]
    assert isinstance(f, list) and f[0] > f[1]
    extent = np.array(prov["potential_gpts"]) * 0.15
    assert np.all(extent / np.array(f) >= 6.0)
    assert all(g % k == 0 for g, k in zip(prov["potential_gpts"], f, strict=True))
    assert np.isfinite(series.images).all() and series.images.max() > 0
