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
    assert {"pt_deca_d30_a25", "pt_deca_d50_a25"} <= set(NAMES)


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
