"""Interaction modes vs particle size on PRISM HAADF tilt series (LOT Figs. 4 and 6).

For every particle radius, an Au fcc sphere (rotated off the zone axes) is simulated
once with abTEM PRISM (noise-free, cached in ``benchmarks/cache/`` by
``bench_reconstruct.make_series``); Poisson noise at the requested dose is then drawn
from the cached expected images, exactly as ``simulate_haadf(dose_e_per_A2=...)``
would draw it for the same seed. Each series is reconstructed with every interaction
mode, one after the other in the same process, and the script reports per size × mode
the matched atoms, TP/FP at 0.75 Å, RMSD (pm), the deviation distribution, the mean
R-factor, the wall time in seconds and as a ratio to direct mode of the same size, and
how much the loss still fell in the last phase (convergence).

    # simulate the series first (cached), then fit; the lock keeps benchmarks apart
    flock /tmp/atomjax_bench.lock python benchmarks/bench_modes.py --simulate-only
    flock /tmp/atomjax_bench.lock python benchmarks/bench_modes.py
    # smoke run (small particle, few steps; writes to /tmp)
    flock /tmp/atomjax_bench.lock python benchmarks/bench_modes.py --quick

Writes ``benchmarks/results_modes_size.json`` and ``benchmarks/modes_size.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import platform
import sys
import time

import jax
import numpy as np

import atomjax
from atomjax.atoms import Atoms
from atomjax.data import TiltSeries
from atomjax.geometry import rotation_matrix
from atomjax.io import load_tilt_series
from atomjax.metrics import r_factor_series
from atomjax.outputs import to_jsonable
from atomjax.problem import make_probe, make_setup
from atomjax.reconstruct import ReconstructConfig, reconstruct
from atomjax.render import render_tilt_series
from atomjax.simulate import fitted_image_shape

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_reconstruct import HERE, PROBE, make_series, metric_columns  # noqa: E402
from common import machine  # noqa: E402

MODES = ("direct", "rigid", "adaptive", "adaptive-physical")
# ablations: rigid with one slice, the in-focus probe at every depth (probe shape, no
# depth); the pixel probe without its priors (every pixel of every slice free, LOT)
EXTRA_MODES = ("rigid-flat", "adaptive-lot", "adaptive-adam")
#: the issue-18 series (benchmarks/regime/, made by make_series.py)
REGIME = HERE / "regime"
ROOT = HERE.parent


# ------------------------------------------------------------------------ series


def series_args(radius_A: float, args) -> argparse.Namespace:
    """The settings ``bench_reconstruct.make_series`` expects, for a noise-free series."""
    return argparse.Namespace(
        protocol="prism",
        element=args.element,
        radius=radius_A,
        tilts=args.tilts,
        pixel_size_A=args.pixel_size_A,
        dose_e_per_A2=0.0,
        noise_std_rel=0.0,
        seed=args.seed,
    )


def with_poisson_noise(clean: TiltSeries, dose_e_per_A2: float, seed: int) -> TiltSeries:
    """Counts ~ Poisson(clean · dose · pixel²), as ``simulate_haadf`` draws them.

    ``simulate_haadf`` (no drift) draws its noise from a fresh ``default_rng(seed)``
    applied to the clipped expected counts, so this reproduces its noisy series for the
    same seed without simulating again.
    """
    if not dose_e_per_A2:
        return clean
    counts_per_unit = dose_e_per_A2 * clean.pixel_size_A**2
    expected = np.clip(clean.images * counts_per_unit, 0.0, None)
    images = np.random.default_rng(seed).poisson(expected).astype(float)
    provenance = dict(
        clean.provenance,
        dose_e_per_A2=dose_e_per_A2,
        image_units="electron counts",
        counts_per_unit_image=counts_per_unit,
        noise_added_by="benchmarks/bench_modes.py (Poisson, from the cached expected images)",
    )
    return dataclasses.replace(
        clean, images=images, dose_e_per_A2=dose_e_per_A2, provenance=provenance
    )


def noise_summary(clean: TiltSeries, noisy: TiltSeries) -> dict:
    """How large the Poisson noise is next to the signal, in counts."""
    if noisy is clean:
        return {"dose_e_per_A2": None}
    scale = noisy.provenance["counts_per_unit_image"]
    expected = np.clip(clean.images * scale, 0.0, None)
    noise = noisy.images - expected
    signal = expected - np.median(expected[:, :3, :])  # vacuum: the top rows
    peak = float(expected.max())
    # the R-factor a perfect model reaches: the expected images against the noisy ones
    lo, hi = noisy.images.min(), noisy.images.max()
    r_truth = r_factor_series((noisy.images - lo) / (hi - lo), (expected - lo) / (hi - lo))
    return {
        "dose_e_per_A2": noisy.dose_e_per_A2,
        "r_factor_of_expected_images": r_truth.mean,
        "counts_per_unit_image": scale,
        "peak_expected_counts": peak,
        "vacuum_expected_counts": float(np.median(expected[:, :3, :])),
        "relative_noise_at_peak": 1.0 / np.sqrt(peak),
        "noise_rms_over_signal_rms": float(np.sqrt(np.mean(noise**2) / np.mean(signal**2))),
        "noise_rms_over_signal_rms_in_particle": float(
            np.sqrt(
                np.mean(noise[expected > 0.1 * peak] ** 2)
                / np.mean(signal[expected > 0.1 * peak] ** 2)
            )
        ),
    }


def load_series(radius_A: float, args) -> tuple[TiltSeries, TiltSeries, pathlib.Path, float]:
    """(clean, noisy, cache file, simulation seconds per angle) for one radius."""
    t0 = time.perf_counter()
    clean, path = make_series(series_args(radius_A, args))
    loaded_s = time.perf_counter() - t0
    sim_s = float(clean.provenance.get("seconds_per_angle") or np.nan)
    print(
        f"r = {radius_A:g} Å: {path.name}: {clean.n_angles} images {clean.image_shape}, "
        f"{len(clean.atoms_positions_A)} atoms; PRISM {sim_s:.1f} s per angle "
        f"(this call {loaded_s:.1f} s)",
        flush=True,
    )
    return clean, with_poisson_noise(clean, args.dose_e_per_A2, args.seed), path, sim_s


# ------------------------------------------------------------------------ fits


def mode_config(mode_name: str, series: TiltSeries, args) -> ReconstructConfig:
    """``adaptive-physical``: adaptive mode with the physical probe fit; ``rigid-flat``:
    rigid mode with one slice (the probe at focus convolves every atom); ``adaptive-lot``:
    the pixel probe with every slice free and uncentred (LOT's); ``adaptive-adam``: the
    pixel probe fitted with Adam on everything (the default before Levenberg–Marquardt
    steps on the atoms with Adam on the probe)."""
    mode, _, variant = mode_name.partition("-")
    lot = variant == "lot"
    return ReconstructConfig(
        mode=mode,
        probe_fit="physical" if variant == "physical" else "pixel",
        probe_depth_rank=None if lot else ReconstructConfig.probe_depth_rank,
        probe_centred=not lot,
        n_slices=1 if variant == "flat" else None,
        probe=PROBE if series.probe is None else None,
        seed=args.seed,
        optim={
            **(
                {}
                if args.phases is None
                else {"n_phases": args.phases, "steps_per_phase": args.steps}
            ),
            **({} if args.lm_probe_steps is None else {"lm_probe_steps": args.lm_probe_steps}),
            **({"method": "adam"} if variant == "adam" else {}),
        },
    )


def convergence(history: dict, steps_per_phase: int) -> dict:
    """Relative loss drop over the last phase and over its last quarter."""
    loss = np.asarray([np.nan if x is None else x for x in history["loss"]], float)
    last = loss[-steps_per_phase:]
    q = max(1, steps_per_phase // 4)
    return {
        "loss_final": float(last[-1]),
        "last_phase_rel_drop": float((last[0] - last[-1]) / last[-1]),
        "last_quarter_rel_drop": float((last[-q - 1] - last[-1]) / last[-1]),
    }


def run_one(series: TiltSeries, radius_A, mode_name: str, args) -> dict:
    """One fit; ``radius_A`` is the Au sphere's radius, or a regime series' name."""
    label = radius_A if isinstance(radius_A, str) else f"r{radius_A:g}"
    out_dir = pathlib.Path(args.runs_dir) / f"{label}_dose{args.dose_e_per_A2:g}" / mode_name
    config = mode_config(mode_name, series, args)
    t0 = time.perf_counter()
    result = reconstruct(
        series, config, out_dir=out_dir, progress=False, figures=False, overwrite=True
    )
    wall_s = time.perf_counter() - t0
    rep = result.report
    m = rep["metrics"]
    hist = m.get("deviation_histogram") or {}
    return {
        "radius_A": radius_A,
        "mode": mode_name,
        **metric_columns(m),
        "mean_deviation_pm": m["mean_deviation_pm"],
        "deviation_percentiles_pm": hist.get("percentiles_pm"),
        "deviation_histogram": {k: hist.get(k) for k in ("bin_edges_pm", "counts")},
        "r_factor": rep["r_factor"]["mean"],
        "run_time_s": rep["run_time_s"],
        "wall_s": wall_s,
        "n_slices": rep["imaging_setup"]["n_slices"],
        "convergence": convergence(rep["history"], rep["history"]["phases"][-1]["n_steps"]),
        "n_steps": sum(ph["n_steps"] for ph in rep["history"]["phases"]),
        "optimizer": rep["optimizer"],
        "predicted_rmsd_pm": (rep.get("uncertainty") or {}).get("predicted_rmsd_pm"),
        "probe": rep["probe"],
        "out_dir": str(out_dir),
    }


# ------------------------------------------------------------------------ output


def _cell(key, spec: str):
    """A table cell: ``row[key]`` (a callable: of the row) formatted by ``spec``; None → nan."""

    def cell(row):
        value = key(row) if callable(key) else row[key]
        return format(float("nan") if value is None else value, spec)

    return cell


#: (header, width with alignment, cell) per column; the rows are the benchmark's dicts
COMMON_COLUMNS = [
    ("mode", "<17", _cell("mode", "")),
    ("found", ">5", _cell("n_found", "d")),
    ("TP", ">5", _cell("tp_rate", ".3f")),
    ("FP", ">5", _cell("fp_rate", ".3f")),
    ("RMSD pm", ">7", _cell("rmsd_pm", ".2f")),
]
SIZE_COLUMNS = [
    ("r (Å)", ">5", _cell("radius_A", "g")),
    ("atoms", ">5", _cell("n_truth", "d")),
    *COMMON_COLUMNS,
    ("R", ">6", _cell("r_factor", ".3f")),
    ("time s", ">7", _cell("run_time_s", ".1f")),
    ("× dir", ">5", _cell("time_ratio_to_direct", ".2f")),
    ("last-phase drop", ">15", _cell(lambda r: r["convergence"]["last_phase_rel_drop"], ".2e")),
]
REGIME_COLUMNS = [
    ("series", "<24", _cell("series", "")),
    *COMMON_COLUMNS,
    ("σ pred", ">6", _cell("predicted_rmsd_pm", ".2f")),
    ("R", ">6", _cell("r_factor", ".3f")),
    ("time s", ">7", _cell("wall_s", ".1f")),
    ("steps", ">5", _cell("n_steps", "d")),
    ("optimizer", ">9", _cell("optimizer", "")),
]


def print_table(rows: list[dict], columns=SIZE_COLUMNS) -> None:
    head = " ".join(f"{name:{width}}" for name, width, _ in columns)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(" ".join(f"{cell(r):{width}}" for _, width, cell in columns))


def make_figure(rows: list[dict], modes: list[str], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    panels = [
        ("rmsd_pm", "RMSD (pm)"),
        ("r_factor", "R-factor (mean over images)"),
        ("time_ratio_to_direct", "wall time / direct mode"),
    ]
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        for mode in modes:
            sel = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["n_truth"])
            x = [r["n_truth"] for r in sel]
            y = [np.nan if r[key] is None else r[key] for r in sel]
            ax.plot(x, y, "o--" if mode in EXTRA_MODES else "o-", label=mode)
        ax.set_xlabel("number of atoms")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    # the counterpart of LOT Fig. 4: deviation distribution at the largest particle
    ax = axes.flat[3]
    largest = max(r["n_truth"] for r in rows)
    for mode in modes:
        for r in rows:
            if r["mode"] == mode and r["n_truth"] == largest and r["deviation_histogram"]["counts"]:
                edges = np.asarray(r["deviation_histogram"]["bin_edges_pm"])
                style = "--" if mode in EXTRA_MODES else "-"
                ax.stairs(r["deviation_histogram"]["counts"], edges, ls=style, label=mode)
    ax.set_xlim(0, 6)
    ax.set_xlabel(f"|deviation| (pm), {largest} atoms")
    ax.set_ylabel("matched atoms per 1 pm bin")
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------ main


def sources_sha256() -> str:
    """One hash over the installed atomjax sources (the package changes between runs)."""
    h = hashlib.sha256()
    for f in sorted(pathlib.Path(atomjax.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def size_record(r: float, clean: TiltSeries, noisy: TiltSeries, path, sim_s: float) -> dict:
    return {
        "radius_A": r,
        "n_atoms": len(clean.atoms_positions_A),
        "cache_file": path.name,
        "image_shape": list(clean.image_shape),
        "simulation_s_per_angle": sim_s,
        "potential_gpts": clean.provenance.get("potential_gpts"),
        "n_potential_slices": clean.provenance.get("n_slices"),
        "noise": noise_summary(clean, noisy),
    }


def merge_rows(old: dict, new_rows: list[dict], run: int) -> tuple[list[dict], list[dict]]:
    """Rows of ``new_rows`` for (radius, mode) pairs ``old`` lacks are added; the others
    (e.g. direct, re-run as this run's time reference) are returned as repeats."""
    have = {(r["radius_A"], r["mode"]) for r in old["rows"]}
    added = [r for r in new_rows if (r["radius_A"], r["mode"]) not in have]
    repeats = [r for r in new_rows if (r["radius_A"], r["mode"]) in have]
    for r in new_rows:
        r["run"] = run
    return added, repeats


def write_outputs(result: dict, out: pathlib.Path, figure: pathlib.Path, write_json=True) -> None:
    """Sort the rows, print the table, write the JSON and draw the figure."""
    order = MODES + EXTRA_MODES
    result["rows"].sort(key=lambda r: (r["radius_A"], order.index(r["mode"])))
    print()
    print_table(result["rows"])
    if write_json:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(to_jsonable(result), indent=2))
    s = result["settings"]
    title = (
        f"Au fcc spheres, PRISM HAADF, {s['tilts']}° tilts, {s['pixel_size_A']:g} Å pixels, "
        f"dose {s['dose_e_per_A2']:g} e/Å², {s['phases']}×{s['steps']} steps"
    )
    present = [m for m in order if any(r["mode"] == m for r in result["rows"])]
    make_figure(result["rows"], present, figure, title)
    print(f"wrote {out if write_json else ''} {figure}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--radii", default="6,8,10,12", help="particle radii in Å (comma list)")
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma list of " + ",".join(MODES + EXTRA_MODES) + " (direct first: time reference)",
    )
    p.add_argument("--element", default="Au")
    p.add_argument("--tilts", default="-70:70:10", help="start:stop:step in degrees")
    p.add_argument("--pixel-size-A", type=float, default=0.4)
    p.add_argument(
        "--dose-e-per-A2", type=float, default=5e4, help="per image; 0: no Poisson noise"
    )
    p.add_argument("--phases", type=int, default=None, help="default 10 (--regime: atomjax's)")
    p.add_argument("--steps", type=int, default=300, help="steps per phase (with --phases)")
    p.add_argument(
        "--lm-probe-steps",
        type=int,
        default=None,
        help="adaptive modes: Adam steps on the probe per LM step (default atomjax's; 0: Adam)",
    )
    p.add_argument(
        "--regime",
        default=None,
        help="comma list of benchmarks/regime/ series (make_series.py) instead of Au spheres; "
        "writes results_modes_regime.json (rows added to it, by series and mode)",
    )
    p.add_argument(
        "--linear",
        action="store_true",
        help="--regime: fit each series' linear twin instead (the true atoms through "
        "rigid mode's own model: the channelling-off ablation); rows named SERIES+linear",
    )
    p.add_argument(
        "--diameter-A",
        type=float,
        default=None,
        help="--linear: the particle built afresh at this diameter (rows SERIES+linear_dD)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--simulate-only", action="store_true", help="fill the cache, fit nothing")
    p.add_argument("--quick", action="store_true", help="r = 5 Å, 2 × 20 steps, output in /tmp")
    p.add_argument(
        "--append",
        action="store_true",
        help="add this run's rows to the existing --out JSON (same settings); modes already "
        "there (e.g. direct, re-run as the time reference) are kept as repeats",
    )
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results_modes_size.json)")
    p.add_argument("--figure", default=None, help="PNG (default benchmarks/modes_size.png)")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_modes"))
    p.add_argument("--replot", action="store_true", help="redraw --figure from --out; no fits")
    args = p.parse_args(argv)
    if args.diameter_A is not None and not (args.regime and args.linear):
        p.error("--diameter-A goes with --regime and --linear")
    if args.regime:
        return run_regime(args, argv)
    if args.phases is None:
        args.phases = 10
    if args.quick:
        args.radii, args.phases, args.steps = "5", 2, 20
        args.runs_dir = "/tmp/atomjax_bench_modes_quick/runs"
    default_dir = pathlib.Path("/tmp/atomjax_bench_modes_quick") if args.quick else HERE
    out = pathlib.Path(args.out or default_dir / "results_modes_size.json")
    figure = pathlib.Path(args.figure or default_dir / "modes_size.png")
    radii = [float(r) for r in args.radii.split(",")]
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES + EXTRA_MODES:
            p.error(f"unknown mode {mode!r}; choose from {MODES + EXTRA_MODES}")
    if args.replot:
        write_outputs(json.loads(out.read_text()), out, figure, write_json=False)
        return
    old = json.loads(out.read_text()) if args.append else None
    if old is not None:
        for key in ("tilts", "pixel_size_A", "dose_e_per_A2", "phases", "steps", "seed"):
            if old["settings"][key] != getattr(args, key):
                p.error(f"--append: {key} {getattr(args, key)} differs from {out}'s")

    series = {r: load_series(r, args) for r in radii}
    if args.simulate_only:
        return
    run = len(old["runs"]) if old else 0
    run_record = {
        "run": run,
        "command": " ".join(["python", "benchmarks/bench_modes.py", *(argv or sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jax_devices": [str(d) for d in jax.devices()],
        },
        "modes": modes,
        "atomjax_sources_sha256": sources_sha256(),
    }
    t_start = time.perf_counter()
    rows, sizes = [], []
    for r in radii:
        clean, noisy, path, sim_s = series[r]
        sizes.append(size_record(r, clean, noisy, path, sim_s))
        print(f"noise at r = {r:g} Å: {sizes[-1]['noise']}", flush=True)
        direct_s = None
        for mode in modes:
            row = run_one(noisy, r, mode, args)
            if mode == "direct":
                direct_s = row["run_time_s"]
            row["time_ratio_to_direct"] = row["run_time_s"] / direct_s if direct_s else None
            row["time_ratio_reference_run"] = run if direct_s else None
            rows.append(row)
            print(
                f"  {mode:17s} found {row['n_found']}/{row['n_truth']} TP {row['tp_rate']:.3f} "
                f"RMSD {row['rmsd_pm'] or float('nan'):.2f} pm R {row['r_factor']:.4f} "
                f"{row['run_time_s']:.1f} s; last-phase loss drop "
                f"{row['convergence']['last_phase_rel_drop']:.1e}",
                flush=True,
            )
    run_record["fit_total_s"] = time.perf_counter() - t_start
    if old is not None:
        added, repeats = merge_rows(old, rows, run)
        run_record["repeated_rows"] = repeats
        old["runs"].append(run_record)
        old["rows"].extend(added)
        result = old
    else:
        for row in rows:
            row["run"] = 0
        probe = clean.provenance
        result = {
            "benchmark": "interaction modes vs particle size (PRISM HAADF)",
            "settings": {
                **{k: v for k, v in vars(args).items() if k not in ("runs_dir", "append")},
                "probe": PROBE,
                "detector_mrad": probe.get("detector_mrad"),
                "potential_sampling_A": probe.get("potential_sampling_A"),
                "simulation_slice_thickness_A": probe.get("slice_thickness_A"),
                "simulation_method": probe.get("method"),
                "abtem_version": probe.get("abtem_version"),
                "match_cutoff_A": 0.75,
            },
            "runs": [run_record],
            "sizes": sizes,
            "rows": rows,
        }
    write_outputs(result, out, figure)
    print(f"fits: {run_record['fit_total_s']:.0f} s")


# ------------------------------------------------------------------------ regime


def phonon_floor_pm(series: TiltSeries) -> float | None:
    """The RMSD that one frozen-phonon configuration per image leaves with perfect data.

    Image j sees atom i displaced by δ_ij ~ N(0, σ²) per direction; the least-squares
    position from the projections P_j (the first two rows of R_j) then errs by
    σ² (Σ_j P_jᵀ P_j)⁻¹ (P_jᵀP_j is a projector), so the 3D RMSD is
    σ · sqrt(trace((Σ_j P_jᵀ P_j)⁻¹)) — σ the species' rms displacement (the mean over
    the atoms of σ², for mixed species). None for a static lattice.
    """
    prov = series.provenance
    if not prov.get("frozen_phonons"):
        return None
    sigma = prov["phonon_sigma_A"]
    var = float(np.mean([sigma[str(s)] ** 2 for s in series.atoms_species]))
    rot = np.asarray(rotation_matrix(np.deg2rad(series.euler_deg)), float)
    normal = np.einsum("jai,jak->ik", rot[:, :2, :], rot[:, :2, :])
    configs = int(prov["frozen_phonons"])  # the image is the mean of this many
    return float(100 * np.sqrt(var / configs * np.trace(np.linalg.inv(normal))))


def load_regime(
    name: str, dose_e_per_A2: float, seed: int, linear: bool = False, diameter_A=None
) -> tuple[TiltSeries, TiltSeries]:
    """(expected, noisy) images of a committed regime series (or of its
    :func:`linear_twin`, at ``diameter_A``: :func:`scaled_twin`), Poisson counts at the
    dose."""
    path = REGIME / f"{name}.npz"
    if not path.is_file():
        raise SystemExit(f"no regime series {path}; run benchmarks/regime/make_series.py")
    clean = load_tilt_series(path)
    clean = dataclasses.replace(clean, images=clean.images.astype(float))
    if linear:
        clean = linear_twin(clean) if diameter_A is None else scaled_twin(name, clean, diameter_A)
        print(f"{name}{TWIN_SUFFIX}: {clean.provenance['linear_twin']}", flush=True)
    return clean, with_poisson_noise(clean, dose_e_per_A2, seed)


#: a regime series' linear twin is named like this (``--linear``)
TWIN_SUFFIX = "+linear"
#: the atom widths (Å²) a linear twin tries; the best fits the PRISM images
TWIN_WIDTHS_A2 = (0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)


def species_images(series: TiltSeries, names: list[str], width_A2: float):
    """(pixels, species) images of ``series``' true atoms of each species (amplitude 1,
    width ``width_A2``) through rigid mode's model, and its number of slices."""
    config = ReconstructConfig(mode="rigid", probe=PROBE if series.probe is None else None)
    setup = make_setup(series, config)
    probe = make_probe(series, config, setup)
    species = np.asarray(series.atoms_species)
    columns = [
        np.asarray(render_tilt_series(
            Atoms.create(series.atoms_positions_A[species == name], width_A2, 1.0),
            series.euler_deg, setup, probe, series.drift_A)).ravel()
        for name in names
    ]  # fmt: skip
    return np.stack(columns, axis=1), setup.n_slices


def linear_twin(clean: TiltSeries, widths_A2=TWIN_WIDTHS_A2) -> TiltSeries:
    """The series that rigid mode models exactly: the true atoms rendered by atomjax's
    depth-dependent incoherent model (the series' probe, the rigid fit's slices), with
    one width (the best of ``widths_A2``) and one amplitude per species fitted by least
    squares to ``clean``'s images.

    What sets ``clean`` apart from its twin is what that model leaves out: channelling,
    cross-talk between columns, the sub-linear growth with thickness. The R-factor of the
    twin against ``clean`` (``provenance["linear_twin"]["r_factor_against_prism"]``)
    measures it; the twin has no phonons, hence no phonon floor.
    """
    names = sorted(set(np.asarray(clean.atoms_species).tolist()))
    observed = np.asarray(clean.images, float).ravel()
    best = None
    for width in widths_A2:
        columns, n_slices = species_images(clean, names, width)
        coef = np.linalg.lstsq(columns, observed, rcond=None)[0]
        cost = float(np.sum((observed - columns @ coef) ** 2))
        if best is None or cost < best[0]:
            best = (cost, width, coef, columns @ coef)
    _, width, coef, model = best
    images = model.reshape(clean.images.shape)
    r = r_factor_series(clean.images, images).mean
    twin = {"width_A2": float(width), "amplitudes": dict(zip(names, map(float, coef), strict=True)),
            "n_slices": n_slices, "r_factor_against_prism": float(r)}  # fmt: skip
    provenance = dict(clean.provenance, linear_twin=twin, frozen_phonons=None)
    return dataclasses.replace(clean, images=images, provenance=provenance)


def scaled_twin(name: str, clean: TiltSeries, diameter_A: float) -> TiltSeries:
    """The linear twin of series ``name`` (``clean``) with its particle built afresh at
    ``diameter_A`` by ``make_series.build`` (the same kind, orientation rule and seed),
    seen at the same tilts, probe, pixels and margin, with the twin's width and
    amplitudes: sizes PRISM does not reach on this machine."""
    sys.path.insert(0, str(REGIME))
    import make_series

    info = linear_twin(clean).provenance["linear_twin"]
    entry = {**next(e for e in make_series.entries() if e["name"] == name),
             "diameter_A": float(diameter_A)}  # fmt: skip
    atoms = make_series.build(entry)
    pos = atoms.positions  # about the rotation centre, as simulate_haadf takes them
    shape = fitted_image_shape(pos, clean.euler_deg, clean.pixel_size_A,
                               clean.provenance["margin_A"])  # fmt: skip
    species = np.asarray(atoms.get_chemical_symbols())
    names = sorted(info["amplitudes"])
    if set(species.tolist()) != set(names):
        raise SystemExit(f"{name}: the scaled particle's species differ from the series'")
    big = dataclasses.replace(
        clean, images=np.zeros((clean.n_angles, *shape)), atoms_positions_A=pos,
        atoms_species=species, drift_A=None,
    )  # fmt: skip
    columns, n_slices = species_images(big, names, info["width_A2"])
    images = (columns @ np.array([info["amplitudes"][n] for n in names])).reshape(big.images.shape)
    twin = {**info, "n_slices": n_slices, "r_factor_against_prism": None,
            "scaled_from": name, "diameter_A": float(diameter_A)}  # fmt: skip
    provenance = dict(clean.provenance, regime_entry=entry, linear_twin=twin,
                      frozen_phonons=None, image_shape=list(shape), n_atoms=len(pos))  # fmt: skip
    return dataclasses.replace(big, images=images, provenance=provenance)


def regime_record(name: str, clean: TiltSeries, noisy: TiltSeries) -> dict:
    prov = clean.provenance
    entry = prov.get("regime_entry", {})
    return {
        "series": name,
        "n_atoms": len(clean.atoms_positions_A),
        "diameter_A": entry.get("diameter_A"),
        "semiangle_mrad": clean.probe.semiangle_mrad,
        "frozen_phonons": prov.get("frozen_phonons"),
        "off_zone": entry.get("off_zone", True),
        "n_angles": clean.n_angles,
        "image_shape": list(clean.image_shape),
        "thickness_A": float(np.ptp(clean.atoms_positions_A, axis=0).max()),
        "detector_mrad": prov.get("detector_mrad"),
        "simulation_s_per_angle": prov.get("seconds_per_angle"),
        "phonon_floor_pm": phonon_floor_pm(clean),
        "noise": noise_summary(clean, noisy),
    }


def _regime_panel(ax, rows, sizes, modes) -> None:
    """RMSD bars per series and mode, with the rigid CRB and its sum with the phonon floor."""
    names = [s["series"] for s in sizes]
    x = np.arange(len(names))
    width = 0.8 / max(1, len(modes))

    def value(key, name, mode):
        found = (r[key] for r in rows if r["series"] == name and r["mode"] == mode)
        return next((np.nan if v is None else v for v in found), np.nan)

    for i, mode in enumerate(modes):
        y = [value("rmsd_pm", n, mode) for n in names]
        ax.bar(x + (i - (len(modes) - 1) / 2) * width, y, width, label=mode, color=f"C{i}")
    floor = np.array([value("predicted_rmsd_pm", n, "rigid") for n in names])
    ax.plot(x, floor, "k_", ms=30, mew=2, label="rigid CRB (predicted σ)")
    phonon = np.array([s["phonon_floor_pm"] or np.nan for s in sizes])
    ax.plot(x, np.hypot(floor, phonon), "r_", ms=30, mew=2, label="CRB ⊕ one-phonon floor")
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("RMSD (pm)")
    ax.grid(alpha=0.3, axis="y")


def regime_figure(result: dict, path: pathlib.Path) -> None:
    """PRISM series on the left; their linear twins (``--linear``), on their own
    scale, on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    modes = [m for m in MODES + EXTRA_MODES if any(r["mode"] == m for r in rows)]
    sizes = sorted(result["sizes"], key=lambda s: (s["series"][:2], s["n_atoms"], s["series"]))
    prism = [s for s in sizes if TWIN_SUFFIX not in s["series"]]  # Pt, then Si; by size
    twins = [s for s in sizes if TWIN_SUFFIX in s["series"]]
    dose = result["settings"]["dose_e_per_A2"]
    panels = [
        (group, title)
        for group, title in (
            (prism, f"PRISM HAADF with frozen phonons, dose {dose:g} e/Å²"),
            (twins, "linear twins: rigid mode's own model (no channelling, no phonons)"),
        )
        if group
    ]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.1 * sum(len(g) for g, _ in panels) + 4.5, 4.8),
        squeeze=False, gridspec_kw={"width_ratios": [max(2, len(g)) for g, _ in panels]},
    )  # fmt: skip
    for ax, (group, title) in zip(axes[0], panels, strict=True):
        _regime_panel(ax, rows, group, modes)
        ax.set_title(title, fontsize=9)
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_regime(args, argv) -> None:
    """Every mode on the named regime series; rows merged into the JSON by (series, mode)."""
    out = pathlib.Path(args.out or HERE / "results_modes_regime.json")
    figure = pathlib.Path(args.figure or HERE / "modes_regime.png")
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES + EXTRA_MODES:
            raise SystemExit(f"unknown mode {mode!r}; choose from {MODES + EXTRA_MODES}")
    result = json.loads(out.read_text()) if out.exists() else None
    if args.replot and result is not None:  # refresh the analytic floors, redraw
        for size in result["sizes"]:
            if TWIN_SUFFIX in size["series"]:
                continue  # no phonons
            size["phonon_floor_pm"] = phonon_floor_pm(
                load_tilt_series(REGIME / f"{size['series']}.npz")
            )
        out.write_text(json.dumps(to_jsonable(result), indent=2))
        print_table(result["rows"], REGIME_COLUMNS)
        regime_figure(result, figure)
        return
    if result is None:
        result = {
            "benchmark": "interaction modes in the regime (issue 18): PRISM HAADF, frozen phonons",
            "settings": {"dose_e_per_A2": args.dose_e_per_A2, "seed": args.seed,
                         "match_cutoff_A": 0.75, "optim": "atomjax defaults"
                         if args.phases is None else {"n_phases": args.phases,
                                                      "steps_per_phase": args.steps}},
            "runs": [], "sizes": [], "rows": [],
        }  # fmt: skip
    elif result["settings"]["dose_e_per_A2"] != args.dose_e_per_A2:
        raise SystemExit(f"{out} was made at another dose; give --out")
    run = len(result["runs"])
    result["runs"].append({
        "run": run,
        "command": " ".join(["python", "benchmarks/bench_modes.py", *(argv or sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": machine(),
        "atomjax_sources_sha256": sources_sha256(),
    })  # fmt: skip
    for name in args.regime.split(","):
        clean, noisy = load_regime(name, args.dose_e_per_A2, args.seed, args.linear,
                                   args.diameter_A)  # fmt: skip
        name += (TWIN_SUFFIX if args.linear else "") + (
            f"_d{args.diameter_A:g}" if args.diameter_A else ""
        )
        record = regime_record(name, clean, noisy)
        result["sizes"] = [s for s in result["sizes"] if s["series"] != name] + [record]
        print(f"{name}: {record['n_atoms']} atoms, {record['semiangle_mrad']:g} mrad", flush=True)
        for mode in modes:
            row = run_one(noisy, name, mode, args)
            row.update(series=name, run=run, radius_A=None)
            result["rows"] = [
                r for r in result["rows"] if (r["series"], r["mode"]) != (name, mode)
            ] + [row]
            print_table([row], REGIME_COLUMNS)
            out.write_text(json.dumps(to_jsonable(result), indent=2))
    order = MODES + EXTRA_MODES
    names = [s["series"] for s in result["sizes"]]
    result["rows"].sort(key=lambda r: (names.index(r["series"]), order.index(r["mode"])))
    out.write_text(json.dumps(to_jsonable(result), indent=2))
    print()
    print_table(result["rows"], REGIME_COLUMNS)
    regime_figure(result, figure)
    print(f"wrote {out} {figure}")


if __name__ == "__main__":
    main()
