"""Angles sharded over 4 fake CPU devices give the single-device loss and gradients."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atomjax import Atoms, ImagingSetup, ProbeSettings, euler_from_tilts_deg, make_probe, sharding
from atomjax.fit import Params, objective
from atomjax.render import PhysicalProbe

N_DEV = 4


@pytest.fixture(scope="module")
def problem():
    assert len(jax.devices()) >= N_DEV, "conftest asks XLA for 4 host devices"
    rng = np.random.default_rng(0)
    pos = rng.uniform(-4, 4, (24, 3))
    atoms = Atoms.create(pos, width_A2=rng.uniform(0.4, 0.7, 24), amplitude=1.0, capacity=32)
    setup = ImagingSetup((40, 40), 0.3, n_slices=5, slice_thickness_A=2.5, angle_chunk=2)
    m = 7  # not a multiple of the 4 devices: one padded image on the last device
    euler = jnp.asarray(np.deg2rad(euler_from_tilts_deg(np.linspace(-60, 60, m))))
    settings = ProbeSettings(energy_eV=300e3, semiangle_mrad=22.0, defocus_A=5.0)
    probes = {
        "direct": None,
        "rigid": make_probe("rigid", settings, setup),
        "physical_per_image": PhysicalProbe(settings, jnp.asarray(rng.normal(0, 20, m))),
    }
    drift = jnp.asarray(rng.normal(0, 0.2, (m, 3)))
    background = jnp.asarray(rng.uniform(0, 0.1, m))
    observed = jnp.asarray(rng.uniform(0, 1, (m, 40, 40)))
    return atoms, setup, euler, probes, drift, background, observed


def assert_same_atoms(got_A, want_A, atol_A):
    """The same atoms, in any order: one-to-one, every pair closer than atol_A."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    got_A, want_A = np.asarray(got_A), np.asarray(want_A)
    assert got_A.shape == want_A.shape
    d = cdist(got_A, want_A)
    rows, cols = linear_sum_assignment(d)
    assert d[rows, cols].max() < atol_A


@pytest.mark.parametrize("kind", ["direct", "rigid", "physical_per_image", "direct_pose"])
@pytest.mark.parametrize("loss", ["mse", "l1", "poisson"])
def test_sharded_loss_and_gradients_equal_single_device(problem, kind, loss):
    from atomjax.pose import Pose

    atoms, setup, euler, probes, drift, background, observed = problem
    m = observed.shape[0]
    pose = None
    if kind == "direct_pose":  # per-image tilt and rotation offsets split with their images
        rng = np.random.default_rng(4)
        pose = Pose(jnp.asarray(rng.normal(0, 0.01, m)), jnp.asarray(rng.normal(0, 0.01, m)),
                    jnp.asarray(0.02))  # fmt: skip
    params = Params(atoms, drift, probes.get(kind), background, pose)
    index = jnp.arange(m)

    def single(p):
        return objective(p, observed, euler, index, setup, loss)

    want, want_grad = eqx.filter_value_and_grad(single)(params)

    mesh = sharding.angle_mesh(N_DEV)
    weights = sharding.image_weights(m, mesh, observed.dtype)
    obs_s = sharding.place_images(sharding.pad_to_mesh(observed, mesh), mesh)
    eul_s = sharding.place_images(sharding.pad_to_mesh(euler, mesh), mesh)
    w_s = sharding.place_images(weights, mesh)
    params_s = sharding.place(sharding.pad_params(params, mesh), mesh)
    assert obs_s.sharding.spec == jax.sharding.PartitionSpec("angles")
    assert len(obs_s.addressable_shards) == N_DEV

    @eqx.filter_jit
    def sharded(p, o, e, w):
        return eqx.filter_value_and_grad(
            lambda q: sharding.sharded_loss(q, o, e, w, setup, loss, mesh)
        )(p)

    got, got_grad = sharded(params_s, obs_s, eul_s, w_s)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-10)
    if pose is not None:
        assert params_s.pose.tilt_offsets_rad.sharding.spec == jax.sharding.PartitionSpec("angles")
    got_grad = sharding.unpad_params(got_grad, m)
    for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-8, atol=1e-12)
    # per-image gradients stay split over the devices, atom gradients are replicated
    assert got_grad.drift_A.shape == (m, 3)


def test_mesh_and_padding_errors_and_shapes():
    with pytest.raises(ValueError, match="n_devices must lie between 1 and"):
        sharding.angle_mesh(len(jax.devices()) + 1)
    mesh = sharding.angle_mesh(N_DEV)
    assert sharding.padded_count(7, mesh) == 8 and sharding.padded_count(8, mesh) == 8
    np.testing.assert_array_equal(sharding.image_weights(6, mesh), [1, 1, 1, 1, 1, 1, 0, 0])
    x = sharding.pad_to_mesh(jnp.ones((5, 2)), mesh)
    assert x.shape == (8, 2) and float(x[5:].sum()) == 0.0


def test_minibatches_per_device_pick_local_images(problem):
    atoms, setup, euler, probes, drift, background, observed = problem
    params = Params(atoms, drift, None, background)
    m = observed.shape[0]
    mesh = sharding.angle_mesh(N_DEV)
    args = (
        sharding.place_images(sharding.pad_to_mesh(observed, mesh), mesh),
        sharding.place_images(sharding.pad_to_mesh(euler, mesh), mesh),
        sharding.place_images(sharding.image_weights(m, mesh, observed.dtype), mesh),
    )
    placed = sharding.place(sharding.pad_params(params, mesh), mesh)
    full = sharding.sharded_loss(placed, *args, setup, "mse", mesh)
    values = [
        float(sharding.sharded_loss(placed, *args, setup, "mse", mesh, 1, jax.random.PRNGKey(s)))
        for s in range(12)
    ]
    per_image = [
        float(objective(params, observed, euler, jnp.asarray([j]), setup, "mse")) for j in range(m)
    ]
    # one image per device: each value is the mean over the (real) images drawn
    assert len(set(np.round(values, 12))) > 1
    assert min(per_image) - 1e-12 <= min(values) and max(values) <= max(per_image) + 1e-12
    assert abs(np.mean(values) - float(full)) < 0.5 * (max(per_image) - min(per_image))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["direct", "adaptive"])
def test_reconstruction_sharded_over_devices_equals_one_device(mode):
    from atomjax import reconstruct, simulate, structures

    particle = structures.fcc_sphere("Au", 4.5)
    series = simulate.simulate_fast(particle, np.linspace(-60, 60, 7), progress=False)
    settings = {
        "mode": mode,
        "probe_fit": "physical",
        "probe": {"energy_eV": 300e3, "semiangle_mrad": 25.0},
        # Adam on both sides: sharding runs Adam (Levenberg–Marquardt is one-device)
        "optim": {"method": "adam", "n_phases": 2, "steps_per_phase": 20},
        "checkpoint": False,
    }
    one = reconstruct(series, settings, progress=False)
    four = reconstruct(series, {**settings, "shard_devices": 4}, progress=False)
    assert len(one.positions_A) == len(four.positions_A) == len(particle)
    # the loss and gradients agree to 1e-10 (above); over 40 Adam steps the rounding of a
    # different summation order grows where gradients are ~0 (Adam divides by their
    # size), to ~1e-3 Å here: far below the accuracy that matters (pm)
    assert_same_atoms(four.positions_A, one.positions_A, 5e-3)
    np.testing.assert_allclose(np.sort(four.amplitudes), np.sort(one.amplitudes), rtol=1e-2)
    np.testing.assert_allclose(four.report["background"], one.report["background"], atol=1e-4)
    assert len(four.report["drift_A"]) == series.n_angles  # padding removed
    if mode == "adaptive":
        offsets = four.report["probe"]["focus_offsets_A"]
        np.testing.assert_allclose(offsets, one.report["probe"]["focus_offsets_A"], atol=0.5)
        assert len(offsets) == series.n_angles
    assert four.report["metrics"]["tp_rate"] == 1.0


def _run_two_processes(tmp_path, *task):
    """Start distributed_worker.py as processes 0 and 1 on loopback; their npz outputs."""
    import os
    import pathlib
    import socket
    import subprocess
    import sys

    import distributed_worker as worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    script = pathlib.Path(worker.__file__)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(port), str(i), str(tmp_path / f"p{i}.npz"), *task],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return [np.load(tmp_path / f"p{i}.npz") for i in range(2)]


@pytest.mark.slow
def test_two_processes_with_jax_distributed_equal_one_process(tmp_path):
    """A real 2-process run on loopback (gloo collectives on CPU), bounded in time."""
    import distributed_worker as worker

    params, setup, euler, observed = worker.problem(jnp)
    index = jnp.arange(worker.N_ANGLES)
    want, grads = eqx.filter_value_and_grad(
        lambda p: objective(p, observed, euler, index, setup, "mse")
    )(params)
    for got in _run_two_processes(tmp_path):
        assert int(got["n_processes"]) == 2 and int(got["n_devices"]) == 4
        np.testing.assert_allclose(float(got["loss"]), float(want), rtol=1e-10)
        pairs = {
            "positions": grads.atoms.positions_A,
            "widths": grads.atoms.widths_A2,
            "amplitudes": grads.atoms.amplitudes,
            "drift": grads.drift_A,
            "background": grads.background,
        }
        for name, expected in pairs.items():
            np.testing.assert_allclose(got[name], np.asarray(expected), rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_reconstruction_over_two_processes_equals_one_process(tmp_path):
    import distributed_worker as worker

    from atomjax import reconstruct

    want = reconstruct(worker.tiny_series(), worker.RECONSTRUCT, progress=False)
    for got in _run_two_processes(tmp_path, "reconstruct"):
        assert int(got["n_devices"]) == 4 and float(got["tp_rate"]) == 1.0
        # a few steps (merge, prune, add between the phases): Adam amplifies rounding
        # where gradients are ~0, so longer fits drift apart by more than this
        np.testing.assert_allclose(got["loss"], want.report["history"]["loss"], rtol=1e-6)
        assert_same_atoms(got["positions"], want.positions_A, 1e-3)
