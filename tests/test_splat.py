"""The splatting kernels: matrix products over the whole image or in tiles, against the
window scatter kept as the reference (images and gradients to 1e-5), and the choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atomjax import splat
from atomjax.atoms import Atoms
from atomjax.probe import ProbeSettings
from atomjax.render import ImagingSetup, make_probe, render_series


def _atoms(n=300, seed=0):
    rng = np.random.default_rng(seed)
    uvw = np.c_[rng.uniform(-14, 14, n), rng.uniform(-13, 13, n), rng.uniform(-5, 5, n)]
    uvw[:6, 0] = [-20.0, -12.5, 12.4, 30.0, 0.0, 11.2]  # outside, on the edge, on tile lines
    widths = rng.uniform(0.3, 1.0, n)
    amps = rng.uniform(0.5, 1.0, n)
    alive = rng.uniform(size=n) > 0.1
    k_idx = rng.integers(0, 3, (n, 2))
    k_w = rng.uniform(0, 1, (n, 2))
    return [jnp.asarray(x) for x in (uvw, widths, np.where(alive, amps, 0.0), alive, k_idx, k_w)]


@pytest.mark.parametrize("tile_px, chunk", [(10, 4), (16, 8), (40, 64)])
def test_matrix_products_equal_the_window_scatter(tile_px, chunk):
    setup = ImagingSetup((100, 90), 0.25, max_width_A2=1.0, tile_px=tile_px, tile_chunk=chunk)
    uvw, w, h, alive, k_idx, k_w = _atoms()
    weights = splat.channel_weights(k_idx, k_w, 3)

    def reference(u, w, h):
        return splat.splat_scatter(u, w, h, k_idx, k_w, 3, setup)

    def tiles(u, w, h):
        return splat.splat_tiles(u, w, h[:, None] * weights, setup, alive)

    def whole(u, w, h):
        return splat.splat_whole(u, w, h[:, None] * weights, setup)

    ref = reference(uvw, w, h)
    peak = float(jnp.max(ref))
    for kernel in (tiles, whole):
        np.testing.assert_allclose(kernel(uvw, w, h), ref, atol=1e-5 * peak)

        # gradients of a non-trivial scalar of the images, for every atom parameter
        def score(k):
            return lambda u, w, h: jnp.sum(jnp.sin(3.0 * k(u, w, h)))

        # (of the live atoms: the dead take no place in tiles, so have no gradient there;
        # the model masks their amplitude, so they have none in use either)
        g_ref = jax.grad(score(reference), argnums=(0, 1, 2))(uvw, w, h)
        g_new = jax.grad(score(kernel), argnums=(0, 1, 2))(uvw, w, h)
        for a, b in zip(g_new, g_ref, strict=True):
            np.testing.assert_allclose(a[alive], b[alive], atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_dead_atoms_take_no_place_in_tiles():
    setup = ImagingSetup((64, 64), 0.25, max_width_A2=1.0, tile_px=16, tile_chunk=4)
    uvw, w, h, alive, _, _ = _atoms(n=64, seed=3)
    dead = jnp.zeros_like(alive)
    image = splat.splat_tiles(uvw, w, h[:, None], setup, dead)
    assert float(jnp.max(jnp.abs(image))) == 0.0


@pytest.mark.parametrize("mode, rank", [("direct", None), ("rigid", None), ("rigid", 2)])
def test_render_series_with_every_kernel_agrees(mode, rank):
    """The dispatch in render: direct, per-slice rigid and low-rank rigid, each kernel."""
    from atomjax.render import depth_basis

    rng = np.random.default_rng(1)
    atoms = Atoms.create(rng.uniform(-5, 5, (40, 3)), 0.5, 1.0, capacity=48)
    euler = jnp.asarray(np.deg2rad([[0.0, -40.0, 0.0], [0.0, 10.0, 3.0], [2.0, 55.0, 0.0]]))
    drift = jnp.zeros((3, 3))
    images = {}
    for kernel in ("scatter", "matmul", "auto"):
        setup = ImagingSetup((48, 48), 0.3, n_slices=1 if mode == "direct" else 6,
                             slice_thickness_A=2.0, kernel=kernel, tile_px=16)  # fmt: skip
        probe = make_probe(mode, ProbeSettings(semiangle_mrad=25.0), setup)
        if rank:
            stack = np.asarray(probe.intensities(setup))
            setup = ImagingSetup((48, 48), 0.3, n_slices=6, slice_thickness_A=2.0, kernel=kernel,
                                 tile_px=16, depth_basis=depth_basis(stack, rank))  # fmt: skip
        images[kernel] = render_series(atoms, euler, drift, probe, setup)
    peak = float(jnp.max(images["scatter"]))
    for kernel in ("matmul", "auto"):
        np.testing.assert_allclose(images[kernel], images["scatter"], atol=1e-5 * peak)


def test_the_cheapest_kernel_is_chosen_by_size():
    small = ImagingSetup((112, 112), 0.25, max_width_A2=1.5)
    large = ImagingSetup((384, 384), 0.25, max_width_A2=1.5)
    assert splat.choose_kernel(256, 1, 1, small) == "whole"
    assert splat.choose_kernel(20000, 1, 1, large) == "tiles"
    # every depth slice a channel, but each atom in two of them: the scatter
    assert splat.choose_kernel(20000, 48, 2, large) == "scatter"
    assert splat.choose_kernel(20000, 48, 2, large, kernel="matmul") != "scatter"
    with pytest.raises(ValueError, match="kernel must be one of"):
        ImagingSetup((8, 8), 0.25, kernel="fft")
