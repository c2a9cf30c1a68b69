"""Run-folder outputs: atomic writes, JSON, extxyz and figures."""

import dataclasses
import json
import math
import os
import pathlib
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from atomjax import outputs  # noqa: E402
from atomjax.metrics import read_atoms  # noqa: E402
from atomjax.outputs import (  # noqa: E402
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    figure_atoms,
    figure_loss,
    figure_projections,
    read_extxyz,
    read_json,
    to_jsonable,
    write_extxyz,
    write_json,
)


def _listing(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_text_and_bytes_create_parents(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "b" / "note.txt", "θ = −60°\n")
    assert p.read_text(encoding="utf-8") == "θ = −60°\n"
    q = atomic_write_bytes(tmp_path / "c" / "blob.bin", b"\x00\x01\xff")
    assert q.read_bytes() == b"\x00\x01\xff"
    atomic_write_text(p, "replaced")
    assert p.read_text() == "replaced"
    assert _listing(p.parent) == ["note.txt"]
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "x.txt", b"bytes")
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "x.bin", "text")
    assert not (tmp_path / "x.txt").exists() and not (tmp_path / "x.bin").exists()


def test_atomic_path_failure_midway_leaves_original(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("original")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("half writ")
        raise RuntimeError("boom")
    assert target.read_text() == "original"
    assert _listing(tmp_path) == ["result.txt"]


def test_write_json_failure_leaves_original_and_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    with pytest.raises(TypeError, match="object"):
        write_json(target, {"a": 2, "bad": object()})
    assert read_json(target) == {"a": 1}
    assert _listing(tmp_path) == ["metrics.json"]


def test_failure_in_serialiser_midway_cleans_up(tmp_path, monkeypatch):
    """A write that dies after the temporary file has content leaves nothing behind."""
    target = tmp_path / "atoms.xyz"
    write_extxyz(target, np.zeros((1, 3)), [0.5], [1.0])
    before = target.read_text()

    real = outputs.atomic_write_text

    def dying_write(path, text):
        with atomic_path(path) as tmp:
            tmp.write_text(text[: len(text) // 2])
            raise OSError("disk full")

    monkeypatch.setattr(outputs, "atomic_write_text", dying_write)
    with pytest.raises(OSError, match="disk full"):
        write_extxyz(target, np.ones((3, 3)), [0.5] * 3, [1.0] * 3)
    monkeypatch.setattr(outputs, "atomic_write_text", real)
    assert target.read_text() == before
    assert _listing(tmp_path) == ["atoms.xyz"]


def test_figure_failure_cleans_up(tmp_path):
    with pytest.raises(ValueError, match="cannot save a figure"):
        figure_loss(tmp_path / "loss.notaformat", [0, 1], [1.0, 0.5])
    assert _listing(tmp_path) == []


# --------------------------------------------------------------------------- JSON


@dataclasses.dataclass
class _Config:
    name: str
    scale: float
    path: pathlib.Path
    shape: tuple


class _Pair(NamedTuple):
    a: int
    b: float


def test_to_jsonable_conversions():
    import jax.numpy as jnp

    obj = {
        "arr": np.arange(4).reshape(2, 2),
        "jax": jnp.array([1.5, 2.5]),
        "f32": np.float32(0.25),
        "i64": np.int64(7),
        "b": np.bool_(True),
        "nan": float("nan"),
        "inf_arr": np.array([1.0, np.inf, -np.inf, np.nan]),
        "tuple": (1, (2, 3)),
        "cfg": _Config("run", 2.0, pathlib.Path("/tmp/x"), (1, 2)),
        "pair": _Pair(1, 2.0),
        "set": {3, 1, 2},
        "strs": np.array(["Fe", "Pt"]),
        np.int64(5): "numpy key",
    }
    out = to_jsonable(obj)
    assert out["arr"] == [[0, 1], [2, 3]]
    assert out["jax"] == [1.5, 2.5]
    assert out["f32"] == 0.25 and type(out["f32"]) is float
    assert out["i64"] == 7 and type(out["i64"]) is int
    assert out["b"] is True
    assert out["nan"] is None
    assert out["inf_arr"] == [1.0, None, None, None]
    assert out["tuple"] == [1, [2, 3]]
    assert out["cfg"] == {"name": "run", "scale": 2.0, "path": "/tmp/x", "shape": [1, 2]}
    assert out["pair"] == {"a": 1, "b": 2.0}
    assert out["set"] == [1, 2, 3]
    assert out["strs"] == ["Fe", "Pt"]
    assert out[5] == "numpy key"
    json.dumps(out, allow_nan=False)
    with pytest.raises(TypeError, match="complex"):
        to_jsonable(1 + 2j)


def test_to_jsonable_equinox_module():
    from atomjax import Atoms

    atoms = Atoms.create(np.zeros((2, 3)), capacity=3)
    out = to_jsonable(atoms)
    assert set(out) >= {"positions_A", "widths_A2", "amplitudes", "alive"}
    assert out["alive"] == [True, True, False]


def test_write_json_round_trip(tmp_path):
    obj = {"z": 1, "a": [1.5, None, "θ"], "nested": {"x": np.float64(2.0), "nan": np.nan}}
    p = write_json(tmp_path / "sub" / "r.json", obj)
    text = p.read_text(encoding="utf-8")
    assert text.index('"z"') < text.index('"a"')  # keys not sorted
    assert '\n  "a"' in text  # indent 2
    assert "θ" in text
    assert read_json(p) == {"z": 1, "a": [1.5, None, "θ"], "nested": {"x": 2.0, "nan": None}}


# --------------------------------------------------------------------------- extxyz


def _atoms(n=50, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-40, 40, (n, 3))
    widths = rng.uniform(0.2, 1.5, n)
    amps = rng.uniform(1e-5, 2e-2, n)  # small: %16.8f would lose digits here
    return pos, widths, amps


def test_extxyz_round_trip_with_species_and_info(tmp_path):
    pos, widths, amps = _atoms()
    species = np.where(amps > 0.01, "Pt", "Fe")
    info = {"label": "θ = −60°, run 3", "step": 1200, "r_factor": 0.1 + 0.2, "pruned": False}
    p = write_extxyz(tmp_path / "atoms.xyz", pos, widths, amps, species=species, info=info)
    d = read_extxyz(p)
    np.testing.assert_allclose(d["positions_A"], pos, rtol=0, atol=1e-6)
    # every float is written in full: exact round trip
    np.testing.assert_array_equal(d["positions_A"], pos)
    np.testing.assert_array_equal(d["widths_A2"], widths)
    np.testing.assert_array_equal(d["amplitudes"], amps)
    assert d["species"].tolist() == species.tolist()
    assert d["info"] == info
    assert all(type(d["info"][k]) is type(v) for k, v in info.items())
    assert _listing(tmp_path) == ["atoms.xyz"]
    # the project's own reader (ase underneath) agrees
    pos2, species2 = read_atoms(p)
    np.testing.assert_allclose(pos2, pos, atol=1e-6)
    assert species2.tolist() == species.tolist()


def test_extxyz_is_plain_ase_extxyz(tmp_path):
    import ase.io

    pos, widths, amps = _atoms(5)
    p = write_extxyz(tmp_path / "a.extxyz", pos, widths, amps)
    lines = p.read_text().splitlines()
    assert lines[0] == "5"
    assert "Properties=species:S:1:pos:R:3:width_A2:R:1:amplitude:R:1" in lines[1]
    atoms = ase.io.read(p, format="extxyz")
    assert atoms.get_chemical_symbols() == ["X"] * 5
    np.testing.assert_array_equal(atoms.arrays["width_A2"], widths)
    np.testing.assert_array_equal(atoms.arrays["amplitude"], amps)


def test_extxyz_dummy_species_and_no_info(tmp_path):
    pos, widths, amps = _atoms(3)
    d = read_extxyz(write_extxyz(tmp_path / "a.xyz", pos, widths, amps))
    assert d["species"] is None
    assert d["info"] == {}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(positions_A=np.zeros((3, 2))), r"positions_A must have shape \(n, 3\)"),
        (dict(widths_A2=np.ones(2)), r"widths_A2 must have shape"),
        (dict(amplitudes=np.ones((3, 1))), r"amplitudes must have shape"),
        (dict(amplitudes=[1.0, np.nan, 1.0]), "amplitudes contains NaN"),
        (dict(species=["Fe", "Pt"]), "species must have shape"),
        (dict(species=["Fe", "Pt", "Foo"]), "chemical symbols.*Foo"),
        (dict(info={"text": "1.5"}), "would not survive"),
        (dict(info={"text": "two\nlines"}), "would not survive"),
        (dict(info={"arr": [1, 2]}), r"info\['arr'\] must be"),
        (dict(info={"x": float("nan")}), "NaN"),
        (dict(info={"pbc": "T T T"}), "reserved"),
    ],
)
def test_extxyz_errors(tmp_path, kwargs, match):
    args = dict(positions_A=np.zeros((3, 3)), widths_A2=np.ones(3), amplitudes=np.ones(3))
    args.update(kwargs)
    target = tmp_path / "a.xyz"
    with pytest.raises(ValueError, match=match):
        write_extxyz(target, **args)
    assert _listing(tmp_path) == []


def test_read_extxyz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_extxyz(tmp_path / "nope.xyz")


# --------------------------------------------------------------------------- figures


@pytest.fixture
def no_figure_leak():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def _check_png(path, min_px=200):
    path = pathlib.Path(path)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert min(img.shape[:2]) >= min_px and max(img.shape[:2]) <= 5000
    assert img[..., :3].std() > 0  # not blank
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())
    return img


def _series(m=7, n=24):
    rng = np.random.default_rng(0)
    u, v = np.mgrid[:n, : n + 6]
    obs = np.stack([np.exp(-((u - 8 - i) ** 2 + (v - 12) ** 2) / 10.0) for i in range(m)])
    calc = obs + 0.05 * rng.standard_normal(obs.shape)
    labels = [f"θ = {t:+d}°".replace("-", "−") for t in np.linspace(-60, 60, m).astype(int)]
    return obs, calc, labels


def test_figure_projections(tmp_path, no_figure_leak):
    obs, calc, labels = _series()
    img = _check_png(figure_projections(tmp_path / "proj.png", obs, calc, labels))
    one = _check_png(
        figure_projections(tmp_path / "one.png", obs, calc, labels, indices=[-1]), min_px=150
    )
    assert img.shape[0] > 2 * one.shape[0]  # three rows by default, one here
    _check_png(figure_projections(tmp_path / "two.png", obs[:2], calc[:2], labels[:2]))


def test_projection_row_r_factor():
    obs, calc, _ = _series()
    expect = np.abs(obs[3] - calc[3]).sum() / np.abs(obs[3]).sum()
    assert outputs.r_factor_image(obs[3], calc[3]) == pytest.approx(expect)
    assert math.isnan(outputs.r_factor_image(np.zeros((2, 2)), np.ones((2, 2))))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda o, c, lab: (o[0], c[0], lab), r"observed must have shape \(m, nu, nv\)"),
        (lambda o, c, lab: (o, c[:, :-1], lab), "calculated must have the shape"),
        (lambda o, c, lab: (o, c, lab[:-1]), "labels has 6 entries"),
        (lambda o, c, lab: (o * np.nan, c, lab), "observed contains NaN"),
    ],
)
def test_figure_projections_errors(tmp_path, no_figure_leak, change, match):
    obs, calc, labels = change(*_series())
    with pytest.raises(ValueError, match=match):
        figure_projections(tmp_path / "p.png", obs, calc, labels)
    with pytest.raises(ValueError, match="not an image index"):
        figure_projections(tmp_path / "p.png", *_series(), indices=[7])
    assert _listing(tmp_path) == []


def test_figure_loss(tmp_path, no_figure_leak):
    steps = np.arange(300)
    loss = 10.0 * np.exp(-steps / 50.0) + 1e-3
    atoms = np.repeat([100, 90, 85], 100)
    _check_png(figure_loss(tmp_path / "loss.png", steps, loss))
    _check_png(
        figure_loss(tmp_path / "loss2.png", steps, loss, phase_ends=[100, 200], n_atoms=atoms)
    )
    _check_png(figure_loss(tmp_path / "loss3.png", steps, loss, {"coarse": 100, "fine": 200}))
    with pytest.raises(ValueError, match="loss has 299 entries"):
        figure_loss(tmp_path / "bad.png", steps, loss[1:])
    with pytest.raises(ValueError, match="n_atoms has 3 entries"):
        figure_loss(tmp_path / "bad.png", steps, loss, n_atoms=[1, 2, 3])
    with pytest.raises(ValueError, match="steps must be 1-D"):
        figure_loss(tmp_path / "bad.png", steps[None], loss)
    assert not (tmp_path / "bad.png").exists()


def test_figure_atoms(tmp_path, no_figure_leak):
    pos, _, amps = _atoms(200)
    _check_png(figure_atoms(tmp_path / "atoms.png", pos))
    _check_png(figure_atoms(tmp_path / "atoms2.png", pos, values=amps, truth_A=pos[:150] + 0.3))
    with pytest.raises(ValueError, match=r"positions_A must have shape \(n, 3\)"):
        figure_atoms(tmp_path / "bad.png", pos[:, :2])
    with pytest.raises(ValueError, match="values must have shape"):
        figure_atoms(tmp_path / "bad.png", pos, values=amps[:-1])
    with pytest.raises(ValueError, match=r"truth_A must have shape \(k, 3\)"):
        figure_atoms(tmp_path / "bad.png", pos, truth_A=pos[:, 0])
    assert not (tmp_path / "bad.png").exists()


def test_figures_do_not_touch_pyplot_state(tmp_path):
    plt.figure()  # a user's open figure stays open and current
    try:
        before = plt.get_fignums()
        current = plt.gcf()
        obs, calc, labels = _series(3)
        figure_projections(tmp_path / "p.png", obs, calc, labels)
        figure_loss(tmp_path / "l.png", [0, 1, 2], [3.0, 2.0, 1.0])
        figure_atoms(tmp_path / "a.png", np.zeros((2, 3)))
        assert plt.get_fignums() == before
        assert plt.gcf() is current
    finally:
        plt.close("all")
    assert os.path.getsize(tmp_path / "p.png") > 1000


def test_extxyz_with_no_atoms_round_trips(tmp_path):
    # a run that finds no atom still writes its atoms file
    path = write_extxyz(tmp_path / "none.extxyz", np.zeros((0, 3)), [], [])
    back = read_extxyz(path)
    assert back["positions_A"].shape == (0, 3) and back["widths_A2"].shape == (0,)
