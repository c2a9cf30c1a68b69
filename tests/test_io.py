"""atomjax.io: the native tilt-series file and the MRC / TIFF / MATLAB readers."""

import json
import os

import numpy as np
import pytest
import scipy.io

from atomjax import io
from atomjax.data import TiltSeries
from atomjax.probe import ProbeSettings


def full_series(dtype=np.float32) -> TiltSeries:
    rng = np.random.default_rng(0)
    m, nu, nv = 4, 7, 5
    if np.issubdtype(dtype, np.integer):
        images = rng.integers(0, np.iinfo(dtype).max, (m, nu, nv)).astype(dtype)
    else:
        images = rng.normal(size=(m, nu, nv)).astype(dtype)
    return TiltSeries(
        images=images,
        euler_deg=rng.normal(size=(m, 3)) * 40,
        pixel_size_A=0.1 + 1e-17 * 3,
        probe=ProbeSettings(energy_eV=200e3, semiangle_mrad=21.4, defocus_A=12.3, C30_A=1e4 / 3),
        dose_e_per_A2=1.0 / 3.0,
        drift_A=rng.normal(size=(m, 3)),
        atoms_positions_A=rng.normal(size=(9, 3)) * 5,
        atoms_species=np.array(["Pt", "Au", "Pt", "Si", "Pt", "Au", "O", "Pt", "Pt"]),
        provenance={"source": "unit test", "seed": 0, "nested": {"a": [1, 2.5, None]}},
    )


def assert_same(a: TiltSeries, b: TiltSeries) -> None:
    assert a.images.dtype == b.images.dtype
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.euler_deg, b.euler_deg)
    assert a.pixel_size_A == b.pixel_size_A
    assert a.dose_e_per_A2 == b.dose_e_per_A2
    assert (a.probe is None) == (b.probe is None)
    if a.probe is not None:
        assert a.probe.to_dict() == b.probe.to_dict()
    for name in ("drift_A", "atoms_positions_A", "atoms_species"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y)
    assert a.provenance == b.provenance


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.uint16, np.int32])
def test_round_trip_is_exact(tmp_path, dtype):
    series = full_series(dtype)
    path = io.save_tilt_series(series, tmp_path / "s.npz")
    assert_same(series, io.load_tilt_series(path))
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary left behind


def test_round_trip_without_optional_fields(tmp_path):
    series = TiltSeries(
        images=np.ones((2, 3, 3), np.float16), euler_deg=np.zeros((2, 3)), pixel_size_A=0.5
    )
    back = io.load_tilt_series(io.save_tilt_series(series, tmp_path / "bare.atomjax"))
    assert_same(series, back)
    assert back.probe is None and back.drift_A is None and back.atoms_positions_A is None


def test_save_replaces_existing_file_atomically(tmp_path):
    path = tmp_path / "s.npz"
    io.save_tilt_series(full_series(np.float32), path)
    new = full_series(np.uint8)
    io.save_tilt_series(new, path)
    assert_same(new, io.load_tilt_series(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_save_rejects_provenance_that_is_not_json(tmp_path):
    series = full_series().replace(provenance={"bad": object()})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        io.save_tilt_series(series, tmp_path / "s.npz")
    assert list(tmp_path.iterdir()) == []


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        io.load_tilt_series(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_file_is_reported(tmp_path, keep):
    path = io.save_tilt_series(full_series(), tmp_path / "s.npz")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        io.load_tilt_series(path)


def test_corrupt_payload_is_reported(tmp_path):
    path = io.save_tilt_series(full_series(np.float64), tmp_path / "s.npz")
    data = bytearray(path.read_bytes())
    start = data.find(b"images.npy") + 200  # inside the image data
    data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        io.load_tilt_series(path)


def test_other_npz_is_not_a_tilt_series(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, images=np.zeros((2, 3, 3)), angles=np.zeros(2))
    with pytest.raises(ValueError, match=r"not an atomjax tilt-series file.*no 'header'"):
        io.load_tilt_series(path)


def test_renamed_mat_file_is_not_a_tilt_series(tmp_path):
    path = tmp_path / "data.npz"
    scipy.io.savemat(path, {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="MATLAB .mat file"):
        io.load_tilt_series(path)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        io.load_tilt_series(tmp_path / "empty.npz")


def _rewrite_header(path, **changes):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays["header"].tobytes())
    header.update(changes)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)


def test_newer_version_and_wrong_marker_are_reported(tmp_path):
    path = io.save_tilt_series(full_series(), tmp_path / "s.npz")
    _rewrite_header(path, version=io.FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match="newer than this atomjax reads"):
        io.load_tilt_series(path)
    _rewrite_header(path, version=io.FORMAT_VERSION, format="something-else")
    with pytest.raises(ValueError, match="format marker is 'something-else'"):
        io.load_tilt_series(path)


# --------------------------------------------------------------------------- readers


def asymmetric_stack(m=3, rows=6, cols=4):
    """(m, rows, cols) with a single bright pixel at row 1, column 3 (plus a ramp)."""
    stack = np.zeros((m, rows, cols), np.float32)
    stack[:, 1, 3] = 10.0
    stack += np.arange(m, dtype=np.float32)[:, None, None]
    return stack


def test_mrc_and_tlt(tmp_path):
    import mrcfile

    stack = asymmetric_stack()
    with mrcfile.new(tmp_path / "ts.mrc") as mrc:
        mrc.set_data(stack)  # mrcfile data is [z, y, x]: row = y, column = x
        mrc.voxel_size = 0.25
    (tmp_path / "ts.tlt").write_text("-30.0\n  0.0\n 30.0\n")
    s = io.read_mrc_series(tmp_path / "ts.mrc")
    assert s.images.shape == (3, 4, 6) and s.images.dtype == np.float32  # [angle, u=x, v=y]
    assert s.images[0, 3, 1] == 10.0  # x = 3, y = 1
    assert s.pixel_size_A == 0.25
    np.testing.assert_array_equal(s.euler_deg, [[0, -30, 0], [0, 0, 0], [0, 30, 0]])
    assert io.read_mrc_series(tmp_path / "ts.mrc", tilt_sign=-1).euler_deg[0, 1] == 30
    assert io.read_mrc_series(tmp_path / "ts.mrc", pixel_size_A=0.5).pixel_size_A == 0.5

    # round trip through the native format keeps everything
    back = io.load_tilt_series(io.save_tilt_series(s, tmp_path / "ts.npz"))
    assert_same(s, back)


def test_mrc_errors(tmp_path):
    import mrcfile

    with mrcfile.new(tmp_path / "ts.mrc") as mrc:
        mrc.set_data(asymmetric_stack())  # no pixel size in the header
    with pytest.raises(FileNotFoundError, match=r"ts\.tlt"):
        io.read_mrc_series(tmp_path / "ts.mrc")
    (tmp_path / "ts.tlt").write_text("0\n10\n")
    with pytest.raises(ValueError, match=r"2 angles .* but 3 images"):
        io.read_mrc_series(tmp_path / "ts.mrc", pixel_size_A=1.0)
    (tmp_path / "ts.tlt").write_text("0\n10\n20\n")
    with pytest.raises(ValueError, match="pass pixel_size_A"):
        io.read_mrc_series(tmp_path / "ts.mrc")
    with pytest.raises(FileNotFoundError, match="missing.mrc"):
        io.read_mrc_series(tmp_path / "missing.mrc")


def test_tiff_with_tilts_and_with_euler_columns(tmp_path):
    import tifffile

    stack = asymmetric_stack().astype(np.uint16)
    tifffile.imwrite(tmp_path / "ts.tif", stack)
    (tmp_path / "tilts.txt").write_text("# tilt\n-20\n0\n20\n")
    s = io.read_tiff_series(tmp_path / "ts.tif", tmp_path / "tilts.txt", pixel_size_A=0.3)
    assert s.images.shape == (3, 4, 6) and s.images.dtype == np.uint16
    assert s.images[2, 3, 1] == 12
    np.testing.assert_array_equal(s.euler_deg[:, 1], [-20, 0, 20])

    euler = np.array([[1.0, -20, 2], [0, 0, 0], [-1, 20, 0.5]])
    np.savetxt(tmp_path / "euler.txt", euler)
    s = io.read_tiff_series(tmp_path / "ts.tif", tmp_path / "euler.txt", pixel_size_A=0.3)
    np.testing.assert_array_equal(s.euler_deg, euler)

    (tmp_path / "short.txt").write_text("0\n")
    with pytest.raises(ValueError, match=r"1 angles .*short\.txt but 3 images"):
        io.read_tiff_series(tmp_path / "ts.tif", tmp_path / "short.txt", 0.3)
    with pytest.raises(FileNotFoundError, match=r"angles file not found: .*nothere\.txt"):
        io.read_tiff_series(tmp_path / "ts.tif", tmp_path / "nothere.txt", 0.3)


def test_mat_series_axes_keys_and_errors(tmp_path):
    stack = asymmetric_stack(m=2, rows=5, cols=4)
    proj = np.moveaxis(stack, 0, 2)  # MATLAB layout (rows, cols, m)
    scipy.io.savemat(tmp_path / "proj.mat", {"P": proj})
    scipy.io.savemat(tmp_path / "ang.mat", {"A": np.array([[0, 10.0, 0], [0, -10.0, 0]])})
    s = io.read_mat_series(tmp_path / "proj.mat", tmp_path / "ang.mat", pixel_size_A=0.2)
    assert s.images.shape == (2, 5, 4)  # rows → u, columns → v
    assert s.images[1, 1, 3] == 11.0
    np.testing.assert_array_equal(s.euler_deg, [[0, -10, 0], [0, 10, 0]])
    assert s.provenance["projections_key"] == "P"

    scipy.io.savemat(tmp_path / "two.mat", {"P": proj, "Q": proj})
    with pytest.raises(ValueError, match=r"several candidate projections.*P \(5, 4, 2\), Q"):
        io.read_mat_series(tmp_path / "two.mat", tmp_path / "ang.mat", 0.2)
    with pytest.raises(ValueError, match=r"key 'Proj' not found .*keys present: P \(5, 4, 2\)"):
        io.read_mat_series(tmp_path / "proj.mat", tmp_path / "ang.mat", 0.2, projections_key="Proj")
    scipy.io.savemat(tmp_path / "ang3.mat", {"A": np.zeros((3, 3))})
    with pytest.raises(ValueError, match=r"3 angles in .*ang3\.mat but 2 images"):
        io.read_mat_series(tmp_path / "proj.mat", tmp_path / "ang3.mat", 0.2)
    with pytest.raises(FileNotFoundError, match=r"angles file not found: .*missing\.mat"):
        io.read_mat_series(tmp_path / "proj.mat", tmp_path / "missing.mat", 0.2)


def test_matlab_zyz_conversion_matches_rotation_matrices():
    from scipy.spatial.transform import Rotation

    from atomjax.geometry import rotation_matrix

    zyz = np.array([[0.2, -63.0, -0.2], [0.0, 90.0, 0.0], [0.0, -177.0, 0.0], [5.0, 30.0, -7.0]])
    euler = io.matlab_zyz_to_euler_deg(zyz)
    expected = Rotation.from_euler("ZYZ", zyz, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(np.asarray(rotation_matrix(np.deg2rad(euler))), expected, atol=1e-12)
    np.testing.assert_array_equal(euler[1:3], [[0, -90, 0], [0, 177, 0]])


def test_ground_truth_table_swaps_to_matlab_frame(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("% 2\n% comment\n1 1.0 2.0 3.0\n2 -1.0 -2.0 -3.0\n")
    pos, species = io.read_aet_ground_truth(path, {1: "Si"})
    np.testing.assert_array_equal(pos, [[2.0, 1.0, 3.0], [-2.0, -1.0, -3.0]])
    np.testing.assert_array_equal(species, ["Si", "2"])
    path.write_text("1 2 3\n")
    with pytest.raises(ValueError, match="expected 4"):
        io.read_aet_ground_truth(path)


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'Pt'"):
        io.load_dataset("Pt", tmp_path)


def test_no_stray_temporaries_on_failure(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_tilt_series(full_series(), tmp_path / "s.npz")
    assert list(tmp_path.iterdir()) == []
