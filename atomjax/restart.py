"""Restarts of a finished fit from its own atoms, jittered: a cheap look at other minima.

The fits of an amorphous particle stop in local minima: from the true atoms a fit of
the same images ends near its Cramér–Rao bound, from the search it ends 1.4–1.6 × above
it, and the σ from the Fisher information (:mod:`atomjax.uncertainty`) cannot know that
(benchmarks/README.md, ``bench_uncertainty.py``). Several whole fits from other start
tomograms (:mod:`atomjax.starts`) measure that error by how far their atoms lie from
each other, at the price of a fit each. A restart is cheaper: the finished fit's atoms,
each moved by a normal offset per axis of ``restart_jitter_sigma`` × its own σ, at least
``restart_jitter_A`` (widths, amplitudes, background, probe and pose kept), refitted for
``restart_phases`` phases with no adapt step (the same atoms: the losses compare, and a
restart adds no atom). Where the minimum is well defined (the crystals) the restart
comes back to it and adds nothing; where it is not, it stops elsewhere, and

* the fit with the lower loss is kept (the loss ranks such minima by accuracy at a
  peak of 40 counts, :mod:`atomjax.starts`; at a tenth of that it does not always),
* the others' atoms give every atom's σ the search's share
  (:func:`atomjax.uncertainty.search_variance`): the fit's own always (where the search
  stopped), a restart's when its −2 log L lies no more than 5 per atom above the kept one's
  (:func:`likelihood_excess`; beyond it the restart did not come back, and says nothing).

Off by default (``restarts=0``): measured with one restart (benchmarks/README.md, "one
restart"), the z-scores' spread on amorphous Si falls from 1.48–2.66 to 0.97–1.45 at a
peak of 40 counts, less at low dose, and the crystals, where it changes nothing, pay
34–106 % more time.

Host-side helpers; the driver (:mod:`atomjax.driver`) runs the phases.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .fit import Params

#: folded into the run's seed: restart k's jitter and step keys (not the fit's own)
RESTART_SALT = 7919
#: the most restarts a run takes
MAX_RESTARTS = 8
#: no atom is moved by more than this per axis (Å), whatever its σ
MAX_JITTER_A = 1.0
#: a restart's −2 log L may exceed the kept one's by this many per atom (its position, width and
#: amplitude) and still count as another minimum the data allow
PARAMS_PER_ATOM = 5


def check_settings(restarts, jitter_A, jitter_sigma, phases) -> None:
    """A clear error for a bad restart setting (ReconstructConfig's fields)."""
    if isinstance(restarts, bool) or int(restarts) != restarts or not 0 <= restarts <= MAX_RESTARTS:
        raise ValueError(f"restarts must be an integer from 0 to {MAX_RESTARTS}, got {restarts!r}")
    if not (isinstance(jitter_A, (int, float)) and jitter_A > 0):
        raise ValueError(f"restart_jitter_A must be a positive length in Å, got {jitter_A!r}")
    if not (isinstance(jitter_sigma, (int, float)) and jitter_sigma >= 0):
        raise ValueError(
            f"restart_jitter_sigma must be ≥ 0 (a multiple of σ), got {jitter_sigma!r}"
        )
    if isinstance(phases, bool) or int(phases) != phases or phases < 1:
        raise ValueError(f"restart_phases must be a positive integer, got {phases!r}")


def seed(run_seed: int, k: int) -> int:
    """Restart ``k``'s seed (its jitter and its phases' step keys)."""
    return int(np.random.SeedSequence([int(run_seed), RESTART_SALT, int(k)]).generate_state(1)[0])


def jitter_A(atoms, sigmas, floor_A: float, multiple: float) -> np.ndarray:
    """The spread of each slot's offset per axis ((capacity, 3), Å): ``multiple`` × the
    atom's own σx, σy, σz (:func:`atomjax.uncertainty.atom_sigmas`, of the live atoms in
    slot order), at least ``floor_A`` and at most :data:`MAX_JITTER_A`; ``floor_A`` for
    every atom when there are no σ (``uncertainty=False``)."""
    alive = np.asarray(atoms.alive)
    out = np.full((alive.size, 3), float(floor_A))
    if sigmas is not None:
        own = np.stack([np.asarray(sigmas[f"sigma_{a}_A"], float) for a in "xyz"], 1)
        out[np.flatnonzero(alive)] = np.maximum(multiple * own, floor_A)
    return np.minimum(out, MAX_JITTER_A)


def jittered(params: Params, jitter_A, restart_seed: int) -> Params:
    """``params`` with every live atom moved by a normal offset of σ ``jitter_A`` Å per
    axis (a number, or one per slot and axis: (capacity, 3)); dead slots untouched;
    nothing else changes."""
    atoms = params.atoms
    key = jax.random.PRNGKey(restart_seed)
    pos = atoms.positions_A
    spread = jnp.asarray(jitter_A, pos.dtype)
    offset = spread * jax.random.normal(key, pos.shape, pos.dtype)
    moved = jnp.where(atoms.alive[:, None], pos + offset, pos)
    return eqx.tree_at(lambda p: p.atoms.positions_A, params, moved)


def likelihood_excess(losses, best: int, n_pixels: int, loss: str, noise) -> np.ndarray:
    """Each fit's −2 log L above fit ``best``'s, (len(losses),), from the fits' own losses
    (means over ``n_pixels`` pixels) and the noise model of the kept fit's residual
    (:func:`atomjax.uncertainty.noise_model`): 2N·Δloss / σ² for the squared error (the
    loss is ½·mean r²), 2κ·N·Δloss for the Poisson loss of counts κ·y (κ = 1 / b). The
    truth itself lies about the number of fitted parameters above the best fit, so a
    restart more than
    :data:`PARAMS_PER_ATOM` per atom above it did not come back to a minimum the data
    allow: its atoms say nothing about the search's error."""
    d = np.asarray(losses, np.float64) - float(losses[best])
    if loss == "poisson" and noise["b"] > 0:
        scale = 2.0 / noise["b"]
    else:  # the squared error (other losses: the same scale, an approximation)
        scale = 2.0 / max(noise["mean_variance"], 1e-300)
    return n_pixels * d * scale


def kept(losses) -> int:
    """The fit kept: the lowest final loss (the first of equals; a NaN never wins)."""
    x = np.asarray(losses, float)
    return int(np.argmin(np.where(np.isfinite(x), x, np.inf)))
