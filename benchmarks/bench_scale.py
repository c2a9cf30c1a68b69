"""Scale benchmark: loss + gradient throughput as the problem grows, next to the FFT bound.

Everything is measured in one process on one machine, float32, rigid mode (a fixed probe
stack), MSE loss against zero images, gradient with respect to every atom parameter:

1. throughput sweeps — time per loss + gradient (best of 3 after compilation) as
   (a) the atoms grow (a compact Au-density particle, the image and the number of 2 Å
   slices growing with it), (b) the angles, (c) the image pixels (fixed pixel size, a
   wider field of view) and (d) the slices grow, each next to the FFT-only bound of the
   same size measured in the same run (angles × (slices + 1) rfft2 / irfft2, forward
   only; see ``bench_forward.py``) and with log-log slopes;
2. the low-rank depth interaction (``ImagingSetup.depth_basis``, R FFTs per image
   instead of n_slices): speed-up of loss + gradient over the full per-slice model and
   relative image error, for several R;
3. XLA's planned scratch memory of loss + gradient vs the number of angles, chunked
   (``angle_chunk=4``) and unchunked, and the chunk ``auto_angle_chunk`` picks here;
4. a time breakdown at two sizes: the full loss + gradient against the forward pass
   alone, the splat alone (no FFT) and the FFT convolution alone.

The atom points above 20k run last, and only while the run stays within ``--budget-s``
(predicted from the smaller points); skipped points are listed in the JSON.

Run (serialise with the other benchmarks; ~10 min on 2 cores, 200k atoms included):

    flock /tmp/atomjax_bench.lock python benchmarks/bench_scale.py
    python benchmarks/bench_scale.py --quick          # smoke run, < 1 min, writes nothing
    python benchmarks/bench_scale.py --replot benchmarks/results_scale_cpu.json

The JSON (``--out``) keeps the raw seconds and bytes; the figure (``--figure``) shows
time vs atoms with the FFT bound, memory vs angles, and the low-rank speed-up and error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from common import best_time  # benchmarks/ is on sys.path when run as a script
from common import machine as common_machine

from atomjax import Atoms, ImagingSetup, ProbeSettings, euler_from_tilts_deg, make_probe
from atomjax.geometry import linear_slice_weights, to_image_frame
from atomjax.loss import mse
from atomjax.render import (
    auto_angle_chunk,
    available_bytes,
    depth_basis,
    depth_rank_error,
    image_bytes,
    probe_fourier,
    render_series,
    splat,
)

HERE = pathlib.Path(__file__).resolve().parent
AU_DENSITY_PER_A3 = 0.059  # atoms per Å³ (fcc gold)
SLICE_THICKNESS_A = 2.0
MARGIN_A = 4.0  # empty border around the particle, each side
WIDTH_A2 = 0.5
SETTINGS = ProbeSettings(energy_eV=300e3, semiangle_mrad=25.0)
TIME_CHUNK = 8  # angles per chunk for the timings (lower when auto_angle_chunk is lower)


@dataclasses.dataclass(frozen=True)
class Size:
    """One problem size. The particle is always the compact sphere of ``n_atoms``."""

    n_atoms: int
    n_angles: int
    n_pix: int  # square images
    n_slices: int
    pixel_A: float
    slice_A: float = SLICE_THICKNESS_A

    def label(self) -> str:
        return (
            f"{self.n_atoms} atoms, {self.n_angles} angles, {self.n_pix}² px at "
            f"{self.pixel_A} Å, {self.n_slices} slices"
        )


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes of one run: the atom sweep, a base point and the sweeps through it."""

    atom_sweep: tuple[int, ...]
    atom_angles: int
    atom_pixel_A: float
    base: Size
    angles: tuple[int, ...]
    pixels: tuple[int, ...]
    slices: tuple[int, ...]
    ranks: tuple[int, ...]
    lowrank_extra: tuple[tuple[int, int, float], ...]  # (atoms, angles, pixel Å) particles
    memory: Size  # n_angles ignored
    memory_angles: tuple[int, ...]
    memory_chunk: int
    breakdown_atoms: tuple[int, ...]  # atom-sweep points with the time breakdown


FULL = Plan(
    atom_sweep=(1000, 4000, 16000, 50000, 200000),
    atom_angles=8,
    atom_pixel_A=0.5,
    base=Size(2000, 32, 256, 32, 0.25),
    angles=(16, 32, 48, 72),
    pixels=(192, 256, 384, 512),
    slices=(8, 16, 32, 64),
    ranks=(2, 3, 4, 6),
    lowrank_extra=((8000, 8, 0.25),),
    memory=Size(2000, 0, 192, 16, 0.25),
    memory_angles=(8, 16, 32, 64),
    memory_chunk=4,
    breakdown_atoms=(16000,),
)
QUICK = Plan(
    atom_sweep=(300, 1000),
    atom_angles=4,
    atom_pixel_A=0.5,
    base=Size(300, 4, 64, 6, 0.25),
    angles=(2, 4),
    pixels=(64,),
    slices=(6,),
    ranks=(2,),
    lowrank_extra=(),
    memory=Size(300, 0, 48, 4, 0.3),
    memory_angles=(2, 4),
    memory_chunk=1,
    breakdown_atoms=(),
)
LARGE_ATOMS = 20000  # atom-sweep points above this run last, if the budget allows


# ------------------------------------------------------------------------- problems


def particle_radius_A(n_atoms: int) -> float:
    """Radius of a sphere holding ``n_atoms`` at the atomic density of gold."""
    return (3 * n_atoms / (4 * math.pi * AU_DENSITY_PER_A3)) ** (1 / 3)


def sphere_positions_A(n_atoms: int, seed: int = 0) -> np.ndarray:
    """Uniform random positions (n, 3) in the particle's sphere."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n_atoms, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius_A = particle_radius_A(n_atoms) * rng.random(n_atoms) ** (1 / 3)
    return direction * radius_A[:, None]


def smooth_size(n: int) -> int:
    """The smallest even integer ≥ n with no prime factor above 5 (fast FFT sizes)."""
    from atomjax.simulate import _smooth_size

    return _smooth_size(max(2, int(n)), 2)


def particle_size(n_atoms: int, n_angles: int, pixel_A: float) -> Size:
    """Image and slices just wide and deep enough for the particle plus the margin."""
    field_A = 2 * (particle_radius_A(n_atoms) + MARGIN_A)
    n_pix = smooth_size(math.ceil(field_A / pixel_A))
    n_slices = math.ceil(field_A / SLICE_THICKNESS_A)
    return Size(n_atoms, n_angles, n_pix, n_slices, pixel_A)


def setup_for(size: Size, chunk: int, basis=None) -> ImagingSetup:
    return ImagingSetup(
        (size.n_pix, size.n_pix),
        size.pixel_A,
        n_slices=size.n_slices,
        slice_thickness_A=size.slice_A,
        max_width_A2=1.0,
        angle_chunk=chunk,
        depth_basis=basis,
    )


def window_px(size: Size) -> int:
    return 2 * setup_for(size, 1).radius_px + 1


def auto_chunk(size: Size, n_atoms: int | None = None, n_angles: int | None = None) -> int:
    """What ``auto_angle_chunk`` picks on this machine now (linear split, float32)."""
    return auto_angle_chunk(
        size.n_angles if n_angles is None else n_angles,
        (size.n_pix, size.n_pix),
        size.n_slices,
        size.n_atoms if n_atoms is None else n_atoms,
        window_px(size),
        2,
    )


@dataclasses.dataclass
class Problem:
    size: Size
    setup: ImagingSetup
    diff: Atoms  # the differentiable leaves
    static: Atoms  # the rest (``alive``)
    probe: object
    euler_rad: jax.Array
    drift_A: jax.Array
    target: jax.Array

    def args(self, probe=None):
        probe = self.probe if probe is None else probe
        return self.diff, self.static, probe, self.euler_rad, self.drift_A, self.target


def make_problem(size: Size, chunk: int) -> Problem:
    atoms = Atoms.create(
        sphere_positions_A(size.n_atoms), width_A2=WIDTH_A2, amplitude=1.0, dtype=jnp.float32
    )
    diff, static = eqx.partition(atoms, eqx.is_inexact_array)
    setup = setup_for(size, chunk)
    probe = make_probe("rigid", SETTINGS, setup)
    probe = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), probe)
    tilts_deg = np.linspace(-70.0, 70.0, size.n_angles)
    euler = jnp.asarray(np.deg2rad(euler_from_tilts_deg(tilts_deg)), jnp.float32)
    drift = jnp.zeros((size.n_angles, 3), jnp.float32)
    target = jnp.zeros((size.n_angles, size.n_pix, size.n_pix), jnp.float32)
    return Problem(size, setup, diff, static, probe, euler, drift, target)


# ------------------------------------------------------------------------- timings


def compiled_loss_and_grad(problem: Problem, setup: ImagingSetup | None = None):
    """(compiled loss + gradient, compile seconds, XLA's planned temp bytes)."""
    setup = problem.setup if setup is None else setup

    def loss(diff, static, probe, euler, drift, target):
        images = render_series(eqx.combine(diff, static), euler, drift, probe, setup)
        return mse(target, images)

    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(*problem.args()).compile()
    compile_s = time.perf_counter() - t0
    return compiled, compile_s, int(compiled.memory_analysis().temp_size_in_bytes)


def fft_bound_s(size: Size, repeat: int) -> float:
    """Forward FFTs the model cannot avoid: rfft2 of every slice, one irfft2 per image."""
    n = size.n_pix
    rng = np.random.default_rng(1)
    slabs = jnp.asarray(rng.random((size.n_angles, size.n_slices, n, n)), jnp.float32)

    @jax.jit
    def ffts(x):
        return jnp.fft.irfft2(jnp.fft.rfft2(x).sum(axis=1), s=(n, n))

    seconds = best_time(ffts, slabs, repeat=repeat)
    del slabs
    return seconds


def time_size(size: Size, repeat: int, log=print) -> dict:
    """Loss + gradient time of one size, the FFT bound and the memory figures."""
    auto = auto_chunk(size)
    chunk = min(TIME_CHUNK, auto, size.n_angles)
    problem = make_problem(size, chunk)
    compiled, compile_s, temp_bytes = compiled_loss_and_grad(problem)
    model_s = best_time(compiled, *problem.args(), repeat=repeat)
    fft_s = fft_bound_s(size, repeat)
    row = {
        **dataclasses.asdict(size),
        "window_px": window_px(size),
        "angle_chunk": chunk,
        "auto_angle_chunk": auto,
        "auto_angle_chunk_2x_atoms": auto_chunk(size, n_atoms=2 * size.n_atoms),
        "rigid_s": model_s,
        "fft_s": fft_s,
        "rigid_over_fft": model_s / fft_s,
        "compile_s": compile_s,
        "temp_bytes": temp_bytes,
        "image_bytes_estimate": image_bytes(
            (size.n_pix, size.n_pix), size.n_slices, size.n_atoms, window_px(size), 2
        ),
    }
    log(
        f"  {size.label()}: rigid {model_s:.3g} s, fft {fft_s:.3g} s, ratio "
        f"{row['rigid_over_fft']:.1f} (chunk {chunk}, compile {compile_s:.1f} s)",
        flush=True,
    )
    return row


def lowrank_rows(size: Size, ranks, repeat: int, log=print) -> list[dict]:
    """Full per-slice model vs rank-R depth bases: loss + gradient time and image error,
    the full model timed again next to them."""
    chunk = min(TIME_CHUNK, auto_chunk(size), size.n_angles)
    problem = make_problem(size, chunk)
    compiled, _, _ = compiled_loss_and_grad(problem)
    full_s = best_time(compiled, *problem.args(), repeat=repeat)
    log(f"  {size.label()}: full {full_s:.3g} s", flush=True)
    images_full = np.asarray(render_series(*problem_render_args(problem)))
    stack = np.asarray(problem.probe.stack)
    rows = []
    for rank in ranks:
        setup = dataclasses.replace(problem.setup, depth_basis=depth_basis(stack, rank))
        compiled, compile_s, temp_bytes = compiled_loss_and_grad(problem, setup)
        lr_s = best_time(compiled, *problem.args(), repeat=repeat)
        images = np.asarray(render_series(*problem_render_args(problem, setup)))
        error = float(np.linalg.norm(images - images_full) / np.linalg.norm(images_full))
        rows.append(
            {
                **dataclasses.asdict(size),
                "rank": rank,
                "full_s": full_s,
                "lowrank_s": lr_s,
                "speedup": full_s / lr_s,
                "image_error_rel": error,
                "stack_error_rel": depth_rank_error(stack, setup.depth_basis),
                "temp_bytes": temp_bytes,
                "compile_s": compile_s,
            }
        )
        log(
            f"  R = {rank}: {lr_s:.3g} s (full {full_s:.3g} s, ×{full_s / lr_s:.2f}), "
            f"image error {error:.2e}",
            flush=True,
        )
    return rows


def problem_render_args(problem: Problem, setup: ImagingSetup | None = None):
    atoms = eqx.combine(problem.diff, problem.static)
    setup = problem.setup if setup is None else setup
    return atoms, problem.euler_rad, problem.drift_A, problem.probe, setup


def splat_only_loss(problem: Problem):
    """The model with the probe convolution replaced by a plain sum over the slices: the
    same splat, chunks and rematerialisation, no FFT — what the loss + gradient would
    cost if the convolution were free."""
    setup = problem.setup
    m, chunk = problem.size.n_angles, setup.angle_chunk
    n_chunks = -(-m // chunk)

    def loss(diff, static, probe, euler, drift, target):
        pos, width, amp = eqx.combine(diff, static).masked()
        views = jnp.concatenate([euler, drift], axis=1)
        views = jnp.pad(views, ((0, n_chunks * chunk - m), (0, 0))).reshape(n_chunks, chunk, 6)

        def one(view):
            uvw = to_image_frame(pos, view[:3], view[3:])
            k_idx, k_w = linear_slice_weights(uvw[:, 2], setup.n_slices, setup.slice_thickness_A)
            return splat(uvw, width, amp, k_idx, k_w, setup.n_slices, setup).sum(axis=0)

        chunk_images = jax.checkpoint(jax.vmap(one))
        _, images = jax.lax.scan(lambda carry, v: (carry, chunk_images(v)), None, views)
        return mse(target, images.reshape(n_chunks * chunk, *setup.image_shape)[:m])

    return jax.jit(jax.value_and_grad(loss))


def conv_only_loss(setup: ImagingSetup):
    """Loss of images made from given slice stacks (m, k, nu, nv): the render's FFTs,
    probe product and sum, no splat — what the loss + gradient would cost if the splat
    were free."""

    def loss(slabs, probe_ft, target):
        spectra = jnp.sum(jnp.conj(probe_ft) * jnp.fft.rfft2(slabs), axis=1)
        return mse(target, jnp.fft.irfft2(spectra, s=setup.image_shape))

    return jax.jit(jax.value_and_grad(loss))


def breakdown(size: Size, repeat: int, log=print) -> dict:
    """Full loss + gradient timed again next to: the forward pass alone, the splat alone
    (loss + gradient) and the FFT convolution alone (loss + gradient)."""
    chunk = min(TIME_CHUNK, auto_chunk(size), size.n_angles)
    problem = make_problem(size, chunk)
    compiled, _, _ = compiled_loss_and_grad(problem)
    model_s = best_time(compiled, *problem.args(), repeat=repeat)
    forward_s = best_time(render_series, *problem_render_args(problem), repeat=repeat)
    splat_s = best_time(splat_only_loss(problem), *problem.args(), repeat=repeat)
    n = size.n_pix
    slabs = jnp.asarray(
        np.random.default_rng(2).random((size.n_angles, size.n_slices, n, n)), jnp.float32
    )
    probe_ft = probe_fourier(problem.probe.stack, problem.setup)
    conv_s = best_time(
        conv_only_loss(problem.setup), slabs, probe_ft, problem.target, repeat=repeat
    )
    del slabs
    row = {
        **dataclasses.asdict(size),
        "rigid_s": model_s,
        "forward_s": forward_s,
        "splat_loss_grad_s": splat_s,
        "conv_loss_grad_s": conv_s,
        "forward_fraction": forward_s / model_s,
        "splat_fraction": splat_s / model_s,
        "conv_fraction": conv_s / model_s,
    }
    log(
        f"  {size.label()}: loss + grad {model_s:.3g} s; forward {forward_s:.3g} s "
        f"({forward_s / model_s:.0%}), splat alone {splat_s:.3g} s ({splat_s / model_s:.0%}), "
        f"FFT convolution alone {conv_s:.3g} s ({conv_s / model_s:.0%})",
        flush=True,
    )
    return row


#: (atoms, angles) of the kernel comparison, at 0.5 Å pixels
KERNEL_POINTS = ((1000, 8), (4000, 8), (16000, 8), (50000, 8), (200000, 8), (200000, 72))
KERNEL_POINTS_QUICK = ((300, 4), (1000, 4))


def kernel_rows(points, pixel_A: float, repeat: int, log=print) -> list[dict]:
    """Loss + gradient with each splat kernel (:mod:`atomjax.splat`) next to the FFT
    bound, all in one run: direct and rigid with the window scatter (the kernel before
    matrix products) and with ``kernel="auto"``, and rigid with a rank-3 depth basis."""
    rows = []
    for n, m in points:
        size = particle_size(n, m, pixel_A)
        chunk = min(TIME_CHUNK, auto_chunk(size), m)
        problem = make_problem(size, chunk)
        basis = depth_basis(np.asarray(problem.probe.stack), 3)
        direct = dataclasses.replace(problem.setup, n_slices=1)
        variants = {
            "direct_scatter": (dataclasses.replace(direct, kernel="scatter"), None),
            "direct_auto": (direct, None),
            "rigid_scatter": (dataclasses.replace(problem.setup, kernel="scatter"), problem.probe),
            "rigid_auto": (problem.setup, problem.probe),
            "rigid_rank3_auto": (
                dataclasses.replace(problem.setup, depth_basis=basis),
                problem.probe,
            ),
        }
        large = n * m > 4_000_000  # the biggest point: one timed run, the slowest left out
        if large:
            variants.pop("rigid_scatter")
            variants.pop("rigid_auto")
        row = {**dataclasses.asdict(size), "angle_chunk": chunk}
        row["fft_s"] = fft_bound_s(size, 1 if large else repeat)
        for name, (setup, probe) in variants.items():

            def loss(diff, static, probe, euler, drift, target, setup=setup):
                images = render_series(eqx.combine(diff, static), euler, drift, probe, setup)
                return mse(target, images)

            fn = jax.jit(jax.value_and_grad(loss))
            args = (problem.diff, problem.static, probe, problem.euler_rad, problem.drift_A,
                    problem.target)  # fmt: skip
            row[f"{name}_s"] = best_time(fn, *args, repeat=1 if large else repeat)
            log(f"  {size.label()}: {name} {row[f'{name}_s']:.3g} s", flush=True)
        row["direct_speedup"] = row["direct_scatter_s"] / row["direct_auto_s"]
        row["rigid_rank3_over_fft"] = row["rigid_rank3_auto_s"] / row["fft_s"]
        if "rigid_scatter_s" in row:
            row["rigid_scatter_over_fft"] = row["rigid_scatter_s"] / row["fft_s"]
            row["rigid_auto_over_fft"] = row["rigid_auto_s"] / row["fft_s"]
        rows.append(row)
        log(f"  → direct ×{row['direct_speedup']:.1f} faster; rigid rank 3 / FFT bound "
            f"{row['rigid_rank3_over_fft']:.1f}", flush=True)  # fmt: skip
    return rows


def memory_rows(plan: Plan, log=print) -> list[dict]:
    """XLA's planned temp bytes of loss + gradient vs angles, chunked and unchunked."""
    rows = []
    for m in plan.memory_angles:
        size = dataclasses.replace(plan.memory, n_angles=m)
        row = {**dataclasses.asdict(size), "auto_angle_chunk": auto_chunk(size)}
        for name, chunk in (("chunked", plan.memory_chunk), ("unchunked", m)):
            problem = make_problem(size, chunk)
            _, compile_s, temp_bytes = compiled_loss_and_grad(problem)
            row[f"{name}_chunk"] = chunk
            row[f"{name}_temp_bytes"] = temp_bytes
            row[f"{name}_compile_s"] = compile_s
        row["image_bytes_estimate"] = image_bytes(
            (size.n_pix, size.n_pix), size.n_slices, size.n_atoms, window_px(size), 2
        )
        rows.append(row)
        log(
            f"  {m} angles: chunk {plan.memory_chunk} {row['chunked_temp_bytes'] / 2**20:.0f} "
            f"MiB, unchunked {row['unchunked_temp_bytes'] / 2**20:.0f} MiB",
            flush=True,
        )
    return rows


# ------------------------------------------------------------------------- analysis

SWEEP_COLUMNS = (
    "n_atoms n_angles n_pix n_slices pixel_A window_px angle_chunk "
    "auto_angle_chunk rigid_s fft_s rigid_over_fft temp_bytes".split()
)
LOWRANK_COLUMNS = (
    "n_atoms n_angles n_pix n_slices rank full_s lowrank_s speedup "
    "image_error_rel stack_error_rel".split()
)
BREAKDOWN_COLUMNS = (
    "n_atoms n_angles n_pix n_slices rigid_s forward_s splat_loss_grad_s "
    "conv_loss_grad_s forward_fraction splat_fraction conv_fraction".split()
)
MEMORY_COLUMNS = (
    "n_angles chunked_temp_bytes unchunked_temp_bytes image_bytes_estimate auto_angle_chunk".split()
)


def slope(rows: list[dict], x_key: str, y_key: str, x_power: float = 1.0) -> float | None:
    """Log-log slope of y vs x**x_power (np.polyfit on the logs)."""
    if len(rows) < 2:
        return None
    x = np.log([float(r[x_key]) ** x_power for r in rows])
    y = np.log([float(r[y_key]) for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def extrapolate(rows: list[dict], n_atoms: int) -> float | None:
    """Loss + gradient seconds at ``n_atoms`` from a log-log line through the atom sweep
    (the largest points weigh most: the line goes through the last three)."""
    rows = rows[-3:]
    if len(rows) < 2:
        return None
    x = np.log([r["n_atoms"] for r in rows])
    y = np.log([r["rigid_s"] for r in rows])
    a, b = np.polyfit(x, y, 1)
    return float(np.exp(a * np.log(n_atoms) + b))


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(fmt(r[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))


def peak_rss_bytes() -> int | None:
    """The process's peak resident memory so far (Linux reports kilobytes)."""
    try:
        import resource
    except ImportError:
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "available_bytes_at_start": available_bytes(),
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "dtype": "float32",
    }


# ------------------------------------------------------------------------- figure


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax = axes[0, 0]
    atoms = results["atom_sweep"]
    if atoms:
        n = [r["n_atoms"] for r in atoms]
        ax.loglog(n, [r["rigid_s"] for r in atoms], "o-", label="loss + gradient (rigid)")
        ax.loglog(n, [r["fft_s"] for r in atoms], "s--", label="FFT bound (forward FFTs)")
        for r in atoms:
            ax.annotate(
                f"{r['n_pix']}², {r['n_slices']} sl",
                (r["n_atoms"], r["rigid_s"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
            )
        s = results["slopes"]
        ax.set_title(
            f"time vs atoms ({atoms[0]['n_angles']} angles, {atoms[0]['pixel_A']} Å px); "
            f"slope {s['atoms_rigid']:.2f}",
            fontsize=9,
        )
    ax.set_xlabel("atoms")
    ax.set_ylabel("seconds per iteration")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    base = results["base"]
    for key, x_key, marker in (
        ("angle_sweep", "n_angles", "o"),
        ("pixel_sweep", "n_pix", "s"),
        ("slice_sweep", "n_slices", "^"),
    ):
        rows = results[key]
        rel = [r[x_key] / base[x_key] for r in rows]
        if x_key == "n_pix":
            rel = [x**2 for x in rel]
        line = ax.loglog(rel, [r["rigid_s"] for r in rows], marker + "-", label=key)[0]
        ax.loglog(rel, [r["fft_s"] for r in rows], marker + "--", color=line.get_color())
    ax.xaxis.set_major_locator(ticker.FixedLocator([0.25, 0.5, 1, 2, 4]))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("size relative to the base point (angles, pixels, slices)")
    ax.set_ylabel("seconds (solid: loss + grad; dashed: FFT bound)")
    ax.set_title(
        f"sweeps through {base['n_atoms']} atoms, {base['n_angles']} angles, "
        f"{base['n_pix']}², {base['n_slices']} slices",
        fontsize=9,
    )
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    mem = results["memory"]
    m = [r["n_angles"] for r in mem]
    ax.plot(
        m,
        [r["chunked_temp_bytes"] / 2**20 for r in mem],
        "o-",
        label=f"angle_chunk={mem[0]['chunked_chunk']}",
    )
    ax.plot(m, [r["unchunked_temp_bytes"] / 2**20 for r in mem], "s-", label="unchunked (= m)")
    ax.set_xlabel("angles")
    ax.set_ylabel("XLA planned temp memory (MiB)")
    r0 = mem[0]
    ax.set_title(
        f"loss + gradient, {r0['n_atoms']} atoms, {r0['n_pix']}², {r0['n_slices']} slices",
        fontsize=9,
    )
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    ax2 = ax.twinx()
    for i, (label, rows) in enumerate(group_lowrank(results["lowrank"]).items()):
        ranks = [r["rank"] for r in rows]
        ax.plot(ranks, [r["speedup"] for r in rows], "o-", color=f"C{i}", label=label)
        ax2.semilogy(ranks, [r["image_error_rel"] for r in rows], "x--", color=f"C{i}")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("depth rank R")
    ax.set_ylabel("speed-up full / low-rank (solid)")
    ax2.set_ylabel("relative image error (dashed)")
    ax.set_title("low-rank depth interaction, loss + gradient", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


def group_lowrank(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        label = f"{r['n_atoms']} at, {r['n_pix']}², {r['n_slices']} sl"
        groups.setdefault(label, []).append(r)
    return groups


# ------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run, < 1 min)")
    parser.add_argument(
        "--out", help="JSON file (default: benchmarks/results_scale_cpu.json; none with --quick)"
    )
    parser.add_argument(
        "--figure", help="PNG file (default: benchmarks/scale.png; none with --quick)"
    )
    parser.add_argument(
        "--max-atoms", type=int, default=None, help="leave out atom-sweep points above this"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per size (best of)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=1380.0,
        help="skip the largest atom points when they would end the run later",
    )
    parser.add_argument("--replot", help="only redraw --figure from this results JSON")
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="only the splat-kernel comparison (results_kernels_cpu.json unless --out)",
    )
    args = parser.parse_args()
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f), args.figure or str(HERE / "scale.png"))
        return
    if args.kernels:
        points = KERNEL_POINTS_QUICK if args.quick else KERNEL_POINTS
        print(f"kernels: {common_machine()}")
        rows = kernel_rows(points, 0.5, args.repeat)
        out = args.out or (None if args.quick else str(HERE / "results_kernels_cpu.json"))
        if out:
            with open(out, "w") as f:
                json.dump({"machine": common_machine(), "date": datetime.date.today().isoformat(),
                           "pixel_A": 0.5, "rows": rows}, f, indent=1)  # fmt: skip
            print(f"→ {out}")
        return
    plan = QUICK if args.quick else FULL
    out = args.out or (None if args.quick else str(HERE / "results_scale_cpu.json"))
    figure = args.figure or (None if args.quick else str(HERE / "scale.png"))
    t_start = time.perf_counter()
    info = machine()
    print(
        f"machine: {info['processor']}, {info['cpu_count']} CPUs, JAX {info['jax_version']} "
        f"({info['device_kind']})"
    )

    atom_counts = [n for n in plan.atom_sweep if args.max_atoms is None or n <= args.max_atoms]
    print(f"\n(a) atoms ({plan.atom_angles} angles, {plan.atom_pixel_A} Å pixels)")
    atom_rows = [
        time_size(particle_size(n, plan.atom_angles, plan.atom_pixel_A), args.repeat)
        for n in atom_counts
        if n <= LARGE_ATOMS
    ]
    print("\nbase point and the sweeps through it")
    base = time_size(plan.base, args.repeat)
    depth_A = plan.base.n_slices * plan.base.slice_A
    sweeps = {"angle_sweep": [], "pixel_sweep": [], "slice_sweep": []}
    for key, values, field in (
        ("angle_sweep", plan.angles, "n_angles"),
        ("pixel_sweep", plan.pixels, "n_pix"),
        ("slice_sweep", plan.slices, "n_slices"),
    ):
        for v in values:
            size = dataclasses.replace(plan.base, **{field: v})
            if field == "n_slices":  # same depth range, thinner slices
                size = dataclasses.replace(size, slice_A=depth_A / v)
            sweeps[key].append(base if size == plan.base else time_size(size, args.repeat))

    def atom_point(n):
        size = particle_size(n, plan.atom_angles, plan.atom_pixel_A)
        return size, next((r for r in atom_rows if r["n_atoms"] == n), None)

    print("\nlow-rank depth interaction")
    lowrank = lowrank_rows(plan.base, plan.ranks, args.repeat)
    for n, m, pixel_A in plan.lowrank_extra:
        lowrank += lowrank_rows(particle_size(n, m, pixel_A), plan.ranks, args.repeat)

    print("\ntime breakdown")
    parts = [breakdown(plan.base, args.repeat)]
    for n in plan.breakdown_atoms:
        size, row = atom_point(n)
        if row is not None:
            parts.append(breakdown(size, args.repeat))

    mem = plan.memory
    print(f"\nmemory vs angles ({mem.n_atoms} atoms, {mem.n_pix}² px, {mem.n_slices} slices)")
    memory = memory_rows(plan)

    print("\n(a) atoms, the large points (if they fit in --budget-s)")
    skipped = []
    for n in (n for n in atom_counts if n > LARGE_ATOMS):
        predicted_s = extrapolate(atom_rows, n) or 0.0
        needed_s = (args.repeat + 1) * predicted_s + 20.0
        elapsed_s = time.perf_counter() - t_start
        if elapsed_s + needed_s > args.budget_s:
            print(f"  {n} atoms skipped: ~{needed_s:.0f} s predicted, {elapsed_s:.0f} s spent")
            skipped.append({"n_atoms": n, "predicted_rigid_s": predicted_s})
            continue
        row = time_size(particle_size(n, plan.atom_angles, plan.atom_pixel_A), args.repeat)
        row["predicted_rigid_s"] = predicted_s  # extrapolated from the smaller points first
        atom_rows.append(row)

    slopes = {
        "atoms_rigid": slope(atom_rows, "n_atoms", "rigid_s"),
        "atoms_fft": slope(atom_rows, "n_atoms", "fft_s"),
        "angles_rigid": slope(sweeps["angle_sweep"], "n_angles", "rigid_s"),
        "angles_fft": slope(sweeps["angle_sweep"], "n_angles", "fft_s"),
        "pixels_rigid": slope(sweeps["pixel_sweep"], "n_pix", "rigid_s", 2.0),
        "pixels_fft": slope(sweeps["pixel_sweep"], "n_pix", "fft_s", 2.0),
        "slices_rigid": slope(sweeps["slice_sweep"], "n_slices", "rigid_s"),
        "slices_fft": slope(sweeps["slice_sweep"], "n_slices", "fft_s"),
        "memory_chunked": slope(memory, "n_angles", "chunked_temp_bytes"),
        "memory_unchunked": slope(memory, "n_angles", "unchunked_temp_bytes"),
    }
    wall_s = time.perf_counter() - t_start
    results = {
        "machine": info,
        "settings": {
            "loss": "mse vs zero images, value_and_grad over positions, widths, amplitudes",
            "mode": "rigid",
            "probe": "300 keV, 25 mrad, in focus at the rotation centre",
            "width_A2": WIDTH_A2,
            "max_width_A2": 1.0,
            "density_per_A3": AU_DENSITY_PER_A3,
            "margin_A": MARGIN_A,
            "repeat": args.repeat,
            "max_atoms": args.max_atoms,
            "quick": args.quick,
        },
        "atom_sweep": atom_rows,
        "base": base,
        **sweeps,
        "lowrank": lowrank,
        "breakdown": parts,
        "memory": memory,
        "slopes": slopes,
        "atoms_skipped": skipped,
        "peak_rss_bytes": peak_rss_bytes(),
        "wall_s": wall_s,
    }

    print_table("(a) atoms", atom_rows, SWEEP_COLUMNS)
    for key in sweeps:
        print_table(key, sweeps[key], SWEEP_COLUMNS)
    print_table("low rank", lowrank, LOWRANK_COLUMNS)
    print_table("breakdown", parts, BREAKDOWN_COLUMNS)
    print_table("memory", memory, MEMORY_COLUMNS)
    if skipped:
        print(
            "skipped: "
            + ", ".join(
                f"{r['n_atoms']} atoms (~{r['predicted_rigid_s']:.0f} s "
                "per iteration, extrapolated)"
                for r in skipped
            )
        )
    print("\nslopes: " + ", ".join(f"{k} {fmt(v)}" for k, v in slopes.items()))
    print(f"wall time {wall_s:.0f} s")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"results: {out}")
    if figure:
        plot(results, figure)


if __name__ == "__main__":
    main()
