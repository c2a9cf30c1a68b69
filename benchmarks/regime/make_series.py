"""Simulate the issue-18 validation series (abTEM PRISM HAADF, frozen phonons, 300 kV).

Each entry of ``series.json`` (``common`` settings, overridden per entry) becomes
``<name>.npz`` next to this script: the noise-free expected images (detected fraction
of the probe intensity, float32) with the truth and the full provenance, in atomjax's
tilt-series format. Entries whose file exists are skipped, so an interrupted run
resumes; ``--only NAME`` makes one. The benchmarks draw Poisson counts from these.

    flock /tmp/atomjax_bench.lock python benchmarks/regime/make_series.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import numpy as np

from atomjax.io import save_tilt_series
from atomjax.probe import ProbeSettings
from atomjax.simulate import parse_tilts, simulate_haadf
from atomjax.structures import (
    amorphous,
    column_margin_deg,
    decahedron,
    rotate_off_columns,
    rotate_off_zone_axes,
)

HERE = pathlib.Path(__file__).resolve().parent
SETTINGS = HERE / "series.json"


def entries(path: pathlib.Path = SETTINGS) -> list[dict]:
    """The series' settings, ``common`` merged into each entry."""
    spec = json.loads(path.read_text())
    return [{**spec["common"], **entry} for entry in spec["series"]]


def build(entry: dict):
    """The particle of one entry: a decahedron (off the zone axes unless told) or an
    amorphous sphere (random sequential addition, no columns to avoid).

    ``"edge_on": true``: the five-fold axis within 10° of the tilt axis, turned so that
    every view keeps off the dense columns of all five crystals
    (:func:`rotate_off_columns`); the depth then stays near the diameter at every tilt.
    """
    if entry["particle"] == "amorphous":
        return amorphous(entry["element"], radius_A=entry["diameter_A"] / 2, seed=entry["seed"])
    if entry["particle"] != "decahedron":
        raise ValueError(f"unknown particle {entry['particle']!r} in {entry['name']}")
    atoms = decahedron(entry["element"], diameter_A=entry["diameter_A"])
    if entry.get("edge_on", False):
        return rotate_off_columns(
            atoms, parse_tilts(entry["tilts"]), seed=entry["seed"], align=(0.0, 0.0, 1.0)
        )
    return rotate_off_zone_axes(atoms, seed=entry["seed"]) if entry.get("off_zone", True) else atoms


def simulate(entry: dict):
    atoms = build(entry)
    probe = ProbeSettings(energy_eV=entry["energy_eV"], semiangle_mrad=entry["semiangle_mrad"])
    series = simulate_haadf(
        atoms,
        parse_tilts(entry["tilts"]),
        probe=probe,
        detector_mrad=tuple(entry["detector_mrad"]),
        potential_sampling_A=entry["potential_sampling_A"],
        slice_thickness_A=entry["slice_thickness_A"],
        scan_pixel_size_A=entry["scan_pixel_size_A"],
        method=entry["method"],
        frozen_phonons=entry["frozen_phonons"],
        seed=entry["seed"],
        image_shape=entry.get("image_shape"),
    )
    # an amorphous particle has no columns to keep off
    margins = (
        None
        if entry["particle"] == "amorphous"
        else [round(float(a), 2) for a in column_margin_deg(atoms, parse_tilts(entry["tilts"]))]
    )
    provenance = dict(
        series.provenance, regime_entry=entry, n_atoms=len(atoms), column_margin_deg=margins
    )
    return dataclasses.replace(
        series, images=series.images.astype(np.float32), provenance=provenance
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="one entry's name")
    args = p.parse_args(argv)
    todo = [e for e in entries() if args.only in (None, e["name"])]
    if not todo:
        p.error(f"no entry named {args.only!r} in {SETTINGS}")
    for entry in todo:
        out = HERE / f"{entry['name']}.npz"
        if out.exists():
            print(f"{out.name}: exists, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        series = simulate(entry)
        save_tilt_series(series, out)
        print(
            f"{out.name}: {len(series.atoms_positions_A)} atoms, {series.n_angles} images "
            f"{series.image_shape}, {time.perf_counter() - t0:.0f} s "
            f"({series.provenance['seconds_per_angle']:.1f} s per angle)",
            flush=True,
        )


if __name__ == "__main__":
    main()
