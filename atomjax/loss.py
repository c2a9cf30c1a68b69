"""Losses and the R-factor. Pure functions of (observed, calculated) image stacks."""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import xlogy
from jaxtyping import Array, Float

POISSON_FLOOR = 1e-6  # model intensities are clipped here before the logarithm


def mse(observed: Float[Array, "m nu nv"], calculated: Float[Array, "m nu nv"]) -> Array:
    """Mean squared error with the 1/2 of LOT eq. 5: Σ (I_obs - I_cal)² / (2 m p q)."""
    return 0.5 * jnp.mean((observed - calculated) ** 2)


def l1(observed: Float[Array, "m nu nv"], calculated: Float[Array, "m nu nv"]) -> Array:
    """Mean absolute error (the gaussian-atoms loss)."""
    return jnp.mean(jnp.abs(observed - calculated))


def poisson(observed: Float[Array, "m nu nv"], calculated: Float[Array, "m nu nv"]) -> Array:
    """Mean Poisson deviance / 2 per pixel: mean(c - o + o·log(o / c)).

    The negative log-likelihood of counts ``o`` with expected values ``c``, up to a
    constant, so 0 at c = o and ≥ 0 everywhere. Valid for counts known up to one scale
    (no offset): the reconstruction then normalises by the maximum only. Its gradient
    1 - o / c weighs each pixel by 1 / c, as the Poisson variance asks. ``c`` is clipped
    at ``POISSON_FLOOR`` (where the gradient stops), so a model that dips to or below 0
    gives a finite loss.
    """
    c = jnp.maximum(calculated, POISSON_FLOOR)
    return jnp.mean(c - observed + xlogy(observed, observed) - xlogy(observed, c))


def poisson_weights(calculated: Array) -> Array:
    """Fisher scoring's pixel weights for the Poisson loss: 1 / model intensity, 0 where
    the model is at or below ``POISSON_FLOOR`` (there the loss clips it and its gradient
    stops)."""
    c = jnp.maximum(calculated, POISSON_FLOOR)
    return jnp.where(calculated > POISSON_FLOOR, 1.0 / c, 0.0)


def r_factor(
    observed: Float[Array, "m nu nv"], calculated: Float[Array, "m nu nv"]
) -> Float[Array, " m"]:
    """R-factor of each image (LOT eq. 11): Σ|I_obs - I_cal| / Σ|I_obs|."""
    num = jnp.sum(jnp.abs(observed - calculated), axis=(-2, -1))
    return num / jnp.sum(jnp.abs(observed), axis=(-2, -1))


LOSSES = {"mse": mse, "l1": l1, "poisson": poisson}
NEEDS_COUNTS = ("poisson",)  # losses that need the data's zero level kept


def get_loss(name: str):
    """A loss function by name ('mse', 'l1' or 'poisson')."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
