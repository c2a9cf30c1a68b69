"""The built-in example (the README's first command).

Default: simulate a tilt series of a small Au particle with abTEM (projected
potential + blur, the fast protocol), reconstruct the atoms from it, and print the
accuracy against the known structure (matched atoms, TP/FP at 0.75 Å, RMSD in pm)
and where the run folder is (atoms as extxyz, report.json, figures).

``--forward``: instead render the known atoms in the three interaction modes and
report how well each rendering matches abTEM's images (normalised cross-correlation
and R-factor after a least-squares scale), the time per image, and a figure.

Run: ``atomjax-example`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import jax
import numpy as np

from .atoms import Atoms
from .data import normalise_series
from .loss import r_factor
from .probe import ProbeSettings
from .render import MODES, ImagingSetup, make_probe, render_series

# width of the Gaussian atom that best matches abTEM's projected potential after a
# 0.5 Å blur (measured in tests/test_simulate.py)
WIDTH_A2 = 0.7


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def reconstruct_demo(
    radius_A: float,
    tilts: str,
    out: pathlib.Path,
    seed: int,
    n_phases: int = 5,
    steps_per_phase: int = 100,
    progress: bool = True,
) -> dict:
    """Simulate, reconstruct, print the accuracy table; returns the metrics dict."""
    from . import simulate, structures
    from .reconstruct import ReconstructConfig, reconstruct

    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", radius_A), seed=seed)
    angles = simulate.parse_tilts(tilts)
    print(f"simulating: {len(particle)} Au atoms (radius {radius_A} Å), {len(angles)} tilts")
    series = simulate.simulate_fast(particle, angles, seed=seed, progress=progress)
    config = ReconstructConfig(
        mode="direct",
        seed=seed,
        optim={"n_phases": n_phases, "steps_per_phase": steps_per_phase},
    )
    print(f"reconstructing: {series.n_angles} images of {series.image_shape} px")
    result = reconstruct(series, config, out_dir=out, progress=progress)
    m = result.report["metrics"]
    rows = [
        ("atoms in the particle", f"{m['n_truth']}"),
        ("atoms found", f"{m['n_found']}"),
        ("matched within 0.75 Å", f"{m['n_matched']}"),
        ("true-positive rate", f"{m['tp_rate']:.3f}"),
        ("false-positive rate", f"{m['fp_rate']:.3f}"),
        ("RMSD", f"{m['rmsd_pm']:.2f} pm"),
        ("R-factor (mean)", f"{result.report['r_factor']['mean']:.4f}"),
        ("run time", f"{result.report['run_time_s']:.1f} s"),
    ]
    print("\naccuracy against the known structure")
    for name, value in rows:
        print(f"  {name:<24}{value:>12}")
    print(f"\noutputs: {out}/ (atoms.extxyz, report.json, projections.png, loss.png, atoms.png)")
    return m


def run(radius_A: float, tilts: str, out: pathlib.Path, n_slices: int, seed: int) -> dict:
    from . import simulate, structures

    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", radius_A), seed=seed)
    print(f"particle: {len(particle)} Au atoms, radius {radius_A} Å")
    series = simulate.simulate_fast(particle, simulate.parse_tilts(tilts), seed=seed)
    observed = normalise_series(series.images)
    extent_A = 2 * np.abs(series.atoms_positions_A).max() + 2.0
    setup = ImagingSetup(
        series.image_shape,
        series.pixel_size_A,
        n_slices=n_slices,
        slice_thickness_A=extent_A / n_slices,
        max_width_A2=WIDTH_A2,
    )
    atoms = Atoms.create(series.atoms_positions_A, width_A2=WIDTH_A2, amplitude=1.0)
    euler = jax.numpy.asarray(series.euler_rad)
    drift = jax.numpy.zeros((series.n_angles, 3))
    probe_settings = ProbeSettings(energy_eV=300e3, semiangle_mrad=25.0)

    rows, images = {}, {}
    for mode in MODES:
        probe = make_probe(mode, probe_settings, setup)
        render_series(atoms, euler, drift, probe, setup).block_until_ready()  # compile
        t0 = time.perf_counter()
        model = np.asarray(render_series(atoms, euler, drift, probe, setup))
        seconds = time.perf_counter() - t0
        scale = (model * observed).sum() / (model * model).sum()  # least-squares amplitude
        model = model * scale
        images[mode] = model
        rows[mode] = {
            "ncc": float(np.mean([_ncc(o, m) for o, m in zip(observed, model, strict=True)])),
            "r_factor": float(np.mean(np.asarray(r_factor(observed, model)))),
            "ms_per_image": 1e3 * seconds / series.n_angles,
        }

    print(f"\n{series.n_angles} images of {series.image_shape} px at {series.pixel_size_A} Å")
    print(f"{'mode':<10}{'NCC vs abTEM':>14}{'R-factor':>10}{'ms/image':>10}")
    for mode, row in rows.items():
        print(f"{mode:<10}{row['ncc']:>14.4f}{row['r_factor']:>10.4f}{row['ms_per_image']:>10.2f}")
    figure = _figure(observed, images, series, out)
    print(f"\nfigure: {figure}")
    return rows


def _figure(observed, images, series, out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    picks = sorted({0, series.n_angles // 2, series.n_angles - 1})
    cols = ["abTEM", *MODES]
    fig, axes = plt.subplots(len(picks), len(cols), figsize=(2.6 * len(cols), 2.6 * len(picks)))
    axes = np.atleast_2d(axes)
    for r, j in enumerate(picks):
        for c, name in enumerate(cols):
            img = observed[j] if name == "abTEM" else images[name][j]
            axes[r, c].imshow(img.T, origin="lower", cmap="gray")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name)
        axes[r, 0].set_ylabel(f"tilt {series.euler_deg[j, 1]:.0f}°")
    fig.tight_layout()
    path = out / "forward_example.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--radius-A", type=float, default=8.0, help="particle radius in Å")
    parser.add_argument(
        "--tilts", default=None, help="preset or start:stop:step in degrees (default -70:70:10)"
    )
    parser.add_argument("--forward", action="store_true", help="forward-model comparison only")
    parser.add_argument("--n-slices", type=int, default=8, help="depth slices (--forward)")
    parser.add_argument("--phases", type=int, default=5, help="fit phases")
    parser.add_argument("--steps", type=int, default=100, help="steps per phase")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/example"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.radius_A <= 0:
        parser.error("--radius-A must be positive")
    if args.forward:
        run(args.radius_A, args.tilts or "quick", args.out, args.n_slices, args.seed)
    else:
        reconstruct_demo(
            args.radius_A, args.tilts or "-70:70:10", args.out, args.seed, args.phases, args.steps
        )


if __name__ == "__main__":
    main()
