"""Test particles built with ase: fcc spheres, decahedral twins, amorphous particles, alloys.

Every builder returns an ``ase.Atoms`` without a cell (``pbc=False``) whose centre of
mass sits at the origin, so the origin is the rotation centre of a tilt series (see
:mod:`atomjax.geometry`). Builders that draw random numbers take a ``seed`` and are
deterministic for it. Crystalline particles are built with their cubic axes along
x, y, z (the decahedron with its five-fold axis along z); use
:func:`rotate_off_zone_axes` or :func:`random_orientation` to turn them, or
:func:`rotate_off_columns`, which reads the column directions off the atoms themselves
(twinned particles such as the decahedron hold five differently oriented crystals).
"""

from __future__ import annotations

from collections.abc import Sequence

import ase
import numpy as np
from ase.cluster import Decahedron
from ase.data import atomic_numbers, reference_states
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

__all__ = [
    "PARTICLES",
    "build_particle",
    "fcc_sphere",
    "decahedron",
    "amorphous",
    "alloy",
    "fept_sphere",
    "random_orientation",
    "rotate_off_zone_axes",
    "column_directions",
    "column_margin_deg",
    "rotate_off_columns",
    "fcc_lattice_constant_A",
]

# fcc cubic cell in units of the lattice constant
_FCC_BASIS = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])


def _check_element(element: str) -> str:
    if not isinstance(element, str) or element not in atomic_numbers or element == "X":
        raise ValueError(f"unknown chemical element {element!r} (use a symbol such as 'Au')")
    return element


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


#: fcc lattice constants (Å) of metals whose ground state is not fcc but whose fcc phase
#: is the one in fcc alloys: β-Co (stable above ~700 K, 3.544 Å at room temperature in
#: nanoparticles and films), as in fcc CoPt and CoPd solid solutions.
FCC_PHASES_A = {"Co": 3.544}


def fcc_lattice_constant_A(element: str) -> float:
    """ase's reference fcc lattice constant of ``element`` in Å, or the fcc phase's of
    :data:`FCC_PHASES_A`; ValueError if neither."""
    _check_element(element)
    if element in FCC_PHASES_A:
        return FCC_PHASES_A[element]
    ref = reference_states[atomic_numbers[element]]
    if ref is None or ref.get("symmetry") != "fcc":
        sym = None if ref is None else ref.get("symmetry")
        raise ValueError(
            f"{element} is not fcc in ase's reference data (it is {sym!r}); "
            "pass lattice_constant_A explicitly to build an fcc particle of it"
        )
    return float(ref["a"])


def _centred(atoms: ase.Atoms) -> ase.Atoms:
    """Shift so the centre of mass is at the origin; no cell, no periodicity."""
    atoms = atoms.copy()
    atoms.set_cell(None)
    atoms.pbc = False
    atoms.positions -= atoms.get_center_of_mass()
    return atoms


def _lattice_sphere(
    basis_frac: np.ndarray, cell_A: np.ndarray, radius_A: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lattice points (n, 3) of an orthorhombic cell (lengths ``cell_A``) within ``radius_A``
    of the origin, which is a lattice point; also the basis index of each point."""
    reps = np.ceil(radius_A / cell_A).astype(int) + 1
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reps], indexing="ij")
    cells = np.stack([g.ravel() for g in grids], -1).astype(float)
    pos = (cells[:, None, :] + basis_frac[None, :, :]) * cell_A
    kind = np.broadcast_to(np.arange(len(basis_frac)), pos.shape[:2])
    pos, kind = pos.reshape(-1, 3), kind.reshape(-1)
    keep = np.linalg.norm(pos, axis=1) <= radius_A + 1e-9
    return pos[keep], kind[keep]


def fcc_sphere(
    element: str = "Au", radius_A: float = 10.0, lattice_constant_A: float | None = None
) -> ase.Atoms:
    """Spherical fcc particle: all lattice sites within ``radius_A`` (Å) of an atom at the
    origin. Cube axes along x, y, z; ``lattice_constant_A`` defaults to ase's value."""
    _check_element(element)
    radius_A = _check_positive("radius_A", radius_A)
    a = (
        fcc_lattice_constant_A(element)
        if lattice_constant_A is None
        else _check_positive("lattice_constant_A", lattice_constant_A)
    )
    pos, _ = _lattice_sphere(_FCC_BASIS, np.full(3, a), radius_A)
    return _centred(ase.Atoms([element] * len(pos), positions=pos))


def decahedron(
    element: str = "Pt",
    diameter_A: float = 20.0,
    q: int = 1,
    r: int = 0,
    lattice_constant_A: float | None = None,
) -> ase.Atoms:
    """Five-fold twinned (Ino/Marks) decahedron, five-fold axis along z.

    ``diameter_A``: target diameter perpendicular to the five-fold axis (twice the
    largest distance of an atom from the axis); the closest ase size ``p`` (atoms along
    the edges normal to the axis) is chosen. ``q``: atoms along the edges parallel to
    the axis (1 = regular pentagonal bipyramid); ``r``: depth of the Marks re-entrance.
    """
    _check_element(element)
    diameter_A = _check_positive("diameter_A", diameter_A)
    if int(q) != q or q < 1 or int(r) != r or r < 0:
        raise ValueError(f"q must be an integer >= 1 and r an integer >= 0, got q={q}, r={r}")
    a = (
        fcc_lattice_constant_A(element)
        if lattice_constant_A is None
        else _check_positive("lattice_constant_A", lattice_constant_A)
    )
    best, best_err = None, np.inf
    for p in range(2, 400):
        atoms = Decahedron(element, p, int(q), int(r), latticeconstant=a)
        xy = atoms.positions[:, :2] - atoms.positions[:, :2].mean(0)
        d = 2 * np.sqrt((xy**2).sum(1)).max()
        if abs(d - diameter_A) < best_err:
            best, best_err = atoms, abs(d - diameter_A)
        if d > diameter_A:
            break
    return _centred(best)


def amorphous(
    element: str = "Si",
    radius_A: float = 10.0,
    min_distance_A: float = 2.32,
    max_distance_A: float = 2.53,
    seed: int = 0,
    attempts_per_atom: int = 30,
) -> ase.Atoms:
    """Amorphous spherical particle by random sequential addition (LOT's Si models).

    Grows from an atom at the origin: each new atom is placed at a distance in
    [min_distance_A, max_distance_A] from an existing ("parent") atom, at least
    min_distance_A from all others and within ``radius_A`` of the origin. A parent that
    fails ``attempts_per_atom`` proposals in a row is retired; growth stops when none
    is left. Every atom's nearest-neighbour distance therefore lies in the window.
    Candidates are proposed and tested in vectorised batches against a KD-tree.
    """
    _check_element(element)
    radius_A = _check_positive("radius_A", radius_A)
    dmin = _check_positive("min_distance_A", min_distance_A)
    dmax = _check_positive("max_distance_A", max_distance_A)
    if dmax <= dmin:
        raise ValueError(f"max_distance_A ({dmax}) must be larger than min_distance_A ({dmin})")
    if attempts_per_atom < 1:
        raise ValueError(f"attempts_per_atom must be >= 1, got {attempts_per_atom}")
    rng = np.random.default_rng(seed)
    pos = np.zeros((1, 3))
    fails = np.zeros(1, dtype=int)
    while True:
        active = np.flatnonzero(fails < attempts_per_atom)
        if active.size == 0:
            break
        # one proposal per active parent per round (parents fail independently)
        parents = active
        direction = rng.normal(size=(parents.size, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        # uniform in volume within the spherical shell [dmin, dmax]
        dist = np.cbrt(rng.uniform(dmin**3, dmax**3, size=parents.size))
        cand = pos[parents] + direction * dist[:, None]
        ok = np.linalg.norm(cand, axis=1) <= radius_A
        tree = cKDTree(pos)
        nearest, _ = tree.query(cand, k=1, distance_upper_bound=dmin)
        ok &= nearest >= dmin  # inf when nothing closer than dmin
        # resolve clashes inside the batch: a candidate loses to any earlier one
        idx = np.flatnonzero(ok)
        if idx.size > 1:
            pairs = cKDTree(cand[idx]).query_pairs(dmin, output_type="ndarray")
            if len(pairs):
                ok[idx[np.unique(pairs.max(axis=1))]] = False
        fails[parents[~ok]] += 1
        fails[parents[ok]] = 0
        new = cand[ok]
        pos = np.concatenate([pos, new])
        fails = np.concatenate([fails, np.zeros(len(new), dtype=int)])
    return _centred(ase.Atoms([element] * len(pos), positions=pos))


def _check_fractions(elements: Sequence[str], fractions) -> np.ndarray:
    if len(elements) < 1:
        raise ValueError("elements must name at least one element")
    for el in elements:
        _check_element(el)
    if len(set(elements)) != len(elements):
        raise ValueError(f"elements must be distinct, got {tuple(elements)}")
    if fractions is None:
        return np.full(len(elements), 1.0 / len(elements))
    f = np.asarray(fractions, dtype=float)
    if f.shape != (len(elements),) or not np.all(np.isfinite(f)) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(
            f"fractions must be {len(elements)} non-negative numbers (one per element), "
            f"got {fractions!r}"
        )
    return f / f.sum()


def _random_species(elements, fractions: np.ndarray, n: int, rng) -> list[str]:
    """Exactly round(f·n) atoms of each element (largest remainder), in random order."""
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    species = np.repeat(np.asarray(elements), counts)
    return list(rng.permutation(species))


def alloy(
    elements: Sequence[str] = ("Ni", "Pd", "Pt"),
    fractions: Sequence[float] | None = None,
    radius_A: float = 10.0,
    seed: int = 0,
    lattice_constant_A: float | None = None,
) -> ase.Atoms:
    """Random fcc solid solution (e.g. a high-entropy particle), spherical.

    Species are shuffled over the sites with exact counts round(fraction · n) (equal
    fractions by default). The lattice constant defaults to Vegard's law, the
    fraction-weighted mean of the elements' fcc lattice constants.
    """
    elements = tuple(elements)
    f = _check_fractions(elements, fractions)
    if lattice_constant_A is None:
        a = float(np.dot(f, [fcc_lattice_constant_A(el) for el in elements]))
    else:
        a = _check_positive("lattice_constant_A", lattice_constant_A)
    radius_A = _check_positive("radius_A", radius_A)
    pos, _ = _lattice_sphere(_FCC_BASIS, np.full(3, a), radius_A)
    species = _random_species(elements, f, len(pos), np.random.default_rng(seed))
    return _centred(ase.Atoms(species, positions=pos))


def fept_sphere(
    radius_A: float = 10.0,
    ordered: bool = True,
    seed: int = 0,
    a_A: float = 3.85,
    c_A: float = 3.71,
) -> ase.Atoms:
    """Spherical FePt particle: L1₀-ordered (Fe and Pt planes alternating along z, cell
    a × a × c) or, with ``ordered=False``, a random 50:50 fcc alloy with lattice
    constant ``a_A``."""
    radius_A = _check_positive("radius_A", radius_A)
    if not ordered:
        return alloy(("Fe", "Pt"), radius_A=radius_A, seed=seed, lattice_constant_A=a_A)
    cell = np.array([_check_positive("a_A", a_A)] * 2 + [_check_positive("c_A", c_A)])
    pos, kind = _lattice_sphere(_FCC_BASIS, cell, radius_A)
    # basis 0 (0,0,0) and 3 (½,½,0) on the z = 0 planes: Fe; the others: Pt
    species = np.where(np.isin(kind, (0, 3)), "Fe", "Pt")
    return _centred(ase.Atoms(list(species), positions=pos))


def random_orientation(atoms: ase.Atoms, seed: int = 0) -> ase.Atoms:
    """A copy rotated about its centre of mass by a uniformly random rotation."""
    rot = Rotation.random(random_state=np.random.default_rng(seed))
    return _rotate(atoms, rot.as_matrix())


def _rotate(atoms: ase.Atoms, matrix: np.ndarray) -> ase.Atoms:
    out = atoms.copy()
    com = out.get_center_of_mass()
    out.positions = (out.positions - com) @ matrix.T + com
    return out


def _low_index_axes(max_index: int) -> np.ndarray:
    """Unit vectors of the zone axes <uvw> with |u|,|v|,|w| <= max_index (one per ± pair)."""
    rng = np.arange(-max_index, max_index + 1)
    g = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3)
    g = g[np.any(g != 0, axis=1)]
    g = g[np.gcd.reduce(np.abs(g), axis=1) == 1]
    first_nonzero = g[np.arange(len(g)), np.argmax(g != 0, axis=1)]
    g = g[first_nonzero > 0]  # keep one of each ± pair
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def rotate_off_zone_axes(
    atoms: ase.Atoms,
    seed: int = 0,
    min_angle_deg: float = 5.0,
    tilt_axis: str = "y",
    max_index: int = 1,
    n_trials: int = 4096,
) -> ase.Atoms:
    """Rotate a crystal so no low-index zone axis is met during a single-axis tilt series.

    A tilt series about ``tilt_axis`` sweeps the beam through the plane perpendicular
    to that axis. Among ``n_trials`` random rotations (deterministic for ``seed``) this
    picks the one that keeps the zone axes <uvw> with |u|, |v|, |w| <= ``max_index``
    (crystal axes assumed along x, y, z, as built here) farthest from that plane, and
    raises ValueError if that is less than ``min_angle_deg`` (LOT: "rotated away from
    low-index zone axes" to reduce channelling).
    """
    col = {"x": 0, "y": 1, "z": 2}.get(tilt_axis)
    if col is None:
        raise ValueError(f"tilt_axis must be 'x', 'y' or 'z', got {tilt_axis!r}")
    if int(max_index) != max_index or max_index < 1:
        raise ValueError(f"max_index must be a positive integer, got {max_index}")
    axes = _low_index_axes(int(max_index))
    rots = Rotation.random(int(n_trials), random_state=np.random.default_rng(seed)).as_matrix()
    # component along the tilt axis of every rotated zone axis: (trials, axes)
    comp = np.abs(np.einsum("tj,aj->ta", rots[:, col, :], axes))
    margin_deg = np.degrees(np.arcsin(np.clip(comp.min(axis=1), 0.0, 1.0)))
    return _best_rotation(
        atoms, rots, margin_deg, min_angle_deg, "zone_axis_margin_deg",
        f"keeping the <uvw> (|u|,|v|,|w| <= {max_index}) zone axes {min_angle_deg}° from the "
        "tilt plane", "lower min_angle_deg or max_index, or raise n_trials",
    )  # fmt: skip


def _best_rotation(atoms, mats, margin_deg, min_angle_deg, key: str, goal: str, advice: str):
    """``atoms`` turned by the rotation of largest margin, the margin in ``info[key]``;
    ValueError (what was sought, the best found, what to change) below ``min_angle_deg``."""
    best = int(np.argmax(margin_deg))
    if margin_deg[best] < min_angle_deg:
        raise ValueError(f"no rotation found {goal} (best {margin_deg[best]:.2f}°); {advice}")
    out = _rotate(atoms, mats[best])
    out.info[key] = float(margin_deg[best])
    return out


def column_directions(
    atoms: ase.Atoms, shell_factor: float = 1.45, min_share: float = 0.005
) -> np.ndarray:
    """Unit directions (one per ± pair, (k, 3)) of the densest atom columns, read off the atoms.

    The vectors from every atom to its neighbours out to ``shell_factor`` times the
    nearest-neighbour distance (1.45: the first two fcc shells, the <110> and <100>
    columns), grouped to within about half a degree; a group counts when it holds at
    least ``min_share`` of all such vectors (so stray surface bonds do not). Works for
    twinned particles, where no one set of crystal axes holds.
    """
    pos = np.asarray(atoms.positions, float)
    if len(pos) < 2:
        raise ValueError("column_directions needs at least two atoms")
    tree = cKDTree(pos)
    nearest = float(tree.query(pos, k=2)[0][:, 1].min())
    pairs = tree.query_pairs(shell_factor * nearest, output_type="ndarray")
    vec = pos[pairs[:, 1]] - pos[pairs[:, 0]]
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    first = vec[np.arange(len(vec)), np.argmax(np.abs(vec) > 1e-6, axis=1)]
    vec *= np.sign(first)[:, None]
    keys, inverse, counts = np.unique(
        np.round(vec * 100).astype(int), axis=0, return_inverse=True, return_counts=True
    )
    keep = counts >= min_share * len(vec)
    out = (
        np.stack([vec[inverse.reshape(-1) == k].mean(0) for k in np.flatnonzero(keep)])
        if keep.any()
        else vec[:1]
    )
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _beam_directions(tilts_deg, tilt_axis: str) -> np.ndarray:
    """The beam's direction in the particle's frame for each tilt (m, 3)."""
    from atomjax.geometry import euler_from_tilts_deg, rotation_matrix

    euler = np.radians(euler_from_tilts_deg(tilts_deg, tilt_axis))
    # image frame (u, v, w) = R · x; the beam runs along w, i.e. along R's third row
    return np.stack([np.asarray(rotation_matrix(e))[2] for e in euler])


def column_margin_deg(atoms: ase.Atoms, tilts_deg, tilt_axis: str = "y") -> np.ndarray:
    """For each tilt, the angle (degrees) between the beam and the nearest dense column.

    Near 0 the view is on a zone axis (the columns channel the probe); see
    :func:`column_directions`.
    """
    cols = column_directions(atoms)
    beams = _beam_directions(tilts_deg, tilt_axis)
    cos = np.clip(np.abs(beams @ cols.T).max(axis=1), 0.0, 1.0)
    return np.degrees(np.arccos(cos))


def rotate_off_columns(
    atoms: ase.Atoms,
    tilts_deg,
    seed: int = 0,
    tilt_axis: str = "y",
    align: Sequence[float] | None = None,
    align_within_deg: float = 10.0,
    min_angle_deg: float = 3.0,
    n_trials: int = 2048,
) -> ase.Atoms:
    """Rotate a particle so that no view of the tilt series looks down a dense column.

    Among ``n_trials`` rotations (deterministic for ``seed``) this keeps the one whose
    smallest :func:`column_margin_deg` over ``tilts_deg`` is largest, and raises
    ValueError below ``min_angle_deg``. ``align``: a direction of the particle as built
    (e.g. (0, 0, 1), the decahedron's five-fold axis) to keep within
    ``align_within_deg`` of the tilt axis, so that the particle is seen edge-on to it
    and its depth stays near its diameter at every tilt. The margin is stored in
    ``info["column_margin_deg"]``.
    """
    col = {"x": 0, "y": 1, "z": 2}.get(tilt_axis)
    if col is None:
        raise ValueError(f"tilt_axis must be 'x', 'y' or 'z', got {tilt_axis!r}")
    rng = np.random.default_rng(seed)
    if align is None:
        rots = Rotation.random(int(n_trials), random_state=rng)
    else:
        a = np.asarray(align, float)
        if a.shape != (3,) or not np.linalg.norm(a) > 0:
            raise ValueError(f"align must be a non-zero 3-vector, got {align}")
        axis = np.eye(3)[col]
        onto = Rotation.align_vectors(axis[None], (a / np.linalg.norm(a))[None])[0]
        spin = Rotation.from_rotvec(rng.uniform(0, 2 * np.pi, n_trials)[:, None] * axis)
        # a wobble of the aligned direction, uniform in solid angle within the cone
        cos_max = np.cos(np.radians(float(align_within_deg)))
        theta = np.arccos(1 - rng.uniform(0, 1, n_trials) * (1 - cos_max))
        phi = rng.uniform(0, 2 * np.pi, n_trials)
        perp = np.eye(3)[[(col + 1) % 3, (col + 2) % 3]]
        rotvec = (np.cos(phi)[:, None] * perp[0] + np.sin(phi)[:, None] * perp[1]) * theta[:, None]
        rots = Rotation.from_rotvec(rotvec) * spin * onto
    cols = column_directions(atoms)
    beams = _beam_directions(tilts_deg, tilt_axis)
    mats = rots.as_matrix()
    # the columns after rotation, against every beam: (trials, beams, columns)
    cos = np.abs(np.einsum("mi,tij,kj->tmk", beams, mats, cols)).max(axis=(1, 2))
    margin_deg = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
    return _best_rotation(
        atoms, mats, margin_deg, min_angle_deg, "column_margin_deg",
        f"keeping every view {min_angle_deg}° off the dense columns",
        "lower min_angle_deg, widen align_within_deg or raise n_trials",
    )  # fmt: skip


#: Particle kinds that :func:`build_particle` knows.
PARTICLES = ("fcc", "decahedron", "amorphous", "alloy", "fept")


def build_particle(
    kind: str = "fcc",
    element: str | Sequence[str] | None = None,
    size_A: float = 8.0,
    seed: int = 0,
    off_zone: bool = True,
) -> ase.Atoms:
    """One of the test particles by name, for command-line apps and configs.

    kind: "fcc" (sphere of radius ``size_A``), "decahedron" (diameter 2 · ``size_A``),
    "amorphous", "alloy" (``element`` a list or comma-separated names, default Ni, Pd,
    Pt), "fept". element: default Au (fcc), Pt (decahedron), Si (amorphous).
    off_zone: turn crystalline particles off low-index zone axes
    (:func:`rotate_off_zone_axes`); amorphous ones are left as built.
    """
    if isinstance(element, str) and "," in element:
        element = [e.strip() for e in element.split(",")]
    if kind == "fcc":
        atoms = fcc_sphere(element or "Au", radius_A=size_A)
    elif kind == "decahedron":
        atoms = decahedron(element or "Pt", diameter_A=2 * size_A)
    elif kind == "amorphous":
        return amorphous(element or "Si", radius_A=size_A, seed=seed)
    elif kind == "alloy":
        atoms = alloy(tuple(element) if element else ("Ni", "Pd", "Pt"), radius_A=size_A, seed=seed)
    elif kind == "fept":
        atoms = fept_sphere(radius_A=size_A, seed=seed)
    else:
        raise ValueError(f"unknown particle kind {kind!r}; known: {PARTICLES}")
    return rotate_off_zone_axes(atoms, seed=seed) if off_zone else atoms
