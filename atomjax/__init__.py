"""atomjax: atoms as local orbitals, fitted to HAADF-STEM tilt series in JAX.

The public face. Conventions (Euler order, axes, units) are written down once, in
:mod:`atomjax.geometry`; probe conventions follow abTEM (:mod:`atomjax.probe`).
"""

from .adapt import AdaptConfig
from .atoms import Atoms
from .data import TiltSeries, normalise_series
from .fit import OptimConfig
from .geometry import euler_from_tilts_deg, rotation_matrix, to_image_frame
from .init import InitConfig
from .loss import get_loss, l1, mse, r_factor
from .probe import ProbeSettings, probe_intensity_stack
from .reconstruct import ReconstructConfig, Result, reconstruct
from .render import (
    MODES,
    FixedProbe,
    ImagingSetup,
    PhysicalProbe,
    PixelProbe,
    make_probe,
    render_series,
    render_tilt_series,
)
from .starts import reconstruct_starts
from .units import wavelength_A

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "AdaptConfig",
    "Atoms",
    "InitConfig",
    "OptimConfig",
    "ReconstructConfig",
    "Result",
    "reconstruct",
    "reconstruct_starts",
    "FixedProbe",
    "ImagingSetup",
    "PhysicalProbe",
    "PixelProbe",
    "ProbeSettings",
    "TiltSeries",
    "euler_from_tilts_deg",
    "get_loss",
    "l1",
    "make_probe",
    "mse",
    "normalise_series",
    "probe_intensity_stack",
    "r_factor",
    "render_series",
    "render_tilt_series",
    "rotation_matrix",
    "to_image_frame",
    "wavelength_A",
]
