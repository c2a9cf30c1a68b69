"""Levenberg–Marquardt refinement of the atoms, with per-atom preconditioning.

The model images are nearly linear in each atom's parameters near the answer, and
atoms are nearly independent of each other, so Gauss–Newton steps converge in tens of
iterations where first-order steps need hundreds. One iteration, inside jit:

1. the residual r = I(θ) - I_obs and its linearisation J (``jax.linearize``); the
   gradient Jᵀr / N and the loss from the same forward pass;
2. the damped normal equations (JᵀJ + λ·diag(D)) δ = -Jᵀr, solved by conjugate
   gradients on exact J and Jᵀ products, preconditioned by the per-atom 5 × 5 blocks D
   of :func:`atomjax.blocks.atom_blocks` (a diagonal for the per-image background);
   with ``lm_cg_iterations=0`` the step is the block-Jacobi one, δ = -(D + λ·diag D)⁻¹ Jᵀr;
3. the trial θ + δ, projected onto the bounds (widths, amplitudes ≥ 0); accepted when
   its loss is lower, λ then shrinks by Nielsen's rule from the gain ratio ρ (actual /
   predicted decrease), else λ grows and θ stays.

What it fits: the atoms (positions, widths, amplitudes) and the per-image background,
each group unless its learning rate is 0 (frozen, as for Adam); and, when the settings
fit them, the per-image pose and shifts (:mod:`atomjax.pose`): after every atom step a
damped Gauss–Newton step of the pose, one small block per image, with its own damping
and its own acceptance test. Losses: "mse" (the
normal equations of the sum of squares) and "poisson" (Fisher scoring: the same
equations weighted by 1 / model intensity, i.e. iteratively reweighted least squares).
The driver picks it through :mod:`atomjax.optimizers`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from . import fit
from . import pose as pose_lib
from .batched_linalg import spd_inverse
from .blocks import N_PARAMS, atom_blocks
from .loss import LOSSES, poisson_weights

LM_LOSSES = ("mse", "poisson")
_ATOM_FIELDS = ("positions_A", "widths_A2", "amplitudes")
_ATOM_GROUPS = ("positions", "positions", "positions", "widths", "amplitudes")
_LAMBDA_RANGE = (1e-9, 1e9)


class LMState(eqx.Module):
    """The damping λ and its growth factor ν (Nielsen), for the atoms and (None when
    the pose is not fitted) for the pose."""

    lam: jax.Array
    nu: jax.Array
    pose_lam: jax.Array | None = None
    pose_nu: jax.Array | None = None

    @classmethod
    def create(cls, config: fit.OptimConfig, dtype) -> LMState:
        lam, nu = jnp.asarray(config.lm_lambda0, dtype), jnp.asarray(2.0, dtype)
        if any(pose_lib.fitted(config).values()):
            return cls(lam, nu, lam, nu)
        return cls(lam, nu)


def _pack(tree) -> tuple[jax.Array, jax.Array | None]:
    """(atoms (n, 5): x, y, z, B, H; background (m,) or None) of a Params-like tree."""
    a = tree.atoms
    atoms = jnp.concatenate([a.positions_A, a.widths_A2[:, None], a.amplitudes[:, None]], 1)
    return atoms, tree.background


def _unpack(diff, atoms, background):
    """A tangent shaped like ``diff``: zero but for the atoms and the background."""
    zero = jax.tree.map(jnp.zeros_like, diff)
    new = eqx.tree_at(
        lambda d: (d.atoms.positions_A, d.atoms.widths_A2, d.atoms.amplitudes),
        zero,
        (atoms[:, :3], atoms[:, 3], atoms[:, 4]),
    )
    if background is not None:
        new = eqx.tree_at(lambda d: d.background, new, background)
    return new


def _masks(params: fit.Params, rates: fit.Rates):
    """(n, 5) and (m,) or None: 1 where LM moves a parameter (alive atom, group not frozen)."""
    lr = rates.as_dict()
    group = jnp.asarray([lr.get(g, 0.0) > 0 for g in _ATOM_GROUPS], params.atoms.positions_A.dtype)
    atoms = params.atoms.alive[:, None].astype(group.dtype) * group
    bg = None
    if params.background is not None:
        bg = jnp.full(params.background.shape, float(lr.get("background", 0.0) > 0), group.dtype)
    return atoms, bg


@eqx.filter_jit
def run_steps(params: fit.Params, state: LMState, keys, observed, euler_rad, setup,
              config: fit.OptimConfig, rates: fit.Rates):  # fmt: skip
    """``len(keys)`` Levenberg–Marquardt iterations in one compiled scan (the keys only
    count the steps: LM draws nothing). Returns (params, state, losses, n_rejected);
    loss s is the loss before iteration s, as for Adam."""
    diff0, static = fit.trainable(params)
    n_pix = observed.size
    mask_atoms, mask_bg = _masks(params, rates)
    dtype = observed.dtype
    poisson = config.loss == "poisson"

    def images(d):
        return eqx.combine(d, static).images(euler_rad, setup)

    def loss_of(calc):
        return LOSSES[config.loss](observed, calc)

    def step(carry, _):
        d, lam, nu, n_bad, pose_damping = carry
        calc, f_jvp = jax.linearize(images, d)
        f_vjp = jax.linear_transpose(f_jvp, d)
        loss0 = loss_of(calc)
        if poisson:  # Fisher scoring: residual and curvature weighted by 1 / model
            weight = poisson_weights(calc)
            resid = (calc - observed) * weight
        else:
            weight = None
            resid = calc - observed
        g_atoms, g_bg = _pack(f_vjp(resid)[0])
        g_atoms = g_atoms * mask_atoms / n_pix
        g_bg = None if g_bg is None else g_bg * mask_bg / n_pix

        p = eqx.combine(d, static)
        seen = p.euler(euler_rad)
        if poisson:  # the blocks at the mean weight of the images
            blocks = atom_blocks(p.atoms, seen, p.drift_A, setup, jnp.mean(weight, (1, 2)))
            bg_diag = jnp.sum(weight, (1, 2)) / n_pix
        else:
            blocks = atom_blocks(p.atoms, seen, p.drift_A, setup)
            bg_diag = jnp.full(observed.shape[0], observed[0].size, dtype) / n_pix
        blocks = blocks / n_pix
        # frozen or dead parameters: an identity row and column, no step
        outer = mask_atoms[:, :, None] * mask_atoms[:, None, :]
        eye = jnp.eye(N_PARAMS, dtype=dtype)
        scale = jnp.maximum(jnp.diagonal(blocks, axis1=1, axis2=2), 1e-30)
        blocks = blocks * outer + eye * (1 - outer) * scale[:, :, None]
        diag = jnp.diagonal(blocks, axis1=1, axis2=2)

        def gn(v_atoms, v_bg):
            jv = f_jvp(_unpack(d, v_atoms * mask_atoms, None if v_bg is None else v_bg * mask_bg))
            if weight is not None:
                jv = jv * weight
            a, b = _pack(f_vjp(jv)[0])
            return a * mask_atoms / n_pix, None if b is None else b * mask_bg / n_pix

        def apply(v):  # (JᵀWJ + λ diag) v
            a, b = gn(*v)
            a = a + lam * diag * v[0]
            if b is not None:
                b = b + lam * bg_diag * v[1]
            return a, b

        inverse = spd_inverse(blocks + lam * eye * diag[:, :, None])  # no LAPACK: batched_linalg

        def precondition(v):
            a = jnp.einsum("nij,nj->ni", inverse, v[0]) * mask_atoms
            b = None if v[1] is None else v[1] / ((1 + lam) * bg_diag) * mask_bg
            return a, b

        rhs = (-g_atoms, None if g_bg is None else -g_bg)
        x, x_ax = _pcg(apply, precondition, rhs, config.lm_cg_iterations, config.lm_cg_tol)
        x_atoms, x_bg = x

        # the quadratic model's decrease: -gᵀx - ½ xᵀ(JᵀWJ)x, xᵀ(JᵀWJ)x = xᵀAx - λ xᵀ diag x
        damping = jnp.sum(diag * x_atoms**2)
        if x_bg is not None:
            damping = damping + jnp.sum(bg_diag * x_bg**2)
        predicted = -(_dot((g_atoms, g_bg), x)) - 0.5 * (x_ax - lam * damping)
        trial = project(eqx.apply_updates(d, _unpack(d, x_atoms, x_bg)))
        calc1 = images(trial)
        loss1 = loss_of(calc1)
        d, lam_new, nu_new, ok = _accept(d, trial, loss0, loss1, predicted, lam, nu)
        n_bad = n_bad + (~ok).astype(jnp.int32)
        if pose_damping is not None:  # then the pose, from where the atoms are now
            calc_d = jnp.where(ok, calc1, calc)
            loss_d = jnp.where(ok, loss1, loss0)
            d, pose_damping = _pose_iteration(d, calc_d, loss_d, pose_damping)
        return (d, lam_new, nu_new, n_bad, pose_damping), loss0

    def project(trial):
        return fit._project(trial, config, setup, static.atoms.alive, euler_rad)

    def _accept(d, trial, loss0, loss1, predicted, lam, nu):
        """Nielsen's rule: the trial kept when it lowers the loss, λ adapted."""
        ok = jnp.isfinite(loss1) & (loss1 < loss0) & fit._all_finite(trial)
        rho = (loss0 - loss1) / jnp.maximum(predicted, jnp.finfo(dtype).tiny)
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
        lam_new = jnp.clip(jnp.where(ok, lam * shrink, lam * nu), *_LAMBDA_RANGE)
        nu_new = jnp.where(ok, 2.0, 2.0 * nu)
        d = jax.tree.map(lambda new, old: jnp.where(ok, new, old), trial, d)
        return d, lam_new, nu_new, ok

    depth = pose_lib.has_depth(diff0)

    def _pose_iteration(d, calc_d, loss_d, damping):
        lam_p, nu_p = damping
        weight_p = poisson_weights(calc_d) if poisson else None
        trial, predicted = pose_lib.pose_step(images, d, calc_d - observed, weight_p, config,
                                              depth, lam_p)  # fmt: skip
        trial = project(trial)
        d, lam_p, nu_p, _ = _accept(d, trial, loss_d, loss_of(images(trial)), predicted,
                                    lam_p, nu_p)  # fmt: skip
        return d, (lam_p, nu_p)

    pose_damping0 = None if state.pose_lam is None else (state.pose_lam, state.pose_nu)
    init = (diff0, state.lam, state.nu, jnp.asarray(0, jnp.int32), pose_damping0)
    (diff, lam, nu, n_bad, pose_damping), losses = jax.lax.scan(step, init, keys)
    pose_state = (None, None) if pose_damping is None else pose_damping
    return eqx.combine(diff, static), LMState(lam, nu, *pose_state), losses, n_bad


def _dot(a, b):
    total = jnp.sum(a[0] * b[0])
    if a[1] is not None:
        total = total + jnp.sum(a[1] * b[1])
    return total


def _axpy(alpha, x, y):
    return tuple(None if xi is None else yi + alpha * xi for xi, yi in zip(x, y, strict=True))


def _pcg(apply, precondition, rhs, n_iter: int, tol: float):
    """Preconditioned conjugate gradients for apply(x) = rhs from x = 0, at most
    ``n_iter`` iterations, stopping once |residual| ≤ tol·|rhs|: (x, xᵀ apply(x)), the
    latter summed from the iterations (Σ α_k r_kᵀz_k over A-conjugate directions).
    n_iter = 0 returns the preconditioned right-hand side (the block-Jacobi step) and
    rhsᵀ precondition(rhs), the preconditioner standing in for the operator."""
    z = precondition(rhs)
    if n_iter == 0:
        return z, _dot(rhs, z)
    zero = jax.tree.map(jnp.zeros_like, rhs)
    norm_b = jnp.sqrt(_dot(rhs, rhs))

    def cond(c):
        k, _, r, _, _, _, _ = c
        return (k < n_iter) & (jnp.sqrt(_dot(r, r)) > tol * norm_b)

    def body(c):
        k, x, r, z, p, rz, x_ax = c
        ap = apply(p)
        alpha = rz / jnp.maximum(_dot(p, ap), jnp.finfo(norm_b.dtype).tiny)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        z = precondition(r)
        rz_new = _dot(r, z)
        p = _axpy(rz_new / jnp.maximum(rz, jnp.finfo(norm_b.dtype).tiny), p, z)
        return k + 1, x, r, z, p, rz_new, x_ax + alpha * rz

    rz0 = _dot(rhs, z)
    start = (jnp.asarray(0), zero, rhs, z, z, rz0, jnp.zeros_like(rz0))
    out = jax.lax.while_loop(cond, body, start)
    return out[1], out[6]
