"""Several starts of one reconstruction, the one with the lowest final loss kept.

The fits of an amorphous particle stop in different local minima depending on where
they start, and their final loss ranks those minima (benchmarks/README.md,
``bench_detection.py``, "the amorphous cases over seeds": over 15 fits of one a-Si
series the final loss and the RMSD have Spearman ρ 0.88; of four starts of each of
three series the lowest loss was the most accurate fit every time at dose 250: TP
1.000 and 11.5 pm against one start's 0.994 and 13.9 pm). So here every start is a
whole reconstruction from its own start tomogram (:data:`START_VARIANTS`), and the
result is the start whose fit ends at the lowest loss: the same images, the same model
and the same loss, so the losses compare (the atom counts of the measured starts
differed by at most 7 in 270, and no penalty for that is applied).

The other starts also measure what the choice of minimum costs: each atom's σ is
widened by the spread of their atoms around the winner's
(:func:`atomjax.uncertainty.search_variance`, :func:`with_search`).

It costs a fit per start, so it is not the default (one start:
:func:`atomjax.reconstruct.reconstruct`). With a run folder the whole is one guarded
run folder (``atomjax-reconstruct starts=4``): every start gets its own, ``start_<k>/``,
and the folder itself gets ``starts.json`` (every start's loss and settings, and which
one won) and the winner's report.json, atoms.extxyz (with the widened σ) and figures;
it is resumed and interrupted as one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import shutil
from typing import Any

import jax
import numpy as np

from . import interrupt, outputs, runfolder, uncertainty
from .data import TiltSeries
from .reconstruct import ReconstructConfig, Result, reconstruct
from .report import figure_sigma

#: start k's start tomogram: (× init.sirt_iterations, × init.voxel_size_A); start 0 is
#: the settings as given. The four measured (benchmarks/README.md).
START_VARIANTS = ((1, 1.0), (3, 1.0), (3, 0.7), (1, 0.7))
MAX_STARTS = len(START_VARIANTS)
#: the summary the run folder gets
STARTS_FILE = "starts.json"


def start_configs(
    config: ReconstructConfig | dict | None, n_starts: int
) -> list[ReconstructConfig]:
    """The settings of starts 0 .. n_starts - 1 (:data:`START_VARIANTS`)."""
    config = ReconstructConfig.from_dict(config)
    if isinstance(n_starts, bool) or int(n_starts) != n_starts or not 1 <= n_starts <= MAX_STARTS:
        raise ValueError(f"n_starts must be an integer from 1 to {MAX_STARTS}, got {n_starts!r}")
    out = []
    for sweeps, voxel in START_VARIANTS[: int(n_starts)]:
        init = dataclasses.replace(
            config.init,
            sirt_iterations=int(config.init.sirt_iterations * sweeps),
            voxel_size_A=config.init.voxel_size_A * voxel,
        )
        # the other starts play the restarts' part (atomjax.restart): none within a start
        out.append(dataclasses.replace(config, init=init, restarts=0))
    return out


def final_loss(report: dict[str, Any]) -> float:
    """The fit's last finite loss (inf when it has none)."""
    finite = [x for x in report["history"]["loss"] if x is not None and math.isfinite(x)]
    return float(finite[-1]) if finite else math.inf


#: the winner's files the run folder gets a copy of (report.json is written anew)
WINNER_FILES = ("atoms.extxyz", "projections.png", "loss.png", "atoms.png", "atoms_sigma.png")


def start_folder(k: int) -> str:
    """The name of start ``k``'s run folder inside the run folder."""
    return f"start_{k}"


def reconstruct_starts(
    series: TiltSeries,
    config: ReconstructConfig | dict | None = None,
    n_starts: int = MAX_STARTS,
    out_dir=None,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    max_phases: int | None = None,
    overwrite: bool = False,
    record: dict[str, Any] | None = None,
) -> Result:
    """Reconstruct ``series`` from ``n_starts`` starts (:func:`start_configs`) and return
    the start with the lowest final loss, its report holding ``starts``: every start's
    loss, atom count, start tomogram and run folder, and ``best``, the winner's index.
    The arguments are :func:`atomjax.reconstruct.reconstruct`'s.

    out_dir: the run folder, guarded as any (:mod:`atomjax.runfolder`), holding one run
    folder per start (``start_<k>``), ``starts.json``, and the winner's ``report.json``,
    ``atoms.extxyz`` and figures. resume continues every start from its checkpoint (a
    start never begun, or stopped before its first checkpoint, starts now); overwrite
    replaces the whole run. A start that stops (a signal, or ``max_phases``: a count per
    call, as for one run) ends the call: its result is returned (status "interrupted")
    and the later starts wait for the resume. record: kept in the folder's ``run.json``.
    """
    configs = start_configs(config, n_starts)
    out = pathlib.Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise ValueError("resume=True needs out_dir: the run folder to continue")
    names = [start_folder(k) for k in range(len(configs))]
    writer = jax.process_index() == 0  # several processes (jax.distributed): one writes
    claim = (runfolder.claim(out, resume=resume, overwrite=overwrite)
             if out is not None and writer else contextlib.nullcontext(None))  # fmt: skip
    with claim as run, interrupt.stop_requests() as stop:
        if run is not None and resume and not run.record.get("parts"):
            raise runfolder.RunFolderError(
                f"{out} holds a single run, not several starts: resume it with "
                "atomjax.reconstruct (or starts=1)"
            )
        if run is not None:
            app = record if record is not None else run.record.get("app")
            run.update(app=app, parts=names, n_starts=len(configs),
                       settings=configs[0].to_dict())  # fmt: skip
            run.add_outputs(*names, STARTS_FILE, "report.json", *WINNER_FILES)
        try:
            results, summary = _run_starts(series, configs, out, names, resume, overwrite,
                                           progress, figures, max_phases, stop)  # fmt: skip
        except BaseException as e:
            if run is not None:
                run.record_error(e)
            raise
        finished = len(results) == len(configs) and results[-1].report["status"] == "finished"
        if finished:
            best = min(range(len(results)), key=lambda i: summary[i]["loss_final"])
        else:  # stopped: hand back the last start
            best = len(results) - 1
        starts_record = {"n_starts": len(configs), "starts": summary, "best": best}
        winner = results[best]
        # the run's time is every start's
        total_s = sum(r.report["run_time_s"] for r in results)
        report = {**winner.report, "starts": starts_record, "run_time_s": total_s}
        if not finished and report["status"] == "finished":  # stopped between two starts
            report.update(status="interrupted", stopped_by=stop.signal_name or "request")
        sigmas = winner.sigmas
        if finished and len(results) > 1 and sigmas is not None:
            others = [r.positions_A for i, r in enumerate(results) if i != best]
            sigmas, report["uncertainty"] = with_search(winner, others, series.atoms_positions_A)
        if run is not None:
            if finished:
                widened = sigmas is not winner.sigmas
                for name in WINNER_FILES:
                    if widened and name in ("atoms.extxyz", "atoms_sigma.png"):
                        continue  # written anew with the widened σ
                    if (out / names[best] / name).is_file():
                        shutil.copy2(out / names[best] / name, out / name)
                if widened:
                    _write_sigmas(
                        out / names[best],
                        out,
                        sigmas,
                        series.atoms_positions_A,
                        figures and (out / names[best] / "atoms_sigma.png").is_file(),
                    )
                outputs.write_json(out / "report.json", report)
            outputs.write_json(out / STARTS_FILE, starts_record)
            run.update(status=report["status"], best=best, error=None,
                       stopped_by=report.get("stopped_by"),
                       progress={"start": len(results) - 1, "n_starts": len(configs),
                                 **(winner.report.get("progress") or {})})  # fmt: skip
    return dataclasses.replace(winner, report=report, out_dir=out if writer else None,
                               sigmas=sigmas)  # fmt: skip


def with_search(winner: Result, others, truth_A=None) -> tuple[dict, dict]:
    """The winner's σ with the error of the search added (:func:`atomjax.uncertainty.
    search_variance` from the other starts' atoms ``others``), and its report's
    ``uncertainty`` for them: the distribution and calibration (against ``truth_A``) of
    the σ so widened, ``statistical`` (the predicted RMSD and calibration of the σ
    alone) and ``search`` (the search's share)."""
    var = uncertainty.search_variance(winner.positions_A, others)
    sigmas = uncertainty.widened(winner.sigmas, var)
    before = winner.report.get("uncertainty") or {}
    u = {**uncertainty.summary(sigmas), "seconds": before.get("seconds")}
    u.update(uncertainty.search_report(winner.sigmas, sigmas, winner.positions_A, truth_A,
                                       len(others)))  # fmt: skip
    if truth_A is not None:
        u["calibration"] = uncertainty.calibrate(winner.positions_A, sigmas, truth_A)
    return sigmas, u


def _write_sigmas(winner_dir: pathlib.Path, out: pathlib.Path, sigmas: dict, truth_A,
                  figure: bool) -> None:  # fmt: skip
    """The run folder's atoms.extxyz: the winner's, with the widened σ columns and the
    search's own (``sigma_search_x_A`` …); and its σ figure for them."""
    back = outputs.read_extxyz(winner_dir / "atoms.extxyz")
    columns = dict(back["columns"])
    columns.update({k: np.asarray(v, float) for k, v in sigmas.items() if k.startswith("sigma_")})
    outputs.write_extxyz(out / "atoms.extxyz", back["positions_A"], back["widths_A2"],
                         back["amplitudes"], species=back["species"], info=back["info"],
                         columns=columns)  # fmt: skip
    if figure:
        figure_sigma(out / "atoms_sigma.png", back["positions_A"], sigmas, truth_A)


def _run_starts(series, configs, out, names, resume, overwrite, progress, figures, max_phases,
                stop):  # fmt: skip
    """Run the starts in order until one does not finish: their results and summaries."""
    results: list[Result] = []
    summary: list[dict[str, Any]] = []
    for k, cfg in enumerate(configs):
        if k and stop.requested:  # a signal as the last start ended
            break
        sub = out / names[k] if out is not None else None
        again = resume and sub is not None and runfolder.inspect(sub).has_checkpoint
        if progress:
            print(f"start {k + 1} of {len(configs)}: {cfg.init.sirt_iterations} SIRT sweeps on "
                  f"{cfg.init.voxel_size_A:.3g} Å voxels", flush=True)  # fmt: skip
        # resumed, a start without a checkpoint has nothing to keep: it starts again
        result = reconstruct(series, cfg, out_dir=sub, resume=again, progress=progress,
                             figures=figures, max_phases=max_phases,
                             overwrite=overwrite or (resume and not again))  # fmt: skip
        results.append(result)
        summary.append({
            "start": k,
            "sirt_iterations": cfg.init.sirt_iterations,
            "voxel_size_A": cfg.init.voxel_size_A,
            "loss_final": final_loss(result.report),
            "run_time_s": result.report["run_time_s"],
            "n_atoms": int(len(result.positions_A)),
            "status": result.report["status"],
            "run_folder": None if sub is None else names[k],
        })  # fmt: skip
        if result.report["status"] != "finished":
            break
    return results, summary


__all__ = [
    "MAX_STARTS",
    "START_VARIANTS",
    "final_loss",
    "reconstruct_starts",
    "start_configs",
    "start_folder",
    "with_search",
]
