"""Are the per-atom error bars honest? z-scores of the actual errors over the predicted σ.

On simulated series with known truth, atomjax (default settings, plus the Poisson loss
for counts) reports each atom's σx, σy, σz (:mod:`atomjax.uncertainty`); here they
meet the actual errors of the matched atoms:

* **z_std**: the standard deviation of error / σ per axis (1 when σ is honest; the
  target is 0.8–1.25);
* **within 1σ / 2σ**: the share of |z| below 1 and 2 over all axes (68 % and 95 %);
* **RMSD / predicted**: the actual RMSD over sqrt(mean(σx² + σy² + σz²)): above 1 when
  the fit has not reached the bound (model error, a missed neighbour, too few steps).

Cases: a 249-atom Au particle (fast protocol, 5 % Gaussian noise), an amorphous Si
particle at two Poisson doses (about 40 and 4 counts at the brightest pixel), a Ni/Pd/Pt
random alloy (5 % Gaussian noise), and, when ``../shared/data`` holds it, aSi_208: the
preset's fit, and the summed position variance with widths, amplitudes and background
held known, next to the Cramér–Rao bound of ``bench_asi_208.py --crb`` (9.13 pm).

    flock /tmp/atomjax_bench.lock python benchmarks/bench_uncertainty.py \\
        --json benchmarks/results_uncertainty.json          # ~6 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_settings_option,
    add_starts_option,
    deep_merge,
    fit,
    machine,
    over_seeds,
    parse_seeds,
    parse_settings,
)

HERE = pathlib.Path(__file__).resolve().parent
CACHE = HERE / "cache"

#: name: (data settings, ReconstructConfig overrides)
CASES = {
    "au249_gauss": (
        {"particle": {"kind": "fcc", "element": "Au", "size_A": 10.0}, "tilts": "-70:70:3",
         "pixel_size_A": 0.25, "noise_std_rel": 0.05},
        {},
    ),
    "si_dose250": (
        {"particle": {"kind": "amorphous", "element": "Si", "size_A": 10.0},
         "tilts": "-70:70:3", "pixel_size_A": 0.4, "dose_e_per_A2": 250.0},
        {"optim": {"loss": "poisson"}},
    ),
    "si_low_dose": (
        {"particle": {"kind": "amorphous", "element": "Si", "size_A": 10.0},
         "tilts": "-70:70:3", "pixel_size_A": 0.4, "dose_e_per_A2": 25.0},
        {"optim": {"loss": "poisson"}},
    ),
    "nipdpt_gauss": (
        {"particle": {"kind": "alloy", "element": "Ni,Pd,Pt", "size_A": 10.0},
         "tilts": "-70:70:3", "pixel_size_A": 0.25, "noise_std_rel": 0.05},
        {},
    ),
}  # fmt: skip


#: the figures summarised over seeds
SEED_FIELDS = ("rmsd_pm", "predicted_rmsd_pm", "z_std_min", "z_std_max", "within_1sigma",
               "rmsd_over_sigma")  # fmt: skip


def run_case(name: str, data: dict, overrides: dict, seed: int, n_starts: int = 1,
             settings: dict | None = None) -> dict:  # fmt: skip
    """atomjax on case ``name`` simulated with ``seed``, its σ calibrated against the
    truth; ``settings``: ReconstructConfig values merged over the case's own."""
    from atomjax import pipeline
    from atomjax.reconstruct import ReconstructConfig

    series = pipeline.load_series({"kind": "simulated", "seed": seed, **data}, cache_dir=CACHE,
                                  progress=False)  # fmt: skip
    t0 = time.perf_counter()
    result = fit(series, ReconstructConfig(**deep_merge(overrides, settings or {})), n_starts)
    seconds = time.perf_counter() - t0
    rep = result.report
    u = rep["uncertainty"]
    row = {
        "case": name,
        "n_truth": rep["metrics"]["n_truth"],
        "n_matched": rep["metrics"]["n_matched"],
        "rmsd_pm": rep["metrics"]["rmsd_pm"],
        "predicted_rmsd_pm": u["predicted_rmsd_pm"],
        "sigma_median_pm": [u[f"sigma_{a}_pm"]["median"] for a in "xyz"],
        "noise_model": u["noise_model"],
        **u["calibration"],
        "uncertainty_s": u["seconds"],
        "seconds": seconds,
        "seed": seed,
        "n_starts": n_starts,
    }
    stat = u.get("statistical")
    if stat:  # several starts: the winner's own σ, before the search's error is added
        row["statistical"] = {"predicted_rmsd_pm": stat.get("predicted_rmsd_pm"),
                              **(stat.get("calibration") or {})}  # fmt: skip
    if "z_std" in row:  # the axes at the ends of the 0.8–1.25 target, for summaries
        row["z_std_min"], row["z_std_max"] = min(row["z_std"]), max(row["z_std"])
    print(f"{name} (seed {seed}): {format_row(row)}", flush=True)
    return row


def asi_208(data_root: pathlib.Path) -> dict:
    """aSi_208: the preset's fit and its σ, and the positions-only summed variance."""
    import bench_asi_208 as asi

    from atomjax import uncertainty
    from atomjax.problem import make_setup, observed_images

    args = asi.parse_args(["--data-root", str(data_root)])
    run = asi.run_variant("mse", [], args, HERE / "cache" / "uncertainty_asi_208")
    result, series, config = run["result"], run["series"], run["config"]
    from atomjax import io

    truth = io.load_dataset("aSi_208", data_root).atoms_positions_A
    setup = make_setup(series, config)
    observed = np.asarray(observed_images(series, config))
    import jax.numpy as jnp

    euler = jnp.asarray(series.euler_rad)
    full = uncertainty.atom_sigmas(result.params, observed, None, euler, setup)
    xyz_only = uncertainty.atom_sigmas(result.params, observed, None, euler, setup,
                                       known=("widths", "amplitudes", "background"))  # fmt: skip
    cal = uncertainty.calibrate(result.positions_A, full, truth)
    row = {
        "case": "aSi_208",
        "n_truth": len(truth),
        "n_matched": cal.get("n"),
        "rmsd_pm": asi.scores(result.positions_A, truth)["rmsd_pm"],
        "predicted_rmsd_pm": uncertainty.summary(full)["predicted_rmsd_pm"],
        "positions_only_rmsd_pm": uncertainty.summary(xyz_only)["predicted_rmsd_pm"],
        "noise_model": full["noise"],
        **cal,
        "seconds": run["seconds"],
    }
    crb_file = HERE / "results_asi_208.json"
    if crb_file.is_file():
        crb = json.loads(crb_file.read_text()).get("cramer_rao")
        if crb:
            row["crb_rmsd_pm"] = crb["rmsd_pm"]
            row["positions_only_over_crb_variance"] = (
                row["positions_only_rmsd_pm"] / crb["rmsd_pm"]
            ) ** 2
    print(f"aSi_208: {format_row(row)}; positions only {row['positions_only_rmsd_pm']:.2f} pm"
          f" (CRB {row.get('crb_rmsd_pm', float('nan')):.2f})", flush=True)  # fmt: skip
    return row


def format_row(r: dict) -> str:
    if "z_std" not in r:
        return f"{r.get('n_matched')} matched: too few for a calibration"
    zs = "/".join(f"{z:.2f}" for z in r["z_std"])
    return (f"{r['n_matched']}/{r['n_truth']} matched, RMSD {r['rmsd_pm']:.2f} pm, predicted "
            f"{r['predicted_rmsd_pm']:.2f} pm, z std x/y/z {zs}, within 1σ "
            f"{100 * r['within_1sigma']:.0f} %, 2σ {100 * r['within_2sigma']:.0f} %")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated names")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds, each its own simulated series; with "
                        "several, the mean and range of each figure over them")  # fmt: skip
    parser.add_argument("--data-root", type=pathlib.Path,
                        default=HERE.parents[1] / "shared" / "data")  # fmt: skip
    parser.add_argument("--no-asi", action="store_true", help="skip aSi_208")
    add_starts_option(parser)
    add_settings_option(parser)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds, parser)
    settings = parse_settings(args.settings, parser)
    names = [n for n in args.cases.split(",") if n]
    for n in names:
        if n not in CASES:
            parser.error(f"unknown case {n!r}; known: {', '.join(CASES)}")
    rows = [run_case(n, *CASES[n], seed, args.starts, settings) for n in names for seed in seeds]
    if not args.no_asi and (args.data_root / "aSi_208").is_dir():
        rows.append(asi_208(args.data_root.resolve()))
    print()
    print(f"{'case':<14}{'matched':>9}{'RMSD pm':>9}{'pred. pm':>9}  {'z std x / y / z':<18}"
          f"{'≤1σ':>6}{'≤2σ':>6}{'RMSD/pred':>10}")  # fmt: skip
    for r in rows:
        if "z_std" not in r:
            continue
        zs = " / ".join(f"{z:.2f}" for z in r["z_std"])
        print(f"{r['case']:<14}{r['n_matched']:>9}{r['rmsd_pm']:>9.2f}"
              f"{r['predicted_rmsd_pm']:>9.2f}  {zs:<18}{100 * r['within_1sigma']:>5.0f}%"
              f"{100 * r['within_2sigma']:>5.0f}%{r['rmsd_over_sigma']:>10.2f}")  # fmt: skip
    spread = None
    if len(seeds) > 1:
        spread = over_seeds([r for r in rows if "seed" in r], SEED_FIELDS, by=("case",))
        print(f"\nover the seeds {seeds}: mean [min – max]")
        for r in spread:
            print(f"{r['case']:<14}" + "  ".join(
                f"{k} {r[k]['mean']:.2f} [{r[k]['min']:.2f}–{r[k]['max']:.2f}]"
                for k in SEED_FIELDS if r[k] is not None), flush=True)  # fmt: skip
    if args.json:
        from atomjax.outputs import write_json

        write_json(args.json, {"benchmark": "per-atom uncertainty", "machine": machine(),
                               "date": time.strftime("%Y-%m-%d"), "seeds": seeds,
                               "n_starts": args.starts, "atomjax_settings": settings,
                               "rows": rows, "over_seeds": spread})  # fmt: skip
        print(f"→ {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
