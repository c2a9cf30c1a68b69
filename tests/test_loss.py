"""Losses, R-factor and normalisation against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from atomjax.data import TiltSeries, normalise_series
from atomjax.loss import get_loss, l1, mse, r_factor


def test_mse_has_the_half_of_eq5():
    obs = jnp.zeros((2, 2, 2))
    cal = jnp.ones((2, 2, 2)) * 2.0
    assert float(mse(obs, cal)) == pytest.approx(2.0)  # 4 / 2


def test_l1():
    obs = jnp.array([[[1.0, -1.0]]])
    assert float(l1(obs, jnp.zeros_like(obs))) == pytest.approx(1.0)


def test_r_factor_per_image():
    obs = jnp.array([[[1.0, 3.0]], [[2.0, 2.0]]])
    cal = jnp.array([[[2.0, 3.0]], [[2.0, 2.0]]])
    np.testing.assert_allclose(np.asarray(r_factor(obs, cal)), [0.25, 0.0])


def test_get_loss_names():
    assert get_loss("mse") is mse and get_loss("l1") is l1
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("poisson?")


def test_normalise_series_maps_to_unit_range_keeping_ratios():
    rng = np.random.default_rng(0)
    raw = rng.uniform(100, 300, (3, 4, 5))
    out = normalise_series(raw)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out * (raw.max() - raw.min()) + raw.min(), raw)
    with pytest.raises(ValueError, match="constant"):
        normalise_series(np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        normalise_series(np.full((2, 3, 3), np.nan))


def test_tilt_series_validation_names_the_problem():
    images = np.zeros((3, 8, 8))
    euler = np.zeros((3, 3))
    TiltSeries(images, euler, 0.25)
    with pytest.raises(ValueError, match="2 Euler triples for 3 images"):
        TiltSeries(images, euler[:2], 0.25)
    with pytest.raises(ValueError, match="pixel_size_A"):
        TiltSeries(images, euler, -0.25)
    with pytest.raises(ValueError, match="images"):
        TiltSeries(images[0], euler, 0.25)
    bad = images.copy()
    bad[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\[1\]"):
        TiltSeries(bad, euler, 0.25)
    with pytest.raises(ValueError, match="euler_from_tilts_deg"):
        TiltSeries(images, np.zeros(3), 0.25)
    with pytest.raises(ValueError, match="drift_A"):
        TiltSeries(images, euler, 0.25, drift_A=np.zeros((2, 3)))
