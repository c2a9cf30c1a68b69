"""Which atoms do the data support? A likelihood test on every atom, vectorised.

Atom i adds c_i = H_i · t_i to the images, t_i = g(u) g(v) its unit-amplitude footprint
(:mod:`atomjax.blocks`). The test asks what the atom is worth to the fit's own
likelihood: how much −2 log L rises when c_i leaves the model, everything else held,

    Gaussian:  Δχ²_i = Σ w ((r + c_i)² − r²),   w = 1/σ², r = I_obs − I(θ),
    Poisson:   Δχ²_i = 2 κ Σ (y log(μ / (μ − c_i)) − c_i)   (counts κ·y of mean κ·μ),

with the noise variance σ²(μ) = a + b·μ, or κ = 1/b, fitted to the residual
(:func:`atomjax.uncertainty.noise_model`), and z_i = sign · √|Δχ²_i|. A candidate (a
peak of the back-projected residual, amplitude 0) gets the score test of the same
hypothesis, z = s / √f with s = Σ w r t and f = Σ w t² (the per-image backgrounds
eliminated; w = κ/μ for counts), whose null distribution is a standard normal at a
fixed position (tested); its best amplitude is s / f.

An atom stays, and a candidate becomes an atom, when z ≥ z*. The positions searched are
many and every atom carries 5 fitted parameters, so z* is not the 2-3 a single fixed
position would need: by default it is the Bayesian information criterion's price of an
atom, Δχ² ≥ 5 ln N over N pixels (z* ≈ 8 for 47 images of 96² pixels), or
``adapt.significance_z``. Measured on the detection benchmark
(``benchmarks/bench_detection.py``): on a Ni/Pd/Pt alloy the atoms the fit made of
model error sit at z 5-12 and the true ones above 30.

Every sum runs over each atom's window in one scan over the images, all atoms at once,
so the cost is linear in atoms and candidates. The footprints are those of direct
projection (the probe's blur in the rigid and adaptive modes is not in t_i, as in
:mod:`atomjax.uncertainty`).

The rules deciding which atoms stay and which candidates are added sit behind one
small interface (:class:`Rule`): :class:`LikelihoodRule` (this test, the default) and
:class:`ThresholdRule` (the earlier rule: a fraction of the 90th percentile of H·B to
stay, a multiple of the back-projection's robust σ and half the median amplitude to be
added), so :mod:`atomjax.adapt_step` never branches on which one it holds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy
from jaxtyping import Array, Float

from . import adapt, geometry
from .atoms import Atoms
from .blocks import N_PARAMS
from .loss import POISSON_FLOOR
from .uncertainty import noise_model, pixel_weights, window_setup

__all__ = [
    "LikelihoodRule",
    "Rule",
    "ThresholdRule",
    "amplitude_sums",
    "make_rule",
    "significance",
]

RULES = adapt.DETECTION_RULES


@functools.partial(jax.jit, static_argnames=("uniform", "poisson"))
def amplitude_sums(
    atoms: Atoms,
    euler_rad: Float[Array, "m 3"],
    drift_A: Float[Array, "m 3"],
    observed: Float[Array, "m nu nv"],
    calc: Float[Array, "m nu nv"],
    weights: Float[Array, "m nu nv"],
    setup,
    uniform: bool = False,
    poisson: bool = False,
    counts_per_unit: float = 1.0,
) -> tuple[Array, Array, Array]:
    """(s, f, drop) per atom (n,) over every image, t_i the unit-amplitude direct
    footprint on the atom's window and r = observed − calc:

    * s_i = Σ w r t_i and f_i = Σ w t_i², the image's background eliminated
      (s − b·Σwr/Σw, f − b²/Σw with b = Σ w t_i);
    * drop_i: how much the negative log-likelihood rises when the atom's contribution
      c_i = H_i t_i leaves the model, everything else held: Σ w (r c + c²/2) (Gaussian),
      or κ Σ (y log(μ / (μ − c)) − c) (``poisson``: counts κ·y of mean κ·μ, μ clipped at
      :data:`atomjax.loss.POISSON_FLOOR` as in the loss).

    ``uniform``: one weight for every pixel (Gaussian noise), so f and b are products of
    1-D sums. Dead atoms: 0."""
    pos, widths, amps = atoms.masked()
    ps, rad = setup.pixel_size_A, setup.radius_px
    nu, nv = setup.image_shape
    steps = jnp.arange(-rad, rad + 1)
    rotations = geometry.rotation_matrix(euler_rad)

    def profile(coord, n_pix):
        centre = jnp.round(jax.lax.stop_gradient(coord) / ps)[:, None] + steps  # pixel - n//2
        inside = (centre >= -(n_pix // 2)) & (centre < n_pix - n_pix // 2)
        g = jnp.where(inside, jnp.exp(-((centre * ps - coord[:, None]) ** 2) / widths[:, None]), 0)
        index = jnp.clip(centre + n_pix // 2, 0, n_pix - 1).astype(jnp.int32)
        return g, index

    def view(total, data):
        rot, drift, y_img, mu_img, w_img = data
        uvw = pos @ rot.T + drift
        gu, iu = profile(uvw[:, 0], nu)
        gv, iv = profile(uvw[:, 1], nv)
        window = lambda img: img[iu[:, :, None], iv[:, None, :]]  # noqa: E731  (n, w, w)
        wr = w_img * (y_img - mu_img)
        w_sum, wr_sum = jnp.sum(w_img), jnp.sum(wr)
        s = jnp.einsum("na,nab,nb->n", gu, window(wr), gv)
        if uniform:
            w0 = w_img[0, 0]
            f = w0 * jnp.sum(gu**2, 1) * jnp.sum(gv**2, 1)
            b = w0 * jnp.sum(gu, 1) * jnp.sum(gv, 1)
        else:
            w_win = window(w_img)
            f = jnp.einsum("na,nab,nb->n", gu**2, w_win, gv**2)
            b = jnp.einsum("na,nab,nb->n", gu, w_win, gv)
        if poisson:
            c = amps[:, None, None] * gu[:, :, None] * gv[:, None, :]
            mu = jnp.maximum(window(mu_img), POISSON_FLOOR)
            mu0 = jnp.maximum(mu - c, POISSON_FLOOR)
            drop = counts_per_unit * jnp.sum(xlogy(window(y_img), mu / mu0) - (mu - mu0), (1, 2))
        else:
            drop = amps * s + 0.5 * amps**2 * f
        s_total, f_total, d_total = total
        return (s_total + s - b * wr_sum / w_sum, f_total + f - b**2 / w_sum, d_total + drop), None

    zero = jnp.zeros(pos.shape[0], pos.dtype)
    data = (rotations, drift_A.astype(pos.dtype), observed, calc, weights)
    (s, f, drop), _ = jax.lax.scan(view, (zero, zero, zero), data)
    live = lambda x: jnp.where(atoms.alive, x, 0.0)  # noqa: E731
    return live(s), live(f), live(drop)


def significance(positions_A, widths_A2, amplitudes, observed, calc, euler_rad, drift_A,
                 setup, loss: str = "mse",
                 noise: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Each atom's z (see the module docstring) against the images ``observed`` and the
    model's ``calc`` (the atoms' own contribution included), for atoms at ``positions_A``
    (n, 3) Å with widths (Å²) and amplitudes (n,). An atom of amplitude > 0 gets the
    signed root of twice the rise in the fit's negative log-likelihood (``loss``: "mse"
    or "poisson") when it is removed; a candidate (amplitude 0) the score z = s / √f.
    ``noise``: the noise model (None: fitted to observed − calc). Returns ``{"z",
    "amplitude" (the best amplitude with everything else held), "information" (f)}``,
    (n,) arrays, and ``"noise"``."""
    pos = np.asarray(positions_A, np.float64).reshape(-1, 3)
    n = len(pos)
    if n == 0:
        empty = np.zeros(0)
        return {"z": empty, "amplitude": empty, "information": empty, "noise": noise}
    widths = np.broadcast_to(np.asarray(widths_A2, np.float64), (n,))
    amps = np.broadcast_to(np.asarray(amplitudes, np.float64), (n,))
    if noise is None:
        noise = noise_model(observed, calc)
    if not noise["mean_variance"] > 0:  # noise-free: any residual is significant
        scale = float(np.mean(np.square(np.asarray(calc, np.float64)))) + 1e-30
        noise = {"a": 1e-12 * scale, "b": 0.0, "mean_variance": 1e-12 * scale}
    poisson = loss == "poisson" and noise["b"] > 0
    dtype = jnp.asarray(calc).dtype
    atoms = Atoms.create(pos, widths, amps, adapt.bucket_capacity(n), dtype=dtype)
    if poisson:  # the Poisson information κ / μ: counts κ·y of mean κ·μ
        kappa = 1.0 / noise["b"]
        weights = kappa / jnp.maximum(jnp.asarray(calc, dtype), POISSON_FLOOR)
    else:
        kappa = 1.0
        weights = pixel_weights(calc, noise).astype(dtype)
    s, f, drop = amplitude_sums(atoms, euler_rad, drift_A, jnp.asarray(observed, dtype),
                                jnp.asarray(calc, dtype), weights, window_setup(setup, widths),
                                uniform=noise["b"] == 0, poisson=poisson,
                                counts_per_unit=kappa)  # fmt: skip
    s, f, drop = (np.asarray(x, np.float64)[:n] for x in (s, f, drop))
    f = np.maximum(f, 1e-300)
    removal = np.sign(drop) * np.sqrt(2 * np.abs(drop))
    z = np.where(amps > 0, removal, s / np.sqrt(f))
    return {"z": z, "amplitude": amps + s / f, "information": f, "noise": noise}


# --------------------------------------------------------------------------- the rules


@dataclasses.dataclass(frozen=True)
class Context:
    """What a rule may look at: the images, the model's geometry and a renderer.

    ``render(pos, widths, amps)`` gives the model images with these atoms (the fit's
    probe, drift and background); ``candidates(calc, floor)`` the peaks above ``floor``
    of the residual observed − calc back-projected into the searched volume:
    (positions (c, 3) Å, values (c,), how many robust σ of the back-projection each
    stands above its noise (c,)); ``single_atom_peak(width, amplitude)`` the peak image
    value of one atom; ``images_before()`` the images of the model before the merge."""

    observed: Any
    euler_rad: Any
    drift_A: Any
    setup: Any
    render: Any
    candidates: Any
    single_atom_peak: Any
    images_before: Any
    config: Any  # adapt.AdaptConfig
    loss: str = "mse"  # the fit's loss: the likelihood the test refers to


class Rule(Protocol):
    """Decides which atoms stay and which candidates become atoms."""

    def keep(self, pos, widths, amps, ctx: Context) -> np.ndarray:
        """Boolean mask (n,) of the atoms that stay."""

    def add(self, pos, widths, amps, ctx: Context, new_width_A2: float,
            new_amplitude: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(positions (k, 3), amplitudes (k,)) of the atoms to add next to the kept ones
        ``pos, widths, amps``."""


def threshold_z(config, n_pixels: int) -> float:
    """The z an atom needs: ``significance_z``, or where that is None the Bayesian
    information criterion's penalty for an atom's 5 parameters over N pixels,
    Δχ² ≥ 5 ln N (z ≈ 8 for 47 images of 96² pixels)."""
    if config.significance_z is not None:
        return float(config.significance_z)
    return float(np.sqrt(N_PARAMS * np.log(max(n_pixels, 2))))


def _max_new(n: int, config) -> int:
    return max(1, int(np.floor(config.max_add_fraction * n)))


class ThresholdRule:
    """The earlier rule: stay when H·B ≥ prune_fraction × its prune_percentile; be added
    at a back-projected residual peak (of the model before the merge) that stands
    add_sigma robust σ above the noise and reaches add_fraction × the median H."""

    def keep(self, pos, widths, amps, ctx):
        c = ctx.config
        return adapt.prune_faint(widths, amps, c.prune_fraction, c.prune_percentile)

    def add(self, pos, widths, amps, ctx, new_width_A2, new_amplitude):
        c = ctx.config
        peak = ctx.single_atom_peak(new_width_A2, new_amplitude)
        floor = 0.5 * c.add_fraction * peak
        cand, value, loudness = ctx.candidates(ctx.images_before(), floor)
        loud = loudness >= c.add_sigma
        cand, score = cand[loud], value[loud] * (new_amplitude / peak)
        reference = float(np.median(amps)) if len(amps) else new_amplitude
        added = adapt.add_missing(pos, cand, score, c.min_distance_A, c.add_fraction * reference,
                                  _max_new(len(pos), c), c.max_add_distance_A)  # fmt: skip
        return added, np.full(len(added), float(new_amplitude))


class LikelihoodRule:
    """Stay, or be added, when z ≥ :func:`threshold_z` (see the module docstring).

    Candidates: the peaks of the back-projected residual of the kept atoms that stand
    candidate_sigma robust σ above its noise (an over-complete set: the test decides),
    scored at amplitude 0 with width ``new_width_A2``; new atoms get their best
    amplitude Ĥ.

    The test takes the pixels' noise as independent; the fit's model error is not, and
    faint Gaussians that fit it pass (measured on the Ni/Pd/Pt alloy: integrated
    intensities H·B of 0.03-0.1 × the median, where the lightest true atoms have
    ≥ 0.4 ×). So an atom must also carry ``min_intensity_fraction`` of the median H·B,
    to stay and to be added."""

    def keep(self, pos, widths, amps, ctx):
        calc = ctx.render(pos, widths, amps)
        test = significance(pos, widths, amps, ctx.observed, calc, ctx.euler_rad, ctx.drift_A,
                            ctx.setup, ctx.loss)  # fmt: skip
        bright = amps * widths >= ctx.config.min_intensity_fraction * np.median(amps * widths)
        return (test["z"] >= threshold_z(ctx.config, np.size(ctx.observed))) & bright

    def add(self, pos, widths, amps, ctx, new_width_A2, new_amplitude):
        c = ctx.config
        calc = ctx.render(pos, widths, amps)
        cand, _, loudness = ctx.candidates(calc, 0.0)
        cand = cand[loudness >= c.candidate_sigma]
        if len(cand) == 0:
            return np.zeros((0, 3)), np.zeros(0)
        test = significance(cand, new_width_A2, 0.0, ctx.observed, calc, ctx.euler_rad,
                            ctx.drift_A, ctx.setup, ctx.loss)  # fmt: skip
        floor = c.min_intensity_fraction * np.median(amps * widths) if len(amps) else 0.0
        bright = test["amplitude"] * new_width_A2 >= floor
        cand, score, best = cand[bright], test["z"][bright], test["amplitude"][bright]
        chosen = adapt.choose_candidates(pos, cand, score, c.min_distance_A,
                                         threshold_z(c, np.size(ctx.observed)),
                                         _max_new(len(pos), c),
                                         c.max_add_distance_A)  # fmt: skip
        return cand[chosen], best[chosen]


def make_rule(name: str) -> Rule:
    """The detection rule called ``name`` (one of :data:`RULES`)."""
    if name == "likelihood":
        return LikelihoodRule()
    if name == "threshold":
        return ThresholdRule()
    raise ValueError(f"unknown detection rule {name!r}; choose one of {RULES}")
