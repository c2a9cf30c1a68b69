"""Pre-alignment (atomjax.alignment): known shifts and tilt axis recovered from rendered
series, the alignment file's round trip, and applying it."""

import numpy as np
import pytest

from atomjax import alignment, structures
from atomjax.atoms import Atoms
from atomjax.data import TiltSeries
from atomjax.geometry import euler_from_tilts_deg
from atomjax.render import ImagingSetup, render_tilt_series

TILTS = np.arange(-70, 71, 5.0)
PIXEL_A = 0.4


def misaligned(alpha_deg, seed):
    """A 14 Å amorphous Si particle (centred) seen about a tilt axis turned by
    ``alpha_deg`` with shifts of σ 1 Å and 5 % Gaussian noise: (series with the nominal
    geometry, the true shifts (m, 2))."""
    rng = np.random.default_rng(seed)
    pos = structures.amorphous("Si", radius_A=7.0, seed=1).get_positions()
    pos -= pos.mean(axis=0)
    m = len(TILTS)
    euler = euler_from_tilts_deg(TILTS)
    euler[:, 2] = alpha_deg
    drift = np.c_[rng.normal(0, 1.0, (m, 2)), np.zeros(m)]
    setup = ImagingSetup((72, 72), PIXEL_A, max_width_A2=1.0)
    clean = np.asarray(render_tilt_series(Atoms.create(pos, 0.6, 0.3), euler, setup, None, drift))
    peak = clean.max()
    observed = clean + 0.1 * peak + rng.normal(0, 0.05 * peak, clean.shape)
    return TiltSeries(observed, euler_from_tilts_deg(TILTS), PIXEL_A), drift[:, :2]


@pytest.mark.parametrize("alpha_deg, seed", [(1.0, 0), (-3.3, 1)])
def test_known_shifts_and_tilt_axis_are_recovered(alpha_deg, seed):
    """Measured: shifts 0.03 / 0.02 Å RMS (u / v), the axis within 0.3-0.5°."""
    series, shifts = misaligned(alpha_deg, seed)
    found = alignment.estimate(series)
    err = found.shifts_A - shifts
    rms = np.sqrt(np.mean(err**2, axis=0))
    assert np.all(rms < 0.06), rms
    assert abs(found.tilt_axis_deg - alpha_deg) < 0.8, found.tilt_axis_deg
    scan = np.asarray(found.info["scan_spread"])
    assert scan.min() < 0.5 * scan.max()  # the common line does discriminate


def test_applied_alignment_centres_the_images_and_turns_the_axis(tmp_path):
    series, shifts = misaligned(2.0, 2)
    found = alignment.estimate(series)
    path = found.save(tmp_path / "alignment.json")
    again = alignment.load(path)
    np.testing.assert_array_equal(again.shifts_A, found.shifts_A)
    assert again.tilt_axis_deg == found.tilt_axis_deg
    aligned = alignment.apply(series, again)
    np.testing.assert_allclose(aligned.euler_deg[:, 2], found.tilt_axis_deg)
    np.testing.assert_array_equal(aligned.euler_deg[:, :2], series.euler_deg[:, :2])
    left = alignment.centre_shifts_A(aligned.images, PIXEL_A)
    assert np.sqrt(np.mean(left**2)) < 0.03, left  # centred (the shift's sign is right)
    assert aligned.provenance["alignment"]["tilt_axis_deg"] == found.tilt_axis_deg


def test_bad_input_is_named(tmp_path):
    series, _ = misaligned(0.0, 3)
    found = alignment.estimate(series)
    with pytest.raises(ValueError, match="another series"):
        alignment.apply(series.replace(images=series.images[:-1],
                                       euler_deg=series.euler_deg[:-1]), found)  # fmt: skip
    euler = series.euler_deg.copy()
    euler[0, 0] = 5.0
    with pytest.raises(ValueError, match="single-axis"):
        alignment.estimate(series.replace(euler_deg=euler))
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not an alignment file"):
        alignment.load(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="no alignment file"):
        alignment.load(tmp_path / "missing.json")
