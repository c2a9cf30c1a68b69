"""The command-line apps, driven by Hydra (configs in the repository's ``conf/``).

* ``atomjax-simulate``    — build a test particle, simulate its tilt series with abTEM;
* ``atomjax-reconstruct`` — load or simulate a series, fit the atoms, print the accuracy;
* ``atomjax-evaluate``    — score an atoms file (or a run folder) against ground truth.

Every app accepts Hydra's overrides (``mode=rigid data.particle.size_A=10``), sweeps
(``-m mode=direct,rigid,adaptive seed=0,1,2``), presets (``+experiment=modes_prism``)
and ``--cfg job`` to print its settings. Hydra stays here: the settings become plain
dicts and go to :mod:`atomjax.pipeline` and the library.
"""

from __future__ import annotations

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


def _launch(name: str, task: Callable[[dict[str, Any], pathlib.Path], Any]) -> None:
    """Run ``task(settings, output_dir)`` as a Hydra app with config ``conf/<name>.yaml``."""
    if not (CONF_DIR / f"{name}.yaml").is_file():
        sys.exit(
            f"atomjax-{name}: no configs in {CONF_DIR} — install atomjax from a clone of the "
            "repository (pip install -e .) or point ATOMJAX_CONF at its conf/ folder"
        )
    import hydra
    from omegaconf.errors import MissingMandatoryValue

    @hydra.main(config_path=str(CONF_DIR), config_name=name, version_base="1.3")
    def app(cfg):
        logging.getLogger("jax").setLevel(logging.WARNING)  # not "Unable to initialize TPU"
        try:
            return task(_plain(cfg), _output_dir())
        except MissingMandatoryValue as e:
            sys.exit(f"atomjax-{name}: error: a required setting is missing: {e.full_key}")
        except _USER_ERRORS as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"atomjax-{name}: error: {message}", file=sys.stderr)
            sys.exit(2)

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


def simulate_task(cfg: dict[str, Any], out_dir: pathlib.Path) -> str:
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


def reconstruct_task(cfg: dict[str, Any], out_dir: pathlib.Path) -> dict[str, Any]:
    """Load or simulate the series, reconstruct it into out_dir, print the accuracy."""
    from .pipeline import config_from_settings, load_series, print_summary, summary
    from .reconstruct import reconstruct

    out = pathlib.Path(out_dir)
    if cfg.get("distributed"):  # one process per device: join them before JAX starts
        import jax

        jax.distributed.initialize()
    config = config_from_settings(cfg)
    series = load_series(cfg["data"], cache_dir=cfg["cache_dir"], progress=cfg["progress"])
    print(
        f"reconstructing {series.n_angles} images of {series.image_shape} px "
        f"({series.pixel_size_A:g} Å) in {config.mode} mode → {out}"
    )
    result = reconstruct(
        series,
        config,
        out_dir=out,
        resume=cfg["resume"],
        progress=cfg["progress"],
        figures=cfg["figures"],
        max_phases=cfg["max_phases"],
    )
    if result.out_dir is None:  # not the writing process of a multi-process run
        return summary(result.report)
    if series.atoms_positions_A is not None:
        _write_truth(out / "truth.extxyz", series.atoms_positions_A, series.atoms_species)
    print_summary(result.report, out)
    return summary(result.report)


def _write_truth(path: pathlib.Path, positions_A, species) -> None:
    """The series' ground truth next to the fitted atoms, for atomjax-evaluate and viewers."""
    import ase

    from .outputs import atomic_path

    n = len(positions_A)
    symbols = [str(s) for s in species] if species is not None else ["X"] * n
    atoms = ase.Atoms(symbols=symbols, positions=positions_A)
    with atomic_path(path) as tmp:
        atoms.write(tmp, format="extxyz")


def evaluate_task(cfg: dict[str, Any], out_dir: pathlib.Path | None = None) -> dict[str, Any]:
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
    if cfg["json"]:
        from .outputs import write_json

        write_json(cfg["json"], result)
        print(f"→ {cfg['json']}")
    return result


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


def simulate_main() -> None:
    """``atomjax-simulate``: see ``conf/simulate.yaml``."""
    _launch("simulate", simulate_task)


def reconstruct_main() -> None:
    """``atomjax-reconstruct``: see ``conf/reconstruct.yaml``."""
    _launch("reconstruct", reconstruct_task)


def evaluate_main() -> None:
    """``atomjax-evaluate``: see ``conf/evaluate.yaml``."""
    _launch("evaluate", evaluate_task)
