"""Batched SPD inverses without LAPACK (atomjax.batched_linalg) against numpy's, and the
compiled pieces that use them free of LAPACK calls (which can hang a 2-thread CPU pool)."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from atomjax.batched_linalg import leading_block_of_inverse, spd_inverse

#: primitives that lower to LAPACK custom calls on a CPU
LAPACK_PRIMITIVES = ("lu", "cholesky", "eigh", "svd", "qr", "triangular_solve", "schur")


def spd(n, p, seed, condition=1e4):
    """(n, p, p) random SPD matrices with eigenvalues from 1 to ``condition``."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, p, p)))
    eig = np.exp(rng.uniform(0, np.log(condition), (n, p)))
    return np.einsum("nij,nj,nkj->nik", q, eig, q)


@pytest.mark.parametrize("p", [1, 5, 23])
def test_spd_inverse_equals_numpy(p):
    a = spd(7, p, p)
    np.testing.assert_allclose(np.asarray(spd_inverse(jnp.asarray(a))), np.linalg.inv(a),
                               rtol=1e-9, atol=1e-12)  # fmt: skip
    batch = spd(6, p, 1).reshape(2, 3, p, p)  # any leading batch shape
    np.testing.assert_allclose(np.asarray(spd_inverse(jnp.asarray(batch))),
                               np.linalg.inv(batch), rtol=1e-9, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("n, chunk", [(5, 32), (70, 32), (64, 8)])
def test_leading_block_is_that_of_the_whole_inverse(n, chunk):
    a = spd(n, 20, 3)
    got = leading_block_of_inverse(jnp.asarray(a), 5, chunk)
    np.testing.assert_allclose(np.asarray(got), np.linalg.inv(a)[:, :5, :5], rtol=1e-8,
                               atol=1e-12)  # fmt: skip


def test_a_variable_without_information_gets_zero_not_nan():
    a = spd(3, 5, 4)
    a[:, 2, :] = 0.0
    a[:, :, 2] = 0.0
    got = np.asarray(spd_inverse(jnp.asarray(a)))
    assert np.all(np.isfinite(got)) and np.all(got[:, 2, :] == 0) and np.all(got[:, :, 2] == 0)
    rest = [0, 1, 3, 4]
    np.testing.assert_allclose(got[:, rest][:, :, rest],
                               np.linalg.inv(a[:, rest][:, :, rest]), rtol=1e-9)  # fmt: skip


def _primitives(jaxpr) -> set[str]:
    out = set()
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out |= _primitives(sub)
    return out


def test_the_covariance_and_lm_programs_call_no_lapack():
    """The per-atom covariance (two batched inverses in one program: the hang) and the
    Levenberg–Marquardt step use no primitive that lowers to LAPACK."""
    from atomjax import fit, levenberg
    from atomjax.atoms import Atoms
    from atomjax.render import ImagingSetup
    from atomjax.uncertainty import patch_covariance

    pairs = jnp.asarray(spd(12, 5, 5).reshape(4, 3, 5, 5))  # (atoms, neighbours + 1, 5, 5)
    index = jnp.asarray(np.tile(np.arange(3), (4, 3, 1)))  # (atoms, patch, patch) → pairs
    prims = _primitives(jax.make_jaxpr(patch_covariance)(pairs, index, index > 0,
                                                         jnp.ones(4, bool)).jaxpr)  # fmt: skip
    setup = ImagingSetup((16, 16), 0.4, max_width_A2=1.0)
    params = fit.Params(Atoms.create(np.zeros((2, 3)), 0.5, 0.3, 4), jnp.zeros((3, 3)), None,
                        jnp.zeros(3))  # fmt: skip
    config = fit.OptimConfig(method="lm")
    state = levenberg.LMState.create(config, jnp.zeros(()).dtype)
    step = jax.make_jaxpr(
        lambda p, s: levenberg.run_steps(
            p,
            s,
            jax.random.split(jax.random.PRNGKey(0), 2),
            jnp.zeros((3, 16, 16)),
            jnp.zeros((3, 3)),
            setup,
            config,
            fit.Rates.from_config(config, 0.3),
        )  # fmt: skip
    )(params, state)
    prims |= _primitives(step.jaxpr)
    assert "scan" in prims and "while" in prims  # the walk reached the loop bodies
    assert not prims & set(LAPACK_PRIMITIVES), prims & set(LAPACK_PRIMITIVES)


def test_float32_inverse_of_badly_scaled_blocks_is_accurate():
    """Blocks whose parameters differ in scale by 1e18 in float32 (as positions, widths
    and amplitudes can): as accurate as numpy's float64 inverse of the float32 matrix."""
    a = spd(50, 5, 6, condition=30.0)
    scale = np.array([1e-12, 1e-6, 1.0, 1e3, 1e6])
    a = a * scale[:, None] * scale[None, :]
    a32 = a.astype(np.float32)
    got = np.asarray(spd_inverse(jnp.asarray(a32))).astype(np.float64)
    want = np.linalg.inv(a32.astype(np.float64))
    rel = np.abs(got - want) / np.sqrt(np.abs(np.einsum("nii,njj->nij", want, want)))
    assert rel.max() < 1e-4, rel.max()
