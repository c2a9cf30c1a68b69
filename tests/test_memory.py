"""Bounded memory: chunked angles keep the compiled loss + gradient's working memory flat
in the number of angles (XLA's own memory analysis), and the automatic chunk size."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atomjax import Atoms, ImagingSetup, ProbeSettings, euler_from_tilts_deg, make_probe
from atomjax.render import auto_angle_chunk, image_bytes, render_series


def temp_bytes(n_angles: int, angle_chunk: int) -> int:
    """Scratch memory XLA plans for one loss + gradient over n_angles images."""
    rng = np.random.default_rng(0)
    atoms = Atoms.create(rng.uniform(-6, 6, (200, 3)), width_A2=0.5, amplitude=1.0)
    setup = ImagingSetup((64, 64), 0.3, n_slices=6, slice_thickness_A=2.0,
                         angle_chunk=angle_chunk)  # fmt: skip
    probe = make_probe("rigid", ProbeSettings(), setup)
    euler = jnp.asarray(np.deg2rad(euler_from_tilts_deg(np.linspace(-70, 70, n_angles))))
    observed = jnp.zeros((n_angles, 64, 64))
    diff, static = eqx.partition(atoms, eqx.is_inexact_array)

    def loss(d):
        images = render_series(eqx.combine(d, static), euler, jnp.zeros((n_angles, 3)), probe,
                               setup)  # fmt: skip
        return jnp.mean((images - observed) ** 2)

    analysis = jax.jit(jax.grad(loss)).lower(diff).compile().memory_analysis()
    return int(analysis.temp_size_in_bytes)


@pytest.mark.slow
def test_working_memory_is_flat_in_the_number_of_angles_when_chunked():
    chunked = [temp_bytes(m, 4) for m in (8, 32)]
    whole = [temp_bytes(m, m) for m in (8, 32)]
    image = 64 * 64 * 8  # one float64 image
    # chunked: only the images themselves (and their gradient) grow with the angles
    assert chunked[1] - chunked[0] <= 4 * 24 * image
    # without chunking everything per image is kept: ~4 × more for 4 × the angles
    assert whole[1] > 3 * whole[0] and whole[1] > 3 * chunked[1]


def test_auto_chunk_follows_the_memory_and_stays_a_power_of_two():
    per = image_bytes((256, 256), 16, 2000, 31, 2)
    assert per > 2000 * 2 * 31**2 * 4  # the splat updates alone
    args = (72, (256, 256), 16, 2000, 31, 2)
    chunks = [auto_angle_chunk(*args, memory_bytes=k * per, fraction=1.0) for k in (1, 3, 5, 20)]
    assert chunks == [1, 2, 4, 16]
    assert auto_angle_chunk(*args, memory_bytes=10 * per, fraction=0.1) == 1
    assert auto_angle_chunk(3, (256, 256), 16, 2000, 31, 2, memory_bytes=1 << 40) == 3
    assert auto_angle_chunk(*args, memory_bytes=1 << 40) == 32  # max_chunk
