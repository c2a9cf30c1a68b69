"""Probe synthesis against abTEM (the oracle) and analytic facts."""

import abtem
import numpy as np
import pytest
from abtem.core.energy import energy2wavelength

from atomjax.probe import ProbeSettings, aperture, probe_intensity_stack
from atomjax.units import wavelength_A

N, SAMPLING_A = 128, 0.05


def abtem_intensity(settings: ProbeSettings, n=N, sampling=SAMPLING_A):
    probe = abtem.Probe(
        energy=settings.energy_eV,
        semiangle_cutoff=float(settings.semiangle_mrad),
        gpts=(n, n),
        sampling=sampling,
        **settings.abtem_aberrations(),
    )
    centre = (n // 2) * sampling
    wave = probe.build(scan=[(centre, centre)]).compute().array
    intensity = np.abs(np.asarray(wave).reshape(n, n)) ** 2
    return intensity / intensity.sum()


@pytest.mark.parametrize("energy_eV", [80e3, 200e3, 300e3])
def test_wavelength_matches_abtem(energy_eV):
    assert wavelength_A(energy_eV) == pytest.approx(energy2wavelength(energy_eV), rel=1e-6)


def test_wavelength_300kV_value():
    assert wavelength_A(300e3) == pytest.approx(0.0196875, abs=5e-7)


@pytest.mark.parametrize(
    "aberrations",
    [
        {},
        {"defocus_A": 60.0},
        {"defocus_A": -90.0},
        {"C30_A": 2.0e4},
        {"C12_A": 25.0, "phi12_rad": 0.7},
        {"defocus_A": 30.0, "C30_A": -1.0e4, "C50_A": 5.0e6},
    ],
    ids=["focus", "+defocus", "-defocus", "Cs", "astigmatism", "Cs+C5"],
)
@pytest.mark.parametrize("semiangle_mrad", [20.0, 25.0])
def test_probe_matches_abtem(aberrations, semiangle_mrad):
    settings = ProbeSettings(energy_eV=300e3, semiangle_mrad=semiangle_mrad, **aberrations)
    ours = np.asarray(probe_intensity_stack((N, N), SAMPLING_A, settings, [0.0])[0])
    theirs = abtem_intensity(settings)
    assert np.abs(ours - theirs).max() <= 1e-3 * theirs.max()


def test_probe_matches_abtem_non_square_grid():
    settings = ProbeSettings(energy_eV=200e3, semiangle_mrad=21.0, defocus_A=20.0)
    n0, n1, s = 96, 80, 0.06
    probe = abtem.Probe(
        energy=200e3,
        semiangle_cutoff=21.0,
        gpts=(n0, n1),
        sampling=s,
        **settings.abtem_aberrations(),
    )
    wave = probe.build(scan=[((n0 // 2) * s, (n1 // 2) * s)]).compute().array
    theirs = np.abs(np.asarray(wave).reshape(n0, n1)) ** 2
    theirs /= theirs.sum()
    ours = np.asarray(probe_intensity_stack((n0, n1), s, settings, [0.0])[0])
    assert np.abs(ours - theirs).max() <= 1e-3 * theirs.max()


@pytest.mark.parametrize("depth_A", [-40.0, 25.0, 80.0])
def test_propagation_equals_defocus_change(depth_A):
    """abTEM fact: propagating by z equals changing the defocus by -z."""
    settings = ProbeSettings(semiangle_mrad=25.0, defocus_A=20.0)
    ours = np.asarray(probe_intensity_stack((N, N), SAMPLING_A, settings, [depth_A])[0])
    shifted = ProbeSettings(semiangle_mrad=25.0, defocus_A=20.0 - depth_A)
    theirs = abtem_intensity(shifted)
    assert np.abs(ours - theirs).max() <= 1e-3 * theirs.max()


def test_probe_focus_is_sharpest_at_crossover():
    """With defocus f the crossover sits at depth w = f: the peak is highest there."""
    settings = ProbeSettings(semiangle_mrad=25.0, defocus_A=30.0)
    depths = np.linspace(-20, 80, 21)
    stack = np.asarray(probe_intensity_stack((N, N), SAMPLING_A, settings, depths))
    assert depths[np.argmax(stack.max(axis=(1, 2)))] == pytest.approx(30.0, abs=5.0)
    np.testing.assert_allclose(stack.sum(axis=(1, 2)), 1.0, rtol=1e-10)


def test_aperture_soft_edge_matches_abtem():
    ap = abtem.transfer.Aperture(
        semiangle_cutoff=25.0, energy=300e3, gpts=(N, N), sampling=SAMPLING_A
    )
    theirs = np.asarray(ap._evaluate_kernel()).reshape(N, N)
    ours = np.asarray(aperture((N, N), SAMPLING_A, 300e3, 25.0))
    assert np.count_nonzero((theirs > 0) & (theirs < 1)) > 0, "abTEM's edge should be soft"
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_bad_probe_settings_raise():
    with pytest.raises(ValueError, match="energy_eV"):
        ProbeSettings(energy_eV=-1.0)
    with pytest.raises(ValueError, match="semiangle_mrad"):
        ProbeSettings(semiangle_mrad=0.0)
    with pytest.raises(ValueError, match="unknown probe settings"):
        ProbeSettings.from_dict({"energy_eV": 3e5, "Cs": 1.0})


def test_settings_round_trip_dict():
    s = ProbeSettings(energy_eV=200e3, semiangle_mrad=21.0, defocus_A=12.0, C30_A=1e3)
    assert ProbeSettings.from_dict(s.to_dict()).to_dict() == s.to_dict()
