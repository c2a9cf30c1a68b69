"""Per-atom normal matrices: JᵢᵀJᵢ of each atom's footprint in every image, summed.

Atom i adds f_i = H_i · g(u) · g(v) to image j, with g(u) = exp(-(u - u_i)² / B_i) and
(u_i, v_i, w_i) = R_j x_i + d_j. Its Jacobian over the pixels, J_i = ∂f_i / ∂(x, y, z,
B, H), gives the 5 × 5 normal matrix J_iᵀ J_i: the Gauss–Newton curvature of the sum of
squared residuals in that atom's parameters alone, and, divided by the noise variance,
its Fisher information. Because the footprint is the outer product of two 1-D
profiles, every entry is a product of 1-D sums over the window's rows and columns:
with the profiles g, g' = ∂g/∂u_i = 2(u - u_i)/B g and g_B = ∂g/∂B = (u - u_i)²/B² g,

    Σ (∂f/∂u_i)² = H² (g'·g')_u (g·g)_v,   Σ (∂f/∂H)² = (g·g)_u (g·g)_v,   …

so an atom costs O(window) per image, not O(window²). The (u, v) derivatives map to
(x, y, z) through the first two rows of R_j (w does not change a direct projection).

This is the direct-projection footprint: the probe's blur in the rigid and adaptive
modes, and the overlap of neighbouring atoms, are not in these blocks (exactly what a
block-diagonal approximation leaves out). Pure functions, jit-compiled, vectorised over
atoms and images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import geometry
from .atoms import Atoms

N_PARAMS = 5  # x, y, z, B, H


def _axis_sums(coord_A, widths_A2, n_pix: int, setup):
    """The six 1-D sums (g·g, g'·g', g'·g, g_B·g_B, g·g_B, g'·g_B) over each atom's
    window along one image axis of ``n_pix`` pixels (its part inside the image): (n, 6)."""
    ps = setup.pixel_size_A
    r = setup.radius_px
    centre = jnp.round(jax.lax.stop_gradient(coord_A) / ps)
    offset = centre[:, None] + jnp.arange(-r, r + 1)  # pixel - n // 2
    d = offset * ps - coord_A[:, None]  # x_a - u_i
    b = widths_A2[:, None]
    inside = (offset >= -(n_pix // 2)) & (offset < n_pix - n_pix // 2)  # pixels of the image
    g = jnp.where(inside, jnp.exp(-(d**2) / b), 0.0)
    g1 = 2 * d / b * g
    gb = d**2 / b**2 * g
    dot = lambda x, y: jnp.sum(x * y, axis=1)  # noqa: E731
    return jnp.stack([dot(g, g), dot(g1, g1), dot(g1, g), dot(gb, gb), dot(g, gb), dot(g1, gb)], 1)


def _image_blocks(uvw_A, widths_A2, amplitudes, rotation, setup) -> Float[Array, "n 5 5"]:
    """J_iᵀJ_i of every atom in one image, in (x, y, z, B, H)."""
    su = _axis_sums(uvw_A[:, 0], widths_A2, setup.image_shape[0], setup)
    sv = _axis_sums(uvw_A[:, 1], widths_A2, setup.image_shape[1], setup)
    gg_u, g1g1_u, g1g_u, gbgb_u, ggb_u, g1gb_u = su.T
    gg_v, g1g1_v, g1g_v, gbgb_v, ggb_v, g1gb_v = sv.T
    h = amplitudes
    uu = h**2 * g1g1_u * gg_v
    vv = h**2 * gg_u * g1g1_v
    uv = h**2 * g1g_u * g1g_v
    hh = gg_u * gg_v
    uh = h * g1g_u * gg_v
    vh = h * gg_u * g1g_v
    ub = h**2 * (g1gb_u * gg_v + g1g_u * ggb_v)
    vb = h**2 * (ggb_u * g1g_v + gg_u * g1gb_v)
    bb = h**2 * (gbgb_u * gg_v + 2 * ggb_u * ggb_v + gg_u * gbgb_v)
    bh = h * (ggb_u * gg_v + gg_u * ggb_v)
    g4 = jnp.stack(
        [
            jnp.stack([uu, uv, ub, uh], -1),
            jnp.stack([uv, vv, vb, vh], -1),
            jnp.stack([ub, vb, bb, bh], -1),
            jnp.stack([uh, vh, bh, hh], -1),
        ],
        -2,
    )  # (n, 4, 4) in (u, v, B, H)
    return to_xyz(g4, rotation)


def to_xyz(g4, rotation):
    """(…, 5, 5) in (x, y, z, B, H) from (…, 4, 4) in (u, v, B, H) of one image, its
    rotation ``rotation``: (u, v) are the first two rows of R x."""
    a = jnp.zeros((4, N_PARAMS), rotation.dtype)
    a = a.at[:2, :3].set(rotation[:2]).at[2, 3].set(1.0).at[3, 4].set(1.0)
    return jnp.einsum("pi,...pq,qj->...ij", a, g4, a)


@jax.jit
def atom_blocks(
    atoms: Atoms,
    euler_rad: Float[Array, "m 3"],
    drift_A: Float[Array, "m 3"],
    setup,
    image_weights: Float[Array, " m"] | None = None,
) -> Float[Array, "n 5 5"]:
    """Σ_j w_j J_ijᵀ J_ij for every atom (n, 5, 5), in (x, y, z, B, H), over the images
    (weights ``image_weights``, default 1: e.g. 0 for padding). Dead atoms get 0."""
    pos, widths, amps = atoms.masked()
    m = euler_rad.shape[0]
    w = jnp.ones(m, pos.dtype) if image_weights is None else image_weights
    rotations = geometry.rotation_matrix(euler_rad)

    def add(total, view):
        rot, drift, weight = view
        uvw = pos @ rot.T + drift
        return total + weight * _image_blocks(uvw, widths, amps, rot, setup), None

    zero = jnp.zeros((pos.shape[0], N_PARAMS, N_PARAMS), pos.dtype)
    total, _ = jax.lax.scan(add, zero, (rotations, drift_A.astype(pos.dtype), w))
    return jnp.where(atoms.alive[:, None, None], total, 0.0)
