"""One process of the two-process test in test_sharding.py (not a test module itself).

    python distributed_worker.py COORDINATOR_PORT PROCESS_ID OUT.npz [reconstruct]

Joins a 2-process JAX cluster on 127.0.0.1 (CPU devices, gloo collectives), builds the
same small problem as every other process, splits the tilt angles over all processes'
devices and writes its view of the loss and gradients to OUT.npz — or, with
``reconstruct``, runs a whole reconstruction sharded over both processes and writes the
atoms it found.
"""

from __future__ import annotations

import sys

import numpy as np

N_ANGLES = 7


def problem(jnp):
    """Atoms, setup, views and images, identical in every process (fixed seed)."""
    from atomjax import Atoms, ImagingSetup, euler_from_tilts_deg
    from atomjax.fit import Params

    rng = np.random.default_rng(1)
    atoms = Atoms.create(rng.uniform(-4, 4, (16, 3)), width_A2=0.5, amplitude=1.0, capacity=16)
    setup = ImagingSetup((32, 32), 0.3, n_slices=4, slice_thickness_A=3.0, angle_chunk=2)
    euler = jnp.asarray(np.deg2rad(euler_from_tilts_deg(np.linspace(-60, 60, N_ANGLES))))
    drift = jnp.asarray(rng.normal(0, 0.2, (N_ANGLES, 3)))
    background = jnp.asarray(rng.uniform(0, 0.1, N_ANGLES))
    observed = jnp.asarray(rng.uniform(0, 1, (N_ANGLES, 32, 32)))
    return Params(atoms, drift, None, background), setup, euler, observed


def tiny_series():
    from atomjax import simulate, structures

    # off the zone axes: a mirror-symmetric particle has gradient components that are 0
    # up to rounding, and Adam's first step (±lr whatever the size) then follows the
    # rounding, which differs between one and two processes
    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", 4.5), seed=1)
    return simulate.simulate_fast(particle, np.linspace(-60, 60, 7), progress=False)


RECONSTRUCT = {
    "mode": "rigid",
    "probe": {"energy_eV": 300e3, "semiangle_mrad": 25.0},
    "optim": {"method": "adam", "n_phases": 2, "steps_per_phase": 5},
    "angle_chunk": 4,
    "checkpoint": False,
}


def reconstruct_sharded(out: str) -> None:
    import jax

    from atomjax import reconstruct

    result = reconstruct(tiny_series(), {**RECONSTRUCT, "shard_devices": -1}, progress=False)
    np.savez(
        out,
        n_devices=len(jax.devices()),
        positions=result.positions_A,
        tp_rate=result.report["metrics"]["tp_rate"],
        loss=np.asarray(result.report["history"]["loss"], dtype=float),
    )


def main(port: int, process_id: int, out: str, task: str = "gradients") -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    if task == "reconstruct":
        reconstruct_sharded(out)
        jax.distributed.shutdown()
        return
    import equinox as eqx
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    from atomjax import sharding

    params, setup, euler, observed = problem(jnp)
    mesh = sharding.angle_mesh()  # every process's devices
    weights = sharding.image_weights(N_ANGLES, mesh, observed.dtype)
    obs = sharding.place_images(sharding.pad_to_mesh(observed, mesh), mesh)
    eul = sharding.place_images(sharding.pad_to_mesh(euler, mesh), mesh)
    w = sharding.place_images(weights, mesh)
    placed = sharding.place(sharding.pad_params(params, mesh), mesh)

    @eqx.filter_jit
    def value_and_grad(p, o, e, ww):
        return eqx.filter_value_and_grad(
            lambda q: sharding.sharded_loss(q, o, e, ww, setup, "mse", mesh)
        )(p)

    loss, grads = value_and_grad(placed, obs, eul, w)
    gather = multihost_utils.process_allgather
    np.savez(
        out,
        n_devices=mesh.size,
        n_processes=jax.process_count(),
        loss=float(loss.addressable_data(0)),
        positions=np.asarray(gather(grads.atoms.positions_A, tiled=True)),
        widths=np.asarray(gather(grads.atoms.widths_A2, tiled=True)),
        amplitudes=np.asarray(gather(grads.atoms.amplitudes, tiled=True)),
        drift=np.asarray(gather(grads.drift_A, tiled=True))[:N_ANGLES],
        background=np.asarray(gather(grads.background, tiled=True))[:N_ANGLES],
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], *sys.argv[4:])
