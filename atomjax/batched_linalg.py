"""Inverses of many small symmetric positive-definite matrices, in plain XLA operations.

``jnp.linalg.inv`` on a CPU calls LAPACK (getrf) through a custom call that splits its
batch over XLA's intra-op thread pool and waits for the pieces. When two such calls run
side by side in one program, each on a pool thread, both wait for pieces that no free
thread is left to run: the program never finishes. Measured with jaxlib 0.10.2 on the
project's 2-core machine: the per-atom covariance of a 4,512-atom fit (two batched
inverses in one program) hung in ``lapack_sgetrf_ffi`` → ``ParallelBatchMap`` with both
pool threads waiting (the same class of hang as the FFT thunk re-entering the pool,
reported in PyAutoLabs/PyAutoFit#1530).

The matrices here are normal matrices (Fisher blocks, damped Gauss–Newton blocks):
symmetric positive definite, where Gauss–Jordan elimination without pivoting is stable,
so a loop of rank-1 updates over the columns is all it takes. Cost O(p³) per matrix,
vectorised over the batch; no custom call, so nothing re-enters the pool.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["leading_block_of_inverse", "spd_inverse"]


def spd_inverse(a: Float[Array, "... p p"]) -> Float[Array, "... p p"]:
    """The inverse of every (p, p) matrix in ``a`` (symmetric positive definite), by
    Gauss–Jordan elimination on the diagonal pivots. Where a pivot is not positive (a
    variable the matrix holds no information on, or a matrix that is not positive
    definite) that variable's row and column of the result are 0: no step, no variance;
    check the diagonal where that matters."""
    p = a.shape[-1]
    # equilibrated first, D^-½ A D^-½ with D = diag A (unit diagonal, whatever the
    # parameters' units), undone after
    d = jnp.diagonal(a, axis1=-2, axis2=-1)
    s = jnp.where(d > 0, 1 / jnp.sqrt(jnp.where(d > 0, d, 1)), 0)
    a = a * s[..., :, None] * s[..., None, :]
    eye = jnp.broadcast_to(jnp.eye(p, dtype=a.dtype), a.shape)
    aug = jnp.concatenate([a, eye], axis=-1)  # (..., p, 2p): [A | I] → [I | A⁻¹]

    def eliminate(k, aug):
        row = jax.lax.dynamic_index_in_dim(aug, k, axis=-2, keepdims=False)  # (..., 2p)
        pivot = jax.lax.dynamic_index_in_dim(row, k, axis=-1, keepdims=True)
        row = jnp.where(pivot > 0, row / jnp.where(pivot > 0, pivot, 1), 0)
        col = jax.lax.dynamic_index_in_dim(aug, k, axis=-1, keepdims=False)  # (..., p)
        aug = aug - col[..., :, None] * row[..., None, :]
        return jax.lax.dynamic_update_index_in_dim(aug, row, k, axis=-2)

    inverse = jax.lax.fori_loop(0, p, eliminate, aug)[..., p:]
    return inverse * s[..., :, None] * s[..., None, :]


def leading_block_of_inverse(a: Float[Array, "n p p"], m: int, chunk: int = 32) -> Array:
    """The leading (m, m) block of the inverse of every (p, p) matrix in ``a`` (n, p, p)
    (symmetric positive definite): the inverse of the Schur complement left when the
    last p - m variables are eliminated one by one (each a rank-1 update that also
    clears its own row and column). About half the work of the whole inverse; run in
    chunks of ``chunk`` matrices so the working set stays in cache."""
    n, p = a.shape[0], a.shape[-1]

    def schur(a):
        def eliminate(j, a):
            k = p - 1 - j
            col = jax.lax.dynamic_index_in_dim(a, k, axis=-1, keepdims=False)  # (c, p)
            pivot = jax.lax.dynamic_index_in_dim(col, k, axis=-1, keepdims=True)
            row = jnp.where(pivot > 0, col / jnp.where(pivot > 0, pivot, 1), 0)  # symmetric
            return a - col[:, :, None] * row[:, None, :]

        return spd_inverse(jax.lax.fori_loop(0, p - m, eliminate, a)[:, :m, :m])

    pad = (-n) % chunk
    padded = jnp.concatenate([a, jnp.broadcast_to(jnp.eye(p, dtype=a.dtype), (pad, p, p))])
    out = jax.lax.map(schur, padded.reshape(-1, chunk, p, p))
    return out.reshape(-1, m, m)[:n]
