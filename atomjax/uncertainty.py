"""Error bars on every atom: standard deviations from each atom's local Fisher information.

Atom i adds f_i = H_i · g(u) · g(v) to each image (:mod:`atomjax.blocks`). With pixel
noise of variance σ²(p) the Fisher information of all parameters is F = Jᵀ W J,
W = diag(1/σ²). Its inverse is the covariance an efficient estimator reaches (the
Cramér–Rao bound); each atom's 5 × 5 block of F⁻¹ gives σx, σy, σz, σB and σH.
Inverting F whole costs O(n³); here each atom's block comes from its own patch:
the atom and its k nearest neighbours (whose footprints overlap its own in some
images), with the per-image backgrounds b eliminated exactly,

    F'_ab = F_ab - Σ_j b_aj b_bjᵀ / F_bb,j   (b_aj = Σ_pixels w ∂f_a/∂θ in image j),

assembled into one (k+1)·5 square matrix and inverted: cov_i is its first 5 × 5
block. This is exact when the patch holds every atom i is coupled to; atoms outside
it (e.g. far atoms that line up with i in a few images) are left out, which makes
σ slightly small (a few % for k = 4 on a dense test cluster; see the tests). Every
F_ab is a sum over a's window of products of 1-D profiles weighted by W, so the cost
is linear in atoms.

The noise model comes from the fit's own residual r = I_obs - I(θ): the variance is
σ²(μ) = a + b·μ of the model intensity μ, fitted to r² by least squares. Gaussian
noise gives b ≈ 0 (σ² = a), Poisson counts a ≈ 0 (σ² = μ / counts-per-unit), and
mixtures both, so one rule serves the MSE and Poisson losses.

The footprints are those of direct projection: in the rigid and adaptive modes the
probe's blur is not in them, and the σ are those of the direct model. Direct mode's
profile tail (:mod:`atomjax.tail`) is in them: each footprint is then the sum of two
separable Gaussians, and the sums run over the wider one's window.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import geometry
from .atoms import Atoms
from .batched_linalg import leading_block_of_inverse, spd_inverse
from .blocks import N_PARAMS, to_xyz
from .tail import TailKernel

#: the standard deviations, in the order of the Fisher blocks (x, y, z, B, H)
SIGMA_NAMES = ("sigma_x_A", "sigma_y_A", "sigma_z_A", "sigma_width_A2", "sigma_amplitude")
N_NEIGHBOURS = 12  # atoms in each patch besides its centre
NEIGHBOUR_CUTOFF_A = 4.0  # ... within this distance
#: the Fisher sums stop where the widest atom's profile falls below this of its peak
#: (its square, in the sums, below 1e-8)
WINDOW_TRUNCATION = 1e-4
#: a ridge on the information, relative to each parameter's mean over the atoms
RIDGE = 1e-8
#: atoms with a larger positional σ are not supported by the data (e.g. amplitude 0)
UNSUPPORTED_SIGMA_A = 1.0


def noise_model(observed, calc) -> dict[str, float]:
    """The pixel variance σ²(μ) = a + b·μ fitted to the squared residuals
    (observed - calc)² against the model intensity μ = calc (least squares, a, b ≥ 0;
    b = 0 unless it stands 3 standard errors above 0: Gaussian noise)."""
    obs = np.asarray(observed, np.float64).ravel()
    mu = np.asarray(calc, np.float64).ravel()
    r2 = (obs - mu) ** 2
    design = np.stack([np.ones_like(mu), mu], 1)
    (a, b), *_ = np.linalg.lstsq(design, r2, rcond=None)
    spread = float(np.sum((mu - mu.mean()) ** 2))
    se_b = np.sqrt(np.mean((r2 - design @ [a, b]) ** 2) / max(spread, 1e-300))
    if b < 3 * se_b:  # no significant signal dependence: Gaussian
        a, b = r2.mean(), 0.0
    elif a <= 0:  # pure shot noise
        a, b = 0.0, float(r2.sum() / max(mu.sum(), 1e-30))
    return {"a": float(a), "b": float(b), "mean_variance": float(r2.mean())}


def pixel_weights(calc, noise: dict[str, float]):
    """1 / σ²(μ) per pixel, the variance floored at 1e-3 of its mean (the shot noise
    of an empty pixel is not zero in practice)."""
    var = noise["a"] + noise["b"] * jnp.maximum(jnp.asarray(calc), 0.0)
    return 1.0 / jnp.maximum(var, 1e-3 * noise["mean_variance"])


def _profiles(offset, coord_A, widths_A2, ps):
    """g, ∂g/∂u_i and ∂g/∂B on pixel ``offset`` (…, w) for centres ``coord_A`` (…)."""
    d = offset * ps - coord_A[..., None]
    b = widths_A2[..., None]
    g = jnp.exp(-(d**2) / b)
    return g, 2 * d / b * g, d**2 / b**2 * g


#: J in (u, v, B, H) from five outer products u-profile ⊗ v-profile (rows: terms)
_TERMS_TO_PARAMS = np.array(
    [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], np.float64
)
#: ... and with the profile tail (:mod:`atomjax.tail`): those five for the core and
#: for the tail, and a sixth for the tail's scale changing with B (rows: terms)
_TAIL_TERMS_TO_PARAMS = np.concatenate(
    [_TERMS_TO_PARAMS, _TERMS_TO_PARAMS, np.array([[0], [0], [1], [0]], np.float64)], 1
)


def _terms(h, prof_u, prof_v):
    """The five terms of J: (u profiles, v profiles), each (…, 5, w): H g'⊗g (u),
    H g⊗g' (v), H g_B⊗g + H g⊗g_B (B, two terms) and g⊗g (H)."""
    g_u, g1_u, gb_u = prof_u
    g_v, g1_v, gb_v = prof_v
    hh = h[..., None]
    u = jnp.stack([hh * g1_u, hh * g_u, hh * gb_u, hh * g_u, g_u], -2)
    v = jnp.stack([g_v, g1_v, g_v, gb_v, g_v], -2)
    return u, v


def _atom_terms(h, offset_u, u0, offset_v, v0, widths_A2, ps, tail):
    """J's terms of atoms at (u0, v0) on pixels (offset_u, offset_v) (…, w): the five of
    :func:`_terms`, or with ``tail`` = (w, ΔB) the eleven of the profile
    (1 − w)·g_B + w·B/(B + ΔB)·g_(B+ΔB) (:data:`_TAIL_TERMS_TO_PARAMS`)."""

    def terms(width):
        prof_u = _profiles(offset_u, u0, width, ps)
        return _terms(h, prof_u, _profiles(offset_v, v0, width, ps)), prof_u[0]

    (u, v), _ = terms(widths_A2)
    if tail is None:
        return u, v
    share, extra = tail
    (ut, vt), g_u = terms(widths_A2 + extra)
    scale = share * widths_A2 / (widths_A2 + extra)  # the tail's peak, relative to H
    dscale = share * extra / (widths_A2 + extra) ** 2  # ... its change with B
    g_v = vt[..., 0, :]  # g ⊗ g, the H term's v profile
    u = jnp.concatenate([(1 - share) * u, scale[..., None, None] * ut,
                         (h * dscale)[..., None, None] * g_u[..., None, :]], -2)  # fmt: skip
    v = jnp.concatenate([v, vt, g_v[..., None, :]], -2)
    return u, v


def _gram(own, other, w, t):
    """(n, k, 4, 4) Σ_pixels w J_a J_bᵀ over a's window: ``own`` the terms of a
    ((n, T, w) each), ``other`` those of each b on a's window ((n, k, T, w) each), ``t``
    the (4, T) map from terms to parameters."""
    (ua, va), (ub, vb) = own, other
    x = jnp.einsum("nab,nsb,nktb->nkast", w, va, vb)
    g = jnp.einsum("nsa,nkta,nkast->nkst", ua, ub, x)
    return jnp.einsum("ps,nkst,qt->nkpq", t, g, t)


def _outer_sums(x, y):
    """(n, k, 5, 5) Σ_a x[n, s, a] y[n, k, t, a], as a broadcast product and a sum: XLA's
    CPU batched matrix products of this size are several times slower."""
    return jnp.sum(x[:, None, :, None, :] * y[:, :, None, :, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("background", "uniform"))
def fisher_pairs(
    atoms: Atoms,
    euler_rad: Float[Array, "m 3"],
    drift_A: Float[Array, "m 3"],
    weights: Float[Array, "m nu nv"],
    table,
    setup,
    background: bool = True,
    uniform: bool = False,
    tail=None,
) -> Float[Array, "n t 5 5"]:
    """The Fisher blocks F_ab - Σ_j b_aj b_bjᵀ / F_bb,j (the backgrounds b eliminated;
    ``background=False``: F_ab, the backgrounds known) for atom a and each atom
    b = table[a, s] (n, t, 5, 5), summed over the images with per-pixel weights
    ``weights``. F_ab is summed over a's window (J_a vanishes outside). ``uniform``: the
    weights are one value (Gaussian noise), and every sum over the window is a product
    of two 1-D sums, w times cheaper. ``tail``: None, or the profile tail's (share w,
    extra width ΔB) (:mod:`atomjax.tail`), whose footprints are then the atoms'."""
    pos, widths, amps = atoms.masked()
    ps, r = setup.pixel_size_A, setup.radius_px
    nu, nv = setup.image_shape
    rotations = geometry.rotation_matrix(euler_rad)
    steps = jnp.arange(-r, r + 1)

    def view(total, data):
        rot, drift, w_img = data
        uvw = pos @ rot.T + drift
        cu = jnp.round(jax.lax.stop_gradient(uvw[:, 0]) / ps)[:, None] + steps  # (n, w)
        cv = jnp.round(jax.lax.stop_gradient(uvw[:, 1]) / ps)[:, None] + steps
        iu, iv = cu + nu // 2, cv + nv // 2
        in_u, in_v = (iu >= 0) & (iu < nu), (iv >= 0) & (iv < nv)
        iu_c = jnp.clip(iu, 0, nu - 1).astype(jnp.int32)
        iv_c = jnp.clip(iv, 0, nv - 1).astype(jnp.int32)
        own = _atom_terms(amps, cu, uvw[:, 0], cv, uvw[:, 1], widths, ps, tail)
        other = _atom_terms(amps[table], cu[:, None, :], uvw[table, 0], cv[:, None, :],
                            uvw[table, 1], widths[table], ps, tail)  # b on a's window  # fmt: skip
        t = jnp.asarray(_TERMS_TO_PARAMS if tail is None else _TAIL_TERMS_TO_PARAMS, pos.dtype)
        if uniform:  # w ⊗ w-separable: the image edge masks the profiles
            w0 = w_img[0, 0]
            ua, va = own[0] * in_u[:, None, :], own[1] * in_v[:, None, :]
            g = w0 * _outer_sums(ua, other[0]) * _outer_sums(va, other[1])
            f_ab = jnp.einsum("ps,nkst,qt->nkpq", t, g, t)
            b_a = w0 * jnp.einsum("ps,nsa,nsb->np", t, ua, va)
        else:
            w = w_img[iu_c[:, :, None], iv_c[:, None, :]]  # (n, w, w): a's window
            w = w * (in_u[:, :, None] & in_v[:, None, :])
            f_ab = _gram(own, other, w, t)
            # the background: Σ w J_a over a's window, and F_bb = Σ w over the image
            b_a = jnp.einsum("ps,nsa,nab,nsb->np", t, own[0], w, own[1])  # (n, 4)
        if background:
            f_ab = f_ab - b_a[:, None, :, None] * b_a[table][:, :, None, :] / jnp.sum(w_img)
        return total + to_xyz(f_ab, rot), None

    zero = jnp.zeros((*table.shape, N_PARAMS, N_PARAMS), pos.dtype)
    total, _ = jax.lax.scan(view, zero, (rotations, drift_A.astype(pos.dtype), weights))
    return total


def pair_table(positions_A: np.ndarray, k: int, cutoff_A: float):
    """(n, 1 + 2k) atom indices: each atom itself, then its 2k nearest atoms within
    ``cutoff_A`` (padding repeats the atom itself), sorted for lookup. Host-side."""
    from scipy.spatial import cKDTree

    pos = np.asarray(positions_A, np.float64)
    n = len(pos)
    width = 1 + 2 * k
    table = np.tile(np.arange(n)[:, None], (1, width))
    q = min(width, n)
    if q > 1:
        dist, idx = cKDTree(pos).query(pos, k=q)
        table[:, :q] = np.where(dist <= cutoff_A, idx, table[:, :q])
    return table


def patches(table: np.ndarray, k: int):
    """Each atom's patch (itself and its k nearest, from ``table``): (n, k+1) members and,
    for every pair (s, t) of members, where F_st lies in the pair table: the flat index
    into (n · width) and whether it is stored as F_ts (transpose); -1 where absent."""
    n, width = table.shape
    members = table[:, : k + 1]
    keys = (np.arange(n)[:, None] * n + table).ravel()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]

    def find(a, b):
        key = a * n + b
        pos = np.clip(np.searchsorted(sorted_keys, key), 0, len(keys) - 1)
        return np.where(sorted_keys[pos] == key, order[pos], -1)

    s, t = members[:, :, None], members[:, None, :]
    s, t = np.broadcast_arrays(s, t)
    direct, swapped = find(s, t), find(t, s)
    index = np.where(direct >= 0, direct, swapped)
    transpose = (direct < 0) & (swapped >= 0)
    # padding (the atom itself again, after the first place): no coupling to anyone
    pad = (members == np.arange(n)[:, None]) & (np.arange(k + 1) > 0)
    eye = np.eye(k + 1, dtype=bool)[None]
    index = np.where((pad[:, :, None] | pad[:, None, :]) & ~eye, -1, index)
    return members, index, transpose


@jax.jit
def patch_covariance(pairs, index, transpose, alive, free=None):
    """cov_i: the (0, 0) block of the inverse of atom i's patch matrix, assembled from
    the pair blocks (absent pairs 0); dead atoms get 0. ``free`` (5,) 0/1: parameters
    taken as known (0) are held fixed: their rows and columns drop out, variance 0."""
    flat = pairs.reshape(-1, N_PARAMS, N_PARAMS)
    blocks = flat[jnp.maximum(index, 0)]  # (n, p, p, 5, 5)
    blocks = jnp.where(transpose[..., None, None], jnp.swapaxes(blocks, -1, -2), blocks)
    blocks = jnp.where((index >= 0)[..., None, None], blocks, 0.0)
    free = jnp.ones(N_PARAMS, pairs.dtype) if free is None else jnp.asarray(free, pairs.dtype)
    # each parameter's typical information: known parameters sit decoupled on the
    # diagonal at that scale, and a ridge of RIDGE times it keeps an atom the data do
    # not see (amplitude 0) invertible, with an enormous but finite σ
    scale = jnp.maximum(jnp.mean(jnp.abs(jnp.diagonal(pairs[:, 0], axis1=1, axis2=2)), 0), 1e-30)
    held = jnp.diag((1.0 - free) * scale + free * RIDGE * scale)
    same = jnp.arange(index.shape[1])[:, None] == jnp.arange(index.shape[1])[None, :]
    blocks = blocks * free[:, None] * free[None, :] + same[None, :, :, None, None] * held
    n, p = index.shape[:2]
    big = blocks.transpose(0, 1, 3, 2, 4).reshape(n, p * N_PARAMS, p * N_PARAMS)
    cov = leading_block_of_inverse(big, N_PARAMS)  # not jnp.linalg.inv: batched_linalg
    fallback = spd_inverse(blocks[:, 0, 0])  # the atom alone, should the patch fail
    ok = jnp.all(jnp.isfinite(cov), axis=(1, 2)) & jnp.all(
        jnp.diagonal(cov, axis1=1, axis2=2) > 0, axis=1
    )
    cov = jnp.where(ok[:, None, None], cov, fallback) * free[:, None] * free[None, :]
    return jnp.where(alive[:, None, None], cov, 0.0)


def window_setup(setup, widths_A2, truncation: float | None = WINDOW_TRUNCATION):
    """``setup`` with a window sized to the widest of ``widths_A2`` at ``truncation`` of
    the peak (None: the setup's own window)."""
    if truncation is None or not len(widths_A2):
        return setup
    r_A = math.sqrt(float(np.max(widths_A2)) * math.log(1.0 / truncation))
    radius = min(setup.radius_px, int(math.ceil(r_A / setup.pixel_size_A)))
    return dataclasses.replace(setup, window_radius_px=radius)


def atom_sigmas(params, observed, calc, euler_rad, setup, k: int = N_NEIGHBOURS,
                cutoff_A: float = NEIGHBOUR_CUTOFF_A,
                truncation: float | None = WINDOW_TRUNCATION,
                known: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """Standard deviations of every live atom's parameters from a finished fit.

    ``params`` (:class:`atomjax.fit.Params`), the images the fit saw (``observed``), the
    model's images (``calc``, None: rendered here) and its geometry; each atom's patch
    holds its ``k`` nearest atoms within ``cutoff_A``; the sums run over windows where
    the widest atom's profile exceeds ``truncation`` of its peak. ``known``: parameters
    held fixed rather than estimated alongside, of "widths", "amplitudes" and
    "background" (e.g. all three for the bound on positions alone). Returns ``{name: (n_alive,)
    array}`` for :data:`SIGMA_NAMES`, the live atoms' covariances ``covariance``
    (n_alive, 5, 5) and the fitted ``noise`` model."""
    if calc is None:
        calc = params.images(euler_rad, setup)
    noise = noise_model(observed, calc)
    weights = pixel_weights(calc, noise)
    alive = np.asarray(params.atoms.alive)
    live = np.flatnonzero(alive)
    atoms = Atoms(*(x[live] for x in (params.atoms.positions_A, params.atoms.widths_A2,
                                       params.atoms.amplitudes, params.atoms.alive)))  # fmt: skip
    table = pair_table(np.asarray(atoms.positions_A), k, cutoff_A)
    tail = None
    widest = np.asarray(atoms.widths_A2)
    if isinstance(params.probe, TailKernel):  # the footprints carry the profile tail
        tail = (params.probe.share, params.probe.width_A2)
        widest = widest + float(tail[1])  # the windows widened as the tail widens atoms
        setup = dataclasses.replace(setup, max_width_A2=setup.max_width_A2 + float(tail[1]))
    setup = window_setup(setup, widest, truncation)
    unknown = set(known) - {"widths", "amplitudes", "background"}
    if unknown:
        raise ValueError(f"known must name widths, amplitudes or background, got {unknown}")
    pairs = fisher_pairs(atoms, params.euler(euler_rad), params.drift_A, weights,
                         jnp.asarray(table), setup,
                         background="background" not in known,
                         uniform=noise["b"] == 0, tail=tail)  # fmt: skip
    members, index, transpose = patches(table, k)
    free = np.array([1, 1, 1, "widths" not in known, "amplitudes" not in known], float)
    cov = np.asarray(patch_covariance(pairs, index, transpose, atoms.alive, free))
    var = np.clip(np.diagonal(cov, axis1=1, axis2=2), 0.0, None)
    out = {name: np.sqrt(var[:, j]) for j, name in enumerate(SIGMA_NAMES)}
    return {**out, "covariance": cov, "noise": noise}


def summary(sigmas: dict[str, Any]) -> dict[str, Any]:
    """The distribution of the σ for report.json: median and 10/90th percentiles (pm for
    positions), the predicted RMSD sqrt(mean(σx² + σy² + σz²)) of the atoms the data
    support, and how many they do not (positional σ over :data:`UNSUPPORTED_SIGMA_A`)."""
    xyz = np.stack([sigmas[n] for n in SIGMA_NAMES[:3]], 1)
    supported = np.sqrt((xyz**2).sum(1)) <= UNSUPPORTED_SIGMA_A
    out: dict[str, Any] = {"noise_model": sigmas["noise"], "n_atoms": int(len(xyz)),
                           "n_unsupported": int((~supported).sum())}  # fmt: skip
    xyz = xyz[supported]
    for j, name in enumerate(SIGMA_NAMES):
        v = sigmas[name] * (100.0 if j < 3 else 1.0)
        key = name.replace("_A", "_pm") if j < 3 else name
        out[key] = percentiles(v)
    out["predicted_rmsd_pm"] = float(np.sqrt((xyz**2).sum(1).mean()) * 100) if len(xyz) else None
    return out


def sigma_xyz_pm(sigmas: dict[str, Any]) -> np.ndarray:
    """√(σx² + σy² + σz²) of every atom, pm."""
    return np.sqrt(sum(np.asarray(sigmas[n]) ** 2 for n in SIGMA_NAMES[:3])) * 100.0


def calibrate(found_A, sigmas: dict[str, Any], truth_A, cutoff_A: float = 0.75) -> dict[str, Any]:
    """:func:`calibration` of the found atoms matched one-to-one to the truth."""
    from .metrics import match_atoms

    match = match_atoms(found_A, truth_A, cutoff_A=cutoff_A)
    sig = np.stack([np.asarray(sigmas[n]) for n in SIGMA_NAMES[:3]], 1)
    return calibration(match.deviation_A, sig[match.found_index])


def calibration(deviation_A, sigma_xyz_A) -> dict[str, Any]:
    """z-scores error / σ of matched atoms ((k, 3) each): per axis their standard
    deviation and mean, the fraction within 1σ and 2σ, and RMSD over predicted σ."""
    dev = np.asarray(deviation_A, np.float64)
    sig = np.asarray(sigma_xyz_A, np.float64)
    ok = np.all(sig > 0, axis=1)
    z = dev[ok] / sig[ok]
    if len(z) < 2:
        return {"n": int(len(z))}
    return {
        "n": int(len(z)),
        "z_std": z.std(0, ddof=1).tolist(),
        "z_mean": z.mean(0).tolist(),
        "within_1sigma": float(np.mean(np.abs(z) < 1)),
        "within_2sigma": float(np.mean(np.abs(z) < 2)),
        "rmsd_over_sigma": float(
            np.sqrt((dev[ok] ** 2).sum(1).mean() / (sig[ok] ** 2).sum(1).mean())
        ),
    }


#: the search variance of an atom is the mean over it and its nearest atoms, this many
#: in all: a start that goes astray moves a neighbourhood together, and a few other
#: starts are few samples of one atom (chosen on amorphous Si, benchmarks/README.md)
SEARCH_NEIGHBOURS = 5


def search_variance(winner_A, others_A, cutoff_A: float = 0.75,
                    neighbours: int = SEARCH_NEIGHBOURS) -> np.ndarray:  # fmt: skip
    """The error of a fit's search, per atom and axis (n, 3), Å², from other fits of the
    same images (other starts, :func:`atomjax.reconstruct_starts`).

    The σ from the Fisher information are the statistical errors of the fit at its
    minimum; fits of the same images from other starts stop in other minima, and the
    offsets between them are what that choice of minimum costs. For each atom of the
    winning fit: the squared offset, per axis, to the nearest atom of each other fit
    within ``cutoff_A`` (fits with none there are left out), its mean over those fits,
    then the mean over the atom and its ``neighbours`` - 1 nearest atoms. Added to σ²,
    it is the variance of an atom's error when the search may have gone astray. Atoms
    that no other fit has (nor their neighbours) get 0. Cost: a k-d tree per fit.
    """
    from scipy.spatial import cKDTree

    win = np.asarray(winner_A, np.float64).reshape(-1, 3)
    n = len(win)
    d2 = np.zeros((n, 3))
    count = np.zeros(n)
    for other in others_A:
        other = np.asarray(other, np.float64).reshape(-1, 3)
        if not len(other):
            continue
        dist, j = cKDTree(other).query(win, distance_upper_bound=cutoff_A)
        ok = np.isfinite(dist)
        d2[ok] += (win[ok] - other[j[ok]]) ** 2
        count[ok] += 1
    per_atom = d2 / np.maximum(count, 1)[:, None]
    k = min(int(neighbours), n)
    if k <= 1:
        return per_atom
    near = cKDTree(win).query(win, k)[1]  # (n, k), the atom itself first
    weight = (count > 0).astype(float)
    total = (per_atom[near] * weight[near][..., None]).sum(1)
    seen = weight[near].sum(1)
    return np.where(seen[:, None] > 0, total / np.maximum(seen, 1)[:, None], 0.0)


def widened(sigmas: dict[str, Any], var) -> dict[str, Any]:
    """``sigmas`` with the positional σ widened by the search's variance ``var`` ((n, 3)
    Å², :func:`search_variance`), and the search's own as ``sigma_search_{x,y,z}_A``."""
    out = dict(sigmas)
    for j, name in enumerate(SIGMA_NAMES[:3]):
        out[name] = np.sqrt(np.asarray(sigmas[name], np.float64) ** 2 + var[:, j])
        out[name.replace("sigma_", "sigma_search_")] = np.sqrt(var[:, j])
    return out


def search_report(own: dict[str, Any], sigmas: dict[str, Any], positions_A, truth_A,
                  fits_compared: int) -> dict[str, Any]:  # fmt: skip
    """report.json's ``uncertainty`` entries for σ widened by the search (``sigmas``,
    :func:`widened`) next to the fit's own (``own``): ``statistical`` (the predicted RMSD
    and, with a truth, the calibration of the fit's own σ) and ``search`` (its share)."""
    search = np.sqrt(sum(np.asarray(sigmas[n.replace("sigma_", "sigma_search_")]) ** 2
                         for n in SIGMA_NAMES[:3]))  # fmt: skip
    stat = {"predicted_rmsd_pm": summary(own)["predicted_rmsd_pm"]}
    if truth_A is not None:
        stat["calibration"] = calibrate(positions_A, own, truth_A)
    return {
        "statistical": stat,
        "search": {
            "fits_compared": int(fits_compared),
            "neighbours": SEARCH_NEIGHBOURS,
            "sigma_search_pm": percentiles(search * 100.0),
        },  # fmt: skip
    }


def _q(v, q) -> float | None:
    return float(np.percentile(v, q)) if len(v) else None


def percentiles(v) -> dict[str, float | None]:
    """The median and 10th / 90th percentiles of ``v`` (None when it is empty), as
    report.json gives distributions."""
    return {"median": _q(v, 50), "p10": _q(v, 10), "p90": _q(v, 90)}


def format_calibration(cal: dict[str, Any]) -> str:
    """Two lines for the console: the z-scores' spread per axis and the 1σ / 2σ shares."""
    if "z_std" not in cal:
        return f"calibration: {cal['n']} matched atoms with σ, too few to judge"
    zs = " / ".join(f"{z:.2f}" for z in cal["z_std"])
    return (
        f"calibration ({cal['n']} atoms): std of error/σ in x / y / z {zs} (1 is honest); "
        f"{100 * cal['within_1sigma']:.0f} % within 1σ (68 % expected), "
        f"{100 * cal['within_2sigma']:.0f} % within 2σ (95 %); RMSD / predicted σ "
        f"{cal['rmsd_over_sigma']:.2f}"
    )
