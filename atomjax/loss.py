"""Losses and the R-factor. Pure functions of (observed, calculated) image stacks."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def mse(observed: Float[Array, "m nu nv"], calculated: Float[Array, "m nu nv"]) -> Array:
    """Mean squared error with the 1/2 of LOT eq. 5: Σ (I_obs - I_cal)² / (2 m p q)."""
    return 0.5 * jnp.mean((observed - calculated) ** 2)


def l1(observed: Float[Array, "m nu nv"], calculated: Float[Array, "m nu nv"]) -> Array:
    """Mean absolute error (the gaussian-atoms loss)."""
    return jnp.mean(jnp.abs(observed - calculated))


def r_factor(
    observed: Float[Array, "m nu nv"], calculated: Float[Array, "m nu nv"]
) -> Float[Array, " m"]:
    """R-factor of each image (LOT eq. 11): Σ|I_obs - I_cal| / Σ|I_obs|."""
    num = jnp.sum(jnp.abs(observed - calculated), axis=(-2, -1))
    return num / jnp.sum(jnp.abs(observed), axis=(-2, -1))


LOSSES = {"mse": mse, "l1": l1}


def get_loss(name: str):
    """A loss function by name ('mse' or 'l1')."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
