"""Reconstruction accuracy on simulated particles: interaction modes, initialisations, merge rules.

Simulates (and caches) an abTEM tilt series of an Au particle — the fast protocol
(projected potential + 0.5 Å blur, optional noise) or a physical one (PRISM HAADF) —
then reconstructs it with every combination of the requested settings and reports
matched atoms, TP/FP at 0.75 Å, RMSD (pm), R-factor and wall time, as a table and
as JSON.

    python benchmarks/bench_reconstruct.py --protocol fast --radius 10 --tilts lot
    python benchmarks/bench_reconstruct.py --inits peaks,grid,random
    python benchmarks/bench_reconstruct.py --protocol prism --modes direct,rigid,adaptive
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import platform
import time

from atomjax import io, simulate, structures
from atomjax.outputs import to_jsonable
from atomjax.probe import ProbeSettings
from atomjax.reconstruct import ReconstructConfig, reconstruct

HERE = pathlib.Path(__file__).resolve().parent
PROBE = {"energy_eV": 300e3, "semiangle_mrad": 25.0}


def metric_columns(metrics: dict) -> dict:
    """The accuracy columns every benchmark table reports, from report["metrics"]."""
    keys = ("n_truth", "n_found", "n_matched", "tp_rate", "fp_rate", "rmsd_pm")
    return {
        **{k: metrics[k] for k in keys},
        "aet_rmsd_pm": (metrics.get("aet_score") or {}).get("rmsd_pm"),
    }


def make_series(args) -> tuple[object, pathlib.Path]:
    cache = HERE / "cache"
    cache.mkdir(exist_ok=True)
    tag = (
        f"{args.protocol}_{args.element}_r{args.radius:g}_{args.tilts}_px{args.pixel_size_A:g}"
        f"_dose{args.dose_e_per_A2:g}_noise{args.noise_std_rel:g}_s{args.seed}"
    ).replace(":", "_")
    path = cache / f"{tag}.npz"
    if path.is_file():
        return io.load_tilt_series(path), path
    particle = structures.rotate_off_zone_axes(
        structures.fcc_sphere(args.element, args.radius), seed=args.seed
    )
    angles = simulate.parse_tilts(args.tilts)
    dose = args.dose_e_per_A2 or None
    if args.protocol == "fast":
        series = simulate.simulate_fast(
            particle, angles, pixel_size_A=args.pixel_size_A, dose_e_per_A2=dose,
            noise_std_rel=args.noise_std_rel, seed=args.seed,
        )  # fmt: skip
    else:
        series = simulate.simulate_haadf(
            particle, angles, probe=ProbeSettings(**PROBE), scan_pixel_size_A=args.pixel_size_A,
            dose_e_per_A2=dose, seed=args.seed,
        )  # fmt: skip
    io.save_tilt_series(series, path)
    return series, path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=("fast", "prism"), default="fast")
    p.add_argument("--element", default="Au")
    p.add_argument("--radius", type=float, default=10.0, help="particle radius in Å")
    p.add_argument("--tilts", default="-70:70:5", help="preset or start:stop:step (degrees)")
    p.add_argument("--pixel-size-A", type=float, default=0.25)
    p.add_argument("--dose-e-per-A2", type=float, default=0.0, help="0: no Poisson noise")
    p.add_argument("--noise-std-rel", type=float, default=0.0)
    p.add_argument(
        "--modes", default="direct", help="direct,rigid,adaptive,adaptive-physical (comma list)"
    )
    p.add_argument("--inits", default="peaks")
    p.add_argument("--merge", default="sum", help="amplitude rules to compare: sum,mean")
    p.add_argument("--phases", type=int, default=6)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-angles", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results_reconstruct.json"))
    args = p.parse_args(argv)

    series, path = make_series(args)
    print(f"series: {path.name}: {series.n_angles} images {series.image_shape}, "
          f"{len(series.atoms_positions_A)} atoms")  # fmt: skip
    rows = []
    combos = itertools.product(args.modes.split(","), args.inits.split(","), args.merge.split(","))
    for mode_name, init_method, rule in combos:
        # "adaptive-physical": adaptive mode fitting the aberrations and a focus per image
        mode, _, probe_fit = mode_name.partition("-")
        config = ReconstructConfig(
            mode=mode,
            probe_fit=probe_fit or "pixel",
            probe=PROBE if series.probe is None else None,
            seed=args.seed,
            init={"method": init_method},
            adapt={"amplitude_rule": rule},
            optim={
                "n_phases": args.phases,
                "steps_per_phase": args.steps,
                "batch_angles": args.batch_angles or None,
            },
        )
        t0 = time.perf_counter()
        result = reconstruct(series, config, progress=False, figures=False)
        wall = time.perf_counter() - t0
        m = result.report["metrics"]
        row = {
            "mode": mode_name,
            "init": init_method,
            "merge": rule,
            **metric_columns(m),
            "r_factor": result.report["r_factor"]["mean"],
            "wall_s": wall,
            "phases": result.report["history"]["phases"],
        }
        rows.append(row)
        print(
            f"{mode_name:17s} {init_method:7s} {rule:5s} found {m['n_found']:4d}/{m['n_truth']:4d} "
            f"TP {m['tp_rate']:.3f} FP {m['fp_rate']:.3f} "
            f"RMSD {m['rmsd_pm'] or float('nan'):6.2f} pm "
            f"R {row['r_factor']:.4f} {wall:6.1f} s",
            flush=True,
        )
    result = {
        "series": {"file": path.name, "n_angles": series.n_angles,
                   "image_shape": list(series.image_shape), "provenance": series.provenance},
        "args": vars(args),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "rows": rows,
    }  # fmt: skip
    pathlib.Path(args.out).write_text(json.dumps(to_jsonable(result), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
