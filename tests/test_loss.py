"""Losses, R-factor and normalisation against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from atomjax.data import TiltSeries, normalise_series
from atomjax.loss import get_loss, l1, mse, poisson, r_factor


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
    assert get_loss("mse") is mse and get_loss("l1") is l1 and get_loss("poisson") is poisson
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("poisson?")


def test_poisson_is_the_negative_log_likelihood_up_to_a_constant():
    """Oracle: scipy's Poisson log-pmf. Differences of the loss between two models equal
    differences of the mean negative log-likelihood; the loss is 0 at the data."""
    from scipy.stats import poisson as pois

    rng = np.random.default_rng(1)
    lam = rng.uniform(0.2, 4.0, (3, 5, 6))
    counts = rng.poisson(lam).astype(float)
    other = lam * rng.uniform(0.7, 1.3, lam.shape)
    nll = lambda c: -np.mean(pois.logpmf(counts, c))  # noqa: E731
    got = float(poisson(jnp.asarray(counts), jnp.asarray(lam)) - poisson(counts, other))
    assert got == pytest.approx(nll(lam) - nll(other), rel=1e-5)
    assert float(poisson(jnp.asarray(counts), jnp.asarray(counts) + 1e-30)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert float(poisson(jnp.asarray(counts), jnp.asarray(lam))) > 0
    # the minimiser over one scale s of the model is the ratio of the sums (analytic)
    s = np.linspace(0.5, 1.5, 2001)
    vals = [float(poisson(jnp.asarray(counts), jnp.asarray(x * lam))) for x in s]
    assert s[int(np.argmin(vals))] == pytest.approx(counts.sum() / lam.sum(), abs=1e-3)


def test_poisson_gradient_weighs_pixels_by_the_inverse_model():
    import jax

    obs = jnp.array([[[0.0, 2.0, 5.0]]])
    cal = jnp.array([[[1.0, 4.0, 2.5]]])
    g = jax.grad(lambda c: poisson(obs, c))(cal)
    np.testing.assert_allclose(np.asarray(g), (1 - np.asarray(obs) / np.asarray(cal)) / 3)
    # a model at or below zero is clipped: finite loss, no gradient through the clip
    neg = jnp.array([[[-1.0, 2.0, 5.0]]])
    assert np.isfinite(float(poisson(obs.at[0, 0, 0].set(1.0), neg)))
    assert float(jax.grad(lambda c: poisson(obs, c))(neg)[0, 0, 0]) == 0.0


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


def test_normalise_series_keeping_zero_divides_by_the_maximum_only():
    counts = np.array([[[0.0, 3.0], [6.0, 12.0]]]) + 2.0
    np.testing.assert_allclose(normalise_series(counts, keep_zero=True), counts / 14.0)
    bad = np.zeros((3, 2, 2))
    bad[2, 0, 1] = -0.5
    bad[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match=r"images \[2\] have negative values"):
        normalise_series(bad, keep_zero=True)


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


def test_poisson_weights_are_one_over_the_model_and_zero_where_it_is_clipped():
    from atomjax.loss import POISSON_FLOOR, poisson_weights

    calc = jnp.asarray([2.0, 0.5, POISSON_FLOOR, 0.0, -1.0])
    np.testing.assert_allclose(poisson_weights(calc), [0.5, 2.0, 0.0, 0.0, 0.0])
