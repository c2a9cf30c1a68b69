"""Atoms as local orbitals: a fixed-capacity buffer of isotropic Gaussians.

Each atom i projects to D_i(u, v) = H_i exp(-[(u - u_i)² + (v - v_i)²] / B_i)
(LOT eq. 2): ``amplitudes`` is H (peak of the projection, in image units),
``widths_A2`` is B in Å². The buffer has a fixed capacity; ``alive`` marks the
atoms in use. Dead atoms contribute nothing and receive zero, finite gradients.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

# LOT Supplementary Table 1
DEFAULT_AMPLITUDE = 0.008
DEFAULT_WIDTH_A2 = 0.5


class Atoms(eqx.Module):
    """Atom parameters (a pytree). Capacity = ``positions_A.shape[0]``."""

    positions_A: Float[Array, "n 3"]
    widths_A2: Float[Array, " n"]
    amplitudes: Float[Array, " n"]
    alive: Bool[Array, " n"]

    def __check_init__(self):
        n = self.positions_A.shape[0]
        if self.positions_A.ndim != 2 or self.positions_A.shape[1] != 3:
            raise ValueError(f"positions_A must have shape (n, 3), got {self.positions_A.shape}")
        for name in ("widths_A2", "amplitudes", "alive"):
            shape = getattr(self, name).shape
            if shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) to match positions_A, got {shape}")

    @property
    def capacity(self) -> int:
        return self.positions_A.shape[0]

    @classmethod
    def create(
        cls,
        positions_A,
        width_A2=DEFAULT_WIDTH_A2,
        amplitude=DEFAULT_AMPLITUDE,
        capacity: int | None = None,
        dtype=None,
    ) -> Atoms:
        """Atoms at ``positions_A`` (n, 3), padded with dead atoms up to ``capacity``.

        ``width_A2`` and ``amplitude`` are scalars or (n,) arrays. Checked on the
        host: shapes, finiteness, positive widths.
        """
        pos = np.asarray(positions_A, dtype=float)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise ValueError(f"positions_A must have shape (n, 3), got {pos.shape}")
        n = pos.shape[0]
        capacity = n if capacity is None else int(capacity)
        if capacity < n:
            raise ValueError(f"capacity {capacity} is smaller than the number of atoms {n}")
        width = np.broadcast_to(np.asarray(width_A2, dtype=float), (n,))
        amp = np.broadcast_to(np.asarray(amplitude, dtype=float), (n,))
        for name, arr in (("positions_A", pos), ("width_A2", width), ("amplitude", amp)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains NaN or infinite values")
        if np.any(width <= 0):
            raise ValueError("width_A2 must be positive")
        pad = capacity - n
        dtype = dtype or jnp.asarray(0.0).dtype
        return cls(
            positions_A=jnp.asarray(np.pad(pos, ((0, pad), (0, 0))), dtype=dtype),
            widths_A2=jnp.asarray(
                np.pad(width, (0, pad), constant_values=DEFAULT_WIDTH_A2), dtype=dtype
            ),
            amplitudes=jnp.asarray(np.pad(amp, (0, pad)), dtype=dtype),
            alive=jnp.asarray(np.arange(capacity) < n),
        )

    def masked(self) -> tuple[Array, Array, Array]:
        """(positions, widths, amplitudes) with dead atoms made harmless.

        The double-``where`` keeps gradients of dead atoms zero and finite.
        """
        alive = self.alive
        pos = jnp.where(alive[:, None], self.positions_A, 0.0)
        width = jnp.where(alive, self.widths_A2, DEFAULT_WIDTH_A2)
        amp = jnp.where(alive, self.amplitudes, 0.0)
        return pos, width, amp

    @property
    def n_alive(self) -> int:
        return int(np.asarray(self.alive).sum())

    def alive_numpy(self) -> dict[str, np.ndarray]:
        """Host copies of the live atoms' parameters."""
        keep = np.asarray(self.alive)
        return {
            "positions_A": np.asarray(self.positions_A)[keep],
            "widths_A2": np.asarray(self.widths_A2)[keep],
            "amplitudes": np.asarray(self.amplitudes)[keep],
        }
