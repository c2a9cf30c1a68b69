"""Test particles: determinism, sizes, composition, geometry."""

import time

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from atomjax import structures


def _nn_distances(atoms):
    d, _ = cKDTree(atoms.positions).query(atoms.positions, k=2)
    return d[:, 1]


def _pair_distances(atoms):
    p = atoms.positions
    return np.sort(np.linalg.norm(p[:, None] - p[None], axis=-1).ravel())


def test_fcc_sphere_size_and_centre():
    atoms = structures.fcc_sphere("Au", radius_A=10.0)
    assert len(atoms) == 249  # fcc shells of Au (a = 4.08 Å) within 10 Å of a site
    assert set(atoms.get_chemical_symbols()) == {"Au"}
    np.testing.assert_allclose(atoms.get_center_of_mass(), 0.0, atol=1e-9)
    assert np.linalg.norm(atoms.positions, axis=1).max() <= 10.0 + 1e-9
    np.testing.assert_allclose(_nn_distances(atoms), 4.08 / np.sqrt(2), rtol=1e-9)
    assert not atoms.pbc.any()
    bigger = structures.fcc_sphere("Au", radius_A=15.0)
    # atom count scales with volume: 4 atoms per a³
    expected = 4 / 4.08**3 * 4 / 3 * np.pi * 15.0**3
    assert abs(len(bigger) - expected) / expected < 0.1


def test_fcc_sphere_errors():
    with pytest.raises(ValueError, match="radius_A"):
        structures.fcc_sphere("Au", radius_A=-1.0)
    with pytest.raises(ValueError, match="unknown chemical element"):
        structures.fcc_sphere("Xx")
    with pytest.raises(ValueError, match="not fcc"):
        structures.fcc_sphere("Fe")
    assert len(structures.fcc_sphere("Fe", radius_A=5.0, lattice_constant_A=3.6)) > 0
    assert len(structures.fcc_sphere("Au", radius_A=0.5)) == 1  # the atom at the origin


def test_decahedron_five_fold():
    atoms = structures.decahedron("Pt", diameter_A=20.0)
    np.testing.assert_allclose(atoms.get_center_of_mass(), 0.0, atol=1e-9)
    xy = np.linalg.norm(atoms.positions[:, :2], axis=1)
    assert abs(2 * xy.max() - 20.0) < 3.92 / np.sqrt(2)  # within one size step
    tree = cKDTree(atoms.positions)
    rot72 = Rotation.from_euler("z", 72, degrees=True).as_matrix()
    d, _ = tree.query(atoms.positions @ rot72.T)
    assert d.max() < 1e-6  # five-fold axis along z
    rot90 = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    d, _ = tree.query(atoms.positions @ rot90.T)
    assert d.max() > 0.5  # and not four-fold
    nn = _nn_distances(atoms)
    assert np.all(np.abs(nn - 3.92 / np.sqrt(2)) < 0.05)
    assert len(structures.decahedron("Pt", diameter_A=30.0)) > len(atoms)


def test_decahedron_errors():
    with pytest.raises(ValueError, match="diameter_A"):
        structures.decahedron("Pt", diameter_A=0.0)
    with pytest.raises(ValueError, match="q must be"):
        structures.decahedron("Pt", q=0)


def test_amorphous_window_and_determinism():
    t0 = time.perf_counter()
    a = structures.amorphous("Si", radius_A=20.0, seed=3)
    elapsed = time.perf_counter() - t0
    b = structures.amorphous("Si", radius_A=20.0, seed=3)
    c = structures.amorphous("Si", radius_A=20.0, seed=4)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert len(a) != len(c) or not np.allclose(a.positions, c.positions)
    nn = _nn_distances(a)
    assert nn.min() >= 2.32 - 1e-9 and nn.max() <= 2.53 + 1e-9
    np.testing.assert_allclose(a.get_center_of_mass(), 0.0, atol=1e-9)
    assert np.linalg.norm(a.positions, axis=1).max() < 20.0 + 0.5
    density = len(a) / (4 / 3 * np.pi * 20.0**3)
    assert 0.04 < density < 0.08  # ~0.06 Å⁻³, LOT's M1 is 0.065
    assert len(a) > 1500 and elapsed < 5.0


def test_amorphous_errors():
    with pytest.raises(ValueError, match="max_distance_A"):
        structures.amorphous("Si", min_distance_A=2.5, max_distance_A=2.4)
    with pytest.raises(ValueError, match="radius_A"):
        structures.amorphous("Si", radius_A=0)
    with pytest.raises(ValueError, match="unknown chemical element"):
        structures.amorphous("Qq")


def test_alloy_composition_vegard():
    atoms = structures.alloy(("Ni", "Pd", "Pt"), radius_A=10.0, seed=1)
    n = len(atoms)
    counts = {el: atoms.get_chemical_symbols().count(el) for el in ("Ni", "Pd", "Pt")}
    assert sum(counts.values()) == n and max(counts.values()) - min(counts.values()) <= 1
    a_vegard = (3.52 + 3.89 + 3.92) / 3
    np.testing.assert_allclose(_nn_distances(atoms), a_vegard / np.sqrt(2), rtol=1e-9)
    np.testing.assert_allclose(atoms.get_center_of_mass(), 0.0, atol=1e-9)
    again = structures.alloy(("Ni", "Pd", "Pt"), radius_A=10.0, seed=1)
    other = structures.alloy(("Ni", "Pd", "Pt"), radius_A=10.0, seed=2)
    assert again.get_chemical_symbols() == atoms.get_chemical_symbols()
    assert other.get_chemical_symbols() != atoms.get_chemical_symbols()

    skew = structures.alloy(("Ni", "Pt"), fractions=(3, 1), radius_A=10.0)
    assert skew.get_chemical_symbols().count("Ni") == round(0.75 * len(skew))


def test_alloy_errors():
    with pytest.raises(ValueError, match="fractions"):
        structures.alloy(("Ni", "Pt"), fractions=(1.0,))
    with pytest.raises(ValueError, match="fractions"):
        structures.alloy(("Ni", "Pt"), fractions=(1.0, -1.0))
    with pytest.raises(ValueError, match="distinct"):
        structures.alloy(("Ni", "Ni"))
    with pytest.raises(ValueError, match="not fcc"):
        structures.alloy(("Ni", "Fe"))


def test_co_alloys_use_the_fcc_phase_of_co():
    """Co is hcp in ase; in an fcc alloy Vegard's law takes β-Co's 3.544 Å."""
    particle = structures.alloy(("Co", "Pd", "Pt"), radius_A=6.0)
    assert sorted(set(particle.get_chemical_symbols())) == ["Co", "Pd", "Pt"]
    a = 3.544 + structures.fcc_lattice_constant_A("Pd") + structures.fcc_lattice_constant_A("Pt")
    d = particle.get_all_distances()
    np.testing.assert_allclose(np.min(d[d > 0]), a / 3 / np.sqrt(2), rtol=1e-6)


def test_fept_ordered_layers():
    atoms = structures.fept_sphere(radius_A=10.0)
    sym = np.array(atoms.get_chemical_symbols())
    assert abs((sym == "Fe").sum() - (sym == "Pt").sum()) <= 0.1 * len(sym)
    # L1₀: Fe and Pt alternate in (001) planes spaced c/2
    com = atoms.get_center_of_mass()
    z = atoms.positions[:, 2] + com[2]
    planes = np.round(z / (3.71 / 2)).astype(int)
    fe_parity = np.unique(planes[sym == "Fe"] % 2)
    pt_parity = np.unique(planes[sym == "Pt"] % 2)
    assert len(fe_parity) == 1 and len(pt_parity) == 1 and fe_parity[0] != pt_parity[0]
    random = structures.fept_sphere(radius_A=10.0, ordered=False, seed=0)
    assert set(random.get_chemical_symbols()) == {"Fe", "Pt"}


def test_rotations_keep_shape():
    atoms = structures.fcc_sphere("Au", radius_A=8.0)
    rot = structures.random_orientation(atoms, seed=5)
    np.testing.assert_allclose(_pair_distances(rot), _pair_distances(atoms), atol=1e-9)
    np.testing.assert_allclose(rot.get_center_of_mass(), 0.0, atol=1e-9)
    np.testing.assert_array_equal(rot.positions, structures.random_orientation(atoms, 5).positions)
    assert not np.allclose(rot.positions, atoms.positions)

    off = structures.rotate_off_zone_axes(atoms, seed=0, min_angle_deg=5.0)
    np.testing.assert_allclose(_pair_distances(off), _pair_distances(atoms), atol=1e-9)
    # the rotation R maps crystal axes d to R d; recover it and check the margin
    r, _ = Rotation.align_vectors(off.positions, atoms.positions)
    axes = np.array(
        [
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            [1, 1, 0],
            [1, -1, 0],
            [1, 0, 1],
            [1, 0, -1],
            [0, 1, 1],
            [0, 1, -1],
            [1, 1, 1],
            [1, 1, -1],
            [1, -1, 1],
            [-1, 1, 1],
        ],
        float,
    )
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    margin = np.degrees(np.arcsin(np.abs(r.apply(axes)[:, 1]).min()))
    assert margin >= 5.0
    np.testing.assert_allclose(margin, off.info["zone_axis_margin_deg"], atol=1e-6)
    with pytest.raises(ValueError, match="no rotation found"):
        structures.rotate_off_zone_axes(atoms, min_angle_deg=60.0)
    with pytest.raises(ValueError, match="tilt_axis"):
        structures.rotate_off_zone_axes(atoms, tilt_axis="q")


def test_column_directions_of_an_fcc_crystal():
    """Cubic axes along x, y, z: the first two shells give the six <110> and three <100>."""
    atoms = structures.fcc_sphere("Au", radius_A=9.0)
    cols = structures.column_directions(atoms)
    expected = np.array(
        [[1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1],
         [1, 0, 0], [0, 1, 0], [0, 0, 1]],
        float,
    )  # fmt: skip
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert cols.shape == (9, 3)
    np.testing.assert_allclose(np.abs(cols @ expected.T).max(axis=0), 1.0, atol=1e-9)
    # beam along z at 0° ([001]), along [101] at 45°; at 20° the nearest is [001], 20° away
    margin = structures.column_margin_deg(atoms, [0.0, 45.0, 20.0])
    np.testing.assert_allclose(margin, [0.0, 0.0, 20.0], atol=1e-6)
    with pytest.raises(ValueError, match="two atoms"):
        structures.column_directions(atoms[:1])


def test_rotate_off_columns_keeps_every_view_off_and_the_axis_aligned():
    tilts = np.arange(-67.5, 68.0, 9.0)
    atoms = structures.decahedron("Pt", diameter_A=20.0)  # five-fold axis along z
    off = structures.rotate_off_columns(atoms, tilts, seed=0, align=(0, 0, 1), min_angle_deg=3.0)
    np.testing.assert_allclose(_pair_distances(off), _pair_distances(atoms), atol=1e-9)
    margin = structures.column_margin_deg(off, tilts)
    assert margin.min() >= 3.0
    np.testing.assert_allclose(margin.min(), off.info["column_margin_deg"], atol=1e-6)
    r, _ = Rotation.align_vectors(off.positions, atoms.positions)
    axis = r.apply([0.0, 0.0, 1.0])
    assert np.degrees(np.arccos(abs(axis[1]))) <= 10.0 + 1e-6  # within 10° of the tilt axis
    # the unconstrained search also works, and an impossible margin is refused
    free = structures.rotate_off_columns(atoms, tilts, seed=1, min_angle_deg=1.0, n_trials=256)
    assert structures.column_margin_deg(free, tilts).min() >= 1.0
    with pytest.raises(ValueError, match="no rotation found"):
        structures.rotate_off_columns(atoms, tilts, min_angle_deg=40.0, n_trials=64)
    with pytest.raises(ValueError, match="align"):
        structures.rotate_off_columns(atoms, tilts, align=(0, 0))
    with pytest.raises(ValueError, match="tilt_axis"):
        structures.rotate_off_columns(atoms, tilts, tilt_axis="q")
