"""Gradients of the data loss against central finite differences, in float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atomjax.atoms import Atoms
from atomjax.loss import l1, mse
from atomjax.probe import ProbeSettings
from atomjax.render import FixedProbe, ImagingSetup, PhysicalProbe, PixelProbe, render_series

SETUP = ImagingSetup((32, 32), 0.3, n_slices=6, slice_thickness_A=1.5, truncation=1e-14)
EULER = jnp.asarray(np.deg2rad([[0.0, -35.0, 0.0], [5.0, 20.0, -10.0]]))


def make_params(probe_kind):
    rng = np.random.default_rng(4)
    atoms = Atoms.create(
        rng.uniform(-3.0, 3.0, (7, 3)),
        width_A2=rng.uniform(0.4, 0.8, 7),
        amplitude=rng.uniform(0.5, 1.5, 7),
    )
    drift = jnp.asarray(rng.normal(scale=0.4, size=(2, 3)))
    settings = ProbeSettings(semiangle_mrad=22.0, defocus_A=4.0)
    probe = {
        "rigid": FixedProbe.from_settings(settings, SETUP),
        "pixel": PixelProbe.from_settings(settings, SETUP),
        "pixel-prior": PixelProbe.from_settings(settings, SETUP, depth_rank=2, centred=True),
        "physical": PhysicalProbe(settings),
    }[probe_kind]
    return {"atoms": atoms, "drift": drift, "probe": probe}


def loss_fn(params, target, loss=mse):
    images = render_series(params["atoms"], EULER, params["drift"], params["probe"], SETUP)
    return loss(target, images)


def target_images():
    rng = np.random.default_rng(9)
    p = make_params("rigid")
    atoms = eqx.tree_at(
        lambda a: a.positions_A,
        p["atoms"],
        p["atoms"].positions_A + jnp.asarray(rng.normal(scale=0.2, size=(7, 3))),
    )
    return render_series(atoms, EULER, jnp.zeros((2, 3)), p["probe"], SETUP)


def finite_difference(params, target, where, index, eps=1e-6, loss=mse):
    leaf = where(params)

    def shifted(delta):
        new = eqx.tree_at(where, params, leaf.at[index].add(delta))
        return float(loss_fn(new, target, loss))

    return (shifted(eps) - shifted(-eps)) / (2 * eps)


CASES = [
    ("rigid", lambda p: p["atoms"].positions_A, [(0, 0), (2, 1), (4, 2), (6, 2)]),
    ("rigid", lambda p: p["atoms"].widths_A2, [(1,), (5,)]),
    ("rigid", lambda p: p["atoms"].amplitudes, [(0,), (3,)]),
    ("rigid", lambda p: p["drift"], [(0, 0), (1, 1), (0, 2), (1, 2)]),
    ("pixel", lambda p: p["probe"].logits, [(0, 16, 18), (2, 16, 16), (3, 15, 17), (5, 14, 16)]),
    ("pixel-prior", lambda p: p["probe"].logits, [(0, 16, 18), (1, 16, 16), (1, 14, 17)]),
    ("pixel-prior", lambda p: p["atoms"].positions_A, [(0, 0), (3, 2)]),
    ("physical", lambda p: p["probe"].settings.defocus_A, [()]),
    ("physical", lambda p: p["probe"].settings.C12_A, [()]),
]


@pytest.mark.parametrize(
    "probe_kind,where,indices",
    CASES,
    ids=[
        "positions",
        "widths",
        "amplitudes",
        "drift",
        "probe-pixels",
        "probe-correction",
        "positions-centred-probe",
        "defocus",
        "astig",
    ],  # fmt: skip
)
def test_gradient_matches_finite_differences(probe_kind, where, indices):
    params = make_params(probe_kind)
    if probe_kind == "physical":  # astigmatism: start away from its kink at zero
        params["probe"] = PhysicalProbe(
            ProbeSettings(semiangle_mrad=22.0, defocus_A=4.0, C12_A=3.0, phi12_rad=0.4)
        )
    target = target_images()
    grads = eqx.filter_grad(loss_fn)(params, target)
    g_leaf = where(grads)
    for index in indices:
        fd = finite_difference(params, target, where, index)
        an = float(g_leaf[index])
        assert an == pytest.approx(fd, rel=1e-5, abs=1e-10), (index, an, fd)
        assert abs(an) > 1e-9, f"gradient at {index} is zero: the test would not see an error"


def test_depth_gradient_is_nonzero_with_linear_split_and_zero_with_hard():
    params = make_params("rigid")
    target = target_images()
    hard = ImagingSetup((32, 32), 0.3, n_slices=6, slice_thickness_A=1.5, depth_split="hard")
    atoms, drift, probe = (
        params["atoms"],
        params["drift"],
        FixedProbe.from_settings(ProbeSettings(semiangle_mrad=22.0, defocus_A=4.0), hard),
    )

    def loss_drift_w(dw):
        d = drift.at[:, 2].add(dw)
        return mse(target, render_series(atoms, EULER, d, probe, hard))

    def loss_drift_w_linear(dw):
        d = drift.at[:, 2].add(dw)
        return mse(target, render_series(atoms, EULER, d, params["probe"], SETUP))

    assert float(jax.grad(loss_drift_w)(0.0)) == 0.0
    assert abs(float(jax.grad(loss_drift_w_linear)(0.0))) > 1e-8


def test_l1_gradient_matches_finite_differences():
    params = make_params("rigid")
    target = target_images()
    grads = eqx.filter_grad(lambda p, t: loss_fn(p, t, l1))(params, target)
    for index in [(0, 0), (3, 1)]:
        fd = finite_difference(params, target, lambda p: p["atoms"].positions_A, index, loss=l1)
        assert float(grads["atoms"].positions_A[index]) == pytest.approx(fd, rel=1e-4, abs=1e-9)
