"""The fitting problem a tilt series and its settings define: images, setup, probe.

Plain functions of a :class:`~atomjax.data.TiltSeries` and a
:class:`~atomjax.reconstruct.ReconstructConfig`: the images as the fit sees them, the
imaging setup (slices, splatting window, angle chunks), the probe of the interaction
mode, and the amplitude scale that brings the starting atoms to the data.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from .atoms import Atoms
from .data import TiltSeries, normalise_series
from .loss import NEEDS_COUNTS
from .probe import ProbeSettings
from .render import (
    FixedProbe,
    ImagingSetup,
    PhysicalProbe,
    PixelProbe,
    auto_angle_chunk,
    depth_basis,
    render_series,
)
from .tail import TailKernel


def make_setup(series: TiltSeries, config) -> ImagingSetup:
    nu, nv = series.image_shape
    fov_A = max(nu, nv) * series.pixel_size_A  # the deepest a particle in the field can be
    n_slices = config.n_slices or max(1, math.ceil(fov_A / config.slice_thickness_A))
    return ImagingSetup(
        (nu, nv),
        series.pixel_size_A,
        n_slices=n_slices if config.mode != "direct" else 1,
        slice_thickness_A=config.slice_thickness_A,
        max_width_A2=config.max_width_A2,
        kernel=config.kernel,
        angle_chunk=config.angle_chunk or 8,  # None: resolved once the atoms are known
    )


#: the most images per chunk on a CPU: loss + gradient on 2 cores took 0.037 / 0.135 s
#: (250 atoms, 112² px), 0.25 / 0.48 s (960 atoms, 158²) and 1.0 / 1.3 s (4,800 atoms,
#: 156²) with chunks of 2 / 32 images (benchmarks/README.md): small chunks stay in cache
CPU_MAX_ANGLE_CHUNK = 2
#: ... and on an accelerator, where wide batches keep it busy
ACCELERATOR_MAX_ANGLE_CHUNK = 32


def max_angle_chunk() -> int:
    """The largest automatic angle chunk for the default JAX backend."""
    if jax.default_backend() == "cpu":
        return CPU_MAX_ANGLE_CHUNK
    return ACCELERATOR_MAX_ANGLE_CHUNK


def resolve_angle_chunk(
    setup: ImagingSetup, config, n_angles: int, capacity: int, itemsize: int
) -> ImagingSetup:
    """``setup`` with ``config.angle_chunk``, or the automatic chunk for twice the current
    atom capacity (headroom for atoms added later) when it is None."""
    if config.angle_chunk is not None:
        return setup
    window = 2 * setup.radius_px + 1
    channels = setup.depth_rank or setup.n_slices
    split = channels if setup.depth_rank else (1 if setup.n_slices == 1 else 2)
    chunk = auto_angle_chunk(n_angles, setup.image_shape, channels, 2 * capacity, window, split,
                             itemsize, max_chunk=max_angle_chunk())  # fmt: skip
    if jax.process_count() > 1:  # every process must run the same program: take the first's
        from jax.experimental import multihost_utils

        chunk = int(multihost_utils.broadcast_one_to_all(np.int32(chunk)))
    return dataclasses.replace(setup, angle_chunk=chunk)


def observed_images(series: TiltSeries, config) -> np.ndarray:
    """The images as the fit sees them: normalised to [0, 1] (LOT eq. 6), or by the
    maximum only when the loss needs the counts' zero level (Poisson)."""
    return normalise_series(series.images, keep_zero=config.optim.loss in NEEDS_COUNTS)


def model_images(result, series: TiltSeries, config) -> np.ndarray:
    """The fitted model's images (m, nu, nv), on the scale of :func:`observed_images`."""
    dtype = result.params.atoms.positions_A.dtype
    euler = jnp.asarray(series.euler_rad, dtype)
    return np.asarray(result.params.images(euler, make_setup(series, config)))


def probe_settings(series: TiltSeries, config) -> ProbeSettings | None:
    if config.probe:
        return ProbeSettings.from_dict(dict(config.probe))
    return series.probe


def make_probe(series: TiltSeries, config, setup: ImagingSetup):
    if config.mode == "direct":
        return TailKernel.create() if config.profile_tail else None
    settings = probe_settings(series, config)
    if settings is None:
        raise ValueError(
            f"mode {config.mode!r} needs probe settings: the series carries none; give "
            "config.probe, e.g. {'energy_eV': 300e3, 'semiangle_mrad': 25.0}"
        )
    if config.mode == "rigid":
        return FixedProbe.from_settings(settings, setup)
    if config.probe_fit == "pixel":
        rank = config.probe_depth_rank
        rank = None if rank is None or rank >= setup.n_slices else int(rank)
        return PixelProbe.from_settings(settings, setup, rank, bool(config.probe_centred))
    dtype = jnp.asarray(0.0).dtype
    offsets = jnp.zeros(series.n_angles, dtype) if config.focus_per_image else None
    return PhysicalProbe(settings, offsets)


def with_depth_rank(setup: ImagingSetup, probe, rank: int | None) -> ImagingSetup:
    """``setup`` with the rank-``rank`` depth basis of ``probe``'s starting stack (the
    low-rank depth interaction); unchanged in direct mode, for None, or for a rank that
    is not below the number of slices."""
    if rank is None or probe is None or rank >= setup.n_slices:
        return setup
    stack = np.asarray(probe.intensities(setup))
    return dataclasses.replace(setup, depth_basis=depth_basis(stack, int(rank)))


def calibrate_amplitudes(atoms: Atoms, observed, euler_rad, drift_A, probe, setup) -> float:
    """The scale s minimising ||I_obs − s·I(atoms)||² (closed form)."""
    calc = render_series(atoms, euler_rad, drift_A, probe, setup)
    den = float(jnp.sum(calc * calc))
    if not den > 0:
        raise ValueError("the initial atoms render to an empty image; check the initialisation")
    return float(jnp.sum(calc * observed)) / den
