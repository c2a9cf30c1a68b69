"""The step between phases: merge close atoms, keep the ones the data support, split the
ones that are two, add missing ones.

On the host, between the compiled phases of the fit: Gaussians closer than
``adapt.min_distance_A`` merge (:func:`atomjax.adapt.merge_close`); the detection rule
(:mod:`atomjax.detection`, ``adapt.rule``) decides which atoms stay, which are pairs
and which peaks of the back-projected residual become atoms. The atom buffer then grows
or shrinks in buckets (:func:`atomjax.adapt.bucket_capacity`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from . import adapt, detection, fit, init, tomogram
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


def residual_candidates(params: Params, calc, observed, euler_rad, setup, config, floor):
    """Peaks above ``floor`` of the residual observed − calc back-projected into the
    searched volume: (positions (c, 3) Å, values (c,), robust σ above the noise (c,)).

    With ``adapt.residual = "positive"`` the residual is clipped at 0 first; with
    ``adapt.coverage`` the back-projection is divided by each voxel's share of images
    (its noise, bp / sqrt(coverage), then has the same spread everywhere)."""
    resid = np.asarray(observed - calc)
    if config.adapt.residual == "positive":
        resid = np.maximum(resid, 0.0)
    shape = init.volume_shape(
        setup.image_shape, setup.pixel_size_A, config.add_voxel_size_A, config.init.box_A
    )
    voxel = config.add_voxel_size_A
    views = np.asarray(params.euler(euler_rad))  # the angles as fitted
    bp = tomogram.back_project_volume(resid, views, params.drift_A, setup.pixel_size_A,
                                      shape, voxel)  # fmt: skip
    volume = np.asarray(bp).reshape(shape)
    seen = np.ones(shape)
    if config.adapt.coverage:  # the mean over the images that see each voxel
        ones = jnp.ones_like(observed)
        seen = np.asarray(
            tomogram.back_project_volume(ones, views, params.drift_A, setup.pixel_size_A,
                                         shape, voxel)
        ).reshape(shape)  # fmt: skip
        seen = np.clip(seen, MIN_COVERAGE, None)
    z = volume / np.sqrt(seen)
    noise = 1.4826 * float(np.median(np.abs(z - np.median(z))))
    pos_c, val_c = tomogram.find_peaks(volume / seen, voxel, floor, config.adapt.min_distance_A)
    pos_c = np.asarray(pos_c).reshape(-1, 3)
    vox, _ = init.voxel_index(pos_c, shape, voxel)
    vox = np.clip(vox, 0, np.array(shape) - 1)  # a refined peak may sit on the edge
    loudness = z[tuple(vox.T)] / max(noise, 1e-300)
    return pos_c, np.asarray(val_c), loudness


def context(params: Params, observed, euler_rad, setup, config) -> detection.Context:
    """What the detection rule sees of this fit (:class:`atomjax.detection.Context`)."""
    dtype = params.atoms.positions_A.dtype

    def render(pos, widths, amps):
        atoms = Atoms.create(pos, widths, amps, adapt.bucket_capacity(max(len(pos), 1)),
                             dtype=dtype)  # fmt: skip
        return eqx.tree_at(lambda p: p.atoms, params, atoms).images(euler_rad, setup)

    def candidates(calc, floor):
        return residual_candidates(params, calc, observed, euler_rad, setup, config, floor)

    def peak(width_A2, amplitude):
        return single_atom_peak(width_A2, amplitude, params.probe, setup, dtype)

    def images_before():
        return params.images(euler_rad, setup)

    return detection.Context(observed, params.euler(euler_rad), params.drift_A, setup, render,
                             candidates, peak, images_before, config.adapt,
                             config.optim.loss)  # fmt: skip


def adapt_step(params: Params, observed, euler_rad, setup, config):
    """Merge close atoms, then keep, split and add by the detection rule (``adapt.rule``,
    :mod:`atomjax.detection`), the buffer resized to the new count. Returns (params,
    source, counts): ``source[i]`` is the slot atom i comes from (-1: added), for the
    optimizer's state."""
    alive_slots = np.nonzero(np.asarray(params.atoms.alive))[0]
    a = params.atoms.alive_numpy()
    dtype = params.atoms.positions_A.dtype
    cfg = config.adapt
    rule = detection.make_rule(cfg.rule)
    ctx = context(params, observed, euler_rad, setup, config)
    med_h = float(np.median(a["amplitudes"])) if a["amplitudes"].size else 0.0
    med_b = float(np.median(a["widths_A2"])) if a["widths_A2"].size else config.init.width_A2
    pos, widths, amps, source = adapt.merge_close(
        a["positions_A"], a["widths_A2"], a["amplitudes"], cfg.min_distance_A, cfg.amplitude_rule
    )
    n_merged = len(a["positions_A"]) - len(pos)
    keep = rule.keep(pos, widths, amps, ctx) if len(pos) else np.zeros(0, bool)
    pos, widths, amps, source = pos[keep], widths[keep], amps[keep], source[keep]
    n_kept = len(pos)
    pos, widths, amps, was = rule.split(pos, widths, amps, ctx)
    source = np.where(was >= 0, source[np.clip(was, 0, None)], -1) if len(was) else source
    n_split = n_kept - int(np.sum(was >= 0))
    added, new_amps = np.zeros((0, 3)), np.zeros(0)
    if cfg.add and med_h > 0:
        added, new_amps = rule.add(pos, widths, amps, ctx, med_b, med_h)
    k = len(added)
    pos = np.concatenate([pos, added])
    widths = np.concatenate([widths, np.full(k, med_b)])
    amps = np.concatenate([amps, new_amps])
    src = np.concatenate([source, np.full(k, -1, dtype=np.int64)])
    n = len(pos)
    capacity = _capacity(n, params.atoms.capacity)
    atoms = Atoms.create(pos, widths, amps, capacity, dtype=dtype)
    new_params = eqx.tree_at(lambda p: p.atoms, params, atoms)
    slot_source = np.where(src >= 0, alive_slots[np.clip(src, 0, None)], -1) if n else src
    counts = {
        "merged": int(n_merged),
        "pruned": int(keep.size - keep.sum()),
        "split": int(n_split),
        "added": int(k),
        "n_atoms": n,
        "capacity": capacity,
    }
    return new_params, slot_source, counts
