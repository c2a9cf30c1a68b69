"""The command-line apps, driven by Hydra (configs in the repository's ``conf/``).

* ``atomjax-simulate``    — build a test particle, simulate its tilt series with abTEM;
* ``atomjax-reconstruct`` — load or simulate a series, fit the atoms, print the accuracy;
* ``atomjax-evaluate``    — score an atoms file (or a run folder) against ground truth;
* ``atomjax-align``       — pre-align a single-axis series: an alignment file to start from.

Every app accepts Hydra's overrides (``mode=rigid data.particle.size_A=10``), sweeps
(``-m mode=direct,rigid,adaptive seed=0,1,2``), presets (``+experiment=modes_prism``)
and ``--cfg job`` to print its settings. Hydra stays here: the settings become plain
dicts and go to :mod:`atomjax.pipeline` and the library.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

#: Where the configs live: ``$ATOMJAX_CONF``, else the repository's ``conf/``.
CONF_DIR = pathlib.Path(
    os.environ.get("ATOMJAX_CONF", pathlib.Path(__file__).resolve().parents[1] / "conf")
)

# errors that describe bad input: printed as one line, the run stops with status 2
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError)


def _plain(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def _output_dir() -> pathlib.Path:
    from hydra.core.hydra_config import HydraConfig

    return pathlib.Path(HydraConfig.get().runtime.output_dir)


def _launch(name: str, task: Callable[..., Any]) -> None:
    """Run ``task(settings, output_dir, log)`` as a Hydra app with config ``conf/<name>.yaml``.

    ``log`` is the :class:`~atomjax.console.ConsoleLog` copying the console; a task that
    has a folder for its log attaches it there.
    """
    if not (CONF_DIR / f"{name}.yaml").is_file():
        sys.exit(
            f"atomjax-{name}: no configs in {CONF_DIR} — install atomjax from a clone of the "
            "repository (pip install -e .) or point ATOMJAX_CONF at its conf/ folder"
        )
    import hydra
    from omegaconf.errors import MissingMandatoryValue

    from .console import ConsoleLog

    @hydra.main(config_path=str(CONF_DIR), config_name=name, version_base="1.3")
    def app(cfg):
        logging.getLogger("jax").setLevel(logging.WARNING)  # not "Unable to initialize TPU"
        with ConsoleLog() as log:
            try:
                return task(_plain(cfg), _output_dir(), log)
            except MissingMandatoryValue as e:
                sys.exit(f"atomjax-{name}: error: a required setting is missing: {e.full_key}")
            except _USER_ERRORS as e:
                message = e.args[0] if isinstance(e, KeyError) and e.args else e
                print(f"atomjax-{name}: error: {message}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt:
                print(f"\natomjax-{name}: stopped", file=sys.stderr)
                sys.exit(130)

    app()


def compose(name: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings ``atomjax-<name> <overrides>`` would run with, as a plain dict.

    For scripts and tests that call the tasks directly, e.g. a benchmark that runs a
    preset: ``reconstruct_task(compose("reconstruct", ["+experiment=asi_208"]), out)``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _plain(hydra_compose(config_name=name, overrides=list(overrides)))


# ------------------------------------------------------------------------- tasks


def simulate_task(cfg: dict[str, Any], out_dir: pathlib.Path, log=None) -> str:
    """Simulate ``cfg["data"]``; save it to ``cfg["out"]`` (default out_dir/series.npz)."""
    from .io import save_tilt_series
    from .pipeline import simulate_series

    data = cfg["data"]
    if data.get("kind") != "simulated":
        raise ValueError(f"atomjax-simulate needs data=simulated, got data.kind={data['kind']!r}")
    series = simulate_series(data, progress=cfg["progress"])
    out = pathlib.Path(cfg["out"] or pathlib.Path(out_dir) / "series.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_tilt_series(series, out)
    print(
        f"{len(series.atoms_positions_A)} atoms, {series.n_angles} images "
        f"{series.image_shape}, {series.provenance['seconds_per_angle']:.2f} s/angle → {out}"
    )
    return str(out)


#: settings of one call, not of the run: a resumed run takes them from its command line
PER_CALL = ("resume", "overwrite", "progress", "figures", "max_phases", "distributed",
            "xla_cache")  # fmt: skip
#: settings of the run that a resumed run may be given anew; any other setting given
#: that differs from the record is refused
RESUME_MAY_CHANGE = ("optim.n_phases", "reconstruct.shard_devices", "cache_dir")
LOG_NAME = "reconstruct.log"


def _task_overrides() -> list[str]:
    """The command line's settings (``key=value``; Hydra's own ``hydra.*`` left out)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # called outside a Hydra app
        return []


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _lookup(tree: dict, key: str):
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def resumed_settings(out: pathlib.Path, cfg: dict[str, Any], overrides: list[str]) -> dict:
    """The settings a ``resume=true`` run continues with: the folder's own record, with
    the settings of :data:`RESUME_MAY_CHANGE` given on the command line, and those of
    :data:`PER_CALL` as this call has them. Any other setting given on the command line
    that differs from the record is refused by name.

    A folder without a record of its settings (made by an older atomjax, or through the
    library with no app record) resumes with the settings given, checked against its
    checkpoint.
    """
    from .runfolder import read_record

    record = read_record(out) or {}
    saved = (record.get("app") or {}).get("settings")
    if saved is None:
        return cfg
    if cfg.get("overwrite"):
        raise ValueError("resume=true and overwrite=true exclude each other: give one of them")
    merged = json.loads(json.dumps(saved))  # a deep copy
    for override in overrides:
        key = _override_key(override)
        if key in RESUME_MAY_CHANGE or key in PER_CALL:
            continue
        given, kept = _lookup(cfg, key), _lookup(saved, key)
        if given is _MISSING and kept is _MISSING:
            raise ValueError(
                f"{override!r} cannot be given with resume=true: the run's record in {out} "
                "holds all its settings (a preset or a group the record does not name)"
            )
        if given != kept:
            raise ValueError(
                f"{key}={_short(given)} differs from the run's record in {out} "
                f"({key}={_short(kept)}); a resumed run keeps its settings: leave {key} out, "
                "or start a new run (another folder, or overwrite=true)"
            )
    given_keys = {_override_key(o) for o in overrides}
    for key in sorted(given_keys & set(RESUME_MAY_CHANGE)):  # what the command line changes
        node = merged
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = _lookup(cfg, key)
    merged.update({key: cfg[key] for key in PER_CALL if key in cfg})
    return merged


def _short(value) -> str:
    if value is _MISSING:
        return "(not set)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _write_hydra_record(out: pathlib.Path, cfg: dict[str, Any], overrides: list[str]) -> None:
    """Hydra's record of this run's settings in ``out/.hydra`` (config, overrides, and
    Hydra's own settings when run as an app), written once the folder is ours."""
    from omegaconf import OmegaConf

    from .outputs import atomic_write_text

    folder = out / ".hydra"
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))
    atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = OmegaConf.create({"hydra": HydraConfig.get()})
        atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    except ValueError:  # not inside a Hydra app
        pass


def reconstruct_task(
    cfg: dict[str, Any],
    out_dir: pathlib.Path,
    log=None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Load or simulate the series, reconstruct it into out_dir, print the accuracy.

    The run folder guards its work (:mod:`atomjax.runfolder`): a folder holding a run is
    refused unless ``resume`` or ``overwrite`` is set, before anything is loaded or
    written. ``resume=true hydra.run.dir=<folder>`` alone continues a run: the settings
    and the data description come from the folder's record. SIGINT / SIGTERM stop the fit
    after its current piece, keep the work and print the command that resumes (exit 130).
    """
    import jax

    from . import compile_cache, runfolder
    from .interrupt import stop_requests
    from .pipeline import absolute_paths, config_from_settings, load_series, print_summary, summary
    from .reconstruct import reconstruct
    from .starts import reconstruct_starts, start_configs

    out = pathlib.Path(out_dir)
    overrides = _task_overrides() if overrides is None else list(overrides)
    resume, overwrite = bool(cfg["resume"]), bool(cfg.get("overwrite", False))
    if resume:
        cfg = resumed_settings(out, cfg, overrides)
    runfolder.check_use(runfolder.inspect(out), resume, overwrite)  # before any work
    if cfg.get("distributed"):  # one process per device: join them before JAX starts
        jax.distributed.initialize()
    if cfg.get("xla_cache") and cfg.get("cache_dir"):
        # compiled programs kept on disk: a second run of the same sizes skips compiling
        compile_cache.enable(pathlib.Path(cfg["cache_dir"]) / "xla")
    config = config_from_settings(cfg)
    n_starts = cfg.get("starts", 1)  # an old run's record may not have it
    start_configs(config, n_starts)  # a bad count is refused before any work
    series = load_series(cfg["data"], cache_dir=cfg["cache_dir"], progress=cfg["progress"])
    # the record names the files from anywhere: absolute paths
    command = [pathlib.Path(sys.argv[0]).name, *sys.argv[1:]]
    record = {"settings": absolute_paths(cfg), "command": command, "overrides": overrides,
              "cwd": os.getcwd()}  # fmt: skip
    writer = jax.process_index() == 0
    claim = runfolder.claim(out, resume=resume, overwrite=overwrite, keep=(".hydra", LOG_NAME))
    with stop_requests(), claim if writer else contextlib.nullcontext() as run:
        if writer and not resume:
            _write_hydra_record(out, cfg, overrides)
        if writer and log is not None:
            log.attach(out / LOG_NAME, append=resume)
        verb = "resuming" if resume else "reconstructing"
        print(
            f"{verb} {series.n_angles} images of {series.image_shape} px "
            f"({series.pixel_size_A:g} Å) in {config.mode} mode → {out}",
            flush=True,
        )
        run_fit = (
            reconstruct
            if n_starts == 1
            else functools.partial(reconstruct_starts, n_starts=n_starts)
        )
        result = run_fit(
            series,
            config,
            out_dir=out,
            resume=resume,
            progress=cfg["progress"],
            figures=cfg["figures"],
            max_phases=cfg["max_phases"],
            overwrite=overwrite,
            record=record,
        )
        if result.out_dir is None:  # not the writing process of a multi-process run
            return summary(result.report)
        made = [".hydra", LOG_NAME]
        if series.atoms_positions_A is not None:
            _write_truth(out / "truth.extxyz", series.atoms_positions_A, series.atoms_species)
            made.append("truth.extxyz")
        run.add_outputs(*made)
        print_summary(result.report, out, names=run.record["outputs"])
        if result.report["status"] == "interrupted":
            _print_resume_hint(result.report, out)
            if result.report["stopped_by"] != "max_phases":
                raise SystemExit(130)
    return summary(result.report)


def _print_resume_hint(report: dict[str, Any], out: pathlib.Path) -> None:
    p = report["progress"]
    where = f"after {p['phase']} of {p['n_phases']} phases"
    if p["step"]:
        where += f" and {p['step']} of {p['steps_per_phase']} steps of the next"
    atoms = out / "atoms.extxyz"
    starts = report.get("starts")
    if starts:  # several starts: the one that stopped
        from .starts import start_folder

        k = starts["best"]
        where = f"in start {k + 1} of {starts['n_starts']}, {where}"
        atoms = out / start_folder(k) / "atoms.extxyz"
    why = "as max_phases asked" if report["stopped_by"] == "max_phases" else (
        f"by {report['stopped_by']}")  # fmt: skip
    print(
        f"\nstopped {why}, {where}; the atoms so far are in {atoms}.\n"
        f"to continue:  atomjax-reconstruct resume=true hydra.run.dir={out.resolve()}",
        flush=True,
    )


def _write_truth(path: pathlib.Path, positions_A, species) -> None:
    """The series' ground truth next to the fitted atoms, for atomjax-evaluate and viewers."""
    import ase

    from .outputs import atomic_path

    n = len(positions_A)
    symbols = [str(s) for s in species] if species is not None else ["X"] * n
    atoms = ase.Atoms(symbols=symbols, positions=positions_A)
    with atomic_path(path) as tmp:
        atoms.write(tmp, format="extxyz")


def evaluate_task(
    cfg: dict[str, Any], out_dir: pathlib.Path | None = None, log=None
) -> dict[str, Any]:
    """Score ``cfg["found"]`` against ``cfg["truth"]``; print the table, write JSON."""
    from .metrics import evaluate, format_table, read_atoms

    found = pathlib.Path(cfg["found"])
    truth = cfg["truth"]
    if found.is_dir():
        truth = truth or (found / "truth.extxyz" if (found / "truth.extxyz").is_file() else None)
        found = found / "atoms.extxyz"
    if truth is None:
        raise ValueError(
            "truth must be given (a ground-truth atoms file), unless found is a run folder "
            "that holds truth.extxyz"
        )
    fpos, fsp = read_atoms(found)
    tpos, tsp = read_atoms(truth)
    both = fsp is not None and tsp is not None
    result = evaluate(
        fpos,
        tpos,
        found_species=fsp if both else None,
        truth_species=tsp if both else None,
        cutoff_A=float(cfg["cutoff_A"]),
        remove_offset=bool(cfg["remove_offset"]),
        aet_cutoff_A=float(cfg["aet_cutoff_A"]),
    )
    print(format_table(result))
    sigmas = _sigma_columns(found)
    if sigmas is not None:  # atoms with error bars: are they honest?
        from .uncertainty import calibrate, format_calibration

        result["calibration"] = calibrate(fpos, sigmas, tpos, cutoff_A=float(cfg["cutoff_A"]))
        print(format_calibration(result["calibration"]))
    if cfg["json"]:
        from .outputs import write_json

        write_json(cfg["json"], result)
        print(f"→ {cfg['json']}")
    return result


def _sigma_columns(path: pathlib.Path) -> dict[str, Any] | None:
    """The σ columns of an atoms.extxyz, or None (another format, or no columns)."""
    from .uncertainty import SIGMA_NAMES

    if path.suffix.lower() != ".extxyz":
        return None
    from .outputs import read_extxyz

    columns = read_extxyz(path)["columns"]
    return columns if all(n in columns for n in SIGMA_NAMES[:3]) else None


class SweepSummary:
    """Hydra callback: after a sweep, write ``summary.json`` and print one row per run."""

    def __getattr__(self, name):  # Hydra calls on_*_start/end; only one is used here
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_multirun_end(self, config, **kwargs) -> None:
        from .outputs import write_json
        from .pipeline import format_sweep, sweep_summary

        sweep_dir = pathlib.Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = sweep_summary(sweep_dir)
        write_json(sweep_dir / "summary.json", rows)
        print(f"\nsweep: {len(rows)} runs → {sweep_dir / 'summary.json'}")
        print(format_sweep(rows))


# -------------------------------------------------------------------- entry points


def align_task(cfg: dict[str, Any], out_dir: pathlib.Path, log=None) -> str:
    """Estimate the pre-alignment of ``cfg["data"]`` and save it (and alignment.png)."""
    import numpy as np

    from . import alignment, outputs
    from .pipeline import load_series

    series = load_series(cfg["data"], cache_dir=cfg["cache_dir"], progress=cfg["progress"])
    al = alignment.estimate(series, float(cfg["search_deg"]), float(cfg["smooth_A"]),
                            float(cfg["mask_fraction"]))  # fmt: skip
    out = pathlib.Path(cfg["out"] or pathlib.Path(out_dir) / "alignment.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    al.save(out)
    if cfg["figures"]:
        outputs.figure_alignment(out.with_suffix(".png"), series.euler_deg[:, 1], al)
    rms = np.sqrt(np.mean(al.shifts_A**2, axis=0))
    print(f"{series.n_angles} images: tilt axis {al.tilt_axis_deg:+.2f}°, shifts RMS "
          f"u {rms[0]:.2f} Å, v {rms[1]:.2f} Å → {out}\n"
          f"start a reconstruction from it with reconstruct.align={out}")  # fmt: skip
    return str(out)


def align_main() -> None:
    """``atomjax-align``: see ``conf/align.yaml``."""
    _launch("align", align_task)


def simulate_main() -> None:
    """``atomjax-simulate``: see ``conf/simulate.yaml``."""
    _launch("simulate", simulate_task)


def reconstruct_main() -> None:
    """``atomjax-reconstruct``: see ``conf/reconstruct.yaml``."""
    _launch("reconstruct", reconstruct_task)


def evaluate_main() -> None:
    """``atomjax-evaluate``: see ``conf/evaluate.yaml``."""
    _launch("evaluate", evaluate_task)
