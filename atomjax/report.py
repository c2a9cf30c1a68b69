"""A run's report and output files: report.json, atoms.extxyz and the figures.

:func:`build_report` gathers what a run produced (settings, the series' description,
the imaging setup, the loss history, R-factors, run time, the probe, drift and
background, species, and the metrics against ground truth when the series carries
it); :func:`write_outputs` writes it with the atoms and figures into the run folder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import checkpoint, metrics, outputs, runfolder, uncertainty
from .fit import probe_kind
from .render import PhysicalProbe


def classify(config, alive: dict[str, np.ndarray]):
    """The species of the live atoms (``config.species``), or None."""
    if not config.species:
        return None
    from .species import classify_species

    return classify_species(
        alive["amplitudes"],
        alive["widths_A2"],
        list(config.species),
        method=config.species_method,
        seed=config.seed,
    )


def build_report(series, config, params, observed, calc, setup, history, progress, elapsed_s,
                 status, stopped_by, optimizer, species, sigmas=None,
                 detected=None):  # fmt: skip
    """The run's report (a JSON-ready dict); ``sigmas`` from
    :func:`atomjax.uncertainty.atom_sigmas`, summarised (and calibrated against the
    ground truth when the series carries it); ``detected``: each atom's z of the
    detection test and the threshold (:func:`detection_summary`)."""
    a = params.atoms.alive_numpy()
    rf = metrics.r_factor_series(observed, calc)
    report: dict[str, Any] = {
        "status": status,
        "stopped_by": stopped_by,
        "progress": progress,
        "optimizer": optimizer,
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
        "r1_factor": _r1(observed, calc),
        "run_time_s": elapsed_s,
        "probe": _probe_report(params.probe),
        "drift_A": np.asarray(params.drift_A),
        "background": None if params.background is None else np.asarray(params.background),
    }
    if species is not None:
        from .species import species_summary

        report["species"] = species_summary(species, a["amplitudes"], a["widths_A2"])
    if sigmas is not None:
        report["uncertainty"] = {**uncertainty.summary(sigmas), "seconds": sigmas["seconds"]}
        if series.atoms_positions_A is not None:
            report["uncertainty"]["calibration"] = uncertainty.calibrate(
                a["positions_A"], sigmas, series.atoms_positions_A
            )
    if detected is not None:
        report["detection"] = detection_summary(detected)
    if series.atoms_positions_A is not None:
        truth_species = series.atoms_species if species is not None else None
        report["metrics"] = metrics.evaluate(
            a["positions_A"],
            series.atoms_positions_A,
            found_species=species if truth_species is not None else None,
            truth_species=truth_species,
            remove_offset=origin_is_free(config),
        )
    return report


def _r1(observed, calc) -> dict[str, Any]:
    r1 = metrics.r1_factor_series(observed, calc)
    return {"r1": r1.r1, "scale": r1.scale, "per_image": r1.per_image}


def origin_is_free(config) -> bool:
    """Whether the fit's atoms sit at an origin of their own: a fit that starts from an
    alignment (the particle's centre of mass on the rotation centre) or fits the shifts
    (their common translation moved into the atoms) places the particle up to one
    translation, so its scores against a truth remove the mean offset."""
    return config.align is not None or config.optim.lr_drift_A > 0


def detection_summary(detected: dict[str, Any]) -> dict[str, Any]:
    """The distribution of the atoms' detection z (:mod:`atomjax.detection`): quantiles,
    the threshold and how many atoms lie below it now (the last phase's fit moved them)."""
    z = np.asarray(detected["z"], float)
    q = [0.0, 0.01, 0.05, 0.5] if z.size else []
    return {
        "rule": detected["rule"],
        "threshold_z": detected["threshold_z"],
        "z_quantiles": {str(k): float(np.quantile(z, k)) for k in q},
        "n_below_threshold": int(np.sum(z < detected["threshold_z"])),
    }


def figure_sigma(path, positions_A, sigmas, truth_A=None) -> None:
    """atoms_sigma.png: the atoms coloured by √(σx²+σy²+σz²) (shown up to 100 pm)."""
    shown = np.minimum(uncertainty.sigma_xyz_pm(sigmas), 100.0)  # unsupported: 100
    label = "σ of the position, √(σx²+σy²+σz²) (pm, ≤ 100)"
    outputs.figure_atoms(path, positions_A, shown, truth_A, values_label=label)


def write_outputs(run, config, series, params, observed, calc, report, species, figures,
                  sigmas=None, detected=None):  # fmt: skip
    """atoms.extxyz (with the σ columns when ``sigmas`` is given, and ``z_detection``
    when ``detected`` is), the figures and report.json in the run folder; records them
    as the run's outputs."""
    out = run.path
    a = params.atoms.alive_numpy()
    made = ["atoms.extxyz"]
    columns = {} if sigmas is None else {k: sigmas[k] for k in uncertainty.SIGMA_NAMES}
    if sigmas is not None:  # the search's share, where restarts measured it
        columns.update({k: v for k, v in sigmas.items() if k.startswith("sigma_search_")})
    if detected is not None:
        columns["z_detection"] = np.asarray(detected["z"], float)
    outputs.write_extxyz(
        out / "atoms.extxyz",
        a["positions_A"],
        a["widths_A2"],
        a["amplitudes"],
        species=species,
        info={"mode": config.mode, "n_atoms": len(a["positions_A"]), "status": report["status"]},
        columns=columns or None,
    )
    if figures:
        made += _write_figures(out, series, observed, calc, report["history"], a,
                               params.atoms.n_alive)  # fmt: skip
        if sigmas is not None:
            figure_sigma(out / "atoms_sigma.png", a["positions_A"], sigmas,
                         series.atoms_positions_A)  # fmt: skip
            made.append("atoms_sigma.png")
    report["outputs"] = {"folder": str(out)}
    outputs.write_json(out / "report.json", report)
    made.append("report.json")
    if config.checkpoint:
        made.append(runfolder.CHECKPOINT_DIR)
    run.add_outputs(*made)


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
    kind = probe_kind(probe)
    out: dict[str, Any] = {"kind": kind}
    if hasattr(probe, "describe"):  # the profile tail: its share and extra width
        out.update(probe.describe())
    if isinstance(probe, PhysicalProbe):
        out["settings"] = probe.settings.to_dict()
        if probe.focus_offsets_A is not None:
            out["focus_offsets_A"] = np.asarray(probe.focus_offsets_A)
    return out
