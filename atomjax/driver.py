"""The driver of a reconstruction: phases of compiled pieces, the step between phases,
convergence, checkpoints.

Host-side and stateful (the pure work is in the optimizer's compiled pieces):

* a phase is up to ``optim.steps_per_phase`` steps, run as a few compiled pieces of
  equal length (the progress bar moves, a stop request lands between pieces);
* a phase ends early when a piece converged: its loss fell by less than
  ``optim.converge_rtol`` (relative) and no atom moved more than
  ``optim.converge_move_A``;
* between phases, the adapt step (:mod:`atomjax.adapt_step`) merges, prunes and adds
  atoms, and the optimizer gets its state back for the new atoms;
* the run ends when a phase converged, gained less than ``optim.converge_rtol`` in all,
  and the adapt step after it changed nothing ("converged"), after ``n_phases`` phases
  ("budget"), after ``max_phases`` phases of this call, or on a signal;
* a checkpoint after every phase and where a stop lands;
* once finished, ``config.restarts`` refits from the fit's own atoms jittered
  (:mod:`atomjax.restart`, no adapt step, nothing saved: a resumed run repeats them
  bit for bit); the lowest loss is kept and the others' atoms widen the σ.

The optimizer (:mod:`atomjax.optimizers`) is held behind its interface: the driver
never asks which one it is.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import adapt, alignment, checkpoint, init, metrics, pose, report, restart, sharding
from .adapt_step import adapt_step
from .atoms import Atoms
from .background import initial_background
from .detection import significance, threshold_z
from .fit import Params, Rates, objective
from .optimizers import FitData, fitted_extra, make_optimizer, max_displacement_A
from .problem import (
    calibrate_amplitudes,
    make_probe,
    make_setup,
    observed_images,
    resolve_angle_chunk,
    with_depth_rank,
)
from .uncertainty import (
    atom_sigmas,
    noise_model,
    pixel_weights,
    search_report,
    search_variance,
    widened,
)


def fit_data(config, observed, euler, setup) -> FitData:
    """The images as the fit sees them: as given on one device, or padded and split over
    the devices when ``config.shard_devices`` asks for several."""
    n = config.shard_devices
    if n is None or n == 1:
        return FitData(observed, euler, setup)
    mesh = sharding.angle_mesh(None if n == -1 else n)
    weights = sharding.image_weights(observed.shape[0], mesh, observed.dtype)
    pad = lambda x: sharding.place_images(sharding.pad_to_mesh(x, mesh), mesh)  # noqa: E731
    return FitData(pad(observed), pad(euler), setup, mesh, sharding.place_images(weights, mesh))


def on_mesh(params, state, mesh):
    """Per-image parameters (and the optimizer state's per-image parts) padded and split
    over ``mesh``; atoms replicated. No-op without a mesh or when already padded."""
    if mesh is None:
        return params, state
    m_pad = sharding.padded_count(params.drift_A.shape[0], mesh)
    if params.drift_A.shape[0] != m_pad:
        params = sharding.pad_params(params, mesh)
        state = sharding.pad_params(state, mesh)
    return sharding.place(params, mesh), sharding.place(state, mesh)


def off_mesh(params, state, n_angles: int):
    """The per-image parameters of the real images only, on this process (host-side
    steps, checkpoints, reports; with several processes every one gets the same copy)."""
    params, state = sharding.to_host((params, state))
    return sharding.unpad_params(params, n_angles), sharding.unpad_params(state, n_angles)


def n_pieces(steps: int) -> int:
    """Equal pieces a phase's steps are run in: up to 10, dividing ``steps`` exactly
    (one compiled shape per run) and at least 5 steps long."""
    return next(
        k for k in (10, 8, 6, 5, 4, 3, 2, 1) if steps % k == 0 and steps // k >= 5 or k == 1
    )


def _progress_bar(total: int, enabled: bool, desc: str = "fit"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=True)


@dataclasses.dataclass
class FitState:
    """Where a fit stands: its parameters and optimizer state, ``phase`` phases done and
    ``step`` steps of the next one (host-side bookkeeping between compiled pieces)."""

    params: Params
    state: Any
    rates: Rates
    history: dict[str, Any]
    phase: int = 0
    step: int = 0
    phase_rejected: int = 0  # rejected steps so far in the phase in progress
    elapsed0_s: float = 0.0  # run time of the earlier calls (resume)

    def progress(self, opt) -> dict[str, int]:
        return {
            "phase": self.phase,
            "step": self.step,
            "n_phases": opt.n_phases,
            "steps_per_phase": opt.steps_per_phase,
        }


@dataclasses.dataclass
class Outcome:
    """What :func:`run` hands back to :func:`atomjax.reconstruct.reconstruct`."""

    params: Params
    species: np.ndarray | None
    report: dict[str, Any]
    #: the live atoms' σ (:data:`atomjax.uncertainty.SIGMA_NAMES`) and the noise model
    sigmas: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Start:
    """Where the angles and shifts start (``config.align``): the Euler angles in degrees
    and the drift (m, 3) in Å the fit begins from, and the alignment they came from."""

    euler_deg: np.ndarray
    drift_A: np.ndarray
    alignment: Any = None


def prepare(series, config):
    """(observed (numpy), observed, euler, setup, probe, background, start): what every
    start needs, computed from the series and the settings alone."""
    dtype = jnp.asarray(0.0).dtype
    observed_np = observed_images(series, config)
    setup = make_setup(series, config)
    probe = make_probe(series, config, setup)
    setup = with_depth_rank(setup, probe, config.depth_rank)
    background = initial_background(observed_np, config.background_init)
    start = Start(*alignment.starting_values(series, config.align))
    euler = jnp.asarray(np.deg2rad(start.euler_deg), dtype)
    return observed_np, jnp.asarray(observed_np, dtype), euler, setup, probe, background, start


def initial_pose(series, config, dtype) -> pose.Pose | None:
    """Zero corrections to the series' angles when the fit refines them, else None."""
    return pose.Pose.zeros(series.n_angles, dtype) if pose.wanted(config.optim) else None


def new_fit(series, config, observed_np, euler, setup, probe, background, start: Start,
            initial_positions_A, progress) -> tuple[Params, Rates, dict]:  # fmt: skip
    """The starting atoms (:mod:`atomjax.init` or given) and their amplitude scale:
    (params, learning rates, history)."""
    dtype = euler.dtype
    drift0 = jnp.asarray(start.drift_A, dtype)
    signal = observed_np - background[:, None, None]
    if initial_positions_A is None:
        pos, widths, amps = init.initial_atoms(
            signal, start.euler_deg, start.drift_A, series.pixel_size_A, config.init, progress
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
    params = Params(atoms, drift0, probe, bg, initial_pose(series, config, dtype))
    rates = Rates.from_config(config.optim, float(np.median(amps)))
    history = {"loss": [], "phases": [], "n_atoms_initial": len(pos)}
    return params, rates, history


def resumed_fit(series, config, folder, probe, background, dtype, method: str):
    """The fit state saved in ``folder`` (checked against this series and settings) and
    the checkpoint's metadata."""
    meta = checkpoint.read_meta(folder)
    checkpoint.check_resumable(meta, config.to_dict(), checkpoint.series_info(series))
    atoms = Atoms.create(np.zeros((0, 3)), capacity=int(meta["capacity"]), dtype=dtype)
    bg = jnp.asarray(background, dtype) if config.fit_background else None
    params = Params(atoms, jnp.zeros((series.n_angles, 3), dtype), probe, bg,
                    initial_pose(series, config, dtype))  # fmt: skip
    rates = Rates(tuple((k, float(v)) for k, v in meta["rates"]))
    optimizer = make_optimizer(method, config.optim, rates, fitted_extra(probe))
    params, state = checkpoint.load(folder, (params, optimizer.init(params)))
    fit = FitState(
        params, state, rates, meta["history"], int(meta["phase"]), int(meta.get("step", 0)),
        int(meta.get("phase_rejected", 0)), float(meta.get("elapsed_s", 0.0)),
    )  # fmt: skip
    return fit, meta


def _agreed(flag: bool) -> bool:
    """``flag`` on any process (every process must stop at the same piece)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _piece_converged(losses: np.ndarray, moved_A: float, opt) -> bool:
    """A piece converged: the loss fell by less than converge_rtol of itself and no atom
    moved more than converge_move_A."""
    first, last = float(losses[0]), float(losses[-1])
    if not (np.isfinite(first) and np.isfinite(last)) or first <= 0:
        return False
    return (first - last) < opt.converge_rtol * first and moved_A < opt.converge_move_A


def run_phases(fit: FitState, optimizer, data: FitData, config, arrays, n_phases: int, last: int,
               seed: int, bar, stop, save) -> tuple[str | None, bool]:  # fmt: skip
    """Phases ``fit.phase`` .. ``last`` - 1 of ``n_phases`` (the adapt step after each but
    the last of ``n_phases``), their step keys from ``seed``; ``save()`` after each phase.
    Returns (what stopped it: a signal's name or None, whether the run converged)."""
    observed, euler, setup, m = arrays
    opt = config.optim
    steps = opt.steps_per_phase
    stopped_by = None
    converged_run = False
    while fit.phase < last and stopped_by is None and not converged_run:
        phase = fit.phase
        t_phase = time.perf_counter()
        keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), phase), steps)
        converged = False
        for piece in np.split(np.arange(steps), n_pieces(steps)):
            # a few compiled scans per phase: the progress bar moves, a stop can land
            if piece[0] < fit.step:
                continue  # done before the checkpoint this run resumed from
            if _agreed(stop.requested):
                stopped_by = stop.signal_name or "request"
                break
            before = fit.params
            params, state, losses, n_bad = optimizer.run(
                fit.params, fit.state, phase, keys[piece[0] : piece[-1] + 1], data
            )
            fit.params, fit.state = params, state
            losses = np.asarray(losses)
            fit.history["loss"].extend(float(x) if np.isfinite(x) else None for x in losses)
            fit.step = int(piece[-1]) + 1
            fit.phase_rejected += int(n_bad)
            bar.update(len(piece))
            bar.set_postfix(loss=f"{losses[-1]:.3e}", atoms=params.atoms.n_alive)
            if opt.converge and _piece_converged(losses, max_displacement_A(before, params), opt):
                converged = True
                bar.update(steps - fit.step)  # the budget the phase did not need
                break
        if stopped_by is not None:
            break
        losses = np.asarray(
            [np.nan if x is None else x for x in fit.history["loss"][-fit.step :]], dtype=float
        )
        phase_record = {
            "phase": phase,
            "n_steps": fit.step,
            "converged": converged,
            "loss_start": float(losses[0]),
            "loss_end": float(losses[-1]),
            "rejected_steps": fit.phase_rejected,
            "n_atoms": fit.params.atoms.n_alive,
            "fit_seconds": time.perf_counter() - t_phase,
            **optimizer.describe(fit.state),
        }
        changed = False
        if config.adapt_between_phases and phase < n_phases - 1:
            t_adapt = time.perf_counter()
            params, source, counts = adapt_step(
                *off_mesh(fit.params, None, m)[:1], observed, euler, setup, config
            )
            state = optimizer.resize(off_mesh(fit.params, fit.state, m)[1], params, source)
            fit.params, fit.state = on_mesh(params, state, data.mesh)
            phase_record.update(counts, adapt_seconds=time.perf_counter() - t_adapt)
            changed = sum(counts[k] for k in ("merged", "pruned", "split", "added")) > 0
        gained = (losses[0] - losses[-1]) / losses[0] if losses[0] > 0 else 0.0
        converged_run = opt.converge and converged and not changed and gained < opt.converge_rtol
        fit.history["phases"].append(phase_record)
        fit.history["converged"] = converged_run
        fit.phase, fit.step, fit.phase_rejected = phase + 1, 0, 0
        bar.set_postfix(loss=f"{losses[-1]:.3e}", atoms=fit.params.atoms.n_alive)
        save()
    return stopped_by, converged_run


@eqx.filter_jit
def _loss(params: Params, observed, euler_rad, setup, loss: str):
    return objective(params, observed, euler_rad, jnp.arange(observed.shape[0]), setup, loss)


def final_loss(params: Params, arrays, loss: str) -> float:
    """The loss of ``params`` on the whole series (one device), to compare fits by."""
    observed, euler, setup, m = arrays
    return float(_loss(off_mesh(params, None, m)[0], observed, euler, setup, loss))


def finished(fit_params: Params, config, observed_np, arrays):
    """A finished fit's atoms off the mesh, the dark ones switched off, and its images and
    σ (None with ``config.uncertainty`` off): (params, dark atoms, calc, sigmas)."""
    observed, euler, setup, m = arrays
    params, _ = off_mesh(fit_params, None, m)
    params, switched_off = without_dark_atoms(params)
    calc = np.asarray(params.images(euler, setup))
    sigmas = None
    if config.uncertainty and params.atoms.n_alive:
        t0 = time.perf_counter()
        sigmas = atom_sigmas(params, observed_np, calc, euler, setup)
        sigmas["seconds"] = time.perf_counter() - t0
    return params, switched_off, calc, sigmas


def run_restarts(fit: FitState, start_params: Params, jitter_A, optimizer, data: FitData, config,
                 arrays, progress, stop):  # fmt: skip
    """``config.restarts`` refits of the finished ``fit`` from its atoms ``start_params``
    (off the mesh) jittered by ``jitter_A`` (Å per slot and axis, :mod:`atomjax.restart`),
    each ``config.restart_phases`` phases; nothing is saved.
    Returns (the fit with the lowest loss, the live positions of the others, the report's
    record, what stopped them: a signal's name or None; then the fit is ``fit``)."""
    m = arrays[3]
    steps = config.optim.steps_per_phase
    # the fit's atoms, no adapt step: the losses compare, and no atom is added
    config = dataclasses.replace(config, adapt_between_phases=False)
    fits, losses = [fit], [final_loss(fit.params, arrays, config.optim.loss)]
    records = []
    for k in range(config.restarts):
        s = restart.seed(config.seed, k)
        start = restart.jittered(start_params, jitter_A, s)
        state = optimizer.init(start)
        params, state = on_mesh(start, state, data.mesh)
        again = FitState(params, state, fit.rates, {"loss": [], "phases": []})
        total = config.restart_phases * steps
        with _progress_bar(total, progress, f"restart {k + 1}/{config.restarts}") as bar:
            stopped_by, _ = run_phases(again, optimizer, data, config, arrays,
                                       config.restart_phases, config.restart_phases, s, bar,
                                       stop, lambda: None)  # fmt: skip
        if stopped_by is not None:
            return fit, [], None, stopped_by
        fits.append(again)
        losses.append(final_loss(again.params, arrays, config.optim.loss))
        records.append({"loss": losses[-1], "n_atoms": again.params.atoms.n_alive,
                        "n_steps": sum(p["n_steps"] for p in again.history["phases"]),
                        "converged": bool(again.history.get("converged"))})  # fmt: skip
    best = restart.kept(losses)
    observed, euler, setup = arrays[:3]
    host = [off_mesh(f.params, None, m)[0] for f in fits]
    obs = np.asarray(observed)
    noise = noise_model(obs, np.asarray(host[best].images(euler, setup)))
    excess = restart.likelihood_excess(losses, best, obs.size, config.optim.loss, noise)
    allowed = restart.PARAMS_PER_ATOM * host[best].atoms.n_alive
    # the fit itself is where the search stopped: a sample of its error however far above
    # the kept restart it lies; a restart far above did not come back, and says nothing
    compared = [j != best and (j == 0 or x <= allowed) for j, x in enumerate(excess)]
    for rec, x, c in zip(records, excess[1:], compared[1:], strict=True):  # the restarts'
        rec.update(delta_chi2=float(x), compared=bool(c))
    others = [
        p.atoms.alive_numpy()["positions_A"] for p, c in zip(host, compared, strict=True) if c
    ]
    moved = np.asarray(jitter_A)[np.asarray(start_params.atoms.alive)]
    record = {"n": config.restarts, "jitter_A": config.restart_jitter_A,
              "jitter_sigma": config.restart_jitter_sigma,
              "jitter_median_A": float(np.median(moved)) if moved.size else None,
              "phases": config.restart_phases, "loss_fit": losses[0], "fits": records,
              "kept": best, "delta_chi2_fit": float(excess[0]), "delta_chi2_allowed": allowed,
              "fits_compared": len(others)}  # fmt: skip
    winner = fits[best]
    if best:  # the report's history stays the fit's; the atoms are the restart's
        winner = dataclasses.replace(fit, params=winner.params, state=winner.state)
    return winner, others, record, None


def run(series, config, out, run_folder, resume, progress, figures, max_phases,
        initial_positions_A, record, stop) -> Outcome:  # fmt: skip
    """Fit ``series`` with ``config``: see the module docstring."""
    t0 = time.perf_counter()
    m = series.n_angles
    opt = config.optim
    method = opt.method  # resolved by ReconstructConfig
    observed_np, observed, euler, setup, probe, background, start = prepare(series, config)
    ckpt = out / "checkpoint" if out is not None and config.checkpoint else None
    meta = None
    if resume:
        fit, meta = resumed_fit(series, config, ckpt, probe, background, euler.dtype, method)
        if fit.phase > opt.n_phases:
            raise ValueError(
                f"the run has done {fit.phase} phases; optim.n_phases={opt.n_phases} would "
                "drop some: resume with optim.n_phases ≥ the phases done"
            )
    else:
        params, rates, history = new_fit(series, config, observed_np, euler, setup, probe,
                                         background, start, initial_positions_A,
                                         progress)  # fmt: skip
        state = make_optimizer(method, opt, rates, fitted_extra(probe)).init(params)
        fit = FitState(params, state, rates, history)
    optimizer = make_optimizer(method, opt, fit.rates, fitted_extra(probe))
    if meta is not None and meta.get("angle_chunk"):
        setup = dataclasses.replace(setup, angle_chunk=int(meta["angle_chunk"]))
    else:
        setup = resolve_angle_chunk(setup, config, m, fit.params.atoms.capacity,
                                    euler.dtype.itemsize)  # fmt: skip
    info = checkpoint.series_info(series)
    if run_folder is not None:
        app = record if record is not None else run_folder.record.get("app")
        run_folder.update(atomjax_version=_version(), series=info, settings=config.to_dict(),
                          app=app, progress=fit.progress(opt), optimizer=method)  # fmt: skip

    def elapsed() -> float:
        return fit.elapsed0_s + time.perf_counter() - t0

    def save_checkpoint() -> None:
        if ckpt is None or run_folder is None:
            return
        meta = {
            "history": fit.history,
            "rates": [list(r) for r in fit.rates.values],
            "elapsed_s": elapsed(),
            "config": config.to_dict(),
            "series": info,
            "angle_chunk": setup.angle_chunk,
            "capacity": fit.params.atoms.capacity,
            "phase_rejected": fit.phase_rejected,
            "optimizer": method,
        }
        checkpoint.save(ckpt, fit.phase, fit.step, off_mesh(fit.params, fit.state, m), meta)
        run_folder.update(progress=fit.progress(opt))

    data = fit_data(config, observed, euler, setup)
    fit.params, fit.state = on_mesh(fit.params, fit.state, data.mesh)
    steps = opt.steps_per_phase
    bar = _progress_bar(opt.n_phases * steps, progress)
    bar.update(fit.phase * steps + fit.step)
    last = opt.n_phases if max_phases is None else min(opt.n_phases, fit.phase + int(max_phases))
    arrays = (observed, euler, setup, m)
    stopped_by = None
    converged_run = bool(fit.history.get("converged", False))
    if not converged_run:
        stopped_by, converged_run = run_phases(fit, optimizer, data, config, arrays,
                                               opt.n_phases, last, config.seed, bar, stop,
                                               save_checkpoint)  # fmt: skip
    if stopped_by is not None:
        save_checkpoint()
    elif not converged_run and fit.phase < opt.n_phases:
        stopped_by = "max_phases"
    bar.close()
    params, switched_off, calc, sigmas = finished(fit.params, config, observed_np, arrays)
    own, others, restarts = sigmas, [], None
    if stopped_by is None and config.restarts and params.atoms.n_alive:
        jitter = restart.jitter_A(params.atoms, sigmas, config.restart_jitter_A,
                                  config.restart_jitter_sigma)  # fmt: skip
        fit, others, restarts, stopped_by = run_restarts(
            fit, params, jitter, optimizer, data, config, arrays, progress, stop
        )
        if restarts is not None and restarts["kept"]:  # a restart's atoms: their own σ
            params, switched_off, calc, own = finished(fit.params, config, observed_np, arrays)
        sigmas = own
        if others and own is not None:  # the others' atoms: the search's share of the error
            var = search_variance(params.atoms.alive_numpy()["positions_A"], others)
            sigmas = {**widened(own, var), "seconds": own["seconds"]}
    status = "finished" if stopped_by is None else "interrupted"
    ending = "converged" if converged_run else ("budget" if stopped_by is None else stopped_by)
    alive = params.atoms.alive_numpy()
    species = report.classify(config, alive)
    detected = None
    if params.atoms.n_alive:
        test = significance(alive["positions_A"], alive["widths_A2"], alive["amplitudes"],
                            observed_np, calc, params.euler(euler), params.drift_A, setup,
                            opt.loss)  # fmt: skip
        detected = {"z": test["z"], "rule": config.adapt.rule,
                    "threshold_z": threshold_z(config.adapt, observed_np.size)}  # fmt: skip
    rep = report.build_report(
        series, config, params, observed_np, calc, setup, fit.history, fit.progress(opt),
        elapsed(), status, stopped_by, method, species, sigmas, detected,
    )  # fmt: skip
    rep["ended_by"] = ending
    if restarts is not None:
        rep["restarts"] = restarts
        if sigmas is not None and others:
            rep["uncertainty"].update(
                search_report(
                    own, sigmas, alive["positions_A"], series.atoms_positions_A, len(others)
                )
            )
    rep["n_atoms_switched_off"] = switched_off
    aligned = None
    if start.alignment is not None or params.pose is not None or opt.lr_drift_A > 0:
        seen = np.rad2deg(np.asarray(params.euler(euler), float))
        aligned = alignment.refined(series, seen, np.asarray(params.drift_A), start.alignment)
        rep["alignment"] = {"start": config.align, "tilt_axis_deg": aligned.tilt_axis_deg,
                            "tilt_offsets_rms_deg": _rms(aligned.tilt_offsets_deg),
                            "rotation_offsets_rms_deg": _rms(aligned.rotation_offsets_deg),
                            "shifts_rms_A": _rms(aligned.shifts_A)}  # fmt: skip
        noise = sigmas["noise"] if sigmas else noise_model(observed_np, calc)  # fitted once
        weight = pixel_weights(calc, noise)
        sd = pose.sigmas(params, euler, setup, opt, weight)
        if sd is not None:  # noise alone, the atoms held: the floor of the pose's errors
            rep["alignment"]["sigma"] = sd
            rep["alignment"]["sigma_median"] = {k: float(np.median(v)) for k, v in sd.items()}
            aligned.info["sigma"] = {k: v.tolist() for k, v in sd.items()}
    if run_folder is not None:
        if aligned is not None:
            aligned.save(run_folder.path / ALIGNMENT_FILE)
            run_folder.add_outputs(ALIGNMENT_FILE)
        report.write_outputs(run_folder, config, series, params, observed_np, calc, rep, species,
                             figures, sigmas, detected)  # fmt: skip
        run_folder.update(status=status, stopped_by=stopped_by, error=None,
                          progress=fit.progress(opt))  # fmt: skip
    dropped = ("seconds", "covariance")
    kept = None if sigmas is None else {k: v for k, v in sigmas.items() if k not in dropped}
    return Outcome(params, species, rep, kept)


#: the alignment a run ends with, in its run folder (an ``align`` file for a later run)
ALIGNMENT_FILE = "alignment_refined.json"


def _rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def without_dark_atoms(params: Params) -> tuple[Params, int]:
    """``params`` with the atoms whose amplitude the fit brought to 0 marked dead (they add
    nothing to any image, so the model is unchanged) and how many there were."""
    atoms = params.atoms
    dark = np.asarray(atoms.alive) & (np.asarray(atoms.amplitudes) <= 0)
    if not dark.any():
        return params, 0
    alive = jnp.asarray(np.asarray(atoms.alive) & ~dark)
    return eqx.tree_at(lambda p: p.atoms.alive, params, alive), int(dark.sum())


def _version() -> str:
    from . import __version__

    return __version__
