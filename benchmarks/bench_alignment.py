"""Benchmark: known pose errors recovered — pre-alignment and refinement in the fit.

Issue 16's case: a single-axis series recorded with tilt errors of σ 0.5° per image,
the tilt axis 1° off the image's v axis and shifts of σ 1 Å (u, v) per image, handed to
atomjax with the nominal angles and no shifts. Four reconstructions of the same images,
default settings otherwise (fast protocol: abTEM projected potential + 0.5 Å blur, 2 %
Gaussian noise; fcc Au spheres turned off the zone axes):

* **exact** — started from an alignment file holding the true tilts, axis and shifts;
* **nominal** — the nominal angles, no shifts (what a fit without alignment sees);
* **align** — ``reconstruct.align=estimate``: the pre-alignment (centre of mass, common
  line) as the start, nothing refined;
* **align + refine** — the same and ``reconstruct.refine_pose=true``: tilt offsets,
  tilt axis and shifts refined in the fit (:mod:`atomjax.pose`).

Every run fits the atoms' profile tail (``reconstruct.profile_tail``, which
``refine_pose`` turns on; :mod:`atomjax.tail`), so the four differ in the pose alone;
``--settings '{"profile_tail": false}'`` gives the one-Gaussian table.

Scores (``common.score``): the fit fixes the gauge (zero-mean tilt offsets: the atoms
turned about y by the mean; the shifts' common translation in the atoms), so the truth
is put in the same gauge — turned about y by the true offsets' mean — and the mean
offset of the matched pairs removed, for every run alike. Pose errors: the refined
alignment file (``alignment_refined.json``) against the truth in that gauge.

    flock /tmp/atomjax_bench.lock python benchmarks/bench_alignment.py     # ~8 min, 2 cores
    python benchmarks/bench_alignment.py --quick                           # the small case
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

#: (label, Au sphere radius Å, tilts) — 43, 249 and 675 atoms
CASES = (("Au43", 5.5, 13), ("Au249", 10.0, 25), ("Au675", 14.0, 37))
TILT_SIGMA_DEG, AXIS_DEG, SHIFT_SIGMA_A = 0.5, 1.0, 1.0


def simulate_case(radius_A: float, n_tilts: int, seed: int = 3, blur_A: float = 0.5):
    """(series with the nominal angles, true tilt offsets (m,), true shifts (m, 3), truth)."""
    from atomjax import geometry, simulate, structures

    rng = np.random.default_rng(seed)
    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", radius_A), seed=1)
    tilts = np.linspace(-60, 60, n_tilts)
    dtheta = rng.normal(0, TILT_SIGMA_DEG, n_tilts)
    true = np.c_[np.zeros(n_tilts), tilts + dtheta, np.full(n_tilts, AXIS_DEG)]
    s = simulate.simulate_fast(particle, true, pixel_size_A=0.35, margin_A=4.0, blur_sigma_A=blur_A,
                               drift_std_A=[SHIFT_SIGMA_A, SHIFT_SIGMA_A, 0.0],
                               noise_std_rel=0.02, seed=2, progress=False)  # fmt: skip
    nominal = s.replace(euler_deg=geometry.euler_from_tilts_deg(tilts), drift_A=None)
    return nominal, dtheta, s.drift_A, particle.positions


def truth_in_gauge(truth_A: np.ndarray, dtheta_deg: np.ndarray) -> np.ndarray:
    """The true atoms as the fit's gauge places them: turned about y by the mean of the
    true tilt offsets (image j sees R_y(θ_j + δθ_j) x = R_y(θ_j + δθ_j − mean) R_y(mean) x)."""
    a = np.deg2rad(np.mean(dtheta_deg))
    c, s = np.cos(a), np.sin(a)
    ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return truth_A @ ry.T


def pose_errors(path: pathlib.Path, series, dtheta, drift) -> dict[str, float]:
    """The refined alignment against the truth in the fit's gauge."""
    import jax.numpy as jnp

    from atomjax import alignment, geometry, pose

    al = alignment.load(path)
    err = al.tilt_offsets_deg - (dtheta - dtheta.mean())
    rot = geometry.rotation_matrix(jnp.deg2rad(jnp.asarray(al.euler_deg(series.euler_deg))))
    t = pose.translation_of_shifts(jnp.asarray(drift), rot, False)
    gauge = np.asarray(drift - jnp.einsum("mij,j->mi", rot, t))[:, :2]
    shift_err = al.shifts_A - gauge
    return {
        "tilt_rms_deg": float(np.sqrt(np.mean(err**2))),
        "tilt_max_deg": float(np.abs(err).max()),
        "axis_error_deg": float(al.tilt_axis_deg - AXIS_DEG),
        "shift_rms_A": float(np.sqrt(np.mean(shift_err**2))),
        "shift_max_A": float(np.abs(shift_err).max()),
    }


def run_case(label: str, radius_A: float, n_tilts: int, work: pathlib.Path,
             blur_A: float = 0.5, extra: dict | None = None) -> dict[str, Any]:  # fmt: skip
    from atomjax import alignment, metrics
    from atomjax.reconstruct import ReconstructConfig, reconstruct

    series, dtheta, drift, truth = simulate_case(radius_A, n_tilts, blur_A=blur_A)
    exact = alignment.Alignment(AXIS_DEG, drift[:, :2], series.pixel_size_A,
                                tilt_offsets_deg=dtheta, method="the truth")  # fmt: skip
    exact_file = exact.save(work / f"{label}_exact.json")
    pre = alignment.estimate(series)
    runs = {
        "exact": {"align": str(exact_file)},
        "nominal": {},
        "align": {"align": "estimate"},
        "align + refine": {"align": "estimate", "refine_pose": True},
    }
    # the profile tail in every run, as refine_pose turns it on: like compared with like
    extra = {"profile_tail": True, **(extra or {})}
    gauge_truth = truth_in_gauge(truth, dtheta)
    rows = []
    for name, settings in runs.items():
        out = work / f"{label}_{name.replace(' + ', '_')}"
        t0 = time.perf_counter()
        config = ReconstructConfig.from_dict(common.deep_merge(extra, settings))
        r = reconstruct(series, config, out_dir=out, overwrite=True,
                        progress=False, figures=False)  # fmt: skip
        seconds = time.perf_counter() - t0
        m = metrics.evaluate(r.positions_A, gauge_truth, remove_offset=True)
        row = {"run": name, "seconds": seconds, "n_found": m["n_found"],
               "n_matched": m["n_matched"], "tp_rate": m["tp_rate"], "fp_rate": m["fp_rate"],
               "rmsd_pm": m["rmsd_pm"], "r_factor": r.report["r_factor"]["mean"],
               "r1": r.report["r1_factor"]["r1"]}  # fmt: skip
        if settings.get("refine_pose"):
            row["pose"] = pose_errors(out / "alignment_refined.json", series, dtheta, drift)
            # what noise alone would leave (the atoms held): the floor of those errors
            row["pose"]["sigma_median"] = r.report["alignment"]["sigma_median"]
        rows.append(row)
        print(f"{label} {name:15s} {row['n_matched']}/{len(truth)} FP {row['fp_rate']} "
              f"{row['rmsd_pm']} pm {seconds:.0f} s {row.get('pose', '')}", flush=True)  # fmt: skip
    pre_err = dict(axis_error_deg=pre.tilt_axis_deg - AXIS_DEG)
    return {"case": label, "n_atoms": len(truth), "n_tilts": n_tilts, "radius_A": radius_A,
            "blur_A": blur_A, "pre_alignment": pre_err, "rows": rows}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="the smallest case only")
    p.add_argument("--cases", nargs="*", default=None, help="labels (default: all)")
    p.add_argument("--blur-A", type=float, default=0.5, help="the simulation's blur σ")
    p.add_argument("--out", type=pathlib.Path, default=HERE / "results_alignment.json")
    common.add_settings_option(p)
    args = p.parse_args(argv)
    extra = common.parse_settings(args.settings, p)
    cases = CASES[:1] if args.quick else CASES
    if args.cases:
        cases = [c for c in CASES if c[0] in args.cases]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(label, r, n, pathlib.Path(tmp), args.blur_A, extra)
                   for label, r, n in cases]  # fmt: skip
    record = {
        "benchmark": "known pose errors recovered: tilt σ 0.5°, axis 1°, shifts σ 1 Å",
        "settings": {
            "protocol": f"simulate_fast, 0.35 Å pixels, {args.blur_A} Å blur, 2 % "
            "noise, tilts ±60°",
            "reconstruct": "defaults + profile_tail (+ align / refine_pose)",
            "atomjax_settings": extra,
            "scoring": "truth turned about y by the true offsets' mean, mean "
            "offset of the pairs removed, one-to-one at 0.75 Å",
        },  # fmt: skip
        "cases": results,
        "total_wall_s": time.perf_counter() - t0,
        "machine": common.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = args.out if not args.quick else HERE / "cache" / "results_alignment_quick.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from atomjax import outputs

    outputs.write_json(out, record)
    print(json.dumps({c["case"]: [(r["run"], r["rmsd_pm"]) for r in c["rows"]] for c in results}))
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
