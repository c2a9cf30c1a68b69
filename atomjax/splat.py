"""Splatting: the atoms' Gaussian footprints summed into image channels.

An atom at (u_i, v_i) with width B_i and amplitude H_i adds
H_i · w_ic · exp(-(u - u_i)² / B_i) · exp(-(v - v_i)² / B_i) to channel c of the image,
where w_ic is its share in that channel (a depth slice, a low-rank depth component, or
1 in direct mode). The footprint is the outer product of two 1-D profiles, and two
kernels use that differently:

* :func:`splat_scatter` — the reference. Each atom's (2r+1)² window (r from
  ``setup.max_width_A2`` and ``setup.truncation``) is added with one scatter per atom
  and channel. XLA's CPU scatter handles one element at a time, and its transpose in
  the gradient too.
* :func:`splat_matmul` — the default. The image is cut into square tiles of ``T``
  pixels; every atom belongs to the tile of its centre pixel, and each tile's image,
  extended by a halo of r pixels, is a sum of matrix products Gᵤᵀ · diag(H·w) · Gᵥ of
  the profiles of its atoms over the tile's rows and columns, one per chunk of atoms.
  The extended tiles are then added into the image: matrix products instead of
  scatters, in the forward pass and in the gradient. For small problems the whole
  image is one tile (all atoms in one product).

:func:`choose_kernel` picks the cheapest for the problem's size (``setup.kernel="auto"``,
the default) by costs measured on the project's CPU machine: the whole-image product
for small particles, tiles for large ones, and the scatter when atoms go into many
channels (every depth slice of the rigid model) but only two of them each.

Both give the same images (to the window truncation, ~1e-6 of the peak: tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

KERNELS = ("auto", "matmul", "scatter")
#: tile side when ``setup.tile_px`` is None (pixels)
DEFAULT_TILE_PX = 32


def channel_weights(slice_index: Array, slice_weight: Array, n_out: int) -> Float[Array, "n c"]:
    """Dense (n, n_out) shares from the (n, s) slice indices and weights of each atom."""
    n = slice_index.shape[0]
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], slice_index.shape)
    return jnp.zeros((n, n_out), slice_weight.dtype).at[rows, slice_index].add(slice_weight)


# ------------------------------------------------------------------ the reference kernel


def splat_scatter(
    uvw_A: Float[Array, "n 3"],
    widths_A2: Float[Array, " n"],
    amplitudes: Float[Array, " n"],
    slice_index: Array,
    slice_weight: Array,
    n_out: int,
    setup,
) -> Float[Array, "k nu nv"]:
    """Splat atoms into ``n_out`` slices, each atom into a (2r+1)² window.

    ``slice_index`` / ``slice_weight`` (n, s): the slices each atom goes to and its
    share in each. The window, the outer product of two 1D Gaussian profiles, is
    added with one scatter per atom and slice into an image padded by 2r on every
    side; windows that lie wholly outside the image are dropped, and the padding is
    cut away, so pixels outside the image never wrap around.
    """
    nu, nv = setup.image_shape
    ps = setup.pixel_size_A
    r = setup.radius_px
    width = 2 * r + 1
    offsets = jnp.arange(-r, r + 1)

    def axis_profile(coord_A, n_pix):
        centre = jnp.round(jax.lax.stop_gradient(coord_A) / ps).astype(jnp.int32) + n_pix // 2
        d_A = (centre[:, None] + offsets - n_pix // 2).astype(coord_A.dtype) * ps
        d_A = d_A - coord_A[:, None]
        return centre, jnp.exp(-(d_A**2) / widths_A2[:, None])

    cu, gu = axis_profile(uvw_A[:, 0], nu)
    cv, gv = axis_profile(uvw_A[:, 1], nv)
    n, s = slice_index.shape
    window = gu[:, :, None] * gv[:, None, :]  # (n, W, W)
    updates = (amplitudes[:, None] * slice_weight)[:, :, None, None] * window[:, None]
    # window corner in the padded image: centre - r + 2r
    corner_u = jnp.broadcast_to((cu + r)[:, None], (n, s))
    corner_v = jnp.broadcast_to((cv + r)[:, None], (n, s))
    index = jnp.stack([slice_index, corner_u, corner_v], -1).reshape(n * s, 3)
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0, 1, 2)
    )
    padded = jnp.zeros((n_out, nu + 4 * r, nv + 4 * r), updates.dtype)
    padded = jax.lax.scatter_add(
        padded,
        index,
        updates.reshape(n * s, width, width),
        dims,
        mode=jax.lax.GatherScatterMode.FILL_OR_DROP,
    )
    return padded[:, 2 * r : 2 * r + nu, 2 * r : 2 * r + nv]


# -------------------------------------------------------------------- the tiled kernel


def tile_grid(setup) -> tuple[int, int, int, int]:
    """(T, halo r, tiles along u, tiles along v) of ``setup``'s tiling."""
    r = setup.radius_px
    tile = int(setup.tile_px or DEFAULT_TILE_PX)
    nu, nv = setup.image_shape
    return tile, r, -(-nu // tile), -(-nv // tile)


def _profiles(coord_px, widths_A2, start_px, length: int, ps: float):
    """exp(-((a - coord) ps)² / B) for pixels a = start + 0..length-1; (…, length)."""
    a = start_px[..., None] + jnp.arange(length)
    d_A = (a.astype(coord_px.dtype) - coord_px[..., None]) * ps
    return jnp.exp(-(d_A**2) / widths_A2[..., None])


#: measured cost of a loss + gradient, per unit of work, on the project's CPU machine
#: (2 cores, float32; benchmarks/bench_scale.py): a window pixel of the scatter, a
#: multiply-add of the whole-image product, a pixel of a tile's extended square
COST_NS = {"scatter": 7.0, "whole": 0.17, "tiles": 55.0}


def kernel_costs(n_atoms: int, n_channels: int, n_splits: int, setup) -> dict[str, float]:
    """Estimated time (ns) of each way to splat ``n_atoms`` into ``n_channels`` channels,
    each atom into ``n_splits`` slices for the scatter (static: known at trace time)."""
    nu, nv = setup.image_shape
    tile, r, n_tu, n_tv = tile_grid(setup)
    window = (2 * r + 1) ** 2
    chunks = -(-n_atoms // setup.tile_chunk) + n_tu * n_tv
    costs = {
        "scatter": COST_NS["scatter"] * n_atoms * n_splits * window,
        "whole": COST_NS["whole"] * n_atoms * n_channels * nu * nv,
        "tiles": COST_NS["tiles"] * chunks * n_channels * (tile + 2 * r) ** 2,
    }
    if setup.tile_px == 0 or n_tu * n_tv == 1:
        del costs["tiles"]
    return costs


def choose_kernel(n_atoms: int, n_channels: int, n_splits: int, setup, kernel=None) -> str:
    """ "scatter", "whole" or "tiles" for ``kernel`` (default ``setup.kernel``): "scatter"
    itself, "matmul" the cheaper of whole and tiles, "auto" the cheapest of the three
    by :func:`kernel_costs`."""
    kernel = setup.kernel if kernel is None else kernel
    if kernel == "scatter":
        return "scatter"
    costs = kernel_costs(n_atoms, n_channels, n_splits, setup)
    if kernel == "matmul":
        costs.pop("scatter")
    return min(costs, key=costs.get)


def splat_matmul(
    uvw_A: Float[Array, "n 3"],
    widths_A2: Float[Array, " n"],
    amplitudes: Float[Array, " n"],
    weights: Float[Array, "n c"],
    setup,
    alive: Array | None = None,
) -> Float[Array, "c nu nv"]:
    """Images (C, nu, nv) of the atoms' footprints, channel c weighted by ``weights[:, c]``.

    ``alive`` (n,) bool: the atoms to place in tiles (dead buffer slots take no place).
    Small problems are one product over the whole image; larger ones
    (:func:`choose_kernel`) go in tiles: the atoms are sorted by the tile of their
    centre pixel and cut into chunks of ``setup.tile_chunk``, each chunk (of one tile)
    is one product over the tile's extended square, and the squares are added into the
    image at their tiles.
    A tile with c atoms takes ceil(c / chunk) chunks, so there is no capacity to
    exceed: the number of chunks is at most n / chunk + the number of tiles.
    """
    hw = amplitudes[:, None] * weights  # (n, C)
    if choose_kernel(hw.shape[0], hw.shape[1], 1, setup, kernel="matmul") == "tiles":
        return splat_tiles(uvw_A, widths_A2, hw, setup, alive)
    return splat_whole(uvw_A, widths_A2, hw, setup)


def _pixel_coordinates(uvw_A, setup):
    nu, nv = setup.image_shape
    ps = setup.pixel_size_A
    return uvw_A[:, 0] / ps + nu // 2, uvw_A[:, 1] / ps + nv // 2


def splat_whole(uvw_A, widths_A2, hw, setup) -> Array:
    """One product over the whole image: (C, nu, nv) = Σ_i hw_ic · gᵤ_i ⊗ gᵥ_i, with the
    profiles over every row and column; ``hw`` (n, C) the amplitudes times the shares."""
    nu, nv = setup.image_shape
    pu, pv = _pixel_coordinates(uvw_A, setup)
    zero = jnp.zeros((), jnp.int32)
    gu = _profiles(pu, widths_A2, zero, nu, setup.pixel_size_A)  # (n, nu)
    gv = _profiles(pv, widths_A2, zero, nv, setup.pixel_size_A)
    return jnp.einsum("nca,nb->cab", hw[:, :, None] * gu[:, None, :], gv)


def splat_tiles(uvw_A, widths_A2, hw, setup, alive=None) -> Array:
    """The same images as :func:`splat_whole`, by tiles and chunks (see
    :func:`splat_matmul`); ``alive`` (n,) bool or None (all take a place)."""
    nu, nv = setup.image_shape
    ps = setup.pixel_size_A
    pu, pv = _pixel_coordinates(uvw_A, setup)
    n, c = hw.shape
    tile, r, n_tu, n_tv = tile_grid(setup)
    g = setup.tile_chunk
    n_tiles = n_tu * n_tv
    n_chunks = -(-n // g) + n_tiles  # enough for any distribution over the tiles
    centre_u = jnp.round(jax.lax.stop_gradient(pu)).astype(jnp.int32)
    centre_v = jnp.round(jax.lax.stop_gradient(pv)).astype(jnp.int32)
    key = jnp.clip(centre_u // tile, 0, n_tu - 1) * n_tv + jnp.clip(centre_v // tile, 0, n_tv - 1)
    if alive is not None:
        key = jnp.where(alive, key, n_tiles)  # the dead wait in a tile of their own
    order = jnp.argsort(key, stable=True)
    sorted_key = key[order]
    counts = jnp.bincount(key, length=n_tiles + 1)[:n_tiles]
    per_tile = -(-counts // g)  # chunks each tile takes
    first_chunk = jnp.cumsum(per_tile) - per_tile
    first_atom = jnp.cumsum(counts) - counts
    live = sorted_key < n_tiles
    safe_key = jnp.minimum(sorted_key, n_tiles - 1)
    rank = jnp.arange(n) - first_atom[safe_key]
    slot = jnp.where(live, (first_chunk[safe_key] + rank // g) * g + rank % g, n_chunks * g)
    table = jnp.full(n_chunks * g + 1, n, jnp.int32).at[slot].set(order.astype(jnp.int32))
    table = table[:-1].reshape(n_chunks, g)  # atom index per slot; n: empty
    # the tile of each chunk (chunks past the last used one hold only empty slots)
    chunk_tile = jnp.clip(
        jnp.searchsorted(jnp.cumsum(per_tile), jnp.arange(n_chunks), side="right"),
        0, n_tiles - 1,
    )  # fmt: skip

    # the empty slots read a dummy atom far outside every tile, with no amplitude
    far = jnp.asarray(-1e6, pu.dtype)
    pu_k = jnp.append(pu, far)[table]
    pv_k = jnp.append(pv, far)[table]
    b_k = jnp.append(widths_A2, 1.0)[table]
    hw_k = jnp.concatenate([hw, jnp.zeros((1, c), hw.dtype)])[table]  # (K, G, C)
    row0 = (chunk_tile // n_tv) * tile - r  # first pixel of each chunk's extended square
    col0 = (chunk_tile % n_tv) * tile - r
    side = tile + 2 * r
    gu = _profiles(pu_k, b_k, row0[:, None], side, ps)  # (K, G, side)
    gv = _profiles(pv_k, b_k, col0[:, None], side, ps)
    squares = jnp.einsum("kgca,kgb->kcab", hw_k[..., None] * gu[:, :, None, :], gv)
    # add the squares into a canvas with a margin of r on every side, and cut it out
    canvas = jnp.zeros((c, n_tu * tile + 2 * r, n_tv * tile + 2 * r), squares.dtype)
    index = jnp.stack([jnp.zeros_like(row0), row0 + r, col0 + r], -1)
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2, 3),
        inserted_window_dims=(),
        scatter_dims_to_operand_dims=(0, 1, 2),
    )
    canvas = jax.lax.scatter_add(canvas, index, squares, dims, indices_are_sorted=True,
                                 mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)  # fmt: skip
    return canvas[:, r : r + nu, r : r + nv]
