"""The steps the command-line apps chain, as plain functions of plain values.

The Hydra apps (:mod:`atomjax.apps`) turn their configuration into dicts and call
these; nothing here imports Hydra, so a script or a notebook can call them the same way.

* :func:`load_series` — a tilt series from a data description: a simulated particle
  (cached on disk by its settings), atomjax's own file, an AET ``.mat`` pair, MRC +
  ``.tlt``, TIFF + angles, a microscope file (DM3/DM4, EMD, SER, .hspy, through
  RosettaSciIO), or one of the third-party datasets; optionally with a ground-truth file
  attached.
* :func:`reconstruct_config` — the :class:`~atomjax.reconstruct.ReconstructConfig` from
  the mode, probe, init, optim and adapt groups.
* :func:`accuracy_rows` / :func:`print_summary` — the accuracy table a run prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any

from . import io, microscope, simulate, structures
from .data import TiltSeries
from .metrics import read_atoms
from .probe import ProbeSettings
from .reconstruct import ReconstructConfig

#: What ``data.kind`` may be.
DATA_KINDS = ("simulated", "file", "mat", "mrc", "tiff", "microscope", "dataset")

#: Settings of a simulated series (``data.kind: simulated``) and their defaults.
SIMULATED_DEFAULTS: dict[str, Any] = {
    "particle": {"kind": "fcc", "element": "Au", "size_A": 8.0, "off_zone": True},
    "protocol": "fast",
    "tilts": "-70:70:10",
    "pixel_size_A": None,
    "dose_e_per_A2": None,
    "noise_std_rel": 0.0,
    "drift_std_A": 0.0,
    "blur_sigma_A": 0.5,
    "method": "prism",
    "potential_sampling_A": 0.1,
    "probe": None,
    "seed": 0,
}

_READER_KEYS = {
    "simulated": set(SIMULATED_DEFAULTS),
    "file": {"path"},
    "mat": {"projections", "angles", "pixel_size_A", "projections_key", "angles_key",
            "dose_e_per_A2"},
    "mrc": {"path", "tlt", "pixel_size_A", "tilt_sign"},
    "tiff": {"path", "angles", "pixel_size_A", "tilt_sign"},
    "microscope": {"path", "format", "signal", "angles", "tlt", "pixel_size_A", "tilt_sign"},
    "dataset": {"name", "root"},
}  # fmt: skip


def _check_keys(kind: str, data: dict) -> None:
    unknown = set(data) - _READER_KEYS[kind] - {"kind", "truth"}
    if unknown:
        raise ValueError(
            f"data.kind={kind!r} does not take {sorted(unknown)}; "
            f"it takes {sorted(_READER_KEYS[kind] | {'truth'})}"
        )


def _tilt_sign(data: dict) -> int:
    """data.tilt_sign: +1 (default) or -1; anything else is refused (0 is not +1)."""
    value = data.get("tilt_sign")
    if value is None:
        return 1
    if value not in (1, -1) or isinstance(value, bool):
        raise ValueError(f"data.tilt_sign must be 1 or -1, got {value!r}")
    return int(value)


def _required(data: dict, key: str) -> Any:
    value = data.get(key)
    if value is None or value == "???":
        raise ValueError(f"data.{key} must be given for data.kind={data['kind']!r}")
    return value


def simulation_spec(data: dict) -> dict[str, Any]:
    """The full settings of a simulated series: ``data`` over the defaults, checked."""
    spec = {**SIMULATED_DEFAULTS, **{k: v for k, v in data.items() if k not in ("kind", "truth")}}
    spec["particle"] = {**SIMULATED_DEFAULTS["particle"], **(spec["particle"] or {})}
    unknown = set(spec["particle"]) - set(SIMULATED_DEFAULTS["particle"])
    if unknown:
        raise ValueError(
            f"data.particle does not take {sorted(unknown)}; "
            f"it takes {sorted(SIMULATED_DEFAULTS['particle'])}"
        )
    if spec["protocol"] not in ("fast", "physical"):
        raise ValueError(f"data.protocol must be 'fast' or 'physical', got {spec['protocol']!r}")
    return spec


def simulate_series(spec: dict[str, Any], progress: bool = True) -> TiltSeries:
    """Build the particle and simulate its tilt series with abTEM (see :mod:`simulate`)."""
    spec = simulation_spec(spec)
    part = spec["particle"]
    particle = structures.build_particle(
        part["kind"], part["element"], float(part["size_A"]), int(spec["seed"]), part["off_zone"]
    )
    angles = simulate.parse_tilts(str(spec["tilts"]))
    common = {
        "dose_e_per_A2": spec["dose_e_per_A2"],
        "noise_std_rel": float(spec["noise_std_rel"]),
        "drift_std_A": spec["drift_std_A"],
        "seed": int(spec["seed"]),
        "progress": progress,
    }
    if spec["protocol"] == "fast":
        series = simulate.simulate_fast(
            particle,
            angles,
            pixel_size_A=float(spec["pixel_size_A"] or 0.25),
            blur_sigma_A=float(spec["blur_sigma_A"]),
            **common,
        )
    else:
        series = simulate.simulate_haadf(
            particle,
            angles,
            probe=ProbeSettings(**spec["probe"]) if spec["probe"] else None,
            scan_pixel_size_A=float(spec["pixel_size_A"] or 0.5),
            method=spec["method"],
            potential_sampling_A=float(spec["potential_sampling_A"]),
            **common,
        )
    return series.replace(provenance={**series.provenance, "simulation": spec})


def _cache_path(cache_dir: pathlib.Path, spec: dict) -> pathlib.Path:
    text = json.dumps(spec, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    part = spec["particle"]
    name = f"{spec['protocol']}_{part['kind']}_{part['element']}_{part['size_A']:g}A_{digest}"
    return cache_dir / f"{name.replace(',', '-')}.npz"


def load_series(
    data: dict[str, Any],
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> TiltSeries:
    """The tilt series a data description names (``data["kind"]`` in :data:`DATA_KINDS`).

    simulated: the keys of :data:`SIMULATED_DEFAULTS`; with ``cache_dir`` the series is
    saved there under a name derived from every setting and re-read next time.
    file: ``path`` (:func:`atomjax.io.save_tilt_series` format). mat: ``projections``,
    ``angles``, ``pixel_size_A`` [, keys, dose]. mrc: ``path`` [, ``tlt``,
    ``pixel_size_A``, ``tilt_sign``]. tiff: ``path``, ``angles``, ``pixel_size_A`` [,
    ``tilt_sign``]. microscope (DM3/DM4, EMD, SER/EMI, .hspy via RosettaSciIO, see
    :func:`atomjax.microscope.read_microscope_series`): ``path`` [, ``format`` (default
    from the extension), ``signal`` (which stack of a file holding several),
    ``angles`` (a list) or ``tlt`` (a file) when the file has no tilts in degrees,
    ``pixel_size_A`` when it has no length calibration, ``tilt_sign``]. dataset:
    ``name`` ("aSi_208", "ta_film"), ``root``.
    Any kind: ``truth`` — a file of true atom positions (xyz, extxyz, text columns),
    attached to the series so the run is scored.
    """
    data = dict(data)
    kind = data.get("kind")
    if kind not in DATA_KINDS:
        raise ValueError(f"data.kind must be one of {DATA_KINDS}, got {kind!r}")
    _check_keys(kind, data)
    if kind == "simulated":
        spec = simulation_spec(data)
        path = _cache_path(pathlib.Path(cache_dir), spec) if cache_dir is not None else None
        if path is not None and path.is_file():
            series = io.load_tilt_series(path)
        else:
            series = simulate_series(spec, progress=progress)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                io.save_tilt_series(series, path)
    elif kind == "file":
        series = io.load_tilt_series(_required(data, "path"))
    elif kind == "mat":
        series = io.read_mat_series(
            _required(data, "projections"),
            _required(data, "angles"),
            float(_required(data, "pixel_size_A")),
            projections_key=data.get("projections_key"),
            angles_key=data.get("angles_key"),
            dose_e_per_A2=data.get("dose_e_per_A2"),
        )
    elif kind == "mrc":
        px = data.get("pixel_size_A")
        series = io.read_mrc_series(
            _required(data, "path"),
            data.get("tlt"),
            pixel_size_A=None if px is None else float(px),
            tilt_sign=_tilt_sign(data),
        )
    elif kind == "tiff":
        series = io.read_tiff_series(
            _required(data, "path"),
            _required(data, "angles"),
            float(_required(data, "pixel_size_A")),
            tilt_sign=_tilt_sign(data),
        )
    elif kind == "microscope":
        px = data.get("pixel_size_A")
        series = microscope.read_microscope_series(
            _required(data, "path"),
            kind=data.get("format"),
            angles=data.get("angles"),
            tlt=data.get("tlt"),
            pixel_size_A=None if px is None else float(px),
            tilt_sign=_tilt_sign(data),
            signal=data.get("signal"),
        )
    else:
        root = pathlib.Path(_required(data, "root"))
        if not root.is_dir():
            raise FileNotFoundError(
                f"data.root {str(root)!r} is not a folder (the third-party datasets live in "
                "the project's shared/data folder; set data.root or ATOMJAX_DATA)"
            )
        series = io.load_dataset(str(_required(data, "name")), root)
    if data.get("truth"):
        positions, species = read_atoms(data["truth"])
        series = series.replace(atoms_positions_A=positions, atoms_species=species)
    return series


#: data settings that name files or folders
PATH_KEYS = ("path", "tlt", "projections", "angles", "truth", "root")


def absolute_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with the data's file names and ``cache_dir`` made absolute (from the
    current folder), so that a run's record finds its data from anywhere."""

    def absolute(value):
        if not isinstance(value, str | os.PathLike) or value == "???":
            return value  # None, or a list (data.angles of kind microscope)
        return str(pathlib.Path(os.path.expanduser(str(value))).absolute())

    out = dict(cfg)
    out["data"] = {k: absolute(v) if k in PATH_KEYS else v for k, v in cfg["data"].items()}
    if "cache_dir" in cfg:
        out["cache_dir"] = absolute(cfg["cache_dir"])
    return out


def reconstruct_config(
    mode: dict[str, Any],
    probe: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
    optim: dict[str, Any] | None = None,
    adapt: dict[str, Any] | None = None,
    seed: int = 0,
    **settings: Any,
) -> ReconstructConfig:
    """A ReconstructConfig from the config groups.

    mode: ``{"name": "direct" | "rigid" | "adaptive", ...}`` plus mode-specific fields
    (``probe_fit``, ``focus_per_image``); probe: ProbeSettings fields (used when the
    series does not carry its own); the rest are ReconstructConfig fields.
    """
    mode = dict(mode)
    name = mode.pop("name", None)
    if name is None:
        raise ValueError("mode.name must be given (direct, rigid or adaptive)")
    return ReconstructConfig.from_dict(
        {
            "mode": name,
            **mode,
            "probe": dict(probe) if probe else None,
            "init": dict(init or {}),
            "optim": dict(optim or {}),
            "adapt": dict(adapt or {}),
            "seed": int(seed),
            **settings,
        }
    )


def config_from_settings(cfg: dict[str, Any]) -> ReconstructConfig:
    """The ReconstructConfig of a composed ``atomjax-reconstruct`` settings tree
    (:func:`atomjax.apps.compose`): its groups mode, probe, init, optim, adapt, seed and
    the ``reconstruct`` section."""
    return reconstruct_config(
        cfg["mode"],
        cfg["probe"],
        cfg["init"],
        cfg["optim"],
        cfg["adapt"],
        seed=cfg["seed"],
        **cfg["reconstruct"],
    )


def accuracy_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows of the accuracy table for a reconstruction report."""
    rows = [("atoms found", f"{report['n_atoms']}")]
    m = report.get("metrics")
    if m:
        cutoff = m.get("cutoff_A", 0.75)
        rows = [
            ("atoms in the particle", f"{m['n_truth']}"),
            ("atoms found", f"{m['n_found']}"),
            (f"matched within {cutoff:g} Å", f"{m['n_matched']}"),
            ("true-positive rate", f"{m['tp_rate']:.3f}"),
            ("false-positive rate", f"{m['fp_rate']:.3f}"),
            ("RMSD", "–" if m["rmsd_pm"] is None else f"{m['rmsd_pm']:.2f} pm"),
        ]
    u = report.get("uncertainty")
    if u and u.get("predicted_rmsd_pm") is not None:
        rows.append(("predicted RMSD (from σ)", f"{u['predicted_rmsd_pm']:.2f} pm"))
        stat = (u.get("statistical") or {}).get("predicted_rmsd_pm")
        if stat is not None:  # restarts or starts: σ with the search's error in them
            rows.append(("… the fit alone", f"{stat:.2f} pm"))
        cal = u.get("calibration", {})
        if "z_std" in cal:
            rows.append(("error / σ, std x y z", " ".join(f"{z:.2f}" for z in cal["z_std"])))
    r = report.get("restarts")
    if r:  # which fit the atoms are: the fit's own, or a restart's with a lower loss
        kept = "the fit" if r["kept"] == 0 else f"restart {r['kept']} (lower loss)"
        rows.append(("restarts", f"{r['n']}, kept {kept}"))
    rows.append(("R-factor (mean)", f"{report['r_factor']['mean']:.4f}"))
    if report.get("r1_factor"):
        rows.append(("R1 (Materials Data Bank)", f"{report['r1_factor']['r1']:.4f}"))
    a = report.get("alignment")
    if a:
        rows += [
            ("tilt axis", f"{a['tilt_axis_deg']:+.2f}°"),
            ("tilt corrections, RMS", f"{a['tilt_offsets_rms_deg']:.2f}°"),
            ("shifts, RMS", f"{a['shifts_rms_A']:.2f} Å"),
        ]
    rows.append(("run time", f"{report['run_time_s']:.1f} s"))
    return rows


def print_summary(report: dict[str, Any], out_dir: str | os.PathLike | None, names=None) -> None:
    """Print the accuracy table (against the truth, when the series has it) and the outputs
    (``names``: the files this run made; by default the files in ``out_dir``)."""
    title = "accuracy against the known structure" if report.get("metrics") else "result"
    if report.get("status") == "interrupted":
        p = report["progress"]
        title += f" (so far: {p['phase']} of {p['n_phases']} phases)"
    print(f"\n{title}")
    for name, value in accuracy_rows(report):
        print(f"  {name:<24}{value:>12}")
    starts = report.get("starts")
    if starts:
        print(f"\n{starts['n_starts']} starts (the lowest final loss is kept)")
        for s in starts["starts"]:
            mark = "  ← kept" if report.get("status") == "finished" else "  ← stopped here"
            kept = mark if s["start"] == starts["best"] else ""
            print(
                f"  {s['run_folder'] or 'start ' + str(s['start']):<14}"
                f"{s['sirt_iterations']:>3} SIRT sweeps, {s['voxel_size_A']:.3g} Å voxels: "
                f"{s['n_atoms']} atoms, loss {s['loss_final']:.6g}, {s['status']}{kept}"
            )
    if out_dir is not None:
        if names is None:
            names = [p.name for p in pathlib.Path(out_dir).iterdir() if not p.is_dir()]
        names = [n for n in names if (pathlib.Path(out_dir) / n).exists()]  # made so far
        print(f"\noutputs: {out_dir}/ ({', '.join(sorted(names))})")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a sweep compares: atoms, metrics, R-factor, time."""
    out = {
        "mode": report["settings"]["mode"],
        "seed": report["settings"]["seed"],
        "n_atoms": report["n_atoms"],
        "r_factor": report["r_factor"]["mean"],
        "run_time_s": report["run_time_s"],
    }
    if report.get("r1_factor"):
        out["r1"] = report["r1_factor"]["r1"]
    m = report.get("metrics")
    if m:
        out.update({k: m[k] for k in ("n_truth", "n_matched", "tp_rate", "fp_rate", "rmsd_pm")})
    u = report.get("uncertainty")
    if u:
        out["predicted_rmsd_pm"] = u["predicted_rmsd_pm"]
        if "z_std" in u.get("calibration", {}):
            out["z_std"] = u["calibration"]["z_std"]
    return out


def sweep_summary(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per run of a sweep folder: its overrides and :func:`summary` of its report.

    Runs are the sub-folders holding a ``report.json``; a run that failed has none and
    appears with ``"error": "no report.json"`` so a sweep's gaps stay visible.
    """
    from .outputs import read_json

    rows = []
    folders = [p for p in pathlib.Path(sweep_dir).iterdir() if p.is_dir()]
    for folder in sorted(folders, key=lambda p: (len(p.name), p.name)):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file() and not (folder / "report.json").is_file():
            continue
        overrides = [
            line[2:].strip()
            for line in (
                overrides_file.read_text().splitlines() if overrides_file.is_file() else []
            )
            if line.startswith("- ")
        ]
        row: dict[str, Any] = {"run": folder.name, "overrides": overrides}
        report = folder / "report.json"
        row.update(summary(read_json(report)) if report.is_file() else {"error": "no report.json"})
        rows.append(row)
    return rows


def format_sweep(rows: list[dict[str, Any]]) -> str:
    """The sweep table: run, mode, seed, atoms, matched, TP/FP, RMSD, R-factor, time."""
    head = f"{'run':>4} {'mode':<9}{'seed':>5}{'atoms':>7}{'matched':>9}{'TP':>7}{'FP':>7}"
    head += f"{'RMSD pm':>9}{'R':>8}{'time s':>8}"
    lines = [head]

    def num(r, key, spec):
        return "–" if r.get(key) is None else format(r[key], spec)

    for r in rows:
        if "error" in r:
            lines.append(f"{r['run']:>4} {r['error']}")
            continue
        lines.append(
            f"{r['run']:>4} {r['mode']:<9}{r['seed']:>5}{r['n_atoms']:>7}"
            f"{num(r, 'n_matched', 'd'):>9}{num(r, 'tp_rate', '.3f'):>7}"
            f"{num(r, 'fp_rate', '.3f'):>7}"
            f"{num(r, 'rmsd_pm', '.2f'):>9}{r['r_factor']:>8.4f}{r['run_time_s']:>8.1f}"
        )
    return "\n".join(lines)
