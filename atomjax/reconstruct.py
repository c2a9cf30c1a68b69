"""Reconstruct atoms from a tilt series: the settings and the one public entry point.

:func:`reconstruct` guards the run folder (:mod:`atomjax.runfolder`), lets a signal stop
the fit cleanly (:mod:`atomjax.interrupt`) and hands the work to the driver
(:mod:`atomjax.driver`):

1. normalise the series to [0, 1] (LOT eq. 6) and build the imaging setup
   (:mod:`atomjax.problem`);
2. initial atoms (:mod:`atomjax.init`: grid, random or tomogram peaks), with one
   amplitude scale fitted by least squares so every method starts at the data's
   intensity;
3. phases of compiled optimizer steps (:mod:`atomjax.optimizers`: Levenberg–Marquardt
   or Adam), ended early when converged; between phases, on the host, merge / prune /
   add (:mod:`atomjax.adapt_step`), then a checkpoint;
4. outputs in the run folder (:mod:`atomjax.report`): ``atoms.extxyz``,
   ``report.json`` (settings, loss history, R-factor per image, run time, atom count,
   metrics against ground truth when the series carries it) and figures.

Nothing here reads the ground truth except the final, reported evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
from typing import Any

import jax
import numpy as np

from . import checkpoint, driver, interrupt, outputs, restart, runfolder
from .adapt import AdaptConfig
from .alignment import ALIGN_CHOICES
from .background import BACKGROUND_INITS
from .data import TiltSeries
from .fit import STEPS_PER_PHASE, OptimConfig, Params, settings_from_dict
from .init import InitConfig
from .problem import (  # noqa: F401  (part of this module's public face)
    calibrate_amplitudes,
    make_probe,
    make_setup,
    model_images,
    observed_images,
    probe_settings,
    with_depth_rank,
)
from .render import MODES

PROBE_FITS = ("pixel", "physical")


#: the pose's learning rates that ``refine_pose`` sets (Adam step sizes per step; for
#: Levenberg–Marquardt only on or off): tilt offsets, tilt axis and shifts; the per-image
#: in-plane rotations stay off (``optim.lr_rotation_deg`` turns them on)
REFINE_POSE_RATES = {"lr_tilt_deg": 0.01, "lr_axis_deg": 0.01, "lr_drift_A": 0.005}


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """All settings of a reconstruction (plain values; Hydra maps its groups onto these).

    mode: "direct", "rigid" or "adaptive" interaction. probe_fit (adaptive): "pixel"
    (probe pixels, :class:`atomjax.render.PixelProbe`) or "physical" (defocus,
    astigmatism, Cs and a focus per image). The pixel probe's priors:
    ``probe_depth_rank`` R, a per-pixel correction of the physical probe that varies over
    depth as R polynomials (None: every pixel of every slice free, as in LOT), and
    ``probe_centred``, each slice kept centred on its pixel. probe: ProbeSettings
    fields used when the series has none.
    Slices of ``slice_thickness_A`` cover the field of view unless ``n_slices`` is set.
    ``max_width_A2`` sizes the splatting window and bounds the fitted widths. kernel:
    how atoms are splatted (:mod:`atomjax.splat`): "auto" (the cheapest for the sizes),
    "matmul" or "scatter" (the reference, the only kernel before matrix products).
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
    uncertainty: per-atom standard deviations at the end (:mod:`atomjax.uncertainty`),
    written as atoms.extxyz columns and summarised in report.json.
    align: where the angles and shifts start (:func:`atomjax.alignment.starting_values`):
    None (the series' own, no shifts), "estimate" (the pre-alignment from the images:
    centre of mass and common line) or an alignment file (``atomjax-align``'s output,
    or a run folder's ``alignment_refined.json``).
    profile_tail (direct mode): give every atom the two-Gaussian profile of
    :mod:`atomjax.tail` — a share w of its intensity in a Gaussian ΔB wider — with w and
    ΔB shared by all atoms and fitted; the image is the atoms convolved with one kernel.
    None (the default): on with ``refine_pose`` in direct mode, where it removes the
    per-image bias the one-Gaussian profile puts on the tilts (0.13–0.18° → 0.02–0.04°
    RMS, ``benchmarks/bench_alignment.py``), else off (it costs 25–50 % more time).
    refine_pose: refine the tilt offsets, the tilt axis and the shifts in the fit
    (:mod:`atomjax.pose`), with the learning rates of :data:`REFINE_POSE_RATES` where
    ``optim`` gives none; the run folder then holds the refined ``alignment_refined.json``.
    restarts: refits of the finished fit from its own atoms, each moved by a normal
    offset per axis of ``restart_jitter_sigma`` × its own σ, at least ``restart_jitter_A``
    (Å), for ``restart_phases`` phases
    (:mod:`atomjax.restart`): the fit with the lowest loss is kept, and the others' atoms
    widen every atom's σ by the search's error (0: none, the σ are the fit's alone).
    """

    mode: str = "direct"
    probe_fit: str = "pixel"
    focus_per_image: bool = True
    probe_depth_rank: int | None = 2
    probe_centred: bool = True
    probe: dict | None = None
    slice_thickness_A: float = 2.0
    n_slices: int | None = None
    max_width_A2: float = 1.5
    kernel: str = "auto"
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
    uncertainty: bool = True
    align: str | None = None
    profile_tail: bool | None = None
    refine_pose: bool = False
    restarts: int = 0
    restart_jitter_A: float = 0.3
    restart_jitter_sigma: float = 3.0
    restart_phases: int = 2
    seed: int = 0
    init: InitConfig = dataclasses.field(default_factory=InitConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    adapt: AdaptConfig = dataclasses.field(default_factory=AdaptConfig)

    def __post_init__(self):
        from .splat import KERNELS

        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
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
        if self.probe_depth_rank is not None and (
            int(self.probe_depth_rank) != self.probe_depth_rank or self.probe_depth_rank < 1
        ):
            raise ValueError(
                "probe_depth_rank must be a positive integer (depth polynomials of the "
                f"pixel probe's correction) or None (every slice free), got {self.probe_depth_rank}"
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
        optim = settings_from_dict(OptimConfig, self.optim)
        if self.align is not None:
            object.__setattr__(self, "align", str(self.align))
            if self.align not in ALIGN_CHOICES and not pathlib.Path(self.align).is_file():
                raise ValueError(
                    f"align must be None, one of {ALIGN_CHOICES} or an alignment file; "
                    f"no file at {self.align}"
                )
        restart.check_settings(self.restarts, self.restart_jitter_A, self.restart_jitter_sigma,
                               self.restart_phases)  # fmt: skip
        if not isinstance(self.refine_pose, (bool, np.bool_)):
            raise ValueError(f"refine_pose must be a bool, got {self.refine_pose!r}")
        if self.profile_tail is None:  # resolved once: what runs is what is recorded
            object.__setattr__(
                self, "profile_tail", bool(self.refine_pose and self.mode == "direct")
            )
        if not isinstance(self.profile_tail, (bool, np.bool_)):
            raise ValueError(f"profile_tail must be a bool or None, got {self.profile_tail!r}")
        if self.profile_tail and self.mode != "direct":
            raise ValueError(
                f"profile_tail is for mode 'direct'; mode {self.mode!r} convolves the atoms "
                "with a probe already (a fitted one in mode 'adaptive')"
            )
        pose_rates = (*REFINE_POSE_RATES, "lr_rotation_deg")
        if self.refine_pose and not any(getattr(optim, k) > 0 for k in pose_rates):
            optim = dataclasses.replace(optim, **REFINE_POSE_RATES)
        # the optimizer and its phase length, resolved once: what runs is what is recorded
        from .optimizers import resolve_method

        method = resolve_method(optim, self.mode, self.probe_fit, self.shard_devices)
        steps = optim.steps_per_phase or STEPS_PER_PHASE[method]
        object.__setattr__(
            self, "optim", dataclasses.replace(optim, method=method, steps_per_phase=steps)
        )
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
    #: each atom's σ: ``sigma_x_A`` … ``sigma_amplitude`` ((n,) each, the order of
    #: ``positions_A``) and the fitted ``noise`` model; None with ``uncertainty=False``
    sigmas: dict[str, Any] | None = None


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
    if overwrite and out is not None and config.align not in (None, *ALIGN_CHOICES):
        inside = pathlib.Path(config.align).resolve().is_relative_to(out.resolve())
        if inside:
            raise ValueError(
                f"the alignment file {config.align} lies in the run folder {out}, which "
                "overwrite=True would clear first: copy it out of the folder"
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
            outcome = driver.run(series, config, out, run, resume, progress, figures,
                                 max_phases, initial_positions_A, record, stop)  # fmt: skip
        except BaseException as e:
            if run is not None:
                run.record_error(e)
            raise
    a = outcome.params.atoms.alive_numpy()
    out = out if writer else None
    return Result(a["positions_A"], a["widths_A2"], a["amplitudes"], outcome.species,
                  outcome.report, outcome.params, out, outcome.sigmas)  # fmt: skip
