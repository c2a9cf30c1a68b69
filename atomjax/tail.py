"""The atoms' profile tail in direct mode: one fitted isotropic kernel per series.

A projected atomic potential, or a HAADF probe, is not a Gaussian: it has a narrow core
and a wider tail. Fitted with one Gaussian per atom, the tail is left in the residual,
and where two atoms' footprints overlap the residual of one pulls on the other. That
pull depends on how the atoms line up in each image, so it biases what is fitted per
image: the tilt angles (measured in ``benchmarks/bench_alignment.py``: 0.13° RMS with
the exact model at its minimum, from the profile alone) and the positions.

The kernel k = (1 − w)·δ + w·G(ΔB), G(ΔB) ∝ exp(−r² / ΔB) normalised to sum 1, turns
every atom H·exp(−r² / B) into the two-Gaussian profile

    H·[(1 − w)·exp(−r² / B) + w·B / (B + ΔB)·exp(−r² / (B + ΔB))],

with its integrated intensity H·π·B unchanged. The share w and the extra width ΔB are
shared by all atoms and fitted (:func:`refine`: Gauss–Newton steps on the two, with the
atoms held). The renderer applies it to each direct-mode image
(:meth:`TailKernel.image_operator`: one FFT pair per image), and it has no depth:
:attr:`TailKernel.has_depth` is False.

Fitting one Gaussian to a single atom of the fast protocol (abTEM projected potential
+ 0.5 Å blur, 0.35 Å pixels) leaves 3.1 % (Au) to 5.4 % (Ni) of the image in the
residual; this profile with ΔB = 1 Å² and the best w leaves 0.24–0.41 %, w being
0.26 (Au), 0.32 (Pt), 0.47 (Ni) and 0.54 (Si).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .batched_linalg import spd_inverse
from .loss import LOSSES, poisson_weights

#: where the fit starts: the share and extra width measured on Au and Pt (docstring)
SHARE0 = 0.3
WIDTH0_A2 = 1.0
#: the bounds the fit keeps: the share in (0, 1), the extra width within these (Å²)
SHARE_LOGIT_LIMIT = 8.0
WIDTH_RANGE_A2 = (0.05, 8.0)
#: Gauss–Newton steps on the kernel after each piece of atom steps (a phase has up to 10)
ITERATIONS = 1
#: their damping, relative to the diagonal of the 2 × 2 normal matrix
DAMPING = 1e-3


class TailKernel(eqx.Module):
    """The kernel (1 − w)·δ + w·G(ΔB) on direct mode's images; w = sigmoid(``share_logit``),
    ΔB = exp(``log_width_A2``)."""

    share_logit: jax.Array
    log_width_A2: jax.Array

    #: the kernel is the same at every depth (pose: the shifts' w has no effect)
    has_depth = False

    @classmethod
    def create(cls, share: float = SHARE0, width_A2: float = WIDTH0_A2, dtype=None) -> TailKernel:
        if not 0.0 < share < 1.0:
            raise ValueError(f"the tail's share must lie in (0, 1), got {share}")
        lo, hi = WIDTH_RANGE_A2
        if not lo <= width_A2 <= hi:
            raise ValueError(f"the tail's width must lie in [{lo}, {hi}] Å², got {width_A2}")
        dtype = dtype or jnp.asarray(0.0).dtype
        logit = math.log(share / (1.0 - share))
        return cls(jnp.asarray(logit, dtype), jnp.asarray(math.log(width_A2), dtype))

    @property
    def share(self) -> jax.Array:
        return jax.nn.sigmoid(self.share_logit)

    @property
    def width_A2(self) -> jax.Array:
        return jnp.exp(self.log_width_A2)

    def image_operator(self, setup, dtype):
        """image ↦ (1 − w)·image + w·max(G ⊛ image, 0) for (nu, nv) images: G by its
        Fourier transform exp(−π²·ΔB·|k|²), computed once. The convolution is circular
        (an atom 4 Å from an edge puts ~2e-5 of its peak on the opposite one); the clamp
        removes the FFT's round-off below zero, where the Poisson loss clips the model,
        and the core's share stays exact (no round-off far from atoms)."""
        nu, nv = setup.image_shape
        ku = jnp.fft.fftfreq(nu, d=setup.pixel_size_A).astype(dtype)[:, None]
        kv = jnp.fft.rfftfreq(nv, d=setup.pixel_size_A).astype(dtype)[None, :]
        g_ft = jnp.exp(-(jnp.pi**2) * self.width_A2.astype(dtype) * (ku**2 + kv**2))
        w = self.share.astype(dtype)

        def apply(image):
            wide = jnp.fft.irfft2(jnp.fft.rfft2(image) * g_ft, s=(nu, nv))
            return (1.0 - w) * image + w * jnp.maximum(wide, 0.0)

        return apply

    def describe(self) -> dict[str, float]:
        return {"share": float(self.share), "width_A2": float(self.width_A2)}


def _theta(kernel: TailKernel) -> jax.Array:
    return jnp.stack([kernel.share_logit, kernel.log_width_A2])


def _with_theta(params, theta):
    return eqx.tree_at(lambda p: (p.probe.share_logit, p.probe.log_width_A2), params,
                       (theta[0], theta[1]))  # fmt: skip


def _clip(theta):
    lo, hi = WIDTH_RANGE_A2
    return jnp.stack([
        jnp.clip(theta[0], -SHARE_LOGIT_LIMIT, SHARE_LOGIT_LIMIT),
        jnp.clip(theta[1], math.log(lo), math.log(hi)),
    ])  # fmt: skip


@eqx.filter_jit
def refine(params, observed, euler_rad, setup, loss: str, n_iter: int = ITERATIONS):
    """``params`` with its :class:`TailKernel` moved by ``n_iter`` damped Gauss–Newton
    steps on (logit w, log ΔB), everything else held; a step is kept only where it
    lowers the fit's loss. "mse": the normal equations of the sum of squares;
    "poisson": weighted by 1 / model intensity (Fisher scoring), as
    :mod:`atomjax.levenberg` does for the atoms."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
    loss_fn = LOSSES[loss]

    def images(theta):
        return _with_theta(params, theta).images(euler_rad, setup)

    def step(theta, _):
        calc, f_jvp = jax.linearize(images, theta)
        jac = jax.vmap(f_jvp)(jnp.eye(2, dtype=theta.dtype))  # (2, m, nu, nv)
        resid = calc - observed
        wj = jac * poisson_weights(calc) if loss == "poisson" else jac
        a = jnp.einsum("imuv,jmuv->ij", wj, jac)
        g = jnp.einsum("imuv,muv->i", wj, resid)
        delta = -spd_inverse(a + DAMPING * jnp.diag(jnp.diagonal(a))) @ g
        trial = _clip(theta + delta)
        ok = loss_fn(observed, images(trial)) < loss_fn(observed, calc)
        ok = ok & jnp.all(jnp.isfinite(trial))
        return jnp.where(ok, trial, theta), ok

    theta, _ = jax.lax.scan(step, _theta(params.probe), None, length=n_iter)
    return _with_theta(params, theta)


def profile(width_A2, share, tail_width_A2, r_A) -> np.ndarray:
    """The two-Gaussian profile of an atom of width B and peak 1 at radii ``r_A``."""
    b, w, db = float(width_A2), float(share), float(tail_width_A2)
    r2 = np.asarray(r_A, float) ** 2
    return (1 - w) * np.exp(-r2 / b) + w * b / (b + db) * np.exp(-r2 / (b + db))


__all__ = ["SHARE0", "WIDTH0_A2", "TailKernel", "profile", "refine"]
