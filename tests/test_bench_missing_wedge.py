"""The missing-wedge benchmark's baselines: FBP/SART orientation and atom tracing."""

import pathlib
import sys

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_missing_wedge as bmw  # noqa: E402

from atomjax import metrics  # noqa: E402


def gaussian_volume(shape, centres_vox, sigma_vox, heights):
    """Σ h exp(−|r − c|² / 2σ²) on a voxel grid (indices as coordinates)."""
    grid = np.indices(shape, dtype=float)
    vol = np.zeros(shape)
    for c, h in zip(centres_vox, heights, strict=True):
        d2 = sum((grid[a] - c[a]) ** 2 for a in range(3))
        vol += h * np.exp(-d2 / (2 * sigma_vox**2))
    return vol


def test_subvoxel_refinement_recovers_gaussian_centres():
    rng = np.random.default_rng(1)
    # 8 atoms on a 2 × 2 × 2 lattice 10 voxels apart, random sub-voxel offsets
    base = np.array([[i, j, k] for i in (10, 20) for j in (10, 20) for k in (10, 20)], float)
    centres = base + rng.uniform(-0.5, 0.5, base.shape)
    vol = gaussian_volume((31, 31, 31), centres, 1.8, np.ones(len(centres)))
    idx = np.rint(centres).astype(int)
    off = bmw.subvoxel_offsets(vol, idx)
    # the log-parabola fit is exact for an isolated Gaussian; neighbours 10 voxels
    # (5.6 σ) away perturb it by far less than 0.01 voxel
    np.testing.assert_allclose(idx + off, centres, atol=0.01)


def test_trace_atoms_analytic_oracle():
    rng = np.random.default_rng(2)
    voxel_A = 0.25
    shape = (40, 36, 44)
    base = np.array([[i, j, k] for i in (12, 26) for j in (11, 24) for k in (12, 24, 34)], float)
    centres = base + rng.uniform(-0.5, 0.5, base.shape)
    heights = rng.uniform(0.8, 1.2, len(centres))
    vol = gaussian_volume(shape, centres, 2.0, heights)
    # weak bumps (noise-like peaks, 5-10 % of an atom) that the threshold must reject
    bumps = np.array([[5.0, 5.0, 5.0], [34.0, 30.0, 5.0], [19.0, 5.0, 40.0]])
    vol += gaussian_volume(shape, bumps, 1.0, [0.05, 0.1, 0.08])
    found_A, info = bmw.trace_atoms(vol, voxel_A, min_separation_A=2.0)
    truth_A = (centres - np.array([n // 2 for n in shape])) * voxel_A
    m = metrics.evaluate(found_A, truth_A, cutoff_A=0.75)
    assert m["n_found"] == len(centres)
    assert m["tp_rate"] == 1.0 and m["fp_rate"] == 0.0
    assert m["rmsd_pm"] < 0.01 * voxel_A * 100  # < 0.01 voxel
    assert 0.1 < info["threshold"] < 0.8


def test_otsu_threshold_middle_of_gap_and_greedy_separation():
    values = np.concatenate([np.linspace(0.0, 1.0, 500), np.linspace(9.0, 10.0, 50)])
    thr = bmw.otsu_threshold(values)
    assert 4.0 < thr < 6.0  # middle of the empty stretch, not its low end
    assert bmw.otsu_threshold(np.ones(5)) == 0.0
    pts = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.5, 0, 0], [3.0, 0, 0]])
    # taken in order: 0 kept, 1 too close to 0, 2 kept (2.5 from 0), 3 too close to 2
    np.testing.assert_array_equal(bmw.greedy_separation(pts, 2.0), [0, 2])


def _analytic_series(tilts_deg, atoms_xz_A, nu=64, px_A=0.25, sigma_A=0.45):
    """Projections (m, nu, 1) of Gaussian atoms in the plane y = 0, atomjax's geometry:
    u = x cos θ + z sin θ (R_y(θ)), pixel i at (i − nu // 2) · px."""
    u_A = (np.arange(nu) - nu // 2) * px_A
    th = np.deg2rad(tilts_deg)[:, None]
    img = np.zeros((len(tilts_deg), nu))
    for x, z in atoms_xz_A:
        uc = x * np.cos(th) + z * np.sin(th)
        img += np.exp(-((u_A[None, :] - uc) ** 2) / (2 * sigma_A**2))
    return img[:, :, None]


ATOMS_XZ_A = np.array([[2.0, 3.0], [-3.1, 1.2], [0.4, -2.7], [4.0, -1.5], [-1.5, -4.6]])


@pytest.mark.parametrize("recon", ["fbp", "sart"])
def test_baselines_orientation_matches_atomjax_geometry(recon):
    """The sign of skimage's theta: −θ reconstructs the atoms where they are, +θ
    mirrors them in z (both tried, only the kept one matches)."""
    tilts = np.arange(-90.0, 90.0, 3.0)
    images = _analytic_series(tilts, ATOMS_XZ_A)
    truth_A = np.column_stack([ATOMS_XZ_A[:, 0], np.zeros(len(ATOMS_XZ_A)), ATOMS_XZ_A[:, 1]])
    assert bmw.SKIMAGE_THETA_SIGN == -1.0
    tp = {}
    for sign in (-1.0, 1.0):
        # flipping the tilts is the same as flipping the sign used inside
        t = tilts if sign == bmw.SKIMAGE_THETA_SIGN else -tilts
        if recon == "fbp":
            vol = bmw.fbp_volume(images, t)
        else:
            vol = bmw.sart_volume(images, t, n_iter=2)
        found, _ = bmw.trace_atoms(vol, 0.25, min_separation_A=2.0)
        tp[sign] = metrics.evaluate(found, truth_A, cutoff_A=0.75)
        assert vol.shape == (64, 1, 64)
    good, bad = tp[-1.0], tp[1.0]
    assert good["tp_rate"] == 1.0 and good["fp_rate"] == 0.0
    assert good["rmsd_pm"] < 5.0
    assert bad["tp_rate"] < 0.5


@pytest.mark.slow
def test_fbp_tracing_on_simulated_particle_full_range():
    """Noise-free abTEM series of a small Au particle, full range: FBP + tracing finds
    every atom (the benchmark's full pipeline for one baseline, truth only to score)."""
    from atomjax import simulate, structures

    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", 5.0), seed=0)
    series = simulate.simulate_fast(
        particle, np.arange(-90.0, 90.0, 4.0), pixel_size_A=0.25, noise_std_rel=0.0,
        margin_A=3.0, progress=False,
    )  # fmt: skip
    tilts = bmw.single_axis_tilts_deg(series.euler_deg)
    vol = bmw.fbp_volume(series.images, tilts)
    found, _ = bmw.trace_atoms(vol, series.pixel_size_A)
    m = metrics.evaluate(found, series.atoms_positions_A, cutoff_A=0.75)
    assert m["tp_rate"] >= 0.95
    assert m["fp_rate"] <= 0.05
    assert m["rmsd_pm"] < 10.0
    # the mirrored convention does not reproduce the particle
    vol_bad = bmw.fbp_volume(series.images, -tilts)
    found_bad, _ = bmw.trace_atoms(vol_bad, series.pixel_size_A)
    assert metrics.evaluate(found_bad, series.atoms_positions_A)["tp_rate"] < 0.5


def test_single_axis_tilts_refuses_other_geometries():
    with pytest.raises(ValueError, match="single-axis"):
        bmw.single_axis_tilts_deg(np.array([[10.0, 20.0, 0.0]]))
