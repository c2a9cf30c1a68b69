"""The step between phases: find missing atoms in the residual, then merge, prune and add.

On the host, between the compiled phases of the fit: the signed (or clipped) residual
of the current model is back-projected into the searched volume, its peaks that stand
out of the back-projected noise become candidates, and :func:`atomjax.adapt.adapt_atoms`
merges close Gaussians, prunes faint ones and adds candidates. The atom buffer then
grows or shrinks in buckets (:func:`atomjax.adapt.bucket_capacity`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from . import adapt, fit, init, tomogram
from .atoms import Atoms
from .fit import Params
from .render import ImagingSetup, render_series

MIN_COVERAGE = 0.1  # adapt.coverage: voxels seen by fewer images count as seen by this fraction


def _capacity(n: int, current: int) -> int:
    """Grow to the next bucket when full; shrink when less than half is used."""
    want = adapt.bucket_capacity(max(n, 1))
    if n > current or want < current // 2:
        return want
    return current


def single_atom_peak(width_A2: float, amplitude: float, probe, setup: ImagingSetup, dtype) -> float:
    """Peak image value of one isolated atom at the rotation centre (residual scale)."""
    atom = Atoms.create(np.zeros((1, 3)), width_A2, amplitude, dtype=dtype)
    probe0 = fit.batch_probe(probe, jnp.arange(1))
    image = render_series(atom, jnp.zeros((1, 3), dtype), jnp.zeros((1, 3), dtype), probe0, setup)
    return float(jnp.max(image))


def residual_candidates(params: Params, observed, euler_rad, setup, config, med_h, med_b):
    """Peaks of the back-projected residual that stand ``adapt.add_sigma`` robust σ above
    its noise: (positions (c, 3) Å, scores (c,) in amplitude units)."""
    dtype = params.atoms.positions_A.dtype
    resid = np.asarray(observed - params.images(euler_rad, setup))
    if config.adapt.residual == "positive":
        resid = np.maximum(resid, 0.0)
    shape = init.volume_shape(
        setup.image_shape, setup.pixel_size_A, config.add_voxel_size_A, config.init.box_A
    )
    voxel = config.add_voxel_size_A
    bp = tomogram.back_project_volume(resid, euler_rad, params.drift_A, setup.pixel_size_A,
                                      shape, voxel)  # fmt: skip
    volume = np.asarray(bp).reshape(shape)
    seen = np.ones(shape)
    if config.adapt.coverage:  # the mean over the images that see each voxel
        ones = jnp.ones_like(observed)
        seen = np.asarray(
            tomogram.back_project_volume(ones, euler_rad, params.drift_A, setup.pixel_size_A,
                                         shape, voxel)
        ).reshape(shape)  # fmt: skip
        seen = np.clip(seen, MIN_COVERAGE, None)
    peak = single_atom_peak(med_b, med_h, params.probe, setup, dtype)
    # candidates must stand out of the residual's noise: add_sigma robust standard
    # deviations (MAD) of the back-projection, whose noise bp / sqrt(coverage) has
    # the same spread everywhere
    z = volume / np.sqrt(seen)
    noise = 1.4826 * float(np.median(np.abs(z - np.median(z))))
    floor = 0.5 * config.adapt.add_fraction * peak
    pos_c, val_c = tomogram.find_peaks(
        volume / seen, config.add_voxel_size_A, floor, config.adapt.min_distance_A
    )
    vox, _ = init.voxel_index(np.asarray(pos_c), shape, config.add_voxel_size_A)
    vox = np.clip(vox, 0, np.array(shape) - 1)  # a refined peak may sit on the edge
    loud = z[tuple(vox.T)] >= config.adapt.add_sigma * noise
    pos_c, val_c = np.asarray(pos_c)[loud], np.asarray(val_c)[loud]
    return pos_c, np.asarray(val_c) * (med_h / peak)


def adapt_step(params: Params, observed, euler_rad, setup, config):
    """Merge, prune and add on the host (:mod:`atomjax.adapt`), the buffer resized to the
    new count. Returns (params, source, counts): ``source[i]`` is the slot atom i
    comes from (-1: added), for the optimizer's state."""
    alive_slots = np.nonzero(np.asarray(params.atoms.alive))[0]
    a = params.atoms.alive_numpy()
    dtype = params.atoms.positions_A.dtype
    candidates = None
    med_h = float(np.median(a["amplitudes"])) if a["amplitudes"].size else 0.0
    med_b = float(np.median(a["widths_A2"])) if a["widths_A2"].size else config.init.width_A2
    if config.adapt.add and med_h > 0:
        candidates = residual_candidates(params, observed, euler_rad, setup, config, med_h, med_b)
    res = adapt.adapt_atoms(
        a["positions_A"],
        a["widths_A2"],
        a["amplitudes"],
        config.adapt,
        candidates=candidates,
        new_width_A2=med_b,
        new_amplitude=med_h if med_h > 0 else None,
    )
    n = len(res.positions_A)
    capacity = _capacity(n, params.atoms.capacity)
    atoms = Atoms.create(res.positions_A, res.widths_A2, res.amplitudes, capacity, dtype=dtype)
    new_params = eqx.tree_at(lambda p: p.atoms, params, atoms)
    src = np.asarray(res.source)
    slot_source = np.where(src >= 0, alive_slots[np.clip(src, 0, None)], -1) if n else src
    counts = {
        "merged": int(res.n_merged),
        "pruned": int(res.n_pruned),
        "added": int(res.n_added),
        "n_atoms": n,
        "capacity": capacity,
    }
    return new_params, slot_source, counts
