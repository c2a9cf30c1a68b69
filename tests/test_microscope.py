"""atomjax.microscope: tilt series from microscope files through RosettaSciIO.

Files are written with rsciio's own writers (HyperSpy .hspy, Berkeley EMD). DM3/DM4,
TIA SER/EMI and Velox EMD are read-only in rsciio and its wheel ships no test files: they
are read by :func:`test_rsciio_sample_files` only when ``ATOMJAX_RSCIIO_TEST_DATA`` names
a copy of rosettasciio's ``rsciio/tests/data`` folder.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import h5py
import numpy as np
import pytest

pytest.importorskip("rsciio")
pytest.importorskip("h5py")

from rsciio.emd import file_writer as write_emd  # noqa: E402
from rsciio.hspy import file_writer as write_hspy  # noqa: E402

from atomjax import io, microscope, pipeline  # noqa: E402

TILTS = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
NY, NX = 6, 4  # rows (y), columns (x) of each image


def stack() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 1000, (TILTS.size, NY, NX)).astype(np.uint16)


def signal_dict(data, title="HAADF", tilt_units="deg", image_units="nm", scale=0.05) -> dict:
    """An rsciio signal: a degrees navigation axis (offset -40, step 20) and images."""
    axes = [
        {"name": "tilt", "units": tilt_units, "scale": 20.0, "offset": -40.0,
         "size": data.shape[0], "navigate": True},
        {"name": "y", "units": image_units, "scale": scale, "offset": 0.0,
         "size": data.shape[1], "navigate": False},
        {"name": "x", "units": image_units, "scale": scale, "offset": 0.0,
         "size": data.shape[2], "navigate": False},
    ]  # fmt: skip
    return {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": title}, "Signal": {"signal_type": ""}},
        "original_metadata": {},
        "tmp_parameters": {},
        "attributes": {"_lazy": False},
        "learning_results": {},
        "models": {},
        "package_info": {"name": "atomjax-tests", "version": "0"},
    }


def hspy_file(tmp_path, name="series.hspy", **kw) -> pathlib.Path:
    path = tmp_path / name
    write_hspy(str(path), signal_dict(stack(), **kw), show_progressbar=False)
    return path


def emd_file(tmp_path, extra_titles=()) -> pathlib.Path:
    """A Berkeley EMD with a HAADF stack, plus copies of it (data × 2) under other titles."""
    path = tmp_path / "series.emd"
    write_emd(str(path), signal_dict(stack()))
    with h5py.File(path, "a") as f:
        for title in extra_titles:
            f["signals"].copy("HAADF", title)
            f[f"signals/{title}/data"][...] = 2 * f["signals/HAADF/data"][...]
    return path


def expected_images() -> np.ndarray:
    return stack().transpose(0, 2, 1).astype(np.float32)  # images[j, u, v] = stack[j, v, u]


# --------------------------------------------------------------------- round trips


def test_hspy_round_trip_images_angles_pixel_size(tmp_path):
    series = microscope.read_microscope_series(hspy_file(tmp_path))
    assert series.images.dtype == np.float32 and series.images.shape == (5, NX, NY)
    np.testing.assert_array_equal(series.images, expected_images())
    np.testing.assert_allclose(series.euler_deg[:, 1], TILTS)
    assert np.all(series.euler_deg[:, [0, 2]] == 0)
    assert series.pixel_size_A == pytest.approx(0.5)  # 0.05 nm
    p = series.provenance
    assert p["format"] == "hspy" and p["signal"] == "HAADF" and p["file"].endswith(".hspy")
    assert p["angles_source"].startswith("the stack axis")
    json.dumps(p)  # saveable with io.save_tilt_series
    back = io.load_tilt_series(io.save_tilt_series(series, tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.images, series.images)


@pytest.mark.parametrize(
    "units, scale, pixel_A",
    [("pm", 50.0, 0.5), ("Å", 0.5, 0.5), ("µm", 5e-5, 0.5), ("nm", 0.02, 0.2)],
)
def test_pixel_size_units_convert_to_angstrom(tmp_path, units, scale, pixel_A):
    path = hspy_file(tmp_path, image_units=units, scale=scale)
    assert microscope.read_microscope_series(path).pixel_size_A == pytest.approx(pixel_A)


def test_radian_tilt_axis_is_converted(tmp_path):
    data = stack()
    sig = signal_dict(data, tilt_units="rad")
    sig["axes"][0].update(offset=-np.pi / 4, scale=np.pi / 8)
    path = tmp_path / "rad.hspy"
    write_hspy(str(path), sig, show_progressbar=False)
    series = microscope.read_microscope_series(path)
    np.testing.assert_allclose(series.euler_deg[:, 1], [-45, -22.5, 0, 22.5, 45])


def test_berkeley_emd_round_trip(tmp_path):
    """Berkeley EMD does not record which axis navigates: the degrees axis is the stack."""
    series = microscope.read_microscope_series(emd_file(tmp_path))
    np.testing.assert_array_equal(series.images, expected_images())
    np.testing.assert_allclose(series.euler_deg[:, 1], TILTS)
    assert series.pixel_size_A == pytest.approx(0.5)
    assert series.provenance["format"] == "emd"


def test_overrides_tilt_sign_and_explicit_format(tmp_path):
    path = hspy_file(tmp_path, name="series.h5")
    series = microscope.read_microscope_series(
        path, kind="HyperSpy", pixel_size_A=0.7, angles=[1, 2, 3, 4, 5], tilt_sign=-1
    )
    assert series.pixel_size_A == 0.7
    np.testing.assert_allclose(series.euler_deg[:, 1], [-1, -2, -3, -4, -5])
    assert series.provenance["pixel_size_source"] == "given (pixel_size_A)"
    assert series.provenance["file_angles_deg"] == TILTS.tolist()  # kept for the record
    tlt = tmp_path / "series.tlt"
    tlt.write_text("\n".join(str(a) for a in TILTS[::-1]) + "\n")
    from_tlt = microscope.read_microscope_series(path, tlt=tlt)
    np.testing.assert_allclose(from_tlt.euler_deg[:, 1], TILTS[::-1])
    euler = np.column_stack([np.zeros(5), TILTS, np.full(5, 3.0)])
    np.testing.assert_array_equal(
        microscope.read_microscope_series(path, angles=euler.tolist()).euler_deg, euler
    )
    with pytest.raises(ValueError, match="tilt_sign must be 1 or -1"):
        microscope.read_microscope_series(path, tilt_sign=0)


# --------------------------------------------------------------------------- errors


def test_several_stacks_need_a_signal_choice(tmp_path):
    path = emd_file(tmp_path, extra_titles=("DF2", "DF4"))
    with pytest.raises(ValueError, match="several image stacks") as err:
        microscope.read_microscope_series(path)
    assert all(t in str(err.value) for t in ("'HAADF'", "'DF2'", "'DF4'"))
    haadf = microscope.read_microscope_series(path, signal="haadf")
    df4 = microscope.read_microscope_series(path, signal="DF4")
    np.testing.assert_array_equal(haadf.images, expected_images())
    np.testing.assert_array_equal(df4.images, 2 * expected_images())
    assert df4.provenance["signal"] == "DF4"
    assert sorted(df4.provenance["signals_in_file"]) == ["DF2", "DF4", "HAADF"]
    with pytest.raises(ValueError, match=r"several signals .* signal='DF'.*'DF2'"):
        microscope.read_microscope_series(path, signal="DF")
    with pytest.raises(ValueError, match=r"no signal .* signal='BF'"):
        microscope.read_microscope_series(path, signal="BF")


def test_missing_pixel_size_names_the_setting(tmp_path):
    path = hspy_file(tmp_path, image_units="", scale=1.0)
    with pytest.raises(ValueError, match=r"no pixel size.*units.*data\.pixel_size_A"):
        microscope.read_microscope_series(path)
    assert microscope.read_microscope_series(path, pixel_size_A=0.4).pixel_size_A == 0.4
    reciprocal = hspy_file(tmp_path, name="fft.hspy", image_units="1 / nm")
    with pytest.raises(ValueError, match=r"'1 / nm', not a length.*data\.pixel_size_A"):
        microscope.read_microscope_series(reciprocal)


def test_missing_angles_names_the_settings(tmp_path):
    path = hspy_file(tmp_path, tilt_units="s")  # e.g. a Velox time series
    with pytest.raises(ValueError, match=r"no tilt angles.*'s'.*data\.angles.*data\.tlt"):
        microscope.read_microscope_series(path)
    series = microscope.read_microscope_series(path, angles=TILTS.tolist())
    np.testing.assert_allclose(series.euler_deg[:, 1], TILTS)


def test_angle_count_must_match(tmp_path):
    path = hspy_file(tmp_path)
    with pytest.raises(ValueError, match="3 tilt angles .* but 5 images"):
        microscope.read_microscope_series(path, angles=[0, 10, 20])
    tlt = tmp_path / "short.tlt"
    tlt.write_text("0\n10\n")
    with pytest.raises(ValueError, match="2 tilt angles .*short.tlt.* but 5 images"):
        microscope.read_microscope_series(path, tlt=tlt)
    with pytest.raises(ValueError, match="not both"):
        microscope.read_microscope_series(path, angles=[0] * 5, tlt=tlt)


def test_unknown_extension_or_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"\.dm3, \.dm4, \.emd, \.ser.*\.hspy"):
        microscope.read_microscope_series(tmp_path / "series.xyz")
    with pytest.raises(ValueError, match="unknown microscope file format 'velox2'"):
        microscope.read_microscope_series(tmp_path / "series.emd", kind="velox2")
    with pytest.raises(FileNotFoundError, match="series.dm4"):
        microscope.read_microscope_series(tmp_path / "series.dm4")
    bad = tmp_path / "bad.hspy"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"bad\.hspy is not a readable HyperSpy"):
        microscope.read_microscope_series(bad)


def test_no_image_stack_lists_the_signals(tmp_path):
    path = tmp_path / "spectrum_image.hspy"
    sig = signal_dict(np.ones((3, 4, 8), np.float32), title="EDS")
    sig["axes"][1]["navigate"] = True  # 2 navigation axes, 1 signal axis
    write_hspy(str(path), sig, show_progressbar=False)
    with pytest.raises(ValueError, match=r"no 3-D stack of images.*'EDS' \(3-D signal"):
        microscope.read_microscope_series(path)


def test_missing_rsciio_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", None)  # import fails
    path = tmp_path / "series.dm4"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match=r'pip install "atomjax\[microscope\]"') as err:
        microscope.read_microscope_series(path, angles=[0], pixel_size_A=1)
    assert isinstance(err.value, ImportError)


# ------------------------------------------------------------------------ pipeline


def test_load_series_kind_microscope(tmp_path):
    path = emd_file(tmp_path, extra_titles=("DF4",))
    unset = dict.fromkeys(("format", "angles", "tlt", "pixel_size_A", "truth"))
    data = {"kind": "microscope", "path": str(path), "signal": "HAADF", "tilt_sign": -1, **unset}
    series = pipeline.load_series(data)
    np.testing.assert_array_equal(series.images, expected_images())
    np.testing.assert_allclose(series.euler_deg[:, 1], -TILTS)
    assert series.pixel_size_A == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"does not take \['pixel_size'\]"):
        pipeline.load_series({**data, "pixel_size": 1.0})
    with pytest.raises(ValueError, match=r"data\.path must be given"):
        pipeline.load_series({**data, "path": None})
    with pytest.raises(ValueError, match=r"data\.tilt_sign must be 1 or -1"):
        pipeline.load_series({**data, "tilt_sign": 0})
    # a list of angles survives the run record's path handling
    record = pipeline.absolute_paths({"data": {**data, "angles": TILTS.tolist()}})
    assert record["data"]["angles"] == TILTS.tolist()
    assert pathlib.Path(record["data"]["path"]).is_absolute()


@pytest.mark.parametrize("option", ["microscope", "dm4", "emd"])
def test_hydra_presets(tmp_path, option):
    """``atomjax-reconstruct data=<option> data.path=... data.angles=[...]``."""
    from atomjax import apps

    path = hspy_file(tmp_path, tilt_units="s")  # tilts from the command line
    overrides = [f"data={option}", f"data.path='{path}'", "data.angles=[-40,-20,0,20,40]"]
    cfg = apps.compose("reconstruct", overrides)
    assert cfg["data"]["kind"] == "microscope"
    formats = {"microscope": None, "dm4": "digitalmicrograph", "emd": "emd"}
    assert cfg["data"]["format"] == formats[option]
    if option == "microscope":
        series = pipeline.load_series(cfg["data"])
        np.testing.assert_allclose(series.euler_deg[:, 1], TILTS)
        assert pipeline.absolute_paths(cfg)["data"]["angles"] == TILTS.tolist()
    else:  # the preset's format wins over the extension
        with pytest.raises(ValueError, match="is not a readable"):
            pipeline.load_series(cfg["data"])


# ------------------------------------------------------- rsciio's own sample files

SAMPLES = os.environ.get("ATOMJAX_RSCIIO_TEST_DATA")


@pytest.mark.skipif(
    not SAMPLES,
    reason="DM3/DM4, TIA and Velox are read-only in rsciio and its wheel ships no sample "
    "files; set ATOMJAX_RSCIIO_TEST_DATA to a copy of rosettasciio's rsciio/tests/data",
)
@pytest.mark.parametrize(
    "name, settings, shape, pixel_A",
    [
        ("digitalmicrograph/test_stackbuilder_imagestack.dm3", {}, (3, 16, 2), 599.829),
        ("digitalmicrograph/3D/test-1.dm4", {"pixel_size_A": 1.0}, (2, 2, 2), 1.0),
        ("emd/fei_example_tem_stack.emd", {}, (2, 3, 3), 0.0817288),
        ("tia/new/128x128x5-diffraction_preview.emi", {"pixel_size_A": 1.0}, (5, 128, 128), 1.0),
    ],
)
def test_rsciio_sample_files(name, settings, shape, pixel_A):
    path = pathlib.Path(SAMPLES) / name
    m = shape[0]
    series = microscope.read_microscope_series(path, angles=list(range(m)), **settings)
    assert series.images.shape == shape and series.images.dtype == np.float32
    assert series.pixel_size_A == pytest.approx(pixel_A, rel=1e-5)
    with pytest.raises(ValueError, match="no tilt angles"):  # none of them stores tilts
        microscope.read_microscope_series(path, **settings)
