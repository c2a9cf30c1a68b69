"""Voxel tomogram: projector pair, binning, SIRT and peak finding."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from atomjax import geometry, render
from atomjax import tomogram as tomo
from atomjax.atoms import Atoms


def _uv_scipy(point, euler_deg, drift):
    """(u, v) of ``point`` per image, computed independently with scipy's rotations."""
    return Rotation.from_euler("xyz", euler_deg, degrees=True).apply(point)[:, :2] + drift[:, :2]


def _greedy_nms(positions, min_distance):
    """Reference: sequential greedy suppression (positions sorted strongest first)."""
    kept = []
    for i, p in enumerate(positions):
        if all(np.linalg.norm(p - positions[j]) >= min_distance for j in kept):
            kept.append(i)
    mask = np.zeros(len(positions), bool)
    mask[kept] = True
    return mask


# ------------------------------------------------------------------------- grids


def test_volume_grid_convention():
    grid = tomo.volume_grid_A((4, 5, 3), 0.5)
    assert grid.shape == (60, 3)
    vol = grid.reshape(4, 5, 3, 3)
    np.testing.assert_allclose(vol[2, 2, 1], 0.0)  # voxel n//2 is the origin
    np.testing.assert_allclose(vol[3, 0, 2], [0.5, -1.0, 0.5])
    np.testing.assert_allclose(vol[:, 0, 0, 0], geometry.pixel_coordinates_A(4, 0.5))
    with pytest.raises(ValueError, match="volume_shape"):
        tomo.volume_grid_A((4, 5), 0.5)
    with pytest.raises(ValueError, match="voxel_size_A"):
        tomo.volume_grid_A((4, 5, 3), -1.0)


# ----------------------------------------------------------------------- binning


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bin_images_keeps_pixel_convention(factor):
    n = 37
    for offset in (0, 1, -2):
        img = np.zeros((n, n + 4))
        img[n // 2 + offset * factor, (n + 4) // 2 - offset * factor] = 1.0
        b = np.asarray(tomo.bin_images(img, factor))
        k = np.unravel_index(np.argmax(b), b.shape)
        # the delta sits at the same coordinate on the binned grid
        assert (k[0] - b.shape[0] // 2) == offset
        assert (k[1] - b.shape[1] // 2) == -offset
        assert b[k] == pytest.approx(1.0 / factor**2)


@pytest.mark.parametrize("factor", [2, 3])
def test_bin_images_conserves_mean_and_centroid(factor):
    rng = np.random.default_rng(0)
    n = 48
    img = np.zeros((2, n, n))
    img[:, 8:-8, 8:-8] = rng.uniform(size=(2, n - 16, n - 16))
    b = np.asarray(tomo.bin_images(img, factor))
    # signal inside the kept region: the mean per unit area is conserved
    np.testing.assert_allclose(b.sum(axis=(1, 2)) * factor**2, img.sum(axis=(1, 2)), rtol=1e-12)
    const = np.asarray(tomo.bin_images(np.full((n, n + 3), 0.7), factor))
    np.testing.assert_allclose(const, 0.7, rtol=1e-12)
    # a smooth blob keeps its centroid in Å
    px = 0.3
    u = geometry.pixel_coordinates_A(n, px)
    centre = np.array([1.13, -0.71])
    blob = np.exp(-((u[:, None] - centre[0]) ** 2 + (u[None, :] - centre[1]) ** 2) / 2.0)
    bb = np.asarray(tomo.bin_images(blob, factor))
    ub = geometry.pixel_coordinates_A(bb.shape[0], px * factor)
    got = [(bb.sum(1) * ub).sum() / bb.sum(), (bb.sum(0) * ub).sum() / bb.sum()]
    np.testing.assert_allclose(got, centre, atol=0.02 * px)


def test_bin_images_rejects_bad_factor():
    with pytest.raises(ValueError, match="factor"):
        tomo.bin_images(np.zeros((4, 4)), 0)
    with pytest.raises(ValueError, match="factor"):
        tomo.bin_images(np.zeros((4, 4)), 1.5)
    assert tomo.bin_images(np.ones((5, 5)), 1).shape == (5, 5)


# -------------------------------------------------------------------- projectors


def test_projector_adjointness_and_chunking():
    rng = np.random.default_rng(1)
    m, shape, px = 11, (20, 23), 0.4
    points = jnp.asarray(rng.uniform(-5, 5, (300, 3)))  # some project outside the image
    euler = jnp.asarray(np.deg2rad(rng.uniform(-70, 70, (m, 3))))
    drift = jnp.asarray(rng.normal(0, 0.5, (m, 3)))
    x = jnp.asarray(rng.normal(size=300))
    y = jnp.asarray(rng.normal(size=(m, *shape)))
    ax = tomo.project(x, points, euler, drift, shape, px)
    aty = tomo.back_project(y, euler, drift, px, points)
    assert ax.shape == (m, *shape) and aty.shape == (300,)
    lhs, rhs = float(jnp.vdot(ax, y)), m * float(jnp.vdot(x, aty))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)
    # chunking changes nothing
    np.testing.assert_allclose(
        tomo.back_project(y, euler, drift, px, points, chunk=3), aty, rtol=1e-12, atol=1e-14
    )


def test_back_project_point_source_peaks_at_point():
    point = np.array([1.1, -0.7, 0.9])
    tilts = np.linspace(-60, 60, 9)
    euler = np.concatenate(
        [geometry.euler_from_tilts_deg(tilts, "y"), geometry.euler_from_tilts_deg([-40, 40], "x")]
    )
    m, n, px = euler.shape[0], 40, 0.25
    drift = np.random.default_rng(2).normal(0, 0.5, (m, 3))
    uv = _uv_scipy(point, euler, drift)
    coords = geometry.pixel_coordinates_A(n, px)
    images = np.exp(
        -(
            (coords[None, :, None] - uv[:, 0, None, None]) ** 2
            + (coords[None, None, :] - uv[:, 1, None, None]) ** 2
        )
        / 0.1
    )
    vox = 0.2
    grid = tomo.volume_grid_A((30, 30, 30), vox)
    bp = np.asarray(
        tomo.back_project(
            jnp.asarray(images), jnp.deg2rad(euler), jnp.asarray(drift), px, jnp.asarray(grid)
        )
    )
    best = grid[np.argmax(bp)]
    assert np.max(np.abs(best - point)) <= vox / 2 + 1e-9


# ----------------------------------------------------------------------- peaks


def _blob_volume(centres_A, amps, shape, vox, sigma_A=0.6):
    grid = tomo.volume_grid_A(shape, vox)
    vol = np.zeros(len(grid))
    for c, a in zip(centres_A, amps, strict=True):
        vol += a * np.exp(-np.sum((grid - c) ** 2, 1) / (2 * sigma_A**2))
    return vol.reshape(shape)


def test_find_peaks_subvoxel_and_threshold():
    rng = np.random.default_rng(3)
    vox, shape = 0.5, (28, 26, 24)
    centres = np.array(
        [[-3.0, -3.0, -2.5], [3.0, -2.5, 2.0], [-2.5, 3.0, 2.5], [2.5, 2.5, -2.5], [0.0, 0.0, 0.0]]
    )
    centres = centres + rng.uniform(-0.5, 0.5, centres.shape) * vox
    amps = np.array([1.0, 0.9, 0.8, 0.5, 0.3])
    vol = _blob_volume(centres, amps, shape, vox)
    pos, val = tomo.find_peaks(vol, vox, threshold=0.1, min_distance_A=1.5)
    assert pos.shape == (5, 3) and val.shape == (5,)
    assert np.all(np.diff(val) <= 0)  # strongest first
    d, i = cKDTree(pos).query(centres)
    assert len(set(i)) == 5
    assert d.max() < 0.1 * vox
    # without refinement the error is up to half a voxel per axis, and larger
    pos0, _ = tomo.find_peaks(vol, vox, threshold=0.1, min_distance_A=1.5, refine=False)
    d0, _ = cKDTree(pos0).query(centres)
    assert d0.max() > d.max()
    # threshold: strictly above
    pos_t, val_t = tomo.find_peaks(vol, vox, threshold=0.6, min_distance_A=1.5)
    assert len(pos_t) == 3 and np.all(val_t > 0.6)
    pos_s, _ = tomo.find_peaks(vol, vox, threshold=val[-1], min_distance_A=1.5)
    assert len(pos_s) == 4
    assert tomo.find_peaks(vol, vox, threshold=2.0, min_distance_A=1.5)[0].shape == (0, 3)


@pytest.mark.parametrize("refine", [False, True])
def test_find_peaks_plateau_respects_min_distance(refine):
    vox, md = 0.5, 1.0
    vol = np.zeros((20, 20, 20))
    vol[5:15, 10, 10] = 1.0  # a long line plateau: 10 voxels = 4.5 Å
    vol[3:5, 3:5, 3:5] = 0.8  # a small cube plateau: one peak
    pos, val = tomo.find_peaks(vol, vox, threshold=0.5, min_distance_A=md, refine=refine)
    dist = cKDTree(pos).query(pos, k=2)[0][:, 1]
    assert dist.min() >= md - 1e-12
    assert np.sum(val == 0.8) == 1
    if not refine:  # greedy along the line keeps every second voxel
        assert np.sum(val == 1.0) == 5


def test_suppression_matches_sequential_greedy():
    rng = np.random.default_rng(4)
    for _ in range(5):
        pts = rng.uniform(0, 6, (150, 3))
        np.testing.assert_array_equal(tomo._suppress(pts, 1.0), _greedy_nms(pts, 1.0))


def test_find_peaks_rejects_bad_input():
    with pytest.raises(ValueError, match="volume"):
        tomo.find_peaks(np.zeros((4, 4)), 0.5, 0.1, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        tomo.find_peaks(np.full((4, 4, 4), np.nan), 0.5, 0.1, 1.0)
    with pytest.raises(ValueError, match="min_distance_A"):
        tomo.find_peaks(np.zeros((4, 4, 4)), 0.5, 0.1, 0.0)


# ------------------------------------------------------------------------ SIRT


@pytest.fixture(scope="module")
def series():
    rng = np.random.default_rng(5)
    pts = []
    while len(pts) < 20:
        p = rng.uniform(-4.5, 4.5, 3)
        if np.linalg.norm(p) < 4.5 and all(np.linalg.norm(p - q) >= 2.5 for q in pts):
            pts.append(p)
    pts = np.array(pts)
    euler = geometry.euler_from_tilts_deg(np.linspace(-60, 60, 10))
    px, n = 0.25, 48
    setup = render.ImagingSetup((n, n), px)
    images = np.asarray(render.render_tilt_series(Atoms.create(pts, 0.5, 1.0), euler, setup))
    return pts, euler, px, images


def test_sirt_converges_and_peaks_recover_atoms(series):
    pts, euler, px, images = series
    vox = 0.5
    vol, res = tomo.sirt(
        images, euler, None, px, (24, 24, 24), vox, n_iter=10, return_residuals=True
    )
    assert vol.shape == (24, 24, 24) and np.all(vol >= 0)
    assert res.shape == (11,) and res[0] == pytest.approx(1.0)
    assert np.all(np.diff(res) <= 1e-3 * res[:-1])  # non-increasing
    assert res[-1] < 0.4
    pos, val = tomo.find_peaks(vol, vox, 0.2 * vol.max(), 1.8)
    d, i = cKDTree(pos).query(pts)
    assert d.max() < 0.5
    assert len(set(i)) == len(pts) == len(pos)
    # field of view: voxels that leave any (binned: 23 px of 0.5 Å) image stay 0
    grid = tomo.volume_grid_A((24, 24, 24), vox)
    uv = np.stack([_uv_scipy(g, euler, np.zeros((10, 3))) for g in grid])
    outside = np.any(np.abs(uv) > 11 * 0.5 + 1e-9, axis=(1, 2))
    assert 0.2 < outside.mean() < 0.8
    assert np.all(vol.reshape(-1)[outside] == 0)
    assert np.any(vol.reshape(-1)[~outside] > 0)


def test_sirt_uses_drift(series):
    pts, euler, px, _ = series
    alt = 0.6 * (-1.0) ** np.arange(10)  # ±0.6 Å, alternating between images
    drift = np.stack([alt, -alt, np.zeros(10)], 1)
    setup = render.ImagingSetup((48, 48), px)
    images = np.asarray(
        render.render_tilt_series(Atoms.create(pts, 0.5, 1.0), euler, setup, drift_A=drift)
    )
    errors = []
    for d in (drift, None):
        vol = tomo.sirt(images, euler, d, px, (24, 24, 24), 0.5, n_iter=10)
        pos, _ = tomo.find_peaks(vol, 0.5, 0.5 * vol.max(), 1.8)
        errors.append(cKDTree(pos).query(pts)[0].max() if len(pos) else np.inf)
    assert errors[0] < 0.5 < 1.0 < errors[1]


def test_sirt_rejects_bad_input(series):
    _, euler, px, images = series
    with pytest.raises(ValueError, match="angles"):
        tomo.sirt(images[:-1], euler, None, px, (8, 8, 8), 0.5)
    bad = images.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tomo.sirt(bad, euler, None, px, (8, 8, 8), 0.5)
    with pytest.raises(ValueError, match="drift_A"):
        tomo.sirt(images, euler, np.zeros((3, 3)), px, (8, 8, 8), 0.5)
    with pytest.raises(ValueError, match="euler_deg"):
        tomo.sirt(images, np.zeros(10), None, px, (8, 8, 8), 0.5)
    with pytest.raises(ValueError, match="volume_shape"):
        tomo.sirt(images, euler, None, px, (8, 8), 0.5)


def test_field_of_view_survives_float32_rounding():
    """47 wedge tilts in float32: the bilinear weights sum to 46.999996, not 47."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from atomjax import geometry, simulate, tomogram\n"
        "e = geometry.euler_from_tilts_deg(simulate.parse_tilts('-70:70:3'))\n"
        "v = tomogram.sirt(np.ones((len(e), 100, 100), np.float32), e, None, 0.25,\n"
        "                  (48, 48, 48), 0.5, n_iter=1)\n"
        "assert np.asarray(v).dtype == np.float32 and float(np.asarray(v).max()) > 0\n"
    )
    env = {"JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "0", "PATH": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_separable_projector_equals_the_point_projector_for_tilts_about_y():
    """Views tilted about y only: y planes map to image rows, two matrix products a view."""
    from atomjax import tomogram

    rng = np.random.default_rng(0)
    shape, voxel = (20, 14, 17), 0.5
    points = jnp.asarray(tomogram.volume_grid_A(shape, voxel))
    m = 7
    euler = jnp.asarray(np.c_[np.zeros(m), np.deg2rad(np.linspace(-70, 70, m)), np.zeros(m)])
    drift = jnp.asarray(rng.normal(0, 0.7, (m, 3)))
    values = jnp.asarray(rng.uniform(size=points.shape[0]))
    images = jnp.asarray(rng.uniform(size=(m, 16, 13)))
    assert tomogram.is_single_axis_y(euler) and not tomogram.is_single_axis_y(euler + 1e-3)
    np.testing.assert_allclose(
        tomogram.project_grid_y(values, shape, voxel, euler, drift, (16, 13), 0.6),
        tomogram.project(values, points, euler, drift, (16, 13), 0.6),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        tomogram.back_project_volume(images, euler, drift, 0.6, shape, voxel),
        tomogram.back_project(images, euler, drift, 0.6, points),
        atol=1e-12,
    )
