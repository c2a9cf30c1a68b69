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

A wide atom is often two (a pair the fit covered with one Gaussian): atoms wider than
``adapt.split_width_ratio`` × the median are tried as pairs sharing their integrated
intensity, along 24 directions at two separations, and a pair replaces its atom when it
gains the price of one atom more, Δ(2 log L) ≥ z*² (:func:`split_test`).

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
from .uncertainty import WINDOW_TRUNCATION, noise_model, pixel_weights, window_setup

__all__ = [
    "LikelihoodRule",
    "Rule",
    "ThresholdRule",
    "amplitude_sums",
    "capped_prune",
    "make_rule",
    "significance",
    "split_gains",
    "split_test",
]

RULES = adapt.DETECTION_RULES
#: the pairs a wide atom is tried as: halves this many × adapt.min_distance_A apart
SPLIT_SEPARATIONS = (1.05, 1.35)
#: adapt.max_prune_fraction defers the pruning only of atoms with z ≥ this × z* (and the
#: intensity floor); the rest go at once
DEFER_Z_FRACTION = 0.5


def _window(coord_A, n_pix: int, pixel_size_A: float, radius_px: int):
    """Each atom's window of 2·radius + 1 pixels along one image axis around its centre
    ``coord_A`` (n,): (pixel positions (n, w) Å, inside the image (n, w), pixel index
    (n, w), clipped into the image)."""
    steps = jnp.arange(-radius_px, radius_px + 1)
    centre = jnp.round(jax.lax.stop_gradient(coord_A) / pixel_size_A)[:, None] + steps
    inside = (centre >= -(n_pix // 2)) & (centre < n_pix - n_pix // 2)  # pixel - n // 2
    index = jnp.clip(centre + n_pix // 2, 0, n_pix - 1).astype(jnp.int32)
    return centre * pixel_size_A, inside, index


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
    rotations = geometry.rotation_matrix(euler_rad)

    def profile(coord, n_pix):
        x, inside, index = _window(coord, n_pix, ps, rad)
        return jnp.where(inside, jnp.exp(-((x - coord[:, None]) ** 2) / widths[:, None]), 0), index

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


def _likelihood_weights(observed, calc, loss: str, noise):
    """(pixel weights, noise model, Poisson?, κ): the fit's likelihood as the tests use it
    — 1/σ²(μ) with σ² = a + b·μ fitted to the residual (Gaussian), or the Poisson
    information κ/μ of counts κ·y (``loss="poisson"``)."""
    if noise is None:
        noise = noise_model(observed, calc)
    if not noise["mean_variance"] > 0:  # noise-free: any residual is significant
        scale = float(np.mean(np.square(np.asarray(calc, np.float64)))) + 1e-30
        noise = {"a": 1e-12 * scale, "b": 0.0, "mean_variance": 1e-12 * scale}
    poisson = loss == "poisson" and noise["b"] > 0
    dtype = jnp.asarray(calc).dtype
    if poisson:  # the Poisson information κ / μ: counts κ·y of mean κ·μ
        kappa = 1.0 / noise["b"]
        return kappa / jnp.maximum(jnp.asarray(calc, dtype), POISSON_FLOOR), noise, True, kappa
    return pixel_weights(calc, noise).astype(dtype), noise, False, 1.0


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
    weights, noise, poisson, kappa = _likelihood_weights(observed, calc, loss, noise)
    dtype = jnp.asarray(calc).dtype
    atoms = Atoms.create(pos, widths, amps, adapt.bucket_capacity(n), dtype=dtype)
    s, f, drop = amplitude_sums(atoms, euler_rad, drift_A, jnp.asarray(observed, dtype),
                                jnp.asarray(calc, dtype), weights, window_setup(setup, widths),
                                uniform=noise["b"] == 0, poisson=poisson,
                                counts_per_unit=kappa)  # fmt: skip
    s, f, drop = (np.asarray(x, np.float64)[:n] for x in (s, f, drop))
    f = np.maximum(f, 1e-300)
    removal = np.sign(drop) * np.sqrt(2 * np.abs(drop))
    z = np.where(amps > 0, removal, s / np.sqrt(f))
    return {"z": z, "amplitude": amps + s / f, "information": f, "noise": noise}


def split_directions(n: int = 24) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over a half sphere (a pair along d is the pair
    along −d): a Fibonacci lattice."""
    k = np.arange(n) + 0.5
    z = k / n  # cos θ uniform in (0, 1]: equal areas
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


@functools.partial(jax.jit, static_argnames=("poisson",))
def split_gains(
    positions_A: Float[Array, "n 3"],
    widths_A2: Float[Array, " n"],
    amplitudes: Float[Array, " n"],
    offsets_A: Float[Array, "n k 3"],
    new_widths_A2: Float[Array, " n"],
    new_amplitudes: Float[Array, " n"],
    euler_rad: Float[Array, "m 3"],
    drift_A: Float[Array, "m 3"],
    observed: Float[Array, "m nu nv"],
    calc: Float[Array, "m nu nv"],
    weights: Float[Array, "m nu nv"],
    setup,
    poisson: bool = False,
    counts_per_unit: float = 1.0,
) -> Array:
    """(n, k): how much 2 log L gains when atom i is replaced by two atoms at
    x_i ± offsets_A[i, j], each of width new_widths_A2[i] and amplitude
    new_amplitudes[i], everything else held. With the model change e on the atom's
    window: Σ w (2 r e − e²) (Gaussian), or 2κ Σ (y log((μ + e)/μ) − e) (``poisson``).
    The window (``setup.radius_px``) must hold the pair."""
    ps, rad = setup.pixel_size_A, setup.radius_px
    nu, nv = setup.image_shape
    rotations = geometry.rotation_matrix(euler_rad)
    pos, b0, h0 = positions_A, widths_A2[:, None], amplitudes[:, None, None]
    b1, h1 = new_widths_A2[:, None, None], new_amplitudes[:, None, None, None]

    def view(total, data):
        rot, drift, y_img, mu_img, w_img = data
        uvw = pos @ rot.T + drift  # (n, 3)
        duv = offsets_A @ rot.T  # (n, k, 3)
        xu, inu, iu = _window(uvw[:, 0], nu, ps, rad)
        xv, inv, iv = _window(uvw[:, 1], nv, ps, rad)
        one = (
            jnp.exp(-((xu - uvw[:, :1]) ** 2) / b0)[:, :, None]
            * jnp.exp(-((xv - uvw[:, 1:2]) ** 2) / b0)[:, None, :]
        )  # (n, w, w)

        def atom(sign):  # (n, k, w, w): one half of each pair
            cu = uvw[:, None, :1] + sign * duv[..., :1]
            cv = uvw[:, None, 1:2] + sign * duv[..., 1:2]
            gu = jnp.exp(-((xu[:, None] - cu) ** 2) / b1)
            gv = jnp.exp(-((xv[:, None] - cv) ** 2) / b1)
            return gu[..., :, None] * gv[..., None, :]

        inside = (inu[:, :, None] & inv[:, None, :])[:, None]
        e = jnp.where(inside, h1 * (atom(1.0) + atom(-1.0)) - (h0 * one)[:, None], 0.0)
        window = lambda img: img[iu[:, :, None], iv[:, None, :]][:, None]  # noqa: E731
        if poisson:
            mu = jnp.maximum(window(mu_img), POISSON_FLOOR)
            mu1 = jnp.maximum(mu + e, POISSON_FLOOR)
            change = xlogy(window(y_img), mu1 / mu) - (mu1 - mu)
            gain = 2 * counts_per_unit * jnp.sum(change, (2, 3))
        else:
            r = window(y_img - mu_img)
            gain = jnp.sum(window(w_img) * (2 * r * e - e**2), (2, 3))
        return total + gain, None

    zero = jnp.zeros(offsets_A.shape[:2], pos.dtype)
    data = (rotations, drift_A.astype(pos.dtype), observed, calc, weights)
    gain, _ = jax.lax.scan(view, zero, data)
    return gain


def split_test(positions_A, widths_A2, amplitudes, observed, calc, euler_rad, drift_A, setup,
               new_width_A2: float, separations_A=(1.8, 2.35), n_directions: int = 24,
               loss: str = "mse", noise: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """Is atom i (of the model ``calc``) two atoms? Each is tried as a pair at x_i ± d/2
    along ``n_directions`` directions for each separation d in ``separations_A``, the
    halves of width ``new_width_A2`` sharing its integrated intensity H·B. Returns
    ``{"gain"}`` (n,): the best pair's gain in 2 log L (:func:`split_gains`, the same
    likelihood as :func:`significance`), and that pair's ``"positions_A"`` (n, 2, 3),
    ``"amplitude"`` (n,) and ``"noise"``."""
    pos = np.asarray(positions_A, np.float64).reshape(-1, 3)
    n = len(pos)
    if n == 0:
        return {"gain": np.zeros(0), "positions_A": np.zeros((0, 2, 3)), "amplitude": np.zeros(0),
                "noise": noise}  # fmt: skip
    widths = np.broadcast_to(np.asarray(widths_A2, np.float64), (n,))
    amps = np.broadcast_to(np.asarray(amplitudes, np.float64), (n,))
    new_amp = amps * widths / (2 * new_width_A2)
    half = np.asarray(separations_A, np.float64)[:, None, None] / 2
    offsets = (half * split_directions(n_directions)[None]).reshape(-1, 3)  # (k, 3)
    weights, noise, poisson, kappa = _likelihood_weights(observed, calc, loss, noise)
    dtype = jnp.asarray(calc).dtype
    cap = adapt.bucket_capacity(n)  # padded: one program per bucket, not per count
    pad = lambda x, fill: np.concatenate([x, np.full((cap - n,) + x.shape[1:], fill)])  # noqa: E731
    reach_A = float(np.max(half)) + np.sqrt(max(float(np.max(widths)), new_width_A2)
                                            * np.log(1.0 / WINDOW_TRUNCATION))  # fmt: skip
    wsetup = dataclasses.replace(setup, window_radius_px=int(np.ceil(reach_A / setup.pixel_size_A)))
    gain = split_gains(
        jnp.asarray(pad(pos, 0.0), dtype), jnp.asarray(pad(widths, 1.0), dtype),
        jnp.asarray(pad(amps, 0.0), dtype),
        jnp.asarray(np.broadcast_to(offsets, (cap,) + offsets.shape), dtype),
        jnp.full(cap, new_width_A2, dtype), jnp.asarray(pad(new_amp, 0.0), dtype),
        euler_rad, drift_A, jnp.asarray(observed, dtype), jnp.asarray(calc, dtype), weights,
        wsetup, poisson=poisson, counts_per_unit=kappa,
    )  # fmt: skip
    gain = np.asarray(gain, np.float64)[:n]
    best = np.argmax(gain, axis=1)
    d = offsets[best]  # (n, 3)
    return {"gain": gain[np.arange(n), best], "positions_A": np.stack([pos + d, pos - d], 1),
            "amplitude": new_amp, "noise": noise}  # fmt: skip


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

    def split(self, pos, widths, amps, ctx: Context) -> tuple[np.ndarray, ...]:
        """(pos, widths, amps, source) with the atoms that are two atoms replaced by
        their pairs; ``source[k]``: the input atom atom k is, -1 for a half of a pair."""

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


def capped_prune(keep: np.ndarray, score: np.ndarray, max_fraction: float | None) -> np.ndarray:
    """``keep`` with at most floor(max_fraction × n) atoms dropped: beyond that the
    dropped atoms of the highest finite ``score`` stay (−inf: never deferred; None:
    ``keep`` as it is)."""
    keep = np.asarray(keep, bool)
    score = np.asarray(score, float)
    if max_fraction is None:
        return keep
    dropped = np.flatnonzero(~keep & np.isfinite(score))
    excess = int(np.sum(~keep)) - int(np.floor(max_fraction * keep.size))
    if excess <= 0 or len(dropped) == 0:
        return keep
    rescued = dropped[np.argsort(-score[dropped], kind="stable")[:excess]]
    out = keep.copy()
    out[rescued] = True
    return out


def _max_new(n: int, config) -> int:
    return max(1, int(np.floor(config.max_add_fraction * n)))


class ThresholdRule:
    """The earlier rule: stay when H·B ≥ prune_fraction × its prune_percentile; be added
    at a back-projected residual peak (of the model before the merge) that stands
    add_sigma robust σ above the noise and reaches add_fraction × the median H."""

    def keep(self, pos, widths, amps, ctx):
        c = ctx.config
        return adapt.prune_faint(widths, amps, c.prune_fraction, c.prune_percentile)

    def split(self, pos, widths, amps, ctx):
        return pos, widths, amps, np.arange(len(pos))  # the earlier rule split nothing

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
        z_star = threshold_z(ctx.config, np.size(ctx.observed))
        keep = (test["z"] >= z_star) & bright
        deferrable = bright & (test["z"] >= DEFER_Z_FRACTION * z_star)
        return capped_prune(keep, np.where(deferrable, test["z"], -np.inf),
                            ctx.config.max_prune_fraction)  # fmt: skip

    def split(self, pos, widths, amps, ctx):
        """Atoms wider than split_width_ratio × the median width are tried as pairs
        (:func:`split_test`: (1.05, 1.35) × min_distance_A apart, so the next merge
        keeps them apart, halves of the median width); a pair replaces its atom when it
        gains the price of the extra atom, Δ(2 log L) ≥ z*², at most max_add_fraction
        of the atoms a step, the largest gains first."""
        c, n = ctx.config, len(pos)
        same = pos, widths, amps, np.arange(n)
        if c.split_width_ratio is None or n < 2:
            return same
        width = float(np.median(widths))
        wide = np.nonzero(widths > c.split_width_ratio * width)[0]
        if len(wide) == 0:
            return same
        calc = ctx.render(pos, widths, amps)
        test = split_test(pos[wide], widths[wide], amps[wide], ctx.observed, calc, ctx.euler_rad,
                          ctx.drift_A, ctx.setup, width,
                          tuple(f * c.min_distance_A for f in SPLIT_SEPARATIONS),
                          loss=ctx.loss)  # fmt: skip
        passed = np.nonzero(test["gain"] >= threshold_z(c, np.size(ctx.observed)) ** 2)[0]
        passed = passed[np.argsort(-test["gain"][passed], kind="stable")][: _max_new(n, c)]
        if len(passed) == 0:
            return same
        stay = np.ones(n, bool)
        stay[wide[passed]] = False
        k = 2 * len(passed)
        return (
            np.concatenate([pos[stay], test["positions_A"][passed].reshape(-1, 3)]),
            np.concatenate([widths[stay], np.full(k, width)]),
            np.concatenate([amps[stay], np.repeat(test["amplitude"][passed], 2)]),
            np.concatenate([np.nonzero(stay)[0], np.full(k, -1)]),
        )

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
