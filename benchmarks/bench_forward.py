"""Forward + gradient time of the render against the FFTs alone, side by side.

For each size (atoms, angles, image pixels, slices) this times, in one process on
one machine:
  * ``fft``       — the FFT work the model cannot avoid: rfft2 of every slice of every
                    image and one irfft2 per image (angles × (slices + 1) transforms),
                    forward only;
  * ``direct``    — loss and gradient in direct mode (no probe, no FFT);
  * ``rigid``     — loss and gradient with a fixed probe stack;
  * ``adaptive``  — loss and gradient with per-pixel probe parameters;
and prints each time as a ratio to ``fft``. Run: ``python benchmarks/bench_forward.py``
(``--quick`` for a smoke run, ``--json out.json`` to save the table).
"""

from __future__ import annotations

import argparse
import json
import platform

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from common import best_time  # benchmarks/ is on sys.path when run as a script

from atomjax.atoms import Atoms
from atomjax.loss import mse
from atomjax.probe import ProbeSettings
from atomjax.render import ImagingSetup, make_probe, render_series

SIZES = [  # atoms, angles, image pixels (square), slices
    (500, 16, 128, 8),
    (2000, 16, 128, 16),
    (2000, 32, 256, 16),
    (8000, 32, 256, 32),
]
QUICK = [(200, 4, 64, 4)]


def bench(n_atoms, n_angles, n_pix, n_slices, chunk):
    rng = np.random.default_rng(0)
    radius = 0.35 * n_pix * 0.25
    pos = rng.uniform(-radius, radius, (n_atoms, 3)) * np.array([1, 1, 0.5])
    atoms = Atoms.create(pos, amplitude=0.01, dtype=jnp.float32)
    setup = ImagingSetup(
        (n_pix, n_pix),
        0.25,
        n_slices=n_slices,
        slice_thickness_A=2 * radius / n_slices,
        angle_chunk=chunk,
    )
    tilts = np.linspace(-70, 70, n_angles)
    euler = jnp.asarray(np.deg2rad(np.stack([0 * tilts, tilts, 0 * tilts], 1)), jnp.float32)
    drift = jnp.zeros((n_angles, 3), jnp.float32)
    target = jnp.zeros((n_angles, n_pix, n_pix), jnp.float32)

    @jax.jit
    def fft_only(x):
        f = jnp.fft.rfft2(x)
        return jnp.fft.irfft2(f.sum(axis=1), s=(n_pix, n_pix))

    slabs = jnp.asarray(rng.random((n_angles, n_slices, n_pix, n_pix)), jnp.float32)
    row = {
        "atoms": n_atoms,
        "angles": n_angles,
        "pixels": n_pix,
        "slices": n_slices,
        "fft_s": best_time(fft_only, slabs),
    }
    del slabs

    @eqx.filter_jit
    def loss_and_grad(atoms, probe):
        def loss(a, p):
            return mse(target, render_series(a, euler, drift, p, setup))

        return eqx.filter_value_and_grad(loss)(atoms, probe)

    for mode in ("direct", "rigid", "adaptive"):
        probe = make_probe(mode, ProbeSettings(), setup)
        if probe is not None:
            probe = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), probe)
        row[f"{mode}_s"] = best_time(loss_and_grad, atoms, probe)
        row[f"{mode}_over_fft"] = row[f"{mode}_s"] / row["fft_s"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny size (smoke test)")
    parser.add_argument("--chunk", type=int, default=8, help="angles per chunk")
    parser.add_argument("--json", help="write the table to this file")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), {platform.processor() or ''}")
    header = (
        "atoms",
        "angles",
        "pixels",
        "slices",
        "fft_s",
        "direct_s",
        "rigid_s",
        "adaptive_s",
        "direct/fft",
        "rigid/fft",
        "adaptive/fft",
    )
    print(" ".join(f"{h:>12}" for h in header))
    rows = []
    for size in QUICK if args.quick else SIZES:
        r = bench(*size, chunk=args.chunk)
        rows.append(r)
        vals = [
            r["atoms"],
            r["angles"],
            r["pixels"],
            r["slices"],
            r["fft_s"],
            r["direct_s"],
            r["rigid_s"],
            r["adaptive_s"],
            r["direct_over_fft"],
            r["rigid_over_fft"],
            r["adaptive_over_fft"],
        ]
        print(
            " ".join(f"{v:>12.4g}" if isinstance(v, float) else f"{v:>12}" for v in vals),
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
