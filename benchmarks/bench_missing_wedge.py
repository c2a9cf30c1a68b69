"""Missing-wedge benchmark: atomjax vs voxel reconstruction + atom tracing (gaussian-atoms §4.1).

The counterpart of the gaussian-atoms paper's Figs. 3/4 for one particle. An Au fcc
sphere (radius 10 Å, 249 atoms, rotated off the zone axes) is simulated with the fast
protocol (abTEM projected potential + 0.5 Å Gaussian blur + Gaussian noise of a fraction
of the series maximum, 0.25 Å pixels) for two single-axis tilt schemes:

* ``full``:  −90° … +89° every 1° (180 images; +90° is −90° mirrored, so it is left out);
* ``wedge``: −70° … +68° every 3° (47 images; ``simulate.parse_tilts("-70:70:3")``,
  the paper's "±70° at 3°" — the grid from −70 in 3° steps does not reach +70).

Each series is reconstructed three ways and every result is scored by the same
function (``atomjax.metrics.evaluate``, one-to-one matching within 0.75 Å):

* ``fbp``: filtered back-projection (ramp filter, ``skimage.transform.iradon``) of each
  y-plane sinogram, then atom tracing;
* ``sart``: ``skimage.transform.iradon_sart`` (default relaxation, a few sweeps) of each
  sinogram, then atom tracing;
* ``atomjax``: ``atomjax.reconstruct`` in direct mode (Gaussians fitted to the images),
  6 phases × 150 steps on random mini-batches of 24 images. It runs in float64 by
  default (``--dtype``): in float32 its SIRT initialisation currently fails on the
  47-image wedge series ("no voxel projects inside every image": the field-of-view
  test in ``atomjax.tomogram.sirt`` compares a float32 sum of 47 weights with
  47 · (1 − 1e-9)). The baselines run in float64 (numpy/skimage) anyway.

Atom tracing (in the style of the paper, which follows the AET pipeline's first step):
all local maxima of the volume (3 × 3 × 3), strongest first, accepted greedily when at
least ``--min-separation-A`` (2.0 Å) from every accepted peak; the intensity threshold
is Otsu's threshold of the accepted peaks' values (no ground truth involved; when the
histogram has an empty stretch between noise and atom peaks, its middle); each atom
is refined to sub-voxel precision by a three-point Gaussian (log-parabola) fit along
each axis. Wall times (reconstruction + tracing) are measured in the same run.

Run it (the full benchmark, two noise levels, takes ~10 min on 2 CPU cores once the
series are cached, ~2 min more to simulate them; serialise it with other benchmarks):

    python benchmarks/bench_missing_wedge.py --quick            # smoke run, < 60 s
    flock /tmp/atomjax_bench.lock python benchmarks/bench_missing_wedge.py \
        --noise-std-rel 0.05,0 --out benchmarks/results_missing_wedge.json

Simulated series are cached in ``benchmarks/cache/`` (ignored by git); atomjax's run
folders go to ``benchmarks/cache/runs_missing_wedge/``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (  # noqa: E402, F401  (the shared baselines; re-exported for the tests)
    METRIC_KEYS,
    SKIMAGE_THETA_SIGN,
    fbp_volume,
    greedy_separation,
    local_maxima,
    otsu_threshold,
    sart_volume,
    score,
    single_axis_tilts_deg,
    subvoxel_offsets,
    trace_atoms,
)

HERE = pathlib.Path(__file__).resolve().parent
CACHE = HERE / "cache"

#: Full range: −90…+89 every 1° (±90° are one projection, mirrored).
FULL_TILTS_DEG = np.arange(-90.0, 90.0, 1.0)
#: Missing wedge: "-70:70:3" → −70…+68 every 3° (47 images).
WEDGE_TILTS_SPEC = "-70:70:3"

# --------------------------------------------------------------------------- data


def tilt_schemes(quick: bool = False) -> dict[str, np.ndarray]:
    """Tilt angles (degrees) of the two schemes; ``quick`` thins them for a smoke run."""
    from atomjax import simulate

    if quick:
        return {"full": np.arange(-90.0, 90.0, 6.0), "wedge": simulate.parse_tilts("-70:70:9")}
    return {"full": FULL_TILTS_DEG.copy(), "wedge": simulate.parse_tilts(WEDGE_TILTS_SPEC)}


def load_or_simulate(
    scheme: str,
    tilts_deg: np.ndarray,
    radius_A: float,
    noise_std_rel: float,
    pixel_size_A: float = 0.25,
    seed: int = 0,
    cache: pathlib.Path | None = CACHE,
):
    """The simulated tilt series (an atomjax.TiltSeries), from the cache when present."""
    from atomjax import io, simulate, structures

    tilts_deg = np.asarray(tilts_deg, dtype=float)
    tag = (
        f"mw_{scheme}_Au_r{radius_A:g}_t{tilts_deg[0]:g}_{tilts_deg[-1]:g}_n{tilts_deg.size}"
        f"_px{pixel_size_A:g}_noise{noise_std_rel:g}_s{seed}"
    )
    path = None if cache is None else cache / f"{tag}.npz"
    if path is not None and path.is_file():
        series = io.load_tilt_series(path)
        if np.allclose(series.euler_deg[:, 1], tilts_deg):
            return series
    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", radius_A), seed=seed)
    series = simulate.simulate_fast(
        particle,
        tilts_deg,
        pixel_size_A=pixel_size_A,
        noise_std_rel=noise_std_rel,
        seed=seed,
        progress=False,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.save_tilt_series(series, path)
    return series


def threshold_sensitivity(
    volume: np.ndarray, voxel_size_A: float, truth_A: np.ndarray, min_separation_A: float
) -> list[dict[str, Any]]:
    """Diagnostic only (reported, never used to choose): TP/FP of the tracing at fixed
    thresholds of 0.2 … 0.7 × the volume's maximum instead of Otsu's."""
    out = []
    for frac in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        found, _ = trace_atoms(volume, voxel_size_A, min_separation_A, frac * float(volume.max()))
        m = score(found, truth_A)
        out.append({"threshold_rel_to_max": frac, **{k: m[k] for k in METRIC_KEYS}})
    return out


def run_baseline(method: str, series, args) -> dict[str, Any]:
    tilts = single_axis_tilts_deg(series.euler_deg)
    t0 = time.perf_counter()
    if method == "fbp":
        vol = fbp_volume(series.images, tilts)
    else:
        vol = sart_volume(series.images, tilts, n_iter=args.sart_iterations)
    t1 = time.perf_counter()
    found, info = trace_atoms(vol, series.pixel_size_A, args.min_separation_A)
    t2 = time.perf_counter()
    return {
        "positions_A": found,
        "volume": vol,
        "seconds": t2 - t0,
        "seconds_reconstruction": t1 - t0,
        "seconds_tracing": t2 - t1,
        "tracing": {k: v for k, v in info.items() if k != "peak_values"},
        "threshold_sensitivity": threshold_sensitivity(
            vol, series.pixel_size_A, series.atoms_positions_A, args.min_separation_A
        ),
    }


def run_atomjax(series, args, out_dir: pathlib.Path) -> dict[str, Any]:
    from atomjax.reconstruct import ReconstructConfig, reconstruct

    batch = args.batch_angles if args.batch_angles and args.batch_angles < series.n_angles else None
    optim = {"n_phases": args.phases, "steps_per_phase": args.steps, "batch_angles": batch}
    config = ReconstructConfig(mode="direct", seed=0, optim=optim)
    t0 = time.perf_counter()
    result = reconstruct(
        series, config, out_dir=out_dir, progress=False, figures=False, overwrite=True
    )
    seconds = time.perf_counter() - t0
    return {
        "positions_A": result.positions_A,
        "widths_A2": result.widths_A2,
        "amplitudes": result.amplitudes,
        "seconds": seconds,
        "run_time_s_report": result.report["run_time_s"],
        "r_factor_mean": result.report["r_factor"]["mean"],
        "optim": optim,
        "n_atoms_initial": result.report["history"]["n_atoms_initial"],
    }


# --------------------------------------------------------------------------- figure


def _slab(positions_A: np.ndarray, y0_A: float, half_A: float) -> np.ndarray:
    p = np.asarray(positions_A).reshape(-1, 3)
    return p[np.abs(p[:, 1] - y0_A) <= half_A]


def _gaussian_slice(pos, widths, amps, x_A, z_A, y0_A):
    """Σ H exp(−r²/B) of atomjax's atoms on the plane y = y0 (x, z grid)."""
    xx, zz = np.meshgrid(x_A, z_A, indexing="ij")
    img = np.zeros_like(xx)
    for p, b, h in zip(pos, widths, amps, strict=True):
        d2_A2 = (p[1] - y0_A) ** 2
        if d2_A2 > 9 * b:
            continue
        img += h * np.exp(-((xx - p[0]) ** 2 + (zz - p[2]) ** 2 + d2_A2) / b)
    return img


def make_figure(path: pathlib.Path, panels: dict, table: list[dict], noise: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = list(panels)
    methods = ["fbp", "sart", "atomjax"]
    fig, axes = plt.subplots(len(schemes) + 1, 3, figsize=(12, 4 * (len(schemes) + 1)))
    half_A = 0.8
    for r, scheme in enumerate(schemes):
        pnl = panels[scheme]
        truth = pnl["truth_A"]
        px = pnl["pixel_size_A"]
        nu, nv = pnl["image_shape"]
        x_A = (np.arange(nu) - nu // 2) * px
        # the y-plane through the most truth atoms near the centre
        ys = truth[:, 1]
        cands = np.unique(np.round(ys[np.abs(ys) < 2.0] / px).astype(int))
        counts = [np.sum(np.abs(ys - c * px) <= half_A) for c in cands]
        v = int(cands[int(np.argmax(counts))]) + nv // 2
        y0_A = (v - nv // 2) * px
        ext = [x_A[0], x_A[-1], x_A[0], x_A[-1]]
        for c, method in enumerate(methods):
            ax = axes[r, c]
            if method == "atomjax":
                a = pnl["atomjax"]
                img = _gaussian_slice(
                    a["positions_A"], a["widths_A2"], a["amplitudes"], x_A, x_A, y0_A
                )
            else:
                img = pnl[method]["volume"][:, v, :]
            ax.imshow(img.T, origin="lower", extent=ext, cmap="gray")
            t = _slab(truth, y0_A, half_A)
            f = _slab(pnl[method]["positions_A"], y0_A, half_A)
            ax.scatter(t[:, 0], t[:, 2], s=60, facecolors="none", edgecolors="tab:green", lw=1.2,
                       label="truth")  # fmt: skip
            ax.scatter(f[:, 0], f[:, 2], s=25, marker="x", c="tab:red", lw=1.2, label="found")
            ax.set_title(f"{scheme}: {method} (y = {y0_A:+.2f} ± {half_A} Å)", fontsize=10)
            ax.set_xlabel("x (Å)")
            ax.set_ylabel("z (Å, beam at 0°)")
            lim = pnl["radius_A"] + 3
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            if r == 0 and c == 0:
                ax.legend(loc="upper right", fontsize=8)
    rows = [t for t in table if t["noise_std_rel"] == noise]

    def row_of(scheme, method):
        return next(t for t in rows if t["scheme"] == scheme and t["method"] == method)

    width = 0.8 / len(methods)
    for c, key, label in ((0, "tp_rate", "true-positive rate"), (2, "rmsd_pm", "RMSD (pm)")):
        ax = axes[-1, c]
        for k, method in enumerate(methods):
            vals = [row_of(s, method)[key] for s in schemes]
            vals = [np.nan if v is None else v for v in vals]
            ax.bar(np.arange(len(schemes)) + (k - 1) * width, vals, width, label=method)
        ax.set_xticks(np.arange(len(schemes)), schemes)
        ax.set_title(f"{label}, noise {noise:g}")
        ax.legend(fontsize=8)
    # false positives: the chosen (Otsu) threshold and a sweep of fixed thresholds
    ax = axes[-1, 1]
    styles = {"fbp": "tab:blue", "sart": "tab:orange"}
    for scheme, ls in zip(schemes, ("-", "--", ":"), strict=False):
        for method, colour in styles.items():
            row = row_of(scheme, method)
            sweep = row["details"]["threshold_sensitivity"]
            ax.plot([t["threshold_rel_to_max"] for t in sweep], [t["fp_rate"] for t in sweep],
                    ls=ls, c=colour, marker=".", label=f"{method} {scheme}")  # fmt: skip
            ax.plot([row["details"]["tracing"]["threshold_rel_to_max_peak"]], [row["fp_rate"]],
                    marker="*", ms=12, c=colour, ls="none")  # fmt: skip
        aj = row_of(scheme, "atomjax")["fp_rate"]
        ax.axhline(aj, c="tab:green", ls=ls, lw=1, label=f"atomjax {scheme}")
    ax.set_xlabel("tracing threshold / volume max (★ = Otsu, used)")
    ax.set_title(f"false-positive rate, noise {noise:g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def _fmt(x, spec):
    return "—" if x is None else format(x, spec)


def print_table(rows: list[dict]) -> None:
    head = (
        "| noise | scheme | method | found / true | TP | FP | RMSD (pm) "
        "| RMSD x / y / z (pm) | wall (s) |"
    )
    print(head)
    print("|" + "---|" * 9)
    for t in rows:
        xyz = "—" if t["rmsd_xyz_pm"] is None else " / ".join(f"{r:.1f}" for r in t["rmsd_xyz_pm"])
        print(
            f"| {t['noise_std_rel']:g} | {t['scheme']} ({t['n_angles']}) | {t['method']} | "
            f"{t['n_found']} / {t['n_truth']} | {t['tp_rate']:.3f} | {_fmt(t['fp_rate'], '.3f')} "
            f"| {_fmt(t['rmsd_pm'], '.1f')} | {xyz} | {t['seconds']:.1f} |"
        )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="r = 6 Å, few tilts and steps (< 60 s)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="results JSON (figure beside)")
    p.add_argument("--figure", type=pathlib.Path, default=None, help="figure path (PNG)")
    p.add_argument("--noise-std-rel", default="0.05", help="comma list, e.g. 0.05,0")
    p.add_argument("--radius-A", type=float, default=10.0)
    p.add_argument("--pixel-size-A", type=float, default=0.25)
    p.add_argument("--phases", type=int, default=6)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-angles", type=int, default=24, help="0: all images every step")
    p.add_argument("--sart-iterations", type=int, default=5)
    p.add_argument("--min-separation-A", type=float, default=2.0)
    p.add_argument("--schemes", default="full,wedge")
    p.add_argument("--methods", default="fbp,sart,atomjax")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float64",
        help="atomjax's float type (jax_enable_x64); the baselines always run in float64",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.radius_A = min(args.radius_A, 6.0)
        args.phases, args.steps = min(args.phases, 2), min(args.steps, 40)
        args.sart_iterations = min(args.sart_iterations, 2)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    noises = [float(x) for x in str(args.noise_std_rel).split(",")]
    all_tilts = tilt_schemes(args.quick)
    schemes = [s for s in args.schemes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    # a quick run writes into the (ignored) cache unless told otherwise
    out = args.out or (CACHE / "results_missing_wedge_quick.json" if args.quick else
                       HERE / "results_missing_wedge.json")  # fmt: skip
    fig_path = args.figure or out.with_name(
        "missing_wedge_quick.png" if args.quick else "missing_wedge.png"
    )
    rows, panels_by_noise = [], {}
    t_start = time.perf_counter()
    for noise in noises:
        panels = {}
        for scheme in schemes:
            tilts = all_tilts[scheme]
            t0 = time.perf_counter()
            series = load_or_simulate(
                scheme, tilts, args.radius_A, noise, args.pixel_size_A, args.seed
            )
            print(f"[noise {noise:g} {scheme}] series {series.images.shape} "
                  f"({time.perf_counter() - t0:.1f} s to load/simulate)", flush=True)  # fmt: skip
            truth = series.atoms_positions_A
            pnl = {"truth_A": truth, "pixel_size_A": series.pixel_size_A,
                   "image_shape": series.image_shape, "radius_A": args.radius_A}  # fmt: skip
            for method in methods:
                if method == "atomjax":
                    run_dir = CACHE / "runs_missing_wedge" / f"{scheme}_noise{noise:g}"
                    res = run_atomjax(series, args, run_dir)
                else:
                    res = run_baseline(method, series, args)
                pnl[method] = res
                row = {"noise_std_rel": noise, "scheme": scheme, "n_angles": series.n_angles,
                       "method": method, **score(res["positions_A"], truth),
                       "seconds": res["seconds"]}  # fmt: skip
                row["details"] = {
                    k: v
                    for k, v in res.items()
                    if k not in ("positions_A", "volume", "widths_A2", "amplitudes", "seconds")
                }
                rows.append(row)
                print(f"  {method}: TP {row['tp_rate']:.3f} FP {_fmt(row['fp_rate'], '.3f')} "
                      f"RMSD {_fmt(row['rmsd_pm'], '.1f')} pm, {row['seconds']:.1f} s",
                      flush=True)  # fmt: skip
            panels[scheme] = pnl
        panels_by_noise[noise] = panels
    import skimage

    from atomjax.outputs import to_jsonable

    results = {
        "benchmark": "missing wedge (gaussian-atoms §4.1, Figs. 3/4)",
        "settings": {
            "particle": f"Au fcc sphere r={args.radius_A:g} Å, rotate_off_zone_axes(seed="
            f"{args.seed})",
            "schemes": {
                s: {
                    "tilts_deg_first_last_step": [
                        float(all_tilts[s][0]),
                        float(all_tilts[s][-1]),
                        float(np.diff(all_tilts[s])[0]),
                    ],
                    "n_angles": int(all_tilts[s].size),
                }
                for s in schemes
            },  # fmt: skip
            "simulation": "atomjax.simulate.simulate_fast (abTEM projected potential + 0.5 Å "
            "blur + Gaussian noise, noise_std_rel × series max)",
            "pixel_size_A": args.pixel_size_A,
            "noise_std_rel": noises,
            "fbp": "skimage iradon, ramp filter, circle=True, one per y-plane",
            "sart": f"skimage iradon_sart, {args.sart_iterations} sweeps, relaxation 0.15",
            "tracing": f"3x3x3 local maxima > 0, greedy min separation {args.min_separation_A} Å"
            ", Otsu threshold on the peak values, 3-point log-parabola sub-voxel refinement",
            "atomjax": {
                "mode": "direct",
                "n_phases": args.phases,
                "steps_per_phase": args.steps,
                "batch_angles": args.batch_angles,
                "dtype": args.dtype,
                "other": "ReconstructConfig defaults (peaks init, adapt between phases)",
            },
            "matching": "atomjax.metrics.evaluate, one-to-one within 0.75 Å",
            "quick": bool(args.quick),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jax_backend": jax.default_backend(),
            "skimage": skimage.__version__,
            "description": "the project's CPU machine, 2 cores (shared)",
        },
        "total_seconds": time.perf_counter() - t_start,
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable(results), indent=1) + "\n")
    if set(methods) == {"fbp", "sart", "atomjax"}:
        make_figure(fig_path, panels_by_noise[noises[0]], rows, noises[0])
    print()
    print_table(rows)
    print(f"\nwrote {out} and {fig_path} ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
