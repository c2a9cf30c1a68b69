"""Geometry conventions: rotations (scipy as the oracle), slicing, pixel grid."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from atomjax import geometry


def test_rotation_matches_scipy_extrinsic_xyz():
    rng = np.random.default_rng(0)
    euler = rng.uniform(-np.pi, np.pi, (20, 3))
    ours = np.asarray(geometry.rotation_matrix(jnp.asarray(euler)))
    theirs = Rotation.from_euler("xyz", euler).as_matrix()
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_tilt_about_y_is_right_handed():
    r = np.asarray(geometry.rotation_matrix(jnp.array([0.0, np.pi / 2, 0.0])))
    np.testing.assert_allclose(r @ [1.0, 0, 0], [0, 0, -1.0], atol=1e-12)
    np.testing.assert_allclose(r @ [0, 0, 1.0], [1.0, 0, 0], atol=1e-12)


def test_to_image_frame_adds_drift_after_rotation():
    pos = jnp.array([[1.0, 2.0, 3.0]])
    euler = jnp.array([0.0, np.pi / 2, 0.0])
    uvw = np.asarray(geometry.to_image_frame(pos, euler, jnp.array([0.5, -0.5, 1.0])))
    np.testing.assert_allclose(uvw, [[3.5, 1.5, 0.0]], atol=1e-12)


def test_euler_from_tilts():
    e = geometry.euler_from_tilts_deg([-10, 0, 20])
    np.testing.assert_array_equal(e[:, 1], [-10, 0, 20])
    assert np.all(e[:, [0, 2]] == 0)
    with pytest.raises(ValueError, match="tilt axis"):
        geometry.euler_from_tilts_deg([0], axis="q")


def test_pixel_coordinates_put_centre_on_n_over_2():
    assert geometry.pixel_coordinates_A(8, 0.5)[4] == 0.0
    assert geometry.pixel_coordinates_A(7, 0.5)[3] == 0.0


def test_slice_centres_symmetric():
    c = geometry.slice_centres_A(4, 2.0)
    np.testing.assert_allclose(c, [-3.0, -1.0, 1.0, 3.0])


def test_hard_slice_index():
    w = jnp.array([-100.0, -3.9, -0.1, 0.0, 3.9, 100.0])
    k = np.asarray(geometry.hard_slice_index(w, 4, 2.0))
    np.testing.assert_array_equal(k, [0, 0, 1, 2, 3, 3])


def test_linear_weights_interpolate_depth():
    n, dz = 5, 2.0
    w = jnp.linspace(-3.99, 3.99, 37)
    idx, wt = geometry.linear_slice_weights(w, n, dz)
    centres = geometry.slice_centres_A(n, dz)
    np.testing.assert_allclose(np.asarray(wt).sum(1), 1.0)
    assert np.all(np.asarray(wt) >= 0)
    recon = (np.asarray(wt) * centres[np.asarray(idx)]).sum(1)
    np.testing.assert_allclose(recon, np.asarray(w), atol=1e-12)


def test_linear_weights_clamp_outside_the_slab():
    idx, wt = geometry.linear_slice_weights(jnp.array([-50.0, 50.0]), 3, 2.0)
    idx, wt = np.asarray(idx), np.asarray(wt)
    assert (idx[0] * wt[0]).sum() == 0 and (idx[1] * wt[1]).sum() == 2
