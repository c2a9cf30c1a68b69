"""Physical constants and the relativistic electron wavelength.

Lengths are in Å, energies in eV, angles in mrad at public boundaries.
"""

from __future__ import annotations

import numpy as np

# CODATA 2018 (as in scipy.constants)
PLANCK_J_S = 6.62607015e-34
SPEED_OF_LIGHT_M_S = 299792458.0
ELECTRON_MASS_KG = 9.1093837015e-31
ELEMENTARY_CHARGE_C = 1.602176634e-19


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength λ = hc / sqrt(eE (2 m c² + eE)), in Å."""
    energy_eV = float(energy_eV)
    if not np.isfinite(energy_eV) or energy_eV <= 0:
        raise ValueError(f"energy_eV must be a positive number, got {energy_eV}")
    mc2_eV = ELECTRON_MASS_KG * SPEED_OF_LIGHT_M_S**2 / ELEMENTARY_CHARGE_C
    hc_eV_m = PLANCK_J_S * SPEED_OF_LIGHT_M_S / ELEMENTARY_CHARGE_C
    return hc_eV_m / np.sqrt(energy_eV * (2.0 * mc2_eV + energy_eV)) * 1e10
