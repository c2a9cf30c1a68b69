"""Initial atoms: grid (LOT), random (gaussian-atoms) and tomogram peaks."""

import dataclasses

import numpy as np
import pytest
from scipy.spatial import cKDTree

from atomjax import geometry, render
from atomjax import init as ainit
from atomjax.atoms import Atoms
from atomjax.data import normalise_series
from atomjax.structures import fcc_sphere

PX, N = 0.25, 48


@pytest.fixture(scope="module")
def particle():
    """A 13-atom Au cuboctahedron (2.88 Å spacing), off the voxel grid, 10 tilts."""
    pts = fcc_sphere("Au", 3.5).positions + np.array([0.3, -0.35, 0.25])
    euler = geometry.euler_from_tilts_deg(np.linspace(-60, 60, 10))
    setup = render.ImagingSetup((N, N), PX)
    images = render.render_tilt_series(Atoms.create(pts, 0.5, 1.0), euler, setup)
    return pts, euler, normalise_series(np.asarray(images))


@pytest.fixture(scope="module")
def volume(particle):
    _, euler, images = particle
    return ainit.tomogram(images, euler, None, PX, ainit.InitConfig())


def _in_support(points, mask, vox):
    idx = np.rint(points / vox).astype(int) + np.array(mask.shape) // 2
    assert np.all((idx >= 0) & (idx < np.array(mask.shape)))
    return mask[tuple(idx.T)]


def test_tomogram_cube_covers_field_of_view(particle, volume):
    vol, vox = volume
    assert vox == 0.5 and vol.shape == (24, 24, 24)  # 48 px · 0.25 Å / 0.5 Å
    _, euler, images = particle
    cfg = ainit.InitConfig(voxel_size_A=0.7, sirt_iterations=1)
    vol2, vox2 = ainit.tomogram(images[:, :, :40], euler, None, PX, cfg)
    # round(48 · 0.25 / 0.7), round(40 · 0.25 / 0.7), and as deep as the wider side
    assert vox2 == 0.7 and vol2.shape == (17, 14, 17)


def test_box_sizes_the_tomogram_and_field_of_view_can_be_widened(particle):
    _, euler, images = particle
    cfg = ainit.InitConfig(sirt_iterations=2, box_A=(20.0, 12.0, 6.0))
    vol, _ = ainit.tomogram(images, euler, None, PX, cfg)
    assert vol.shape == (40, 24, 12)  # the box / 0.5 Å voxels, not the 24³ cube
    # voxels at |x| > 8 Å leave the 12 Å wide images at some tilts: zero by default,
    # reconstructed (from the images that do see them) without the field-of-view test
    outer = np.abs(np.arange(40) - 20) * 0.5 > 8.0
    assert np.all(vol[outer] == 0)
    wide, _ = ainit.tomogram(images, euler, None, PX, dataclasses.replace(cfg, field_of_view=False))
    assert np.any(wide[outer] != 0)
    # the field of view, as deep as it is wide: a rectangular field keeps every atom
    assert ainit.volume_shape((48, 40), PX, 0.5) == (24, 20, 24)


def test_peaks_recover_every_atom_and_no_extra(particle):
    pts, euler, images = particle
    pos, widths, amps = ainit.initial_atoms(images, euler, None, PX, ainit.InitConfig())
    assert pos.shape == (len(pts), 3)
    d, i = cKDTree(pos).query(pts)
    assert len(set(i)) == len(pts)
    assert d.max() < 0.5
    np.testing.assert_array_equal(widths, np.full(len(pts), 0.5))
    np.testing.assert_array_equal(amps, np.full(len(pts), 0.008))
    # drift None means zero drift
    pos0 = ainit.initial_positions(images, euler, np.zeros((10, 3)), PX, ainit.InitConfig())
    np.testing.assert_allclose(pos0, pos)


def test_grid_fills_support_with_lattice(particle, volume):
    _, euler, images = particle
    vol, vox = volume
    cfg = ainit.InitConfig(method="grid", d_est_A=1.0)
    pos = ainit.initial_positions(images, euler, None, PX, cfg)
    mask = ainit.support_mask(vol, vox, cfg.support_fraction)
    assert 0 < mask.sum() < mask.size
    assert np.all(_in_support(pos, mask, vox))
    # lattice of spacing d_est_A through the origin: nearest neighbours at d_est_A
    np.testing.assert_allclose(pos / cfg.d_est_A, np.rint(pos / cfg.d_est_A), atol=1e-9)
    nn = cKDTree(pos).query(pos, k=2)[0][:, 1]
    np.testing.assert_allclose(nn, cfg.d_est_A)
    # it fills the support: one point per d³ of support volume
    expected = mask.sum() * vox**3 / cfg.d_est_A**3
    assert abs(len(pos) - expected) < 0.15 * expected
    coarse = ainit.initial_positions(images, euler, None, PX, dataclasses.replace(cfg, d_est_A=2.0))
    assert abs(len(coarse) - expected / 8) < 0.3 * expected / 8


def test_random_inside_support_and_seeded(particle, volume):
    _, euler, images = particle
    vol, vox = volume
    cfg = ainit.InitConfig(method="random", n_random=200, seed=3)
    pos = ainit.initial_positions(images, euler, None, PX, cfg)
    assert pos.shape == (200, 3)
    mask = ainit.support_mask(vol, vox, cfg.support_fraction)
    assert np.all(_in_support(pos, mask, vox))
    # jittered within voxels, not on voxel centres
    assert np.abs(pos / vox - np.rint(pos / vox)).max() > 0.25
    again = ainit.initial_positions(images, euler, None, PX, cfg)
    np.testing.assert_array_equal(pos, again)
    other = ainit.initial_positions(images, euler, None, PX, dataclasses.replace(cfg, seed=4))
    assert not np.allclose(pos, other)
    # default count: as many as the grid method
    n_grid = len(ainit.initial_positions(images, euler, None, PX, ainit.InitConfig(method="grid")))
    default = ainit.initial_positions(images, euler, None, PX, ainit.InitConfig(method="random"))
    assert len(default) == n_grid


def test_support_mask_threshold():
    vol = np.zeros((15, 15, 15))
    vol[7, 7, 7] = 1.0
    mask = ainit.support_mask(vol, 0.5, 0.5, smooth_A=0.5)
    # smoothed by σ = 1 voxel: above half the max within √(2 ln 2) voxels
    idx = np.argwhere(mask) - 7
    r = np.sqrt((idx**2).sum(1))
    assert r.max() <= np.sqrt(2 * np.log(2)) and mask[7, 7, 7] and mask[8, 7, 7]
    assert not ainit.support_mask(np.zeros((5, 5, 5)), 0.5, 0.5).any()
    with pytest.raises(ValueError, match="fraction"):
        ainit.support_mask(vol, 0.5, 1.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "lattice"}, "grid.*random.*peaks"),
        ({"d_est_A": 0.0}, "d_est_A"),
        ({"d_est_A": float("nan")}, "d_est_A"),
        ({"width_A2": -0.5}, "width_A2"),
        ({"amplitude": 0}, "amplitude"),
        ({"voxel_size_A": -1}, "voxel_size_A"),
        ({"min_distance_A": 0}, "min_distance_A"),
        ({"support_fraction": 0.0}, "support_fraction"),
        ({"support_fraction": 1.0}, "support_fraction"),
        ({"peak_fraction": 1.5}, "peak_fraction"),
        ({"sirt_iterations": 0}, "sirt_iterations"),
        ({"sirt_iterations": 2.5}, "sirt_iterations"),
        ({"n_random": 0}, "n_random"),
        ({"seed": -1}, "seed"),
        ({"box_A": (10.0, 5.0)}, "box_A"),
        ({"box_A": (10.0, -5.0, 4.0)}, "box_A"),
        ({"field_of_view": "no"}, "field_of_view"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ainit.InitConfig(**kwargs)


def test_bad_inputs_raise(particle):
    _, euler, images = particle
    with pytest.raises(ValueError, match="angles"):
        ainit.initial_positions(images, euler[:-1], None, PX)
    bad = images.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ainit.initial_atoms(bad, euler, None, PX)
    with pytest.raises(ValueError, match="pixel_size_A"):
        ainit.tomogram(images, euler, None, 0.0)
    with pytest.raises(ValueError, match="config"):
        ainit.initial_positions(images, euler, None, PX, config={"method": "grid"})
