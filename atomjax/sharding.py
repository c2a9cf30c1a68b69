"""Tilt angles sharded across devices: a 1-D mesh, images split, atoms replicated.

Every image's loss depends on all atoms but on its own view only, so the natural split
is over tilt angles: each device renders and scores its share of the images, and the
atom gradients are summed across devices (the transpose of the replicated atoms, which
XLA lowers to an all-reduce). Per-image parameters — drift, background, the focus offset
of each image — live with their images.

* :func:`angle_mesh` — a 1-D :class:`jax.sharding.Mesh` over the devices (with
  ``jax.distributed.initialize()`` called first, the devices of every process).
* :func:`pad_to_mesh` — pad the angle axis to a multiple of the device count; padded
  images carry weight 0, so they change nothing.
* :func:`param_specs` / :func:`place` — the sharding of every leaf of a parameter pytree
  (per-image leaves split over angles, everything else replicated), and device_put.
* :func:`sharded_loss` — the loss of all (or a random subset of) images as a
  ``jax.shard_map`` over the mesh; equal to the single-device loss.

Multi-host: start one process per GPU (e.g. under Slurm, ``srun`` with one task per
GPU), call ``jax.distributed.initialize()`` in each before anything else touches JAX,
and build the mesh from ``jax.devices()`` (all processes' devices). Each process reads
the whole tilt series; :func:`place` keeps only the shards its devices hold.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .loss import LOSSES

AXIS = "angles"

# names of pytree attributes that hold one value per image (angle axis first)
PER_IMAGE = ("drift_A", "background", "focus_offsets_A", "tilt_offsets_rad",
             "rotation_offsets_rad")  # fmt: skip


def angle_mesh(n_devices: int | None = None, devices=None) -> Mesh:
    """A 1-D mesh named ``"angles"`` over ``devices`` (default: all, every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if n_devices is not None:
        if not 1 <= int(n_devices) <= len(devices):
            raise ValueError(
                f"n_devices must lie between 1 and the {len(devices)} devices available, "
                f"got {n_devices}"
            )
        devices = devices[: int(n_devices)]
    return Mesh(np.asarray(devices), (AXIS,))


def padded_count(n_angles: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh size that holds ``n_angles`` images."""
    n = mesh.size
    return -(-int(n_angles) // n) * n


def pad_to_mesh(x, mesh: Mesh, value: float = 0.0):
    """``x`` padded along axis 0 to :func:`padded_count` rows of ``value``."""
    m = x.shape[0]
    pad = padded_count(m, mesh) - m
    if pad == 0:
        return x
    widths = [(0, pad)] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, widths, constant_values=value)


def image_weights(n_angles: int, mesh: Mesh, dtype=None) -> jax.Array:
    """1 for the real images, 0 for the padding (length :func:`padded_count`)."""
    w = np.zeros(padded_count(n_angles, mesh))
    w[:n_angles] = 1.0
    return jnp.asarray(w, dtype)


def _names(path) -> list[str]:
    return [str(getattr(k, "name", getattr(k, "key", k))) for k in path]


def param_specs(tree) -> Any:
    """PartitionSpec of every array leaf: split over angles for per-image leaves."""

    def spec(path, leaf):
        per_image = any(n in PER_IMAGE for n in _names(path))
        return P(AXIS) if per_image and getattr(leaf, "ndim", 0) >= 1 else P()

    return jax.tree_util.tree_map_with_path(spec, tree)


def pad_params(params, mesh: Mesh):
    """Per-image leaves padded to the mesh (see :func:`pad_to_mesh`)."""

    def pad(path, leaf):
        if any(n in PER_IMAGE for n in _names(path)) and getattr(leaf, "ndim", 0) >= 1:
            return pad_to_mesh(leaf, mesh)
        return leaf

    return jax.tree_util.tree_map_with_path(pad, params)


def unpad_params(params, n_angles: int):
    """Per-image leaves cut back to the real ``n_angles`` images."""

    def cut(path, leaf):
        if any(n in PER_IMAGE for n in _names(path)) and getattr(leaf, "ndim", 0) >= 1:
            return leaf[:n_angles]
        return leaf

    return jax.tree_util.tree_map_with_path(cut, params)


def place(tree, mesh: Mesh, specs=None):
    """``tree``'s arrays on the mesh: per-image leaves split, the rest replicated.

    Works in one process or many (after ``jax.distributed.initialize()``): each process
    passes the full host arrays and keeps the shards its own devices hold.
    """
    specs = param_specs(tree) if specs is None else specs

    def put(leaf, spec):
        if not hasattr(leaf, "shape"):
            return leaf
        sharding = NamedSharding(mesh, spec)
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, specs, is_leaf=lambda x: x is None)


def to_host(tree):
    """Every array of ``tree`` that spans several processes, gathered to numpy on each
    process (the same values everywhere); arrays a process holds whole stay as they are."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x

    return jax.tree.map(get, tree)


def place_images(x, mesh: Mesh):
    """An (m, ...) array split over the mesh along its first axis."""
    return place(x, mesh, P(AXIS))


def sharded_loss(
    params,
    observed,
    euler_rad,
    weights,
    setup,
    loss: str,
    mesh: Mesh,
    batch_per_device: int | None = None,
    key=None,
):
    """The loss of the series with images split over ``mesh`` (a ``jax.shard_map``).

    observed (m_pad, nu, nv), euler_rad (m_pad, 3), weights (m_pad,) with m_pad a
    multiple of the mesh size (:func:`pad_to_mesh`, :func:`image_weights`); params'
    per-image leaves padded the same way. The result is the weighted mean of the
    per-image losses, which for the MSE, L1 and Poisson losses equals the single-device loss of
    the real images. batch_per_device: score a random subset of each device's images
    (``key`` drawn per device), as mini-batches of ``batch_per_device`` × devices.
    """
    specs = param_specs(params)
    loss_fn = LOSSES[loss]
    key = jax.random.PRNGKey(0) if key is None else key

    def local(p, obs, eul, w, k):
        n_local = obs.shape[0]
        if batch_per_device is not None and batch_per_device < n_local:
            k = jax.random.fold_in(k, jax.lax.axis_index(AXIS))
            index = jax.random.permutation(k, n_local)[:batch_per_device]
        else:
            index = jnp.arange(n_local)
        calc = p.images(eul, setup, index)
        per_image = jax.vmap(loss_fn)(obs[index], calc)
        total = jax.lax.psum(jnp.sum(w[index] * per_image), AXIS)
        count = jax.lax.psum(jnp.sum(w[index]), AXIS)
        return total / jnp.maximum(count, 1e-30)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(specs, P(AXIS), P(AXIS), P(AXIS), P()),
        out_specs=P(),
    )(params, observed, euler_rad, weights, key)
