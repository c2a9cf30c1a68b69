"""The forward model against oracles: dense splatting, analytic projections, conservation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from atomjax.atoms import Atoms
from atomjax.probe import ProbeSettings
from atomjax.render import (
    FixedProbe,
    ImagingSetup,
    PhysicalProbe,
    PixelProbe,
    centroids_px,
    depth_profiles,
    make_probe,
    render_series,
    render_tilt_series,
    splat,
)


def random_atoms(n=12, extent=4.0, seed=0, capacity=None):
    rng = np.random.default_rng(seed)
    return Atoms.create(
        rng.uniform(-extent, extent, (n, 3)),
        width_A2=rng.uniform(0.3, 0.8, n),
        amplitude=rng.uniform(0.5, 1.5, n),
        capacity=capacity,
    )


def dense_slices(uvw, width, amp, idx, wt, n_out, shape, pixel_A):
    """Every Gaussian on every pixel of every slice (numpy, no windows)."""
    u = (np.arange(shape[0]) - shape[0] // 2) * pixel_A
    v = (np.arange(shape[1]) - shape[1] // 2) * pixel_A
    out = np.zeros((n_out, *shape))
    for i in range(uvw.shape[0]):
        g = amp[i] * np.exp(
            -((u[:, None] - uvw[i, 0]) ** 2 + (v[None, :] - uvw[i, 1]) ** 2) / width[i]
        )
        for k, w in zip(idx[i], wt[i], strict=False):
            out[k] += w * g
    return out


@pytest.mark.parametrize("split", ["linear", "hard"])
def test_splat_matches_dense_reference(split):
    rng = np.random.default_rng(1)
    n, shape, px = 30, (40, 48), 0.3
    uvw = rng.uniform(-7, 7, (n, 3))
    uvw[:3, :2] = [[-6.9, 7.1], [6.4, -7.0], [0.0, 0.0]]  # some near the border
    width = rng.uniform(0.2, 1.0, n)
    amp = rng.uniform(0.5, 2.0, n)
    n_slices, dz = 6, 2.0
    if split == "linear":
        t = np.clip(uvw[:, 2] / dz + n_slices / 2 - 0.5, 0, n_slices - 1)
        k0 = np.minimum(np.floor(t), n_slices - 2).astype(int)
        idx = np.stack([k0, k0 + 1], 1)
        wt = np.stack([1 - (t - k0), t - k0], 1)
    else:
        idx = np.clip(np.floor(uvw[:, 2] / dz + n_slices / 2), 0, n_slices - 1).astype(int)[:, None]
        wt = np.ones((n, 1))
    setup = ImagingSetup(shape, px, n_slices=n_slices, slice_thickness_A=dz, truncation=1e-9)
    ours = np.asarray(
        splat(
            jnp.asarray(uvw),
            jnp.asarray(width),
            jnp.asarray(amp),
            jnp.asarray(idx),
            jnp.asarray(wt),
            n_slices,
            setup,
        )
    )
    ref = dense_slices(uvw, width, amp, idx, wt, n_slices, shape, px)
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


def analytic_projection(pos, width, amp, euler_rad, shape, px, n_w=801, half_depth=20.0):
    """Line integrals of the 3D Gaussians H/sqrt(πB) exp(-|r - r_i|²/B) along the beam.

    Uses scipy's rotation and trapezoidal quadrature along w: independent of atomjax.
    """
    rot = Rotation.from_euler("xyz", euler_rad).as_matrix()
    u = (np.arange(shape[0]) - shape[0] // 2) * px
    v = (np.arange(shape[1]) - shape[1] // 2) * px
    w = np.linspace(-half_depth, half_depth, n_w)
    uvw = np.stack(np.meshgrid(u, v, w, indexing="ij"), -1)  # (nu, nv, nw, 3)
    xyz = uvw @ rot  # R^T (u, v, w) for each row vector
    image = np.zeros(shape)
    for i in range(pos.shape[0]):
        d2 = np.sum((xyz - pos[i]) ** 2, -1)
        density = amp[i] / np.sqrt(np.pi * width[i]) * np.exp(-d2 / width[i])
        image += np.trapezoid(density, w, axis=-1)
    return image


@pytest.mark.parametrize(
    "euler_deg", [(0, 0, 0), (0, 90, 0), (25, -37, 61)], ids=["0deg", "90deg", "oblique"]
)
def test_direct_mode_equals_analytic_projection(euler_deg):
    atoms = random_atoms(n=6, extent=3.0, seed=2)
    shape, px = (36, 40), 0.3
    setup = ImagingSetup(shape, px, truncation=1e-9)
    image = np.asarray(render_tilt_series(atoms, [euler_deg], setup)[0])
    ref = analytic_projection(
        np.asarray(atoms.positions_A),
        np.asarray(atoms.widths_A2),
        np.asarray(atoms.amplitudes),
        np.deg2rad(euler_deg),
        shape,
        px,
    )
    assert np.abs(image - ref).max() <= 1e-6 * ref.max()


def test_probe_convolution_conserves_total_intensity():
    atoms = random_atoms(n=20, extent=3.0)
    setup = ImagingSetup((48, 48), 0.25, n_slices=6, slice_thickness_A=1.5)
    euler = np.deg2rad([[0, a, 0] for a in (-60, 0, 45)])
    drift = np.zeros((3, 3))
    direct = np.asarray(render_series(atoms, euler, drift, None, setup))
    settings = ProbeSettings(semiangle_mrad=25.0, defocus_A=10.0, C30_A=5e4)
    for probe in (
        FixedProbe.from_settings(settings, setup),
        PhysicalProbe(settings),
        PixelProbe(jnp.asarray(np.random.default_rng(0).normal(size=(6, 48, 48)))),
    ):
        images = np.asarray(render_series(atoms, euler, drift, probe, setup))
        np.testing.assert_allclose(images.sum((1, 2)), direct.sum((1, 2)), rtol=1e-10)
        assert not np.allclose(images, direct, atol=1e-3 * direct.max())


def test_delta_probe_equals_direct_mode():
    atoms = random_atoms()
    setup = ImagingSetup((40, 40), 0.3, n_slices=5, slice_thickness_A=2.0)
    delta = np.zeros((5, 40, 40))
    delta[:, 20, 20] = 1.0
    euler, drift = np.deg2rad([[0, 30, 0], [10, -20, 5]]), np.zeros((2, 3))
    a = np.asarray(render_series(atoms, euler, drift, FixedProbe(jnp.asarray(delta)), setup))
    b = np.asarray(render_series(atoms, euler, drift, None, setup))
    np.testing.assert_allclose(a, b, atol=1e-12 * b.max())


def test_tiny_semiangle_rigid_approaches_direct_blurred_by_one_probe():
    """Infinitely deep focus: every slice sees the same probe, so rigid DDI equals the
    direct projection convolved with that one probe; at 25 mrad it does not."""
    atoms = random_atoms(n=15, extent=6.0, seed=3)
    shape, px = (64, 64), 0.25
    setup = ImagingSetup(shape, px, n_slices=8, slice_thickness_A=2.0)
    euler, drift = np.deg2rad([[0, 20, 0]]), np.zeros((1, 3))
    direct = np.asarray(render_series(atoms, euler, drift, None, setup))[0]

    def rel_error(semiangle_mrad):
        probe = FixedProbe.from_settings(ProbeSettings(semiangle_mrad=semiangle_mrad), setup)
        rigid = np.asarray(render_series(atoms, euler, drift, probe, setup))[0]
        p0 = np.fft.ifftshift(np.asarray(probe.stack)[setup.n_slices // 2])
        blurred = np.fft.irfft2(np.conj(np.fft.rfft2(p0)) * np.fft.rfft2(direct), s=shape)
        return np.abs(rigid - blurred).max() / np.abs(blurred).max()

    assert rel_error(1.0) < 1e-3
    assert rel_error(25.0) > 1e-2


def test_chunking_does_not_change_images():
    atoms = random_atoms()
    euler = np.deg2rad(np.stack([np.zeros(7), np.linspace(-60, 60, 7), np.zeros(7)], 1))
    drift = np.random.default_rng(0).normal(scale=0.3, size=(7, 3))
    base = dict(image_shape=(32, 32), pixel_size_A=0.3, n_slices=4)
    probe = make_probe("rigid", ProbeSettings(), ImagingSetup(**base))
    ref = np.asarray(render_series(atoms, euler, drift, probe, ImagingSetup(**base, angle_chunk=7)))
    for chunk in (1, 3, 16):
        out = render_series(atoms, euler, drift, probe, ImagingSetup(**base, angle_chunk=chunk))
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-12 * ref.max())


def test_drift_shifts_the_image():
    atoms = random_atoms()
    setup = ImagingSetup((40, 40), 0.25)
    a = np.asarray(render_tilt_series(atoms, [[0, 0, 0]], setup))[0]
    b = np.asarray(render_tilt_series(atoms, [[0, 0, 0]], setup, drift_A=[[0.5, -0.75, 3.0]]))[0]
    np.testing.assert_allclose(
        np.roll(a, (2, -3), axis=(0, 1))[8:-8, 8:-8], b[8:-8, 8:-8], atol=1e-10
    )


def test_atoms_create_pads_with_dead_atoms_and_host_copies_keep_the_live_ones():
    atoms = random_atoms(n=5, capacity=9)
    assert atoms.capacity == 9 and atoms.n_alive == 5
    live = atoms.alive_numpy()
    assert live["positions_A"].shape == (5, 3)
    np.testing.assert_array_equal(live["amplitudes"], np.asarray(atoms.amplitudes)[:5])
    with pytest.raises(ValueError, match="capacity"):
        random_atoms(n=5, capacity=3)


def test_dead_atoms_contribute_nothing_and_get_zero_finite_gradients():
    live = random_atoms(n=8)
    padded = random_atoms(n=8, capacity=12)
    # make the dead entries hostile: zero width, huge positions, NaN-free garbage
    padded = Atoms(
        positions_A=padded.positions_A.at[8:].set(1e6),
        widths_A2=padded.widths_A2.at[8:].set(0.0),
        amplitudes=padded.amplitudes.at[8:].set(5.0),
        alive=padded.alive,
    )
    setup = ImagingSetup((32, 32), 0.3, n_slices=4)
    probe = make_probe("rigid", ProbeSettings(), setup)
    euler, drift = jnp.asarray(np.deg2rad([[0, 10, 0], [0, -40, 0]])), jnp.zeros((2, 3))
    a = render_series(live, euler, drift, probe, setup)
    b = render_series(padded, euler, drift, probe, setup)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-13)

    target = a + 0.1

    def loss(atoms):
        return jnp.mean((render_series(atoms, euler, drift, probe, setup) - target) ** 2)

    g = jax.grad(loss, allow_int=True)(padded)
    for name in ("positions_A", "widths_A2", "amplitudes"):
        arr = np.asarray(getattr(g, name))
        assert np.all(np.isfinite(arr)), name
        assert np.all(arr[8:] == 0), name
        assert np.any(arr[:8] != 0), name


def test_no_recompilation_on_second_call(compile_counter):
    setup = ImagingSetup((24, 24), 0.3, n_slices=3)
    probe = make_probe("adaptive", ProbeSettings(), setup)
    euler = jnp.asarray(np.deg2rad([[0, 5, 0], [0, 50, 0]]))
    drift = jnp.zeros((2, 3))
    inputs = [
        (random_atoms(seed=0), euler, drift),
        (random_atoms(seed=1), euler + 0.1, drift + 0.2),  # new values, same shapes
        (random_atoms(capacity=16), euler, drift),  # the capacity is a shape
    ]
    counts = []
    with compile_counter() as c:
        for atoms, e, d in inputs:
            render_series(atoms, e, d, probe, setup).block_until_ready()
            counts.append(c.count)
    assert counts[0] > 0
    assert counts[1] == counts[0], "second call with the same shapes recompiled"
    assert counts[2] > counts[1], "a new capacity must compile (the counter works)"


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="pixel_size_A"):
        ImagingSetup((32, 32), -0.1)
    with pytest.raises(ValueError, match="image_shape"):
        ImagingSetup((32,), 0.1)
    with pytest.raises(ValueError, match="depth_split"):
        ImagingSetup((32, 32), 0.1, depth_split="soft")
    setup = ImagingSetup((16, 16), 0.3, n_slices=2)
    atoms = random_atoms()
    with pytest.raises(ValueError, match="euler_deg"):
        render_tilt_series(atoms, [0, 10, 0], setup)
    with pytest.raises(ValueError, match="NaN"):
        render_tilt_series(atoms, [[0, np.nan, 0]], setup)
    with pytest.raises(ValueError, match="drift_A"):
        render_tilt_series(atoms, [[0, 0, 0], [0, 1, 0]], setup, drift_A=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="probe stack"):
        render_tilt_series(atoms, [[0, 0, 0]], setup, probe=FixedProbe(jnp.ones((3, 16, 16))))
    with pytest.raises(ValueError, match="interaction mode"):
        make_probe("ddi", ProbeSettings(), setup)
    with pytest.raises(ValueError, match="probe settings"):
        make_probe("rigid", None, setup)
    with pytest.raises(ValueError, match="NaN"):
        Atoms.create([[0.0, np.nan, 0.0]])
    with pytest.raises(ValueError, match="shape"):
        Atoms.create(np.zeros((4, 2)))
    nan_atoms = Atoms(
        atoms.positions_A.at[0, 0].set(jnp.nan), atoms.widths_A2, atoms.amplitudes, atoms.alive
    )
    with pytest.raises(ValueError, match="positions_A"):
        render_tilt_series(nan_atoms, [[0, 0, 0]], setup)


def test_physical_probe_per_image_focus_equals_fixed_probe_at_that_focus():
    from atomjax.probe import ProbeSettings
    from atomjax.render import FixedProbe, PhysicalProbe

    setup = ImagingSetup((32, 32), 0.3, n_slices=3, slice_thickness_A=4.0, max_width_A2=1.0)
    rng = np.random.default_rng(3)
    atoms = Atoms.create(rng.uniform(-3, 3, (6, 3)), 0.5, 1.0)
    euler_deg = np.array([[0.0, -30.0, 0.0], [0.0, 10.0, 0.0], [5.0, 40.0, -20.0]])
    offsets = np.array([-25.0, 0.0, 40.0])
    settings = ProbeSettings(semiangle_mrad=22.0, defocus_A=10.0, C12_A=5.0, phi12_rad=0.3)
    per_image = PhysicalProbe(settings, jnp.asarray(offsets))
    images = render_tilt_series(atoms, euler_deg, setup, per_image)
    for j, d in enumerate(offsets):
        s = ProbeSettings(semiangle_mrad=22.0, defocus_A=10.0 + d, C12_A=5.0, phi12_rad=0.3)
        ref = render_tilt_series(
            atoms, euler_deg[j : j + 1], setup, FixedProbe.from_settings(s, setup)
        )
        np.testing.assert_allclose(images[j], ref[0], atol=1e-10 * float(ref.max()) + 1e-14)
    # the offsets matter: without them image 2 differs
    plain = render_tilt_series(atoms, euler_deg, setup, PhysicalProbe(settings))
    assert float(jnp.abs(plain[2] - images[2]).max()) > 1e-3 * float(plain.max())
    with pytest.raises(ValueError, match="focus_offsets_A"):
        render_tilt_series(atoms, euler_deg, setup, PhysicalProbe(settings, jnp.zeros(2)))


# ------------------------------------------------------------- pixel probe priors


def test_pixel_probe_correction_starts_at_the_physical_stack():
    setup = ImagingSetup((40, 40), 0.3, n_slices=7, slice_thickness_A=3.0)
    settings = ProbeSettings(semiangle_mrad=30.0, defocus_A=5.0)
    physical = np.asarray(FixedProbe.from_settings(settings, setup).stack)
    lot = PixelProbe.from_settings(settings, setup)
    prior = PixelProbe.from_settings(settings, setup, depth_rank=2, centred=False)
    assert lot.logits.shape == (7, 40, 40) and prior.logits.shape == (2, 40, 40)
    for probe in (lot, prior):
        np.testing.assert_allclose(probe.intensities(setup), physical, atol=1e-9)
    # a correction of rank 2 changes the slices along a straight line in depth
    rng = np.random.default_rng(1)
    bent = eqx.tree_at(lambda p: p.logits, prior, jnp.asarray(rng.normal(size=(2, 40, 40))))
    z = np.log(np.asarray(bent.intensities(setup))) - np.log(physical + 1e-12)
    z -= z.mean(axis=(1, 2), keepdims=True)  # the softmax's free constant per slice
    second = z[2:] - 2 * z[1:-1] + z[:-2]
    assert np.abs(second).max() < 1e-6 * np.abs(z).max()


def test_depth_profiles_are_orthonormal_polynomials():
    q = depth_profiles(9, 3)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(q[:, 0], 1 / 3)  # the constant first
    t = np.linspace(-1, 1, 9)
    assert np.polyfit(t, q[:, 2], 2, full=True)[1][0] < 1e-20  # quadratic exactly
    with pytest.raises(ValueError, match="depth rank"):
        depth_profiles(4, 5)


def test_centred_pixel_probe_keeps_every_slice_on_the_centre_pixel():
    setup = ImagingSetup((36, 36), 0.3, n_slices=3, slice_thickness_A=2.0)
    u = np.arange(36) - 18
    shifts = [(2.3, -1.2), (-0.7, 3.1), (0.0, 0.0)]
    stack = np.stack([
        np.exp(-((u[:, None] - a) ** 2 + (u[None, :] - b) ** 2) / 5.0) for a, b in shifts
    ])  # fmt: skip
    stack /= stack.sum(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(centroids_px(jnp.asarray(stack)), shifts, atol=1e-9)
    probe = PixelProbe.from_stack(stack, centred=True)
    out = np.asarray(probe.intensities(setup))
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 1.0, atol=1e-12)
    np.testing.assert_allclose(centroids_px(jnp.asarray(out)), 0.0, atol=1e-4)
    centred = np.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / 5.0)
    np.testing.assert_allclose(out[0], centred / centred.sum(), atol=1e-6)  # moved, not bent
