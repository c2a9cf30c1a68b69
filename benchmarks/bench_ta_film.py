"""Experimental benchmark: the amorphous Ta film (ta_film, area 1) against the published model.

Real ADF-STEM data (46 tilts, +63° … −56°, 131 × 61 pixels of 0.3216 Å; see
``../shared/data/README.md``). The published atomic model of the whole film (8284 Ta,
the conventional pipeline on the same data) is a *reference*, not ground truth.

What it runs and reports:

* **ours**: the preset ``conf/experiment/ta_film.yaml`` (direct mode, atoms searched in
  a box much wider than the crop along x, see the preset), through
  ``atomjax.apps.compose("reconstruct", ["data=ta_film", "+experiment=ta_film"])`` and
  :func:`atomjax.reconstruct.reconstruct`. Nothing in it reads the reference model.
* **core**: the region seen whole by every image, less a margin (``--core-margin-A``,
  2 Å): a point belongs to it when its projection lies inside every image's field of
  view at least that far from the edges (u and v). Defined from the geometry only.
* **agreement**: one-to-one matching (:func:`atomjax.metrics.match_atoms`, 0.75 Å) of
  all our atoms against every reference atom that projects into some image; TP (core)
  = matched share of the reference atoms in the core, FP (core) = unmatched share of
  our atoms in the core (so a pair straddling the core's edge still counts). RMSD of
  the core pairs, plain and in the AET form (sqrt of the per-axis variances, N − 1);
  :func:`atomjax.metrics.evaluate` of the two core sets (with ``aet_score``) as well.
* **R-factor** (LOT eq. 11, normalised images): ours, and the published model's own,
  computed fairly: the reference atoms that project into the images (within 3 Å of the
  edges), positions FIXED, per-atom width and amplitude and per-image background fitted
  by the same optimiser and loss (the preset's optim settings with lr_positions_A = 0,
  no merge/prune/add). Also over |θ| ≤ 45° only, where material outside the model
  matters least.

Writes ``results_ta_film.json``, ``ta_film.png`` and ``ta_film_atoms.extxyz`` into
``--out`` (default ``benchmarks/``; ``--quick`` writes into ``benchmarks/cache/``).

    flock /tmp/atomjax_bench.lock python benchmarks/bench_ta_film.py         # ~10 min, 2 cores
    python benchmarks/bench_ta_film.py --quick                               # smoke run
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import sys
import time
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / "cache"
DEFAULT_DATA = ROOT.parent / "shared" / "data"

CORE_MARGIN_A = 2.0  # core = seen whole by every image, this far from the image edges
NEAR_MARGIN_A = 3.0  # reference atoms "in the images": within this of some image's edge
MATCH_CUTOFF_A = 0.75
MID_TILT_DEG = 45.0  # R-factor also over |θ| ≤ this
QUICK_OVERRIDES = ("optim.n_phases=3", "optim.steps_per_phase=60")


# --------------------------------------------------------------------------- geometry


def _uv(series, positions_A: np.ndarray) -> np.ndarray:
    """Projected (u, v) (m, n, 2) of points in every image (drift-free, as loaded)."""
    from scipy.spatial.transform import Rotation

    pos = np.asarray(positions_A, float).reshape(-1, 3)
    rot = Rotation.from_euler("xyz", np.asarray(series.euler_deg, float), degrees=True)
    return np.einsum("mij,nj->mni", rot.as_matrix(), pos)[..., :2]


def _inside(series, positions_A, margin_A: float) -> np.ndarray:
    """(m, n) whether point n projects inside image m at least ``margin_A`` from its edges
    (a negative margin reaches past them). Pixel i of n sits at (i − n // 2) · pixel."""
    px = series.pixel_size_A
    uv = _uv(series, positions_A)
    ok = np.ones(uv.shape[:2], bool)
    for axis, n in enumerate(series.image_shape):
        lo, hi = (0 - n // 2) * px + margin_A, (n - 1 - n // 2) * px - margin_A
        ok &= (uv[..., axis] >= lo) & (uv[..., axis] <= hi)
    return ok


def in_core(series, positions_A, margin_A: float = CORE_MARGIN_A) -> np.ndarray:
    """Points seen whole by every image, ``margin_A`` inside its edges (the core)."""
    return _inside(series, positions_A, margin_A).all(axis=0)


def in_some_image(series, positions_A, margin_A: float = NEAR_MARGIN_A) -> np.ndarray:
    """Points projecting into at least one image, or within ``margin_A`` of its edge."""
    return _inside(series, positions_A, -margin_A).any(axis=0)


# --------------------------------------------------------------------------- scoring


def core_scores(series, found_A, reference_A, margin_A: float = CORE_MARGIN_A,
                cutoff_A: float = MATCH_CUTOFF_A) -> dict[str, Any]:  # fmt: skip
    """Agreement of ``found_A`` with ``reference_A`` in the core (see the module doc)."""
    from atomjax import metrics

    found = np.asarray(found_A, float).reshape(-1, 3)
    ref = np.asarray(reference_A, float).reshape(-1, 3)
    ref = ref[in_some_image(series, ref)]
    m = metrics.match_atoms(found, ref, cutoff_A=cutoff_A)
    core_f, core_r = in_core(series, found, margin_A), in_core(series, ref, margin_A)
    hit_f = np.zeros(len(found), bool)
    hit_f[m.found_index] = True
    hit_r = np.zeros(len(ref), bool)
    hit_r[m.truth_index] = True
    pairs = core_r[m.truth_index]
    dev = m.deviation_A[pairs]
    k = int(pairs.sum())
    out: dict[str, Any] = {
        "core_margin_A": margin_A,
        "cutoff_A": cutoff_A,
        "n_found": len(found),
        "n_reference_in_images": len(ref),
        "n_found_core": int(core_f.sum()),
        "n_reference_core": int(core_r.sum()),
        "n_matched_core": int(hit_r[core_r].sum()),
        "tp_core": float(hit_r[core_r].mean()) if core_r.any() else None,
        "fp_core": float(1.0 - hit_f[core_f].mean()) if core_f.any() else None,
        "rmsd_core_pm": metrics.rmsd_pm(dev) if k else None,
        "rmsd_core_aet_form_pm": metrics.rmsd_per_axis_var_pm(dev) if k > 1 else None,
        "mean_deviation_core_pm": (dev.mean(0) * 100).tolist() if k else None,
        "rmsd_core_xyz_pm": (np.sqrt((dev**2).mean(0)) * 100).tolist() if k else None,
    }
    if core_f.sum() > 1 and core_r.sum() > 1:
        ev = metrics.evaluate(found[core_f], ref[core_r], cutoff_A=cutoff_A)
        keep = ("n_found", "n_truth", "n_matched", "tp_rate", "fp_rate", "rmsd_pm",
                "rmsd_per_axis_var_pm", "aet_score")  # fmt: skip
        out["evaluate_core_sets"] = {key: ev[key] for key in keep}
    return out


def r_factors(observed: np.ndarray, calculated: np.ndarray, tilts_deg) -> dict[str, Any]:
    from atomjax import metrics

    rf = metrics.r_factor_series(observed, calculated)
    r1 = metrics.r1_factor_series(observed, calculated)
    mid = np.abs(np.asarray(tilts_deg)) <= MID_TILT_DEG
    return {
        "mean": rf.mean,
        "mean_mid_tilts": float(rf.per_image[mid].mean()),
        "mid_tilt_deg": MID_TILT_DEG,
        "per_image": rf.per_image.tolist(),
        "r1": r1.r1,
        "r1_scale": r1.scale,
        "r1_mid_tilts": float(r1.per_image[mid].mean()),
    }


# --------------------------------------------------------------------------- runs


def compose_settings(data_root, quick: bool = False, extra=()) -> dict[str, Any]:
    from atomjax import apps

    overrides = ["data=ta_film", "+experiment=ta_film", f"data.root={data_root}",
                 "progress=false", *(QUICK_OVERRIDES if quick else ()), *extra]  # fmt: skip
    return apps.compose("reconstruct", overrides)


def run_ours(cfg: dict[str, Any], series, run_dir: pathlib.Path | None, figures: bool = False):
    """The preset's reconstruction; returns (Result, observed, calculated, seconds)."""
    from atomjax.pipeline import config_from_settings
    from atomjax.reconstruct import model_images, observed_images, reconstruct

    config = config_from_settings(cfg)
    t0 = time.perf_counter()
    res = reconstruct(series, config, out_dir=run_dir, progress=bool(cfg.get("progress")),
                      figures=figures, overwrite=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    return res, observed_images(series, config), model_images(res, series, config), seconds


def fit_fixed_positions(series, positions_A, cfg: dict[str, Any]):
    """The published model's fair R-factor fit: the preset's reconstruction started from
    ``positions_A`` with the positions frozen (``lr_positions_A = 0``) and no merge,
    prune or add, so per-atom width and amplitude and per-image background are fitted
    with the same optimiser, loss, schedule and start (one least-squares amplitude
    scale, the preset's background).

    Returns (params, observed, calculated, losses per phase (start, end), seconds).
    """
    import dataclasses

    from atomjax.pipeline import config_from_settings
    from atomjax.reconstruct import model_images, observed_images, reconstruct

    config = config_from_settings(cfg)
    if config.mode != "direct":
        raise ValueError("the fixed-position fit is written for direct mode")
    config = dataclasses.replace(
        config,
        optim=dataclasses.replace(config.optim, lr_positions_A=0.0),
        adapt_between_phases=False,
        checkpoint=False,
    )
    t0 = time.perf_counter()
    res = reconstruct(series, config, progress=False, figures=False,
                      initial_positions_A=positions_A)  # fmt: skip
    seconds = time.perf_counter() - t0
    losses = [[p["loss_start"], p["loss_end"]] for p in res.report["history"]["phases"]]
    calc = model_images(res, series, config)
    return res.params, observed_images(series, config), calc, losses, seconds


# --------------------------------------------------------------------------- figure


def make_figure(path, series, obs, calc_ours, calc_pub, ours_A, ref_A, rf_ours, rf_pub,
                margin_A: float = CORE_MARGIN_A) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tilts = series.euler_deg[:, 1]
    idx = [int(np.argmax(tilts)), int(np.argmin(np.abs(tilts))),
           int(np.argmin(np.abs(tilts + 37))), int(np.argmin(tilts))]  # fmt: skip
    cols = ["measured", "ours: model", "ours: residual", "published: model",
            "published: residual"]  # fmt: skip
    fig = plt.figure(figsize=(13, 3.0 * len(idx) + 4.5))
    gs = fig.add_gridspec(len(idx) + 1, len(cols), height_ratios=[3] * len(idx) + [4.5])
    hi = float(np.percentile(obs, 99.5))
    for r, j in enumerate(idx):
        res_lim = 0.5 * hi
        panels = [(obs[j], "viridis", 0, hi), (calc_ours[j], "viridis", 0, hi),
                  (obs[j] - calc_ours[j], "RdBu_r", -res_lim, res_lim),
                  (calc_pub[j], "viridis", 0, hi),
                  (obs[j] - calc_pub[j], "RdBu_r", -res_lim, res_lim)]  # fmt: skip
        for c, (img, cmap, lo, top) in enumerate(panels):
            ax = fig.add_subplot(gs[r, c])
            ax.imshow(img.T, cmap=cmap, vmin=lo, vmax=top, origin="lower", aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"{cols[c]}, θ = {tilts[j]:+.1f}°"
            if c == 2:
                title += f"\nR = {rf_ours['per_image'][j]:.3f}"
            if c == 4:
                title += f"\nR = {rf_pub['per_image'][j]:.3f}"
            ax.set_title(title, fontsize=8)
    # a slab of atoms (|y| < 1.5 Å) in the x–z plane, with the core's outline
    ax = fig.add_subplot(gs[-1, :])
    half = 1.5
    o = ours_A[np.abs(ours_A[:, 1]) < half]
    p = ref_A[np.abs(ref_A[:, 1]) < half]
    ax.scatter(p[:, 0], p[:, 2], s=40, facecolors="none", edgecolors="tab:green", lw=1.0,
               label="published model")  # fmt: skip
    ax.scatter(o[:, 0], o[:, 2], s=14, marker="x", c="tab:red", lw=1.0, label="ours")
    xs, zs = np.meshgrid(np.linspace(-30, 30, 241), np.linspace(-25, 25, 201))
    grid = np.stack([xs.ravel(), np.zeros(xs.size), zs.ravel()], 1)
    core = in_core(series, grid, margin_A).reshape(xs.shape)
    ax.contour(xs, zs, core.astype(float), levels=[0.5], colors="k", linewidths=0.8)
    nu = series.image_shape[0]
    edge = nu // 2 * series.pixel_size_A
    ax.axvline(-edge, c="0.6", ls=":", lw=0.8)
    ax.axvline(edge, c="0.6", ls=":", lw=0.8)
    ax.set_xlim(-45, 45)
    ax.set_ylim(-22, 22)
    ax.set_aspect("equal")
    ax.set_xlabel("x (Å; dotted: the crop's edges)")
    ax.set_ylabel("z (Å, beam at 0°)")
    ax.set_title(f"slab |y| < {half} Å; black outline: the core (seen by every image, "
                 f"{margin_A:g} Å margin)", fontsize=9)  # fmt: skip
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def print_table(rows: list[dict]) -> None:
    print("| model | atoms (core) | matched core / ref core | TP core | FP core "
          "| RMSD core (pm) | RMSD AET form (pm) | R-factor | R (|θ| ≤ 45°) | R1 "
          "| wall (s) |")  # fmt: skip
    print("|" + "---|" * 11)
    for t in rows:
        s = t.get("scores") or {}
        print(
            f"| {t['model']} | {t['n_atoms']} ({_fmt(s.get('n_found_core'), 'd')}) | "
            f"{_fmt(s.get('n_matched_core'), 'd')} / {_fmt(s.get('n_reference_core'), 'd')} | "
            f"{_fmt(s.get('tp_core'))} | {_fmt(s.get('fp_core'))} | "
            f"{_fmt(s.get('rmsd_core_pm'), '.1f')} | {_fmt(s.get('rmsd_core_aet_form_pm'), '.1f')}"
            f" | {t['r_factor']['mean']:.4f} | {t['r_factor']['mean_mid_tilts']:.4f} | "
            f"{t['r_factor']['r1']:.4f} | {t['seconds']:.0f} |"
        )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true",
                   help=f"a short fit ({' '.join(QUICK_OVERRIDES)}), "
                   "outputs in cache/")  # fmt: skip
    p.add_argument("--data-root", type=pathlib.Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="folder for results_ta_film.json, ta_film.png, "
                   "ta_film_atoms.extxyz")  # fmt: skip
    p.add_argument("--core-margin-A", type=float, default=CORE_MARGIN_A)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--skip-published", action="store_true",
                   help="do not fit the published model (no reference R-factor)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. optim.loss=l1")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    from atomjax import outputs
    from atomjax.pipeline import load_series

    out = args.out or (CACHE / "ta_film_quick" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    if not (args.data_root / "ta_film").is_dir():
        print(f"no ta_film data under {args.data_root}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    cfg = compose_settings(args.data_root.resolve(), args.quick, args.overrides)
    series = load_series(cfg["data"])
    ref = series.atoms_positions_A
    tilts = series.euler_deg[:, 1]
    # the reconstruction never sees the reference: drop it from the series it is given
    blind = series.replace(atoms_positions_A=None, atoms_species=None)
    run_dir = CACHE / ("runs_ta_film_quick" if args.quick else "runs_ta_film")
    res, obs, calc, seconds = run_ours(cfg, blind, run_dir)
    ours = res.positions_A
    row_ours = {
        "model": "ours (atomjax, preset ta_film)",
        "n_atoms": len(ours),
        "scores": core_scores(series, ours, ref, args.core_margin_A),
        "r_factor": r_factors(obs, calc, tilts),
        "seconds": seconds,
        "history": res.report["history"]["phases"],
        "alignment": res.report.get("alignment"),  # with reconstruct.refine_pose / align
    }
    print(f"ours: {len(ours)} atoms, R {row_ours['r_factor']['mean']:.4f}, {seconds:.0f} s",
          flush=True)  # fmt: skip
    rows = [row_ours]
    calc_pub = None
    near = ref[in_some_image(series, ref)]
    if not args.skip_published:
        params, obs_p, calc_pub, losses, sec_p = fit_fixed_positions(series, near, cfg)
        a = params.atoms.alive_numpy()
        rows.append({
            "model": "published (positions fixed; B, H, background fitted)",
            "n_atoms": len(near),
            "scores": core_scores(series, near, ref, args.core_margin_A),
            "r_factor": r_factors(obs_p, calc_pub, tilts),
            "seconds": sec_p,
            "loss_per_phase": losses,
            "widths_A2_percentiles_5_50_95": np.percentile(a["widths_A2"], [5, 50, 95]).tolist(),
        })  # fmt: skip
        print(f"published: {len(near)} atoms, R {rows[-1]['r_factor']['mean']:.4f}, "
              f"{sec_p:.0f} s", flush=True)  # fmt: skip
    total = time.perf_counter() - t_start
    print_table(rows)
    s = row_ours["scores"]
    print(f"\ncore TP {s['tp_core']:.3f} (target ≥ 0.95), FP {s['fp_core']:.3f}; "
          f"R ours {row_ours['r_factor']['mean']:.4f}"
          + (f" vs published {rows[1]['r_factor']['mean']:.4f}" if len(rows) > 1 else "")
          + f"; total wall {total:.0f} s")  # fmt: skip

    outputs.write_extxyz(out / "ta_film_atoms.extxyz", ours, res.widths_A2, res.amplitudes,
                         info={"dataset": "ta_film area 1", "preset": "ta_film",
                               "n_atoms": len(ours)})  # fmt: skip
    if calc_pub is not None:
        make_figure(out / "ta_film.png", series, obs, calc, calc_pub, ours, near,
                    row_ours["r_factor"], rows[1]["r_factor"], args.core_margin_A)  # fmt: skip
    results = {
        "benchmark": "ta_film area 1 (experimental ADF-STEM, amorphous Ta) vs the published model",
        "settings": {
            "overrides": ["data=ta_film", "+experiment=ta_film",
                          *(QUICK_OVERRIDES if args.quick else ()), *args.overrides],
            "reconstruct": res.report["settings"],
            "core": f"points whose projection lies inside every image at least "
                    f"{args.core_margin_A:g} Å from its edges (u and v)",
            "matching": f"one-to-one, {MATCH_CUTOFF_A} Å, all our atoms vs every reference "
                        f"atom within {NEAR_MARGIN_A:g} Å of some image; TP/FP counted in "
                        "the core",
            "published_r_factor_fit": "reference atoms within 3 Å of some image, positions "
                                      "fixed; per-atom B, H and per-image background fitted "
                                      "with the preset's optimiser and loss",
            "dtype": args.dtype,
        },
        "rows": rows,
        "total_wall_s": total,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    outputs.write_json(out / "results_ta_film.json", outputs.to_jsonable(results))
    print(f"wrote {out / 'results_ta_film.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
