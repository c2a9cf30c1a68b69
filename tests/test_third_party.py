"""The readers' conventions, checked on the third-party AET data in ../shared/data.

The reference atoms are rendered with atomjax's own geometry (``render_series``, direct
mode) at the angles the reader returns and compared with the measured projections by
normalised cross-correlation (NCC). The mapping is right when NCC is high at every
tilt, and the nearest wrong mappings (tilt sign flipped, image transposed) score lower.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from atomjax import io
from atomjax.atoms import Atoms
from atomjax.render import ImagingSetup, render_series

pytestmark = pytest.mark.data

WIDTHS_A2 = (0.3, 0.5, 0.8, 1.2)


def ncc(a, b) -> float:
    a = np.asarray(a, float) - np.mean(a)
    b = np.asarray(b, float) - np.mean(b)
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


def render(positions_A, euler_deg, image_shape, pixel_size_A, width_A2):
    setup = ImagingSetup(image_shape=image_shape, pixel_size_A=pixel_size_A, max_width_A2=1.2)
    atoms = Atoms.create(positions_A, width_A2=width_A2, amplitude=1.0)
    euler = jnp.asarray(np.deg2rad(np.asarray(euler_deg, float)))
    return np.asarray(render_series(atoms, euler, jnp.zeros_like(euler), None, setup))


def best_width(positions_A, series, idx, filt=lambda x: x):
    """B (Å²) from a grid that maximises the mean NCC, i.e. the least-squares fit with a
    free scale and background per image."""
    scores = []
    for b in WIDTHS_A2:
        sim = render(positions_A, series.euler_deg[idx], series.image_shape, series.pixel_size_A, b)
        scores.append(
            np.mean([ncc(filt(s), filt(series.images[j])) for s, j in zip(sim, idx, strict=True)])
        )
    return WIDTHS_A2[int(np.argmax(scores))]


def in_field_of_view(positions_A, euler_deg, image_shape, pixel_size_A, margin_A=3.0):
    """Atoms whose projection falls within the image (plus a margin) at any of the tilts."""
    from scipy.spatial.transform import Rotation

    half = np.asarray(image_shape) // 2 * pixel_size_A + margin_A
    keep = np.zeros(len(positions_A), bool)
    for e in euler_deg:
        uv = Rotation.from_euler("xyz", e, degrees=True).apply(positions_A)[:, :2]
        keep |= np.all(np.abs(uv) <= half, axis=1)
    return positions_A[keep]


def test_asi_208_ground_truth_matches_projections(shared_data):
    s = io.load_dataset("aSi_208", shared_data)
    assert s.images.shape == (60, 128, 128) and s.images.dtype == np.uint8
    assert s.pixel_size_A == 0.195 and s.atoms_positions_A.shape == (208, 3)
    assert set(s.atoms_species) == {"Si"}
    np.testing.assert_array_equal(s.euler_deg[:, 1], -np.arange(0, 178, 3))

    idx = [0, 15, 30, 45, 59]  # 0° (lowest), 45°, 90°, 135°, 177° (highest)
    # Poisson noise at ~1.4 counts/pixel caps the raw NCC near 0.36, so the ≥ 0.8 test
    # is made after the same Gaussian low-pass (σ = 2 px = 0.39 Å) on both images.
    lowpass = lambda x: gaussian_filter(np.asarray(x, float), 2.0)  # noqa: E731
    b = best_width(s.atoms_positions_A, s, idx, lowpass)
    sim = render(s.atoms_positions_A, s.euler_deg[idx], s.image_shape, s.pixel_size_A, b)
    raw = [ncc(m, s.images[j]) for m, j in zip(sim, idx, strict=True)]
    smooth = [ncc(lowpass(m), lowpass(s.images[j])) for m, j in zip(sim, idx, strict=True)]
    print(f"\naSi_208 B={b} Å²  raw NCC {np.round(raw, 3)}  low-passed NCC {np.round(smooth, 3)}")
    assert min(smooth) >= 0.8, smooth

    # the raw NCC reaches the Poisson ceiling sqrt(var(s) / (var(s) + mean(s))) of the
    # fitted noiseless image s = a·sim + c
    for m, j, r in zip(sim, idx, raw, strict=True):
        x = np.stack([m.ravel(), np.ones(m.size)], 1)
        coef, *_ = np.linalg.lstsq(x, s.images[j].ravel().astype(float), rcond=None)
        fit = x @ coef
        ceiling = np.sqrt(fit.var() / (fit.var() + fit.clip(0).mean()))
        assert r >= 0.9 * ceiling, (j, r, ceiling)

    # The low-passed NCC mostly checks the particle's outline; the atomic detail is in
    # the raw NCC, where the nearest wrong conventions score clearly lower.
    flipped = s.euler_deg[idx] * [1, -1, 1]
    sim_f = render(s.atoms_positions_A, flipped, s.image_shape, s.pixel_size_A, b)
    sim_t = sim.transpose(0, 2, 1)
    for k, j in enumerate(idx):
        wrong_t = ncc(sim_t[k], s.images[j])
        assert wrong_t < 0.85 * raw[k], (j, wrong_t, raw[k])
        if 0 < k < len(idx) - 1:  # the sign hardly matters at 0° and near 180°
            wrong_f = ncc(sim_f[k], s.images[j])
            assert wrong_f < 0.85 * raw[k], (j, wrong_f, raw[k])


def test_asi_208_published_model_agrees_with_ground_truth(shared_data):
    from scipy.spatial import cKDTree

    folder = shared_data / "aSi_208"
    truth, _ = io.read_aet_ground_truth(folder / "ground_truth.txt")
    model, species = io.read_aet_model_voxels(
        folder / "published_model_dose1p6e4.mat", io.ASI_208_PIXEL_SIZE_A, n_pixels=128
    )
    assert model.shape == (208, 3) and species.shape == (208,)
    # same frame, same origin: no centring needed to match every atom
    dist, _ = cKDTree(truth).query(model)
    assert np.all(dist < 0.5), dist.max()
    assert np.linalg.norm(model.mean(0) - truth.mean(0)) < 0.02


def test_ta_film_published_model_matches_projections(shared_data):
    s = io.load_dataset("ta_film", shared_data)
    assert s.images.shape == (46, 131, 61) and s.images.dtype == np.float32
    assert s.pixel_size_A == 0.3216 and s.atoms_positions_A.shape == (8284, 3)
    tilts = s.euler_deg[:, 1]
    assert tilts[0] == pytest.approx(63.0, abs=0.01) and tilts[-1] == pytest.approx(-55.9, abs=0.01)

    # -50.7°, 0°, +27.0° (MATLAB angles). Beyond about ±45° the rays through this corner
    # sub-area leave the modelled part of the film (a bright band of unmodelled
    # material enters the data), and NCC falls to ~0.0 at -63° and ~0.2 at +56°:
    # measured and reported, not asserted.
    idx = [5, 24, 32]
    flipped = s.euler_deg[idx] * [1, -1, 1]
    both = np.concatenate([s.euler_deg[idx], flipped])
    pos = in_field_of_view(s.atoms_positions_A, both, s.image_shape, s.pixel_size_A)
    b = best_width(pos, s, idx)
    sim = render(pos, s.euler_deg[idx], s.image_shape, s.pixel_size_A, b)
    scores = [ncc(m, s.images[j]) for m, j in zip(sim, idx, strict=True)]
    print(f"\nta_film B={b} Å²  NCC at {np.round(-tilts[idx], 1)}°: {np.round(scores, 3)}")
    assert min(scores) >= 0.8, scores

    sim_f = render(pos, flipped, s.image_shape, s.pixel_size_A, b)
    for k in (0, 2):  # tilted views: the opposite tilt sign must be clearly worse
        assert ncc(sim_f[k], s.images[idx[k]]) < scores[k] - 0.1
