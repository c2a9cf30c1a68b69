"""Does atomjax find every atom, and no false ones? Detection per species, next to
FBP and SART + the same atom tracing on the same images.

Cases (the fast protocol of :mod:`atomjax.simulate`: projected potential and a 0.5 Å
blur; simulated once and cached in ``benchmarks/cache``):

* alloys at 5 % Gaussian noise: Ni/Pd/Pt random fcc and FePt L1₀ (Co/Pd/Pt is not
  built: ase's reference data have Co hcp, and the alloy builder needs fcc constants);
* an amorphous Si particle at three Poisson doses, the lowest at about one count per
  particle pixel (the mean count over pixels above 10 % of the brightest is printed);
* a 959-atom Au crystal at 5 % Gaussian noise.

atomjax runs with its default settings (the Poisson loss for counts) and the case's
species list, so atoms are classified (``reconstruct.species``). Columns: TP and FP
rates at 0.75 Å per species (FP per species: found atoms given that species and
matching no true atom), RMSD per species, species accuracy over the matched atoms,
wall time. The voxel baselines find no species: their rows give the totals.

``--seeds 0,1,2``: each case once per seed (each seed its own series: new noise, and a
new particle where the structure is random), then the mean and range over them. The
amorphous fits land in different local minima with small changes (another CPU's
rounding, another seed), so at low dose one seed's figure is one draw from a wide spread.
``--settings JSON``: atomjax settings merged over every case's (to measure a candidate
default next to today's on the same series). ``--starts 4``: each fit through
:func:`atomjax.reconstruct_starts`, the lowest final loss of four starts kept.

``--scaling``: the time of the whole test (every atom's z, :func:`atomjax.detection.
significance`) against the number of atoms, on amorphous Si particles of 1k-16k atoms
(random images: the cost does not depend on their values), 30 images at 0.5 Å.

    flock /tmp/atomjax_bench.lock python benchmarks/bench_detection.py \\
        --json benchmarks/results_detection.json            # ~15 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_settings_option,
    add_starts_option,
    best_time,
    deep_merge,
    fbp_volume,
    fit,
    machine,
    over_seeds,
    parse_seeds,
    parse_settings,
    sart_volume,
    single_axis_tilts_deg,
    trace_atoms,
)

HERE = pathlib.Path(__file__).resolve().parent
CACHE = HERE / "cache"
CUTOFF_A = 0.75

_GAUSS = {"tilts": "-70:70:3", "pixel_size_A": 0.25, "noise_std_rel": 0.05}
_SI = {"particle": {"kind": "amorphous", "element": "Si", "size_A": 10.0}, "tilts": "-70:70:3",
       "pixel_size_A": 0.4}  # fmt: skip
#: name: (data settings, species, ReconstructConfig overrides)
CASES = {
    "nipdpt": ({"particle": {"kind": "alloy", "element": "Ni,Pd,Pt", "size_A": 10.0}, **_GAUSS},
               ["Ni", "Pd", "Pt"], {}),
    "fept": ({"particle": {"kind": "fept", "size_A": 10.0}, **_GAUSS}, ["Fe", "Pt"], {}),
    "copdpt": ({"particle": {"kind": "alloy", "element": "Co,Pd,Pt", "size_A": 10.0}, **_GAUSS},
               ["Co", "Pd", "Pt"], {}),
    "si_dose250": ({**_SI, "dose_e_per_A2": 250.0}, ["Si"], {"optim": {"loss": "poisson"}}),
    "si_dose60": ({**_SI, "dose_e_per_A2": 60.0}, ["Si"], {"optim": {"loss": "poisson"}}),
    "si_dose25": ({**_SI, "dose_e_per_A2": 25.0}, ["Si"], {"optim": {"loss": "poisson"}}),
    "au959": ({"particle": {"kind": "fcc", "element": "Au", "size_A": 16.0}, **_GAUSS}, ["Au"],
              {}),
}  # fmt: skip


def per_species(found_A, found_species, truth_A, truth_species) -> dict:
    """TP, FP and RMSD per true species (FP by found species) and the species accuracy."""
    from atomjax import metrics

    match = metrics.match_atoms(found_A, truth_A, cutoff_A=CUTOFF_A)
    ts = np.asarray(truth_species, dtype=str)
    matched_truth = np.zeros(len(truth_A), bool)
    matched_truth[match.truth_index] = True
    matched_found = np.zeros(len(found_A), bool)
    matched_found[match.found_index] = True
    dist = np.zeros(len(truth_A))
    dist[match.truth_index] = match.distance_A
    rows = {}
    for s in np.unique(ts):
        k = ts == s
        row = {"n_truth": int(k.sum()), "tp_rate": float(matched_truth[k].mean()),
               "rmsd_pm": float(np.sqrt(np.mean(dist[k & matched_truth] ** 2)) * 100)
               if (k & matched_truth).any() else None}  # fmt: skip
        if found_species is not None:
            mine = np.asarray(found_species, dtype=str) == s
            row["n_found"] = int(mine.sum())
            row["fp_rate"] = float((mine & ~matched_found).sum() / max(mine.sum(), 1))
        rows[s] = row
    rmsd = float(np.sqrt(np.mean(match.distance_A**2)) * 100) if match.n_matched else None
    fp = float((~matched_found).sum() / max(len(found_A), 1))
    out = {"n_truth": len(truth_A), "n_found": len(found_A), "n_matched": match.n_matched,
           "tp_rate": match.tp_rate, "fp_rate": fp, "rmsd_pm": rmsd, "species": rows}  # fmt: skip
    if found_species is not None:
        conf = metrics.species_confusion(truth_species, found_species, match)
        out["species_accuracy"] = conf["accuracy"]
        out["confusion"] = conf
    return out


def counts_per_pixel(series) -> float | None:
    """Mean count over the pixels above 10 % of the brightest (Poisson cases)."""
    if series.provenance.get("dose_e_per_A2") is None:
        return None
    images = np.asarray(series.images)
    return float(images[images > 0.1 * images.max()].mean())


def run_case(name: str, seed: int, baselines: bool, settings: dict | None = None,
             n_starts: int = 1) -> list[dict]:  # fmt: skip
    """atomjax (and the baselines) on case ``name`` simulated with ``seed`` (the particle
    and the noise); ``settings``: ReconstructConfig values merged over the case's own;
    ``n_starts`` > 1: :func:`atomjax.reconstruct_starts` with that many starts."""
    from atomjax import pipeline
    from atomjax.reconstruct import ReconstructConfig
    from atomjax.starts import final_loss

    data, species, overrides = CASES[name]
    overrides = deep_merge(overrides, settings or {})
    series = pipeline.load_series({"kind": "simulated", "seed": seed, **data}, cache_dir=CACHE,
                                  progress=False)  # fmt: skip
    truth, truth_species = series.atoms_positions_A, series.atoms_species
    extra = {"counts_per_particle_pixel": counts_per_pixel(series)}
    t0 = time.perf_counter()
    config = ReconstructConfig(**overrides, species=species if len(species) > 1 else None)
    result = fit(series, config, n_starts)
    seconds = time.perf_counter() - t0
    found_species = result.species if result.species is not None else [species[0]] * len(
        result.positions_A)  # fmt: skip
    extra.update(seed=seed, n_starts=n_starts)
    rows = [{"case": name, "method": "atomjax", "seconds": seconds, **extra,
             "ended_by": result.report["ended_by"],
             # the fit's own loss at the end (the same images, so fits of one series with
             # other settings compare by it)
             "loss_final": final_loss(result.report),
             **per_species(result.positions_A, found_species, truth, truth_species)}]  # fmt: skip
    if baselines:
        tilts = single_axis_tilts_deg(series.euler_deg)
        for method in ("fbp", "sart"):
            t0 = time.perf_counter()
            if method == "fbp":
                volume = fbp_volume(series.images, tilts)
            else:
                volume = sart_volume(series.images, tilts, n_iter=3)
            found, _ = trace_atoms(volume, series.pixel_size_A)
            rows.append({"case": name, "method": method, "seconds": time.perf_counter() - t0,
                         **extra, **per_species(found, None, truth, truth_species)})  # fmt: skip
    for r in rows:
        print(format_row(r), flush=True)
    return rows


def format_row(r: dict) -> str:
    rmsd = "–" if r["rmsd_pm"] is None else f"{r['rmsd_pm']:.2f}"
    head = (f"{r['case']:<11}{r['method']:<8}s{r.get('seed', 0):<3}"
            f"{r['n_matched']:>5}/{r['n_truth']:<5}"
            f"FP {r['fp_rate']:.3f}  RMSD {rmsd:>6} pm  {r['seconds']:6.1f} s")  # fmt: skip
    parts = []
    for s, v in r["species"].items():
        fp = f" FP {v['fp_rate']:.3f}" if "fp_rate" in v else ""
        rm = "–" if v["rmsd_pm"] is None else f"{v['rmsd_pm']:.1f}"
        parts.append(f"{s}: TP {v['tp_rate']:.3f}{fp} {rm} pm")
    acc = r.get("species_accuracy")
    tail = f"  species {100 * acc:.1f} %" if acc is not None and len(r["species"]) > 1 else ""
    return head + "  |  " + "; ".join(parts) + tail


#: what the summary over noise seeds reports
SEED_FIELDS = ("n_matched", "n_found", "tp_rate", "fp_rate", "rmsd_pm", "seconds")


def format_spread(r: dict) -> str:
    """One summary row over seeds: mean [min – max] of the matched atoms, FP and RMSD."""

    def f(key, fmt):
        v = r[key]
        if v is None:
            return "–"
        return f"{v['mean']:{fmt}} [{v['min']:{fmt}}–{v['max']:{fmt}}]"

    return (f"{r['case']:<11}{r['method']:<8}{len(r['seeds'])} seeds  matched "
            f"{f('n_matched', '.1f')}  TP {f('tp_rate', '.3f')}  FP {f('fp_rate', '.3f')}  "
            f"RMSD {f('rmsd_pm', '.2f')} pm")  # fmt: skip


def scaling(sizes=(1000, 4000, 16000), m: int = 30, pixel_A: float = 0.5) -> list[dict]:
    """Seconds for every atom's z at each size (best of 3 after a warm-up)."""
    import jax.numpy as jnp

    from atomjax import detection
    from atomjax.data import TiltSeries
    from atomjax.geometry import euler_from_tilts_deg
    from atomjax.reconstruct import ReconstructConfig, make_setup

    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        radius = (n / 0.05 / (4 / 3 * np.pi)) ** (1 / 3)  # Si-like: 0.05 atoms / Å³
        pos = rng.uniform(-1, 1, (4 * n, 3)) * radius
        pos = pos[np.linalg.norm(pos, axis=1) < radius][:n]
        side = int(2 * radius / pixel_A) + 24
        euler_deg = euler_from_tilts_deg(np.linspace(-70, 70, m))
        shell = TiltSeries(np.zeros((m, side, side)), euler_deg, pixel_A)
        setup = make_setup(shell, ReconstructConfig())
        calc = jnp.asarray(rng.uniform(0.5, 1.0, (m, side, side)), jnp.float32)
        observed = calc + 0.05 * jnp.asarray(rng.normal(size=calc.shape), jnp.float32)
        euler, drift = jnp.asarray(np.deg2rad(euler_deg)), jnp.zeros((m, 3))
        noise = {"a": 0.0025, "b": 0.0, "mean_variance": 0.0025}

        def run(pos, observed, calc, euler, drift, setup, noise):
            return detection.significance(pos, 0.5, 0.1, observed, calc, euler, drift, setup,
                                          noise=noise)["z"]  # fmt: skip

        seconds = best_time(run, pos, observed, calc, euler, drift, setup, noise)
        rows.append({"n_atoms": len(pos), "n_images": m, "image_px": side, "seconds": seconds,
                     "us_per_atom_image": 1e6 * seconds / (len(pos) * m)})  # fmt: skip
        per = rows[-1]["us_per_atom_image"]
        print(f"{len(pos):>7} atoms × {m} images of {side}² px: {seconds:.3f} s "
              f"({per:.2f} µs per atom and image)", flush=True)  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated names")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds, each its own simulated series (new noise, and "
                        "a new particle where the structure is random: amorphous, alloys); "
                        "with several, a summary over them (one seed is one draw)")  # fmt: skip
    add_settings_option(parser)
    add_starts_option(parser)
    parser.add_argument("--no-baselines", action="store_true", help="atomjax only")
    parser.add_argument("--scaling", action="store_true", help="also the rule's time vs atoms")
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds, parser)
    settings = parse_settings(args.settings, parser)
    names = [n for n in args.cases.split(",") if n]
    for name in names:
        if name not in CASES:
            parser.error(f"unknown case {name!r}; known: {', '.join(CASES)}")
    rows, timing, spread = [], None, None
    for name in names:
        for seed in seeds:
            rows += run_case(name, seed, not args.no_baselines, settings, args.starts)
    if len(seeds) > 1:
        spread = over_seeds(rows, SEED_FIELDS)
        print(f"over the seeds {seeds}:")
        for r in spread:
            print(format_spread(r), flush=True)
    if args.scaling:
        timing = scaling()
    if args.json:
        from atomjax.outputs import write_json

        write_json(args.json, {"benchmark": "detection per species", "machine": machine(),
                               "date": time.strftime("%Y-%m-%d"), "cutoff_A": CUTOFF_A,
                               "seeds": seeds, "settings": settings, "n_starts": args.starts,
                               "rows": rows,
                               "over_seeds": spread, "scaling": timing})  # fmt: skip
        print(f"→ {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
