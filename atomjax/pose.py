"""Per-image pose refined in the fit: tilt and in-plane rotation offsets, the tilt axis.

Real tilt series are recorded at angles that are off by fractions of a degree, about a
tilt axis that is not quite along the image's v axis, and the images drift. The fit can
refine, each as a parameter group with its own learning rate (:class:`atomjax.fit.OptimConfig`):

* ``tilt_offsets_rad`` (m,) — δθ_j added to each image's tilt θ_j (``lr_tilt_deg``);
* ``rotation_offsets_rad`` (m,) — δφ_j, each image's in-plane rotation (``lr_rotation_deg``);
* ``axis_rad`` () — α, the tilt axis's direction in the image plane, common to all
  images (``lr_axis_deg``);
* the per-image shifts are the fit's drift (u, v, w) (``lr_drift_A``).

Image j is seen at Euler angles (ψ_j, θ_j + δθ_j, φ_j + α + δφ_j) (conventions in
:mod:`atomjax.geometry`: R = R_z(φ) R_y(θ) R_x(ψ), so α turns the whole image about the
beam, as a tilt axis off by α does).

Degeneracies (gauge). The images do not change when the object turns or moves and the
poses follow, so three choices are fixed after every step, each without changing the
model images (:func:`fix_gauge`):

* a common part of the tilt offsets is a rotation of the object about y: the offsets are
  kept at zero mean and the atoms turned about y by the mean (exact where every ψ_j = 0,
  a single-axis series; elsewhere the mean is only removed);
* a common part of the in-plane rotations is the tilt axis: moved into α;
* a common translation t of the object is R_j t in every image's shift: the least-squares
  t of the shifts (their (u, v) parts in direct mode, where w has no effect) is moved
  into the atoms.

With the positions frozen (a given model refitted) there is no freedom to fix but the
axis's: the atoms stay where they are.

Levenberg–Marquardt fits the pose with a Gauss–Newton step per image (each image's
residual depends on its own pose only, so the normal matrix is block diagonal, one small
block per image; α couples them and is eliminated by its Schur complement):
:func:`pose_step`.

At the end, :func:`sigmas` gives each image's standard deviations of its pose from its
Fisher block with the atoms held: the errors noise alone would leave.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import geometry
from .batched_linalg import spd_inverse

#: pytree attribute → (group label, OptimConfig field with its learning rate in degrees)
GROUPS = {
    "tilt_offsets_rad": ("tilt", "lr_tilt_deg"),
    "rotation_offsets_rad": ("rotation", "lr_rotation_deg"),
    "axis_rad": ("axis", "lr_axis_deg"),
}
#: learning rates given in degrees, used in radians
DEGREE_FIELDS = tuple(field for _, field in GROUPS.values())


class Pose(eqx.Module):
    """Corrections to the series' Euler angles (radians; see the module docstring)."""

    tilt_offsets_rad: jax.Array  # (m,)
    rotation_offsets_rad: jax.Array  # (m,)
    axis_rad: jax.Array  # ()

    @classmethod
    def zeros(cls, n_images: int, dtype) -> Pose:
        return cls(jnp.zeros(n_images, dtype), jnp.zeros(n_images, dtype), jnp.zeros((), dtype))

    def euler(self, euler_rad, index=None):
        """The corrected Euler angles of the images ``index`` (all when None)."""
        tilt, rot = self.tilt_offsets_rad, self.rotation_offsets_rad
        if index is not None:
            tilt, rot = tilt[index], rot[index]
        add = jnp.stack([jnp.zeros_like(tilt), tilt, rot + self.axis_rad], -1)
        return euler_rad + add.astype(euler_rad.dtype)


def fitted(config) -> dict[str, bool]:
    """Which pose groups (and the shifts) a config fits: their learning rate is > 0."""
    return {
        "tilt": config.lr_tilt_deg > 0,
        "rotation": config.lr_rotation_deg > 0,
        "axis": config.lr_axis_deg > 0,
        "shifts": config.lr_drift_A > 0,
    }


def has_depth(tree) -> bool:
    """Whether a Params-like tree renders with depth (a probe: rigid or adaptive), where
    the shifts' w matters; in direct mode (with or without its profile tail, whose
    kernel has no depth) it has no effect."""
    return tree.probe is not None and getattr(tree.probe, "has_depth", True)


def wanted(config) -> bool:
    """Whether a fit with ``config`` needs a :class:`Pose` (any angle group fitted)."""
    f = fitted(config)
    return f["tilt"] or f["rotation"] or f["axis"]


# ------------------------------------------------------------------------------ gauge


def _mean(x, weights):
    if weights is None:
        return jnp.mean(x, 0)
    w = weights.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.sum(w * x, 0) / jnp.maximum(jnp.sum(w), 1)


def translation_of_shifts(drift_A, rotations, depth: bool, weights=None):
    """The object translation t (3,) whose images' shifts R_j t fit ``drift_A`` best
    (least squares over (u, v), and w when ``depth``): the common part of the shifts."""
    comps = 3 if depth else 2
    proj = rotations[:, :comps, :]  # (m, c, 3): the image-frame rows that matter
    w = jnp.ones(drift_A.shape[0], drift_A.dtype) if weights is None else weights
    w = w.astype(drift_A.dtype)
    gram = jnp.einsum("m,mci,mcj->ij", w, proj, proj)
    rhs = jnp.einsum("m,mci,mc->i", w, proj, drift_A[:, :comps])
    # a ridge for tilt ranges that leave a direction unseen (all tilts 0: z); it leaves
    # 1e-6 of t behind, which the next step removes
    ridge = 1e-6 * jnp.trace(gram) / 3 + jnp.finfo(drift_A.dtype).tiny
    return spd_inverse(gram + ridge * jnp.eye(3, dtype=gram.dtype)) @ rhs


def fix_gauge(diff, euler_rad, config, depth: bool, weights=None):
    """``diff`` (a :class:`atomjax.fit.Params`-like tree) with the gauge fixed (module
    docstring): zero-mean tilt and rotation offsets, the shifts' common translation in
    the atoms. Only the groups that ``config`` fits are touched; with the positions
    frozen (``lr_positions_A`` = 0: a given model refitted) the atoms fix the frame
    themselves, and only the rotations' mean still goes into the axis."""
    f = fitted(config)
    moving = config.lr_positions_A > 0
    pose = diff.pose
    atoms = diff.atoms
    pos = atoms.positions_A
    if pose is not None and f["tilt"] and moving:
        mean = _mean(pose.tilt_offsets_rad, weights)
        single_axis = jnp.all(euler_rad[:, 0] == 0)
        # image j sees R_y(θ_j + δθ_j) x = R_y(θ_j + δθ_j − mean) R_y(mean) x
        about_y = geometry.rotation_matrix(jnp.stack([0 * mean, mean, 0 * mean]))
        turned = pos @ about_y.T.astype(pos.dtype)
        pos = jnp.where(single_axis, turned, pos)
        pose = eqx.tree_at(lambda p: p.tilt_offsets_rad, pose, pose.tilt_offsets_rad - mean)
    if pose is not None and f["rotation"]:
        mean = _mean(pose.rotation_offsets_rad, weights)
        pose = eqx.tree_at(
            lambda p: (p.rotation_offsets_rad, p.axis_rad),
            pose,
            (pose.rotation_offsets_rad - mean, pose.axis_rad + mean),
        )
    drift = diff.drift_A
    if f["shifts"] and moving:
        euler = euler_rad if pose is None else pose.euler(euler_rad)
        rotations = geometry.rotation_matrix(euler).astype(drift.dtype)
        t = translation_of_shifts(drift, rotations, depth, weights)
        # (u, v, w) = R_j x + d_j = R_j (x + t) + (d_j − R_j t)
        drift = drift - jnp.einsum("mij,j->mi", rotations, t)
        pos = pos + t.astype(pos.dtype)
    out = eqx.tree_at(lambda d: (d.atoms.positions_A, d.drift_A), diff, (pos, drift))
    if diff.pose is not None:
        out = eqx.tree_at(lambda d: d.pose, out, pose)
    return out


# ------------------------------------------------------------------ Gauss–Newton step

#: the per-image pose columns, in the order of the blocks
COLUMNS = ("tilt", "rotation", "u", "v", "w")


def columns(config, depth: bool) -> tuple[str, ...]:
    """The per-image columns a config fits (w only in the depth modes)."""
    f = fitted(config)
    on = {"tilt": f["tilt"], "rotation": f["rotation"], "u": f["shifts"], "v": f["shifts"],
          "w": f["shifts"] and depth}  # fmt: skip
    return tuple(c for c in COLUMNS if on[c])


def _tangent(diff, column: str):
    """A tangent shaped like ``diff``: 1 in ``column`` of every image, 0 elsewhere."""
    zero = jax.tree.map(jnp.zeros_like, diff)
    if column == "tilt":
        return eqx.tree_at(lambda d: d.pose.tilt_offsets_rad, zero,
                           jnp.ones_like(diff.pose.tilt_offsets_rad))  # fmt: skip
    if column == "rotation":
        return eqx.tree_at(lambda d: d.pose.rotation_offsets_rad, zero,
                           jnp.ones_like(diff.pose.rotation_offsets_rad))  # fmt: skip
    if column == "axis":
        return eqx.tree_at(lambda d: d.pose.axis_rad, zero, jnp.ones_like(diff.pose.axis_rad))
    k = "uvw".index(column)
    return eqx.tree_at(lambda d: d.drift_A, zero, jnp.zeros_like(diff.drift_A).at[:, k].set(1))


def _apply_step(diff, cols, delta, delta_axis):
    """``diff`` moved by per-image steps ``delta`` (m, len(cols)) and the axis step."""
    out = diff
    for i, c in enumerate(cols):
        if c == "tilt":
            out = eqx.tree_at(lambda d: d.pose.tilt_offsets_rad, out,
                              out.pose.tilt_offsets_rad + delta[:, i])  # fmt: skip
        elif c == "rotation":
            out = eqx.tree_at(lambda d: d.pose.rotation_offsets_rad, out,
                              out.pose.rotation_offsets_rad + delta[:, i])  # fmt: skip
        else:
            k = "uvw".index(c)
            out = eqx.tree_at(lambda d: d.drift_A, out, out.drift_A.at[:, k].add(delta[:, i]))
    if delta_axis is not None:
        out = eqx.tree_at(lambda d: d.pose.axis_rad, out, out.pose.axis_rad + delta_axis)
    return out


def normal_equations(images_of, diff, resid, weight, cols, with_axis: bool):
    """The pose's Gauss–Newton terms at ``diff``: per-image blocks A (m, k, k) and
    gradients g (m, k) of ½ Σ w r², and for the axis its column's couplings b (m, k),
    c_j (m,) and g_α,j (m,) (None without the axis). ``images_of(diff)`` → (m, nu, nv)."""
    names = list(cols) + (["axis"] if with_axis else [])
    _, f_jvp = jax.linearize(images_of, diff)
    jac = jnp.stack([f_jvp(_tangent(diff, c)) for c in names], 1)  # (m, K, nu, nv)
    wj = jac if weight is None else jac * weight[:, None]
    full = jnp.einsum("mapq,mbpq->mab", wj, jac)
    grad = jnp.einsum("mapq,mpq->ma", wj, resid)
    k = len(cols)
    if not with_axis:
        return full, grad, None
    return full[:, :k, :k], grad[:, :k], (full[:, :k, k], full[:, k, k], grad[:, k])


def solve_step(blocks, grad, axis_terms, lam):
    """The damped Gauss–Newton step: (δ (m, k), δα or None), minimising
    Σ_j [g_jᵀδ_j + ½ δ_jᵀ(A_j + λ diag A_j)δ_j] (+ the axis's coupled terms, the axis
    eliminated by its Schur complement)."""
    k = blocks.shape[-1]
    eye = jnp.eye(k, dtype=blocks.dtype)
    diag = jnp.diagonal(blocks, axis1=1, axis2=2)
    damped = blocks + lam * eye * diag[:, :, None]
    inverse = spd_inverse(damped) if k else damped  # k = 0: the axis alone, empty blocks
    a_inv_g = jnp.einsum("mij,mj->mi", inverse, grad)
    if axis_terms is None:
        return -a_inv_g, None
    b, c, g_axis = axis_terms
    a_inv_b = jnp.einsum("mij,mj->mi", inverse, b)
    c_total = jnp.sum(c) * (1 + lam)
    schur = c_total - jnp.sum(b * a_inv_b)
    rhs = -jnp.sum(g_axis) + jnp.sum(b * a_inv_g)
    delta_axis = jnp.where(schur > 0, rhs / jnp.where(schur > 0, schur, 1), 0.0)
    return -a_inv_g - a_inv_b * delta_axis, delta_axis


def pose_step(images_of, diff, resid, weight, config, depth: bool, lam):
    """One damped Gauss–Newton step of the pose at ``diff`` (residual ``resid`` = model −
    observed, Poisson weight or None): (the moved ``diff``, the predicted decrease of the
    loss, ½ Σ w r² / N). The axis is fitted here only when the in-plane rotations are not
    (they hold it, the gauge moving their mean into α); alone, it is the Schur step of
    empty per-image blocks."""
    cols = columns(config, depth)
    f = fitted(config)
    with_axis = f["axis"] and not f["rotation"]
    if not cols and not with_axis:
        return diff, jnp.zeros((), resid.dtype)  # nothing to fit
    blocks, grad, axis_terms = normal_equations(images_of, diff, resid, weight, cols, with_axis)
    delta, delta_axis = solve_step(blocks, grad, axis_terms, lam)
    quad = jnp.einsum("mi,mij,mj->", delta, blocks, delta)
    lin = jnp.sum(grad * delta)
    if axis_terms is not None:
        b, c, g_axis = axis_terms
        quad = quad + 2 * delta_axis * jnp.sum(b * delta) + jnp.sum(c) * delta_axis**2
        lin = lin + jnp.sum(g_axis) * delta_axis
    return _apply_step(diff, cols, delta, delta_axis), -(lin + 0.5 * quad) / resid.size


@eqx.filter_jit
def _fisher_blocks(params, euler_rad, setup, weight, cols: tuple[str, ...]):
    diff, static = eqx.partition(params, eqx.is_inexact_array)

    def images_of(d):
        return eqx.combine(d, static).images(euler_rad, setup)

    no_residual = jnp.zeros((euler_rad.shape[0], *setup.image_shape), euler_rad.dtype)
    blocks, _, _ = normal_equations(images_of, diff, no_residual, weight, cols, False)
    return blocks


def sigmas(params, euler_rad, setup, config, weight) -> dict[str, np.ndarray] | None:
    """Each image's standard deviations of its fitted pose columns, from its Fisher block
    Jᵀ W J (W = ``weight``, 1 / the pixel variance, :func:`atomjax.uncertainty.pixel_weights`)
    with the atoms held at their values: {"tilt_deg", "rotation_deg", "u_A", "v_A",
    "w_A"} for the columns fitted (None: none). What noise alone would leave; a pose
    error well above it is model error."""
    cols = columns(config, has_depth(params))
    if not cols:
        return None
    blocks = _fisher_blocks(params, euler_rad, setup, weight, cols)
    var = np.clip(np.diagonal(np.asarray(spd_inverse(blocks)), axis1=1, axis2=2), 0, None)
    out = {}
    for i, c in enumerate(cols):
        sd = np.sqrt(var[:, i])
        out[{"tilt": "tilt_deg", "rotation": "rotation_deg"}.get(c, f"{c}_A")] = (
            np.rad2deg(sd) if c in ("tilt", "rotation") else sd
        )
    return out


# --------------------------------------------------------------------- host side


def rate_in_rad(field: str, value: float) -> float:
    """A learning rate in the parameter's own unit (the angle groups are fitted in
    radians; their rates are given in degrees)."""
    return value * math.pi / 180 if field in DEGREE_FIELDS else value
