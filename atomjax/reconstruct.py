"""Reconstruct atoms from a tilt series: initialise, fit in phases, adapt, write outputs.

The host-side driver around the jit-compiled phases of :mod:`atomjax.fit`:

1. normalise the series to [0, 1] (LOT eq. 6) and build the imaging setup;
2. initial atoms (:mod:`atomjax.init`: grid, random or tomogram peaks), with one
   amplitude scale fitted by least squares so every method starts at the data's
   intensity;
3. phases of optax steps; between phases, on the host, merge / prune / add
   (:mod:`atomjax.adapt`, candidates for missing atoms from the back-projected
   residual, signed by default), then a checkpoint;
4. outputs in the run folder: ``atoms.extxyz``, ``report.json`` (settings, loss
   history, R-factor per image, run time, atom count, metrics against ground truth
   when the series carries it) and figures.

Nothing here reads the ground truth except the final, reported evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import (
    adapt,
    checkpoint,
    fit,
    init,
    interrupt,
    metrics,
    outputs,
    runfolder,
    sharding,
    tomogram,
)
from .adapt import AdaptConfig
from .atoms import Atoms
from .background import BACKGROUND_INITS, initial_background
from .data import TiltSeries, normalise_series
from .fit import OptimConfig, Params, Rates, settings_from_dict
from .init import InitConfig
from .loss import NEEDS_COUNTS
from .probe import ProbeSettings
from .render import (
    MODES,
    FixedProbe,
    ImagingSetup,
    PhysicalProbe,
    PixelProbe,
    auto_angle_chunk,
    depth_basis,
    render_series,
)

PROBE_FITS = ("pixel", "physical")
MIN_COVERAGE = 0.1  # adapt.coverage: voxels seen by fewer images count as seen by this fraction


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """All settings of a reconstruction (plain values; Hydra maps its groups onto these).

    mode: "direct", "rigid" or "adaptive" interaction. probe_fit (adaptive): "pixel"
    (every probe pixel per slice, LOT) or "physical" (defocus, astigmatism, Cs and a
    focus per image). probe: ProbeSettings fields used when the series has none.
    Slices of ``slice_thickness_A`` cover the field of view unless ``n_slices`` is set.
    ``max_width_A2`` sizes the splatting window and bounds the fitted widths.
    angle_chunk: images rendered together (vmapped, rematerialised in the backward
    pass); None chooses it from the image size, slices, atoms and the free memory
    (:func:`atomjax.render.auto_angle_chunk`), so peak memory does not grow with the
    number of angles.
    species: names from the weakest to the strongest scatterer, to classify atoms.
    shard_devices: split the tilt angles over this many devices (-1: all of
    ``jax.devices()``, every process's after ``jax.distributed.initialize()``); None or
    1: one device. The result does not depend on it (up to float rounding).
    depth_rank: render with R depth components instead of every slice (the low-rank
    depth interaction, :func:`atomjax.render.depth_basis` of the starting probe): R FFTs
    per image instead of n_slices; None: the full per-slice model.
    background_init: the starting vacuum level per image (:func:`initial_background`):
    "border" (median of a frame of border pixels: a particle in vacuum), "min" (the 1st
    percentile: a film with no vacuum in view) or "zero".
    """

    mode: str = "direct"
    probe_fit: str = "pixel"
    focus_per_image: bool = True
    probe: dict | None = None
    slice_thickness_A: float = 2.0
    n_slices: int | None = None
    max_width_A2: float = 1.5
    angle_chunk: int | None = None
    shard_devices: int | None = None
    depth_rank: int | None = None
    calibrate_amplitude: bool = True
    fit_background: bool = True
    background_init: str = "border"
    adapt_between_phases: bool = True
    add_voxel_size_A: float = 0.5
    species: tuple[str, ...] | None = None
    species_method: str = "gmm"
    checkpoint: bool = True
    seed: int = 0
    init: InitConfig = dataclasses.field(default_factory=InitConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    adapt: AdaptConfig = dataclasses.field(default_factory=AdaptConfig)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown interaction mode {self.mode!r}; choose one of {MODES}")
        if self.probe_fit not in PROBE_FITS:
            raise ValueError(f"probe_fit must be one of {PROBE_FITS}, got {self.probe_fit!r}")
        if not self.slice_thickness_A > 0:
            raise ValueError(f"slice_thickness_A must be positive, got {self.slice_thickness_A}")
        if self.shard_devices is not None and not (
            self.shard_devices == -1 or int(self.shard_devices) >= 1
        ):
            raise ValueError(f"shard_devices must be -1, None or ≥ 1, got {self.shard_devices}")
        if self.depth_rank is not None and (
            int(self.depth_rank) != self.depth_rank or self.depth_rank < 1
        ):
            raise ValueError(
                f"depth_rank must be a positive integer or None, got {self.depth_rank}"
            )
        if self.background_init not in BACKGROUND_INITS:
            raise ValueError(
                f"background_init must be one of {BACKGROUND_INITS}, got {self.background_init!r}"
            )
        if self.n_slices is not None and (int(self.n_slices) != self.n_slices or self.n_slices < 1):
            raise ValueError(f"n_slices must be a positive integer or None, got {self.n_slices}")
        if self.species is not None:
            object.__setattr__(self, "species", tuple(str(s) for s in self.species))
        object.__setattr__(self, "init", settings_from_dict(InitConfig, self.init))
        object.__setattr__(self, "optim", settings_from_dict(OptimConfig, self.optim))
        object.__setattr__(self, "adapt", settings_from_dict(AdaptConfig, self.adapt))

    @classmethod
    def from_dict(cls, d: dict | None) -> ReconstructConfig:
        return settings_from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return outputs.to_jsonable(dataclasses.asdict(self))


@dataclasses.dataclass
class Result:
    """What a reconstruction returns (host arrays) and where it wrote its files."""

    positions_A: np.ndarray
    widths_A2: np.ndarray
    amplitudes: np.ndarray
    species: np.ndarray | None
    report: dict[str, Any]
    params: Params
    out_dir: pathlib.Path | None


# ------------------------------------------------------------------------ set-up


def make_setup(series: TiltSeries, config: ReconstructConfig) -> ImagingSetup:
    nu, nv = series.image_shape
    fov_A = min(nu, nv) * series.pixel_size_A
    n_slices = config.n_slices or max(1, math.ceil(fov_A / config.slice_thickness_A))
    return ImagingSetup(
        (nu, nv),
        series.pixel_size_A,
        n_slices=n_slices if config.mode != "direct" else 1,
        slice_thickness_A=config.slice_thickness_A,
        max_width_A2=config.max_width_A2,
        angle_chunk=config.angle_chunk or 8,  # None: resolved once the atoms are known
    )


def resolve_angle_chunk(
    setup: ImagingSetup, config: ReconstructConfig, n_angles: int, capacity: int, itemsize: int
) -> ImagingSetup:
    """``setup`` with ``config.angle_chunk``, or the automatic chunk for twice the current
    atom capacity (headroom for atoms added later) when it is None."""
    if config.angle_chunk is not None:
        return setup
    window = 2 * setup.radius_px + 1
    channels = setup.depth_rank or setup.n_slices
    split = channels if setup.depth_rank else (1 if setup.n_slices == 1 else 2)
    chunk = auto_angle_chunk(n_angles, setup.image_shape, channels, 2 * capacity, window, split,
                             itemsize)  # fmt: skip
    if jax.process_count() > 1:  # every process must run the same program: take the first's
        from jax.experimental import multihost_utils

        chunk = int(multihost_utils.broadcast_one_to_all(np.int32(chunk)))
    return dataclasses.replace(setup, angle_chunk=chunk)


def observed_images(series: TiltSeries, config: ReconstructConfig) -> np.ndarray:
    """The images as the fit sees them: normalised to [0, 1] (LOT eq. 6), or by the
    maximum only when the loss needs the counts' zero level (Poisson)."""
    return normalise_series(series.images, keep_zero=config.optim.loss in NEEDS_COUNTS)


def model_images(result: Result, series: TiltSeries, config: ReconstructConfig) -> np.ndarray:
    """The fitted model's images (m, nu, nv), on the scale of :func:`observed_images`."""
    dtype = result.params.atoms.positions_A.dtype
    euler = jnp.asarray(series.euler_rad, dtype)
    return np.asarray(result.params.images(euler, make_setup(series, config)))


def probe_settings(series: TiltSeries, config: ReconstructConfig) -> ProbeSettings | None:
    if config.probe:
        return ProbeSettings.from_dict(dict(config.probe))
    return series.probe


def make_probe(series: TiltSeries, config: ReconstructConfig, setup: ImagingSetup):
    if config.mode == "direct":
        return None
    settings = probe_settings(series, config)
    if settings is None:
        raise ValueError(
            f"mode {config.mode!r} needs probe settings: the series carries none; give "
            "config.probe, e.g. {'energy_eV': 300e3, 'semiangle_mrad': 25.0}"
        )
    if config.mode == "rigid":
        return FixedProbe.from_settings(settings, setup)
    if config.probe_fit == "pixel":
        return PixelProbe.from_settings(settings, setup)
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


# ----------------------------------------------------------------------- the adapt step


def adapt_step(params: Params, opt_state, observed, euler_rad, setup, config, rates):
    """Merge, prune and add on the host; returns (params, opt_state, counts)."""
    alive_slots = np.nonzero(np.asarray(params.atoms.alive))[0]
    a = params.atoms.alive_numpy()
    dtype = params.atoms.positions_A.dtype
    candidates = None
    med_h = float(np.median(a["amplitudes"])) if a["amplitudes"].size else 0.0
    med_b = float(np.median(a["widths_A2"])) if a["widths_A2"].size else config.init.width_A2
    if config.adapt.add and med_h > 0:
        resid = np.asarray(observed - params.images(euler_rad, setup))
        if config.adapt.residual == "positive":
            resid = np.maximum(resid, 0.0)
        shape = init.volume_shape(
            setup.image_shape, setup.pixel_size_A, config.add_voxel_size_A, config.init.box_A
        )
        points = jnp.asarray(tomogram.volume_grid_A(shape, config.add_voxel_size_A), dtype)
        bp = tomogram.back_project(resid, euler_rad, params.drift_A, setup.pixel_size_A, points)
        volume = np.asarray(bp).reshape(shape)
        seen = np.ones(shape)
        if config.adapt.coverage:  # the mean over the images that see each voxel
            ones = jnp.ones_like(observed)
            seen = np.asarray(
                tomogram.back_project(ones, euler_rad, params.drift_A, setup.pixel_size_A, points)
            ).reshape(shape)
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
        candidates = (pos_c, np.asarray(val_c) * (med_h / peak))
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
    opt_state = fit.resize_state(opt_state, new_params, slot_source, config.optim, rates)
    counts = {
        "merged": int(res.n_merged),
        "pruned": int(res.n_pruned),
        "added": int(res.n_added),
        "n_atoms": n,
        "capacity": capacity,
    }
    return new_params, opt_state, counts


# ------------------------------------------------------------------------ the driver


def _fit_data(config: ReconstructConfig, observed, euler):
    """(mesh, observed, euler, weights) as the fit sees them: as given on one device, or
    padded and split over the devices when ``config.shard_devices`` asks for several."""
    n = config.shard_devices
    if n is None or n == 1:
        return None, observed, euler, None
    mesh = sharding.angle_mesh(None if n == -1 else n)
    weights = sharding.image_weights(observed.shape[0], mesh, observed.dtype)
    pad = lambda x: sharding.place_images(sharding.pad_to_mesh(x, mesh), mesh)  # noqa: E731
    return mesh, pad(observed), pad(euler), sharding.place_images(weights, mesh)


def _on_mesh(params, opt_state, mesh):
    """Per-image parameters (and their optimizer moments) padded and split over ``mesh``;
    atoms replicated. No-op without a mesh or when already padded."""
    if mesh is None:
        return params, opt_state
    m_pad = sharding.padded_count(params.drift_A.shape[0], mesh)
    if params.drift_A.shape[0] != m_pad:
        params = sharding.pad_params(params, mesh)
        opt_state = sharding.pad_params(opt_state, mesh)
    return sharding.place(params, mesh), sharding.place(opt_state, mesh)


def _off_mesh(params, opt_state, n_angles: int):
    """The per-image parameters of the real images only, on this process (host-side
    steps, checkpoints, reports; with several processes every one gets the same copy)."""
    params, opt_state = sharding.to_host((params, opt_state))
    return sharding.unpad_params(params, n_angles), sharding.unpad_params(opt_state, n_angles)


def _n_pieces(steps: int) -> int:
    """Equal pieces a phase's steps are run in: up to 10, dividing ``steps`` exactly
    (one compiled shape per run) and at least 5 steps long."""
    return next(
        k for k in (10, 8, 6, 5, 4, 3, 2, 1) if steps % k == 0 and steps // k >= 5 or k == 1
    )


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit", unit="step", disable=not enabled, leave=True)


@dataclasses.dataclass
class _FitState:
    """Where a fit stands: its parameters and optimizer state, ``phase`` phases done and
    ``step`` steps of the next one (host-side bookkeeping between compiled pieces)."""

    params: Params
    opt_state: Any
    lr_scale: Any
    rates: Rates
    history: dict[str, Any]
    phase: int = 0
    step: int = 0
    phase_rejected: int = 0  # rejected steps so far in the phase in progress
    elapsed0_s: float = 0.0  # run time of the earlier calls (resume)

    def saved(self, n_angles: int):
        """The arrays a checkpoint holds: per-image parameters of the real images only."""
        params, opt_state = _off_mesh(self.params, self.opt_state, n_angles)
        return params, opt_state, jnp.asarray(self.lr_scale)


def reconstruct(
    series: TiltSeries,
    config: ReconstructConfig | dict | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    max_phases: int | None = None,
    initial_positions_A=None,
    overwrite: bool = False,
    record: dict[str, Any] | None = None,
    interruptible: bool = True,
) -> Result:
    """Fit atoms to ``series``; write the run folder ``out_dir`` if given.

    The run folder is guarded (:mod:`atomjax.runfolder`): a folder that holds a run is
    continued only with ``resume`` and replaced only with ``overwrite`` (its old outputs
    are removed first); one another process writes into is refused.

    resume: continue from ``out_dir/checkpoint`` (same series, same settings, same seed)
    — the result equals an uninterrupted run, bit for bit. max_phases: stop after this
    many phases in this call (e.g. to fit a cluster's time limit) and resume later; the
    returned result then describes the atoms so far. initial_positions_A: (n, 3)
    starting atoms instead of ``config.init``'s method (widths and amplitudes still from
    it), e.g. a published model to refit with ``optim.lr_positions_A=0`` and no adapt
    step. record: what the caller wants kept in the folder's ``run.json`` (the app: the
    data description and its settings). interruptible: SIGINT / SIGTERM (Ctrl-C) stop
    the fit after its current compiled piece, with a checkpoint and the atoms so far
    written; the result's ``report["status"]`` is then "interrupted".
    """
    config = ReconstructConfig.from_dict(config)
    if not isinstance(series, TiltSeries):
        raise TypeError(f"series must be an atomjax.TiltSeries, got {type(series).__name__}")
    out = pathlib.Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise ValueError("resume=True needs out_dir: the run folder to continue")
    if resume and not config.checkpoint:
        raise ValueError(
            "resume needs the run folder's checkpoint, but these settings have "
            "checkpoint=False; resume with checkpoint=True (the run's own setting)"
        )
    writer = jax.process_index() == 0  # several processes (jax.distributed): one writes
    claim = (
        runfolder.claim(out, resume=resume, overwrite=overwrite)
        if out is not None and writer
        else contextlib.nullcontext(None)
    )
    with claim as run, interrupt.stop_requests(interruptible) as stop:
        if resume and not checkpoint.exists(out / runfolder.CHECKPOINT_DIR):
            raise FileNotFoundError(f"no checkpoint to resume from in {out}")
        try:
            return _run(series, config, out, run, resume, progress, figures, max_phases,
                        initial_positions_A, record, stop)  # fmt: skip
        except BaseException as e:
            if run is not None:
                aborted = isinstance(e, KeyboardInterrupt)
                run.update(
                    status="interrupted" if aborted else "failed",
                    error="stopped at once by a second signal" if aborted else repr(e)[:2000],
                )
            raise


def _prepare(series: TiltSeries, config: ReconstructConfig):
    """(observed (numpy), observed, euler, setup, probe, background): what every start
    needs, computed from the series and the settings alone."""
    dtype = jnp.asarray(0.0).dtype
    observed_np = observed_images(series, config)
    setup = make_setup(series, config)
    probe = make_probe(series, config, setup)
    setup = with_depth_rank(setup, probe, config.depth_rank)
    background = initial_background(observed_np, config.background_init)
    euler = jnp.asarray(series.euler_rad, dtype)
    return observed_np, jnp.asarray(observed_np, dtype), euler, setup, probe, background


def _new_fit(series, config, observed_np, euler, setup, probe, background, initial_positions_A,
             progress) -> _FitState:  # fmt: skip
    """The starting atoms (:mod:`atomjax.init` or given), their amplitude scale, and the
    optimizer's state."""
    dtype = euler.dtype
    drift0 = jnp.zeros((series.n_angles, 3), dtype)
    signal = observed_np - background[:, None, None]
    if initial_positions_A is None:
        pos, widths, amps = init.initial_atoms(
            signal, series.euler_deg, None, series.pixel_size_A, config.init, progress
        )
    else:
        pos = metrics.as_points(initial_positions_A, "initial_positions_A")
        widths = np.full(len(pos), config.init.width_A2)
        amps = np.full(len(pos), config.init.amplitude)
    if len(pos) == 0:
        raise ValueError(
            "initialisation found no atoms; lower init.peak_fraction / support_fraction "
            "or try init.method='grid'"
        )
    capacity = adapt.bucket_capacity(len(pos))
    atoms = Atoms.create(pos, widths, amps, capacity=capacity, dtype=dtype)
    if config.calibrate_amplitude:
        scale = calibrate_amplitudes(atoms, jnp.asarray(signal, dtype), euler, drift0, probe, setup)
        amps = np.asarray(amps) * max(scale, 1e-12)
        atoms = Atoms.create(pos, widths, amps, capacity=capacity, dtype=dtype)
    bg = jnp.asarray(background, dtype) if config.fit_background else None
    params = Params(atoms, drift0, probe, bg)
    rates = Rates.from_config(config.optim, float(np.median(amps)))
    opt_state = fit.init_state(params, config.optim, rates)
    history = {"loss": [], "phases": [], "n_atoms_initial": len(pos)}
    return _FitState(params, opt_state, jnp.asarray(1.0, dtype), rates, history)


def _resumed_fit(series, config, folder: pathlib.Path, probe, background, dtype):
    """The fit state saved in ``folder`` (checked against this series and settings) and
    the checkpoint's metadata."""
    meta = checkpoint.read_meta(folder)
    checkpoint.check_resumable(meta, config.to_dict(), checkpoint.series_info(series))
    atoms = Atoms.create(np.zeros((0, 3)), capacity=int(meta["capacity"]), dtype=dtype)
    bg = jnp.asarray(background, dtype) if config.fit_background else None
    params = Params(atoms, jnp.zeros((series.n_angles, 3), dtype), probe, bg)
    rates = Rates(tuple((k, float(v)) for k, v in meta["rates"]))
    like = (params, fit.init_state(params, config.optim, rates), jnp.asarray(1.0, dtype))
    params, opt_state, lr_scale = checkpoint.load(folder, like)
    state = _FitState(
        params, opt_state, lr_scale, rates, meta["history"], int(meta["phase"]),
        int(meta.get("step", 0)), int(meta.get("phase_rejected", 0)),
        float(meta.get("elapsed_s", 0.0)),
    )  # fmt: skip
    return state, meta


def _agreed(flag: bool) -> bool:
    """``flag`` on any process (every process must stop at the same piece)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _run(series, config, out, run, resume, progress, figures, max_phases, initial_positions_A,
         record, stop) -> Result:  # fmt: skip
    t0 = time.perf_counter()
    m = series.n_angles
    opt = config.optim
    observed_np, observed, euler, setup, probe, background = _prepare(series, config)
    ckpt = out / runfolder.CHECKPOINT_DIR if out is not None and config.checkpoint else None
    meta = None
    if resume:
        state, meta = _resumed_fit(series, config, ckpt, probe, background, euler.dtype)
        if state.phase > opt.n_phases:
            raise ValueError(
                f"the run has done {state.phase} phases; optim.n_phases={opt.n_phases} would "
                "drop some: resume with optim.n_phases ≥ the phases done"
            )
    else:
        state = _new_fit(series, config, observed_np, euler, setup, probe, background,
                         initial_positions_A, progress)  # fmt: skip
    if meta is not None and meta.get("angle_chunk"):
        setup = dataclasses.replace(setup, angle_chunk=int(meta["angle_chunk"]))
    else:
        setup = resolve_angle_chunk(setup, config, m, state.params.atoms.capacity,
                                    euler.dtype.itemsize)  # fmt: skip
    info = checkpoint.series_info(series)
    if run is not None:
        app = record if record is not None else run.record.get("app")
        run.update(atomjax_version=_version(), series=info, settings=config.to_dict(),
                   app=app, progress=_progress_record(state, opt))  # fmt: skip

    def elapsed() -> float:
        return state.elapsed0_s + time.perf_counter() - t0

    def save_checkpoint() -> None:
        if ckpt is None or run is None:
            return
        meta = {
            "history": state.history,
            "rates": [list(r) for r in state.rates.values],
            "elapsed_s": elapsed(),
            "config": config.to_dict(),
            "series": info,
            "angle_chunk": setup.angle_chunk,
            "capacity": state.params.atoms.capacity,
            "phase_rejected": state.phase_rejected,
        }
        checkpoint.save(ckpt, state.phase, state.step, state.saved(m), meta)
        run.update(progress=_progress_record(state, opt))

    mesh, observed_fit, euler_fit, weights = _fit_data(config, observed, euler)
    state.params, state.opt_state = _on_mesh(state.params, state.opt_state, mesh)
    bar = _progress(opt.n_phases * opt.steps_per_phase, progress)
    bar.update(state.phase * opt.steps_per_phase + state.step)
    last = opt.n_phases if max_phases is None else min(opt.n_phases, state.phase + int(max_phases))
    stopped_by = None
    while state.phase < last and stopped_by is None:
        phase = state.phase
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), phase)
        lr_mult = jnp.asarray(opt.lr_decay_per_phase**phase, euler.dtype)
        keys = jax.random.split(key, opt.steps_per_phase)
        for piece in np.split(np.arange(opt.steps_per_phase), _n_pieces(opt.steps_per_phase)):
            # a few compiled scans per phase: the progress bar moves, a stop can land
            if piece[0] < state.step:
                continue  # done before the checkpoint this run resumed from
            if _agreed(stop.requested):
                stopped_by = stop.signal_name or "request"
                break
            params, opt_state, lr_scale, losses, n_bad = fit.run_steps(
                state.params,
                state.opt_state,
                jnp.asarray(state.lr_scale, euler.dtype),
                lr_mult,
                keys[piece[0] : piece[-1] + 1],
                observed_fit,
                euler_fit,
                setup,
                opt,
                state.rates,
                mesh=mesh,
                weights=weights,
            )
            state.params, state.opt_state, state.lr_scale = params, opt_state, lr_scale
            state.history["loss"].extend(
                float(x) if np.isfinite(x) else None for x in np.asarray(losses)
            )
            state.step = int(piece[-1]) + 1
            state.phase_rejected += int(n_bad)
            bar.update(len(piece))
            bar.set_postfix(loss=f"{float(losses[-1]):.3e}", atoms=params.atoms.n_alive)
        if stopped_by is not None:
            break
        losses = np.asarray(
            [np.nan if x is None else x for x in state.history["loss"][-opt.steps_per_phase :]]
        )
        phase_record = {
            "phase": phase,
            "n_steps": opt.steps_per_phase,
            "loss_start": float(losses[0]),
            "loss_end": float(losses[-1]),
            "rejected_steps": state.phase_rejected,
            "lr_scale": float(state.lr_scale),
            "n_atoms": state.params.atoms.n_alive,
        }
        if config.adapt_between_phases and phase < opt.n_phases - 1:
            params, opt_state, counts = adapt_step(
                *_off_mesh(state.params, state.opt_state, m), observed, euler, setup, config,
                state.rates,
            )  # fmt: skip
            state.params, state.opt_state = _on_mesh(params, opt_state, mesh)
            phase_record.update(counts)
        state.history["phases"].append(phase_record)
        state.phase, state.step, state.phase_rejected = phase + 1, 0, 0
        bar.set_postfix(loss=f"{losses[-1]:.3e}", atoms=state.params.atoms.n_alive)
        save_checkpoint()
    if stopped_by is not None:
        save_checkpoint()
    elif state.phase < opt.n_phases:
        stopped_by = "max_phases"
    bar.close()
    params, _ = _off_mesh(state.params, state.opt_state, m)
    status = "finished" if stopped_by is None else "interrupted"
    return _finish(series, config, params, observed, euler, setup, state, run, figures,
                   elapsed(), status, stopped_by)  # fmt: skip


def _progress_record(state: _FitState, opt: OptimConfig) -> dict[str, int]:
    return {
        "phase": state.phase,
        "step": state.step,
        "n_phases": opt.n_phases,
        "steps_per_phase": opt.steps_per_phase,
    }


def _version() -> str:
    from . import __version__

    return __version__


def _finish(series, config, params, observed, euler, setup, state: _FitState, run, figures,
            elapsed_s, status, stopped_by) -> Result:  # fmt: skip
    history = state.history
    calc = np.asarray(params.images(euler, setup))
    obs = np.asarray(observed)
    a = params.atoms.alive_numpy()
    species = None
    if config.species:
        from .species import classify_species, species_summary

        species = classify_species(
            a["amplitudes"],
            a["widths_A2"],
            list(config.species),
            method=config.species_method,
            seed=config.seed,
        )
    rf = metrics.r_factor_series(obs, calc)
    report: dict[str, Any] = {
        "status": status,
        "stopped_by": stopped_by,
        "progress": _progress_record(state, config.optim),
        "settings": config.to_dict(),
        "series": {**checkpoint.series_info(series), "provenance": series.provenance},
        "imaging_setup": {
            "n_slices": setup.n_slices,
            "slice_thickness_A": setup.slice_thickness_A,
            "max_width_A2": setup.max_width_A2,
            "window_radius_px": setup.radius_px,
            "depth_rank": setup.depth_rank,
            "angle_chunk": setup.angle_chunk,
        },
        "n_atoms": len(a["positions_A"]),
        "history": history,
        "r_factor": {"per_image": rf.per_image, "mean": rf.mean},
        "run_time_s": elapsed_s,
        "probe": _probe_report(params.probe),
        "drift_A": np.asarray(params.drift_A),
        "background": None if params.background is None else np.asarray(params.background),
    }
    if species is not None:
        report["species"] = species_summary(species, a["amplitudes"], a["widths_A2"])
    if series.atoms_positions_A is not None:
        truth_species = series.atoms_species if species is not None else None
        report["metrics"] = metrics.evaluate(
            a["positions_A"],
            series.atoms_positions_A,
            found_species=species if truth_species is not None else None,
            truth_species=truth_species,
        )
    out = None if run is None else run.path
    if run is not None:
        made = ["atoms.extxyz"]
        outputs.write_extxyz(
            out / "atoms.extxyz",
            a["positions_A"],
            a["widths_A2"],
            a["amplitudes"],
            species=species,
            info={"mode": config.mode, "n_atoms": len(a["positions_A"]), "status": status},
        )
        if figures:
            made += _write_figures(out, series, obs, calc, history, a, params.atoms.n_alive)
        report["outputs"] = {"folder": str(out)}
        outputs.write_json(out / "report.json", report)
        made.append("report.json")
        if config.checkpoint:
            made.append(runfolder.CHECKPOINT_DIR)
        run.add_outputs(*made)
        run.update(status=status, stopped_by=stopped_by, error=None,
                   progress=_progress_record(state, config.optim))  # fmt: skip
    return Result(a["positions_A"], a["widths_A2"], a["amplitudes"], species, report, params, out)


def _write_figures(out, series, obs, calc, history, alive, n_alive: int) -> list[str]:
    """projections.png, loss.png (when a step was run) and atoms.png; their names."""
    idx = sorted({0, series.n_angles // 2, series.n_angles - 1})
    labels = [_angle_label(e) for e in series.euler_deg]
    outputs.figure_projections(out / "projections.png", obs, calc, labels, idx)
    outputs.figure_atoms(
        out / "atoms.png", alive["positions_A"], alive["amplitudes"], series.atoms_positions_A
    )
    loss = np.asarray([np.nan if x is None else x for x in history["loss"]], dtype=float)
    if loss.size == 0:
        return ["projections.png", "atoms.png"]
    lengths = [p["n_steps"] for p in history["phases"]]
    counts = [p["n_atoms"] for p in history["phases"]]
    if sum(lengths) < loss.size:  # the phase in progress when the run stopped
        lengths.append(loss.size - sum(lengths))
        counts.append(n_alive)
    outputs.figure_loss(
        out / "loss.png",
        np.arange(loss.size),
        loss,
        phase_ends=list(np.cumsum(lengths[: len(history["phases"])])),
        n_atoms=np.repeat(counts, lengths),
    )
    return ["projections.png", "loss.png", "atoms.png"]


def _angle_label(euler_deg) -> str:
    psi, theta, phi = (float(x) for x in euler_deg)
    if abs(psi) < 1e-9 and abs(phi) < 1e-9:
        return f"θ = {theta:+.1f}°"
    return f"(ψ, θ, φ) = ({psi:.1f}°, {theta:.1f}°, {phi:.1f}°)"


def _probe_report(probe) -> dict[str, Any]:
    kind = fit.probe_kind(probe)
    out: dict[str, Any] = {"kind": kind}
    if isinstance(probe, PhysicalProbe):
        out["settings"] = probe.settings.to_dict()
        if probe.focus_offsets_A is not None:
            out["focus_offsets_A"] = np.asarray(probe.focus_offsets_A)
    return out
