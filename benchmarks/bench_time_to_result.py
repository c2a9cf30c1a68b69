"""Time to result: atomjax (default settings) next to FBP and SART + atom tracing.

The same simulated images go to three methods, in one run on one machine:

* **fbp**: scikit-image ``iradon`` (ramp filter) per y-plane, then the atom tracing of
  ``bench_missing_wedge.py`` (local maxima, 2 Å greedy separation, Otsu's threshold,
  sub-voxel refinement), both in :mod:`common`;
* **sart**: scikit-image ``iradon_sart``, 3 sweeps, the same tracing;
* **atomjax**: :func:`atomjax.reconstruct` with its defaults, compilation included
  (a cold start: JAX's compilation cache is emptied first);
* **atomjax+**: the same run again after ``jax.clear_caches()``, its compiled programs
  loaded from the on-disk cache (:mod:`atomjax.compile_cache`) as a second run of the
  same sizes does (``atomjax-reconstruct`` keeps them in ``<cache_dir>/xla``).

Each row: matched atoms (one-to-one within 0.75 Å), TP/FP, RMSD, wall time.

    python benchmarks/bench_time_to_result.py --quick              # smoke run, ~2 min
    flock /tmp/atomjax_bench.lock python benchmarks/bench_time_to_result.py \\
        --json benchmarks/results_time_to_result.json             # the table

Series are simulated once with abTEM (fast protocol: projected potential + 0.5 Å blur +
5 % Gaussian noise) and cached in ``benchmarks/cache/``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_settings_option,
    fbp_volume,
    machine,
    parse_settings,
    sart_volume,
    score,
    single_axis_tilts_deg,
    trace_atoms,
)

HERE = pathlib.Path(__file__).resolve().parent
CACHE = HERE / "cache"

#: name: (particle, tilts, pixel Å) — about 250, 400, 1,000, 5,000 and 20,000 atoms
CASES = {
    "au249": ({"kind": "fcc", "element": "Au", "size_A": 10.0}, "-70:70:3", 0.25),
    "pt428": ({"kind": "decahedron", "element": "Pt", "size_A": 16.0}, "-70:70:4", 0.25),
    "au959": ({"kind": "fcc", "element": "Au", "size_A": 16.0}, "-70:70:3", 0.25),
    "si5k": ({"kind": "amorphous", "element": "Si", "size_A": 27.0}, "-70:70:2.4", 0.4),
    "si20k": ({"kind": "amorphous", "element": "Si", "size_A": 45.0}, "-70:70:2.4", 0.5),
}
QUICK = {"au55": ({"kind": "fcc", "element": "Au", "size_A": 6.0}, "-70:70:10", 0.3)}


def load(name: str, spec, noise: float, seed: int):
    from atomjax import pipeline

    particle, tilts, pixel = spec
    data = {"kind": "simulated", "particle": particle, "tilts": tilts, "pixel_size_A": pixel,
            "noise_std_rel": noise, "seed": seed}  # fmt: skip
    t0 = time.perf_counter()
    series = pipeline.load_series(data, cache_dir=CACHE, progress=False)
    print(f"{name}: {len(series.atoms_positions_A)} atoms, {series.n_angles} images "
          f"{series.image_shape} at {pixel} Å ({time.perf_counter() - t0:.0f} s to load)",
          flush=True)  # fmt: skip
    return series


def run_voxels(method: str, series, sart_iterations: int) -> dict:
    tilts = single_axis_tilts_deg(series.euler_deg)
    t0 = time.perf_counter()
    if method == "fbp":
        volume = fbp_volume(series.images, tilts)
    else:
        volume = sart_volume(series.images, tilts, n_iter=sart_iterations)
    found, _ = trace_atoms(volume, series.pixel_size_A)
    return {"positions_A": found, "seconds": time.perf_counter() - t0}


def run_atomjax(series, settings: dict | None = None) -> dict:
    import jax

    from atomjax.reconstruct import ReconstructConfig, reconstruct

    jax.clear_caches()  # compiled in memory: gone; on disk: see main()
    t0 = time.perf_counter()
    config = ReconstructConfig.from_dict(settings or {})
    result = reconstruct(series, config, progress=False, figures=False)
    seconds = time.perf_counter() - t0
    history = result.report["history"]
    return {
        "positions_A": result.positions_A,
        "seconds": seconds,
        "optimizer": result.report["optimizer"],
        "steps": len(history["loss"]),
        "phases": [p["n_steps"] for p in history["phases"]],
        "ended_by": result.report["ended_by"],
        "uncertainty_s": result.report.get("uncertainty", {}).get("seconds"),
        "predicted_rmsd_pm": result.report.get("uncertainty", {}).get("predicted_rmsd_pm"),
    }


def print_table(rows) -> None:
    head = f"{'case':<7}{'atoms':>7} {'method':<8}{'matched':>9}{'TP':>7}{'FP':>7}"
    print(head + f"{'RMSD pm':>9}{'time s':>9}{'× SART':>8}")
    for r in rows:
        rmsd = "–" if r["rmsd_pm"] is None else f"{r['rmsd_pm']:.2f}"
        fp = "–" if r["fp_rate"] is None else f"{r['fp_rate']:.3f}"
        print(f"{r['case']:<7}{r['n_truth']:>7} {r['method']:<8}{r['n_matched']:>9}"
              f"{r['tp_rate']:>7.3f}{fp:>7}{rmsd:>9}{r['seconds']:>9.1f}"
              f"{r['seconds'] / r['sart_seconds']:>8.2f}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated names")
    parser.add_argument("--noise-std-rel", type=float, default=0.05)
    parser.add_argument("--sart-iterations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one tiny case")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--cold-only", action="store_true", help="no atomjax+ rerun")
    add_settings_option(parser)
    args = parser.parse_args(argv)
    settings = parse_settings(args.settings, parser)
    cases = QUICK if args.quick else {k: CASES[k] for k in args.cases.split(",")}
    import tempfile

    from atomjax import compile_cache

    xla = tempfile.TemporaryDirectory(prefix="atomjax_xla_")  # empty: cold starts
    compile_cache.enable(xla.name)
    rows = []
    for name, spec in cases.items():
        series = load(name, spec, args.noise_std_rel, args.seed)
        runs = {m: run_voxels(m, series, args.sart_iterations) for m in ("fbp", "sart")}
        runs["atomjax"] = run_atomjax(series, settings)
        if not args.cold_only:
            # compiled programs from the disk cache
            runs["atomjax+"] = run_atomjax(series, settings)
        for method, run in runs.items():
            row = {"case": name, "method": method, "n_angles": series.n_angles,
                   "image_shape": list(series.image_shape), "pixel_size_A": series.pixel_size_A,
                   **score(run["positions_A"], series.atoms_positions_A),
                   "seconds": run["seconds"], "sart_seconds": runs["sart"]["seconds"]}  # fmt: skip
            row.update({k: v for k, v in run.items() if k not in ("positions_A", "seconds")})
            rows.append(row)
            print(f"  {method}: {row['n_matched']}/{row['n_truth']} matched, RMSD "
                  f"{row['rmsd_pm']} pm, {row['seconds']:.1f} s", flush=True)  # fmt: skip
    print()
    print_table(rows)
    if args.json:
        from atomjax.outputs import write_json

        write_json(args.json, {"benchmark": "time to result", "machine": machine(),
                               "date": time.strftime("%Y-%m-%d"), "noise_std_rel":
                               args.noise_std_rel, "sart_iterations": args.sart_iterations,
                               "atomjax_settings": settings, "rows": rows})  # fmt: skip
        print(f"→ {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
