"""Tilt-series files: atomjax's own format, and readers for what users already have.

Native format (:func:`save_tilt_series`, :func:`load_tilt_series`): a numpy ``.npz``
(zip) container holding the arrays of a :class:`~atomjax.data.TiltSeries` with their
dtypes, plus a JSON ``header`` entry with the format marker ``"atomjax-tiltseries"``,
the format version and the scalar metadata. Everything round-trips bit-exactly.

Third-party readers convert to atomjax's conventions (:mod:`atomjax.geometry`: images
``[angle, u, v]``, Euler (ψ, θ, φ) about x, y, z in degrees, R = R_z(φ) R_y(θ) R_x(ψ),
(u, v, w) = R · (x, y, z), pixel i at (i - n // 2) · pixel size):

* MATLAB ``.mat`` of the AET (Miao group, RESIRE/GENFIRE) supplementary repositories,
  :func:`read_mat_series`. Found by experiment on the two datasets in
  ``../shared/data`` (tests/test_third_party.py):

  - projections (rows, cols, m): image j is ``proj[:, :, j]``, rows → u, cols → v,
    no flip or transpose. The centre pixel round((n + 1) / 2) (1-based) is n // 2
    (0-based), atomjax's centre, for odd and even n.
  - object frame: x = volume array axis 0 (image rows), y = axis 1 (image columns),
    z = axis 2 (depth), origin at the centre voxel of the reconstruction.
  - angles (m, 3) are ZYZ Euler (φ, θ, ψ) in degrees with the tilt θ in column 1
    (RESIRE: the volume is sampled at R_m · p with R_m = R_z(φ) R_y(θ) R_z(ψ), so the
    image frame is R_m^T · r). Hence atomjax R = R_m^T = R_z(-ψ) R_y(-θ) R_z(-φ); for a
    pure tilt the atomjax triple is (0, -θ, 0). The sign of θ was fixed by experiment:
    +θ gives inconsistent projected positions on ta_film and lower correlation on
    aSi_208 at every tilt but 0°. (The ±0.2° ZYZ corrections of ta_film are too small
    to test; they follow the same formula.)

* MRC/IMOD, :func:`read_mrc_series`: ``data[z, y, x]`` (x fastest) → u = x, v = y
  (images = data.transpose(0, 2, 1)); IMOD tilts about the image y axis, which is
  atomjax's v = y axis: θ = +tilt (right-handed about +y). The handedness of IMOD's
  sign cannot be checked without a reference; pass ``tilt_sign=-1`` to flip it (a
  flip mirrors the reconstruction in depth, it never changes the fit quality).
* TIFF stacks, :func:`read_tiff_series`: pages (m, rows, cols) = (m, y, x), mapped as
  MRC: u = column (x), v = row (y), tilt about v.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
import zipfile
from typing import Any

import numpy as np
import scipy.io
from scipy.spatial.transform import Rotation

from .data import TiltSeries
from .probe import ProbeSettings

FORMAT_NAME = "atomjax-tiltseries"
FORMAT_VERSION = 1
_OPTIONAL_ARRAYS = ("drift_A", "atoms_positions_A", "atoms_species")
_ZIP_MAGIC = b"PK\x03\x04"

PathLike = str | os.PathLike

# Pixel sizes of the datasets in ../shared/data (its README), Å.
ASI_208_PIXEL_SIZE_A = 0.195
TA_FILM_PIXEL_SIZE_A = 0.3216
# Centre voxel (1-based, MATLAB) of the full ta_film reconstruction in which alignPara's
# CropCen is given and about which published_model.mat is expressed. Found by
# registering the published model to the projections of area 1 (x, y from the 0° image,
# z from the tilt-dependent shift): (201.1, 175.7, 170.8) ± 0.3 px, i.e. the centre
# round((n + 1) / 2) of a 401 × 351 × 341 volume.
TA_FILM_FULL_CENTRE_PX = (201, 176, 171)


# --------------------------------------------------------------------------- native


def _check_path_exists(path: pathlib.Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{what} is a folder, not a file: {path}")


def save_tilt_series(series: TiltSeries, path: PathLike) -> pathlib.Path:
    """Write ``series`` to ``path`` (an .npz container) atomically; returns the path.

    The file is written to a temporary file in the same folder, flushed to disk and
    renamed over ``path``, so a crash leaves either the old file or the new one. The
    provenance must be JSON-serialisable (tuples come back as lists).
    """
    if not isinstance(series, TiltSeries):
        raise TypeError(f"series must be a TiltSeries, got {type(series).__name__}")
    path = pathlib.Path(path)
    header: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "pixel_size_A": float(series.pixel_size_A),
        "dose_e_per_A2": None if series.dose_e_per_A2 is None else float(series.dose_e_per_A2),
        "probe": None if series.probe is None else series.probe.to_dict(),
        "provenance": series.provenance,
    }
    arrays = {"images": series.images, "euler_deg": series.euler_deg}
    for name in _OPTIONAL_ARRAYS:
        value = getattr(series, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    header["arrays"] = sorted(arrays)
    try:
        header_text = json.dumps(header, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"provenance must be JSON-serialisable to be saved: {err}") from err
    arrays["header"] = np.frombuffer(header_text.encode("utf-8"), dtype=np.uint8)

    folder = path.parent if str(path.parent) else pathlib.Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"folder for the tilt-series file does not exist: {folder}")
    from .outputs import atomic_path  # the permissions of a replaced file are kept

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    try:  # make the rename itself durable (POSIX); not possible everywhere
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _not_a_tilt_series(path: pathlib.Path, why: str) -> ValueError:
    return ValueError(f"{path} is not an atomjax tilt-series file ({FORMAT_NAME}): {why}")


def load_tilt_series(path: PathLike) -> TiltSeries:
    """Read a file written by :func:`save_tilt_series`.

    Raises FileNotFoundError (missing file), ValueError for a truncated or corrupt
    file, a file that is not an atomjax tilt series, or a newer format version.
    """
    path = pathlib.Path(path)
    _check_path_exists(path, "tilt-series file")
    with open(path, "rb") as f:
        head = f.read(128)
    if not head.startswith(_ZIP_MAGIC):
        if head.startswith(b"MATLAB"):
            why = "it is a MATLAB .mat file (use atomjax.io.read_mat_series)"
        elif len(head) == 0:
            why = "the file is empty"
        else:
            why = f"not an .npz (zip) container; it starts with {head[:16]!r}"
        raise _not_a_tilt_series(path, why)
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            if "header" not in names:
                raise _not_a_tilt_series(path, f"no 'header' entry (entries: {sorted(names)})")
            header = _parse_header(path, npz["header"])
            expected = set(header.get("arrays", [])) | {"header"}
            missing = expected - names
            if missing:
                raise ValueError(f"{path} is incomplete: missing arrays {sorted(missing)}")
            arrays = {name: npz[name] for name in expected - {"header"}}
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zipfile.LargeZipFile) as err:
        raise ValueError(f"{path} is truncated or corrupt: {type(err).__name__}: {err}") from err
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path} is truncated or corrupt: {err}") from err
    probe = header.get("probe")
    return TiltSeries(
        images=arrays["images"],
        euler_deg=arrays["euler_deg"],
        pixel_size_A=header["pixel_size_A"],
        probe=None if probe is None else ProbeSettings.from_dict(probe),
        dose_e_per_A2=header.get("dose_e_per_A2"),
        drift_A=arrays.get("drift_A"),
        atoms_positions_A=arrays.get("atoms_positions_A"),
        atoms_species=arrays.get("atoms_species"),
        provenance=header.get("provenance") or {},
    )


def _parse_header(path: pathlib.Path, raw: np.ndarray) -> dict:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _not_a_tilt_series(path, f"'header' entry has dtype {raw.dtype}, not JSON bytes")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _not_a_tilt_series(path, f"'header' is not valid JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        found = header.get("format") if isinstance(header, dict) else None
        raise _not_a_tilt_series(path, f"format marker is {found!r}")
    version = header.get("version")
    if not isinstance(version, int):
        raise ValueError(f"{path}: header has no integer format version (got {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}, newer than this atomjax reads "
            f"({FORMAT_VERSION}); upgrade atomjax to read it"
        )
    return header


# --------------------------------------------------------------------------- helpers


def _loadmat(path: pathlib.Path, what: str) -> dict[str, np.ndarray]:
    _check_path_exists(path, what)
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError as err:  # MATLAB v7.3 = HDF5
        raise ValueError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it in "
            "MATLAB with save(..., '-v7') or read it with h5py"
        ) from err
    except ValueError as err:
        raise ValueError(f"{path} is not a readable MATLAB .mat file: {err}") from err
    return {k: v for k, v in contents.items() if not k.startswith("__")}


def _describe(arrays: dict[str, Any]) -> str:
    return ", ".join(f"{k} {getattr(v, 'shape', '?')}" for k, v in arrays.items()) or "none"


def _pick_array(
    arrays: dict[str, Any], key: str | None, path: pathlib.Path, what: str, ndims: tuple[int, ...]
) -> tuple[str, np.ndarray]:
    """The array under ``key``, or the only array with a suitable number of dimensions."""
    if key is not None:
        if key not in arrays:
            raise ValueError(
                f"{what} key {key!r} not found in {path}; keys present: {_describe(arrays)}"
            )
        return key, np.asarray(arrays[key])
    fits = {
        k: v
        for k, v in arrays.items()
        if isinstance(v, np.ndarray) and v.ndim in ndims and np.issubdtype(v.dtype, np.number)
    }
    if len(fits) != 1:
        which = "no" if not fits else "several"
        raise ValueError(
            f"{which} candidate {what} arrays in {path}; pass the key explicitly. "
            f"Keys present: {_describe(arrays)}"
        )
    return next(iter(fits.items()))


def read_text_table(path: pathlib.Path, what: str) -> np.ndarray:
    """A table of numbers from a text file (rows, columns); ``#`` and ``%`` start comments.

    Errors name the file's own line number (1-based, comment lines counted), e.g.
    "line 4 of series.tlt: 'ten' is not a number".
    """
    rows, width = [], None
    text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split("%", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        try:
            values = [float(x) for x in line.split()]
        except ValueError:
            bad = next(x for x in line.split() if not _is_float(x))
            raise ValueError(
                f"line {number} of {path}: {bad!r} is not a number (reading {what})"
            ) from None
        if width is not None and len(values) != width:
            raise ValueError(
                f"line {number} of {path} has {len(values)} values, the lines before it "
                f"{width} (reading {what})"
            )
        width = len(values)
        rows.append(values)
    if not rows:
        raise ValueError(f"{path} holds no numbers (reading {what})")
    return np.asarray(rows, dtype=float)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_angles_table(path: pathlib.Path, key: str | None) -> np.ndarray:
    """Angles from a .mat (``key`` or the only 1-D/2-D array) or a text table, degrees."""
    _check_path_exists(path, "angles file")
    if path.suffix.lower() == ".mat":
        _, angles = _pick_array(_loadmat(path, "angles file"), key, path, "angles", (1, 2))
    else:
        angles = read_text_table(path, "angles")
    angles = np.asarray(angles, dtype=float)
    rows, cols = angles.shape if angles.ndim == 2 else (0, 0)
    if cols == 1 or (rows == 1 and cols != 3):
        angles = angles.reshape(-1)  # a column or a row of tilts
    if angles.ndim == 2 and angles.shape[1] != 3 and angles.shape[0] == 3:
        angles = angles.T  # stored as 3 × m
    if not (angles.ndim == 1 or (angles.ndim == 2 and angles.shape[1] == 3)):
        raise ValueError(
            f"angles in {path} have shape {angles.shape}; "
            "expected (m,) tilts or (m, 3) Euler triples"
        )
    if not np.all(np.isfinite(angles)):
        raise ValueError(f"angles in {path} contain NaN or infinite values")
    return angles


def _check_count(n_angles: int, n_images: int, angles_path, images_path) -> None:
    if n_angles != n_images:
        raise ValueError(
            f"{n_angles} angles in {angles_path} but {n_images} images in {images_path}: "
            "the numbers must match"
        )


def matlab_zyz_to_euler_deg(angles_deg) -> np.ndarray:
    """AET/RESIRE ZYZ triples (φ, θ, ψ) in degrees (m, 3) → atomjax (ψ, θ, φ) (m, 3).

    atomjax R = (R_z(φ) R_y(θ) R_z(ψ))^T (see the module docstring). Pure tilts map
    exactly to (0, -θ, 0); other triples go through scipy's "xyz" decomposition.
    """
    a = np.asarray(angles_deg, dtype=float)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"ZYZ angles must have shape (m, 3), got {a.shape}")
    out = np.zeros_like(a)
    pure = (a[:, 0] == 0) & (a[:, 2] == 0)
    out[pure, 1] = -a[pure, 1]
    if np.any(~pure):
        r = Rotation.from_euler("ZYZ", a[~pure], degrees=True).inv()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # gimbal lock: matrix still exact
            out[~pure] = r.as_euler("xyz", degrees=True)
    return out


# --------------------------------------------------------------------------- readers


def read_mat_series(
    projections_path: PathLike,
    angles_path: PathLike,
    pixel_size_A: float,
    projections_key: str | None = None,
    angles_key: str | None = None,
    dose_e_per_A2: float | None = None,
    probe: ProbeSettings | None = None,
    provenance: dict | None = None,
) -> TiltSeries:
    """AET-style MATLAB projections (rows, cols, m) and ZYZ angles → TiltSeries.

    ``angles_path``: a .mat with an (m, 3) array of (φ, θ, ψ) in degrees (the tilt θ in
    column 1) or an (m,) array of tilts, or a text file with the same columns. Keys are
    found automatically when the file holds one suitable array. Images keep their dtype;
    image j is ``proj[:, :, j]`` with rows → u and columns → v (module docstring).
    """
    projections_path, angles_path = pathlib.Path(projections_path), pathlib.Path(angles_path)
    arrays = _loadmat(projections_path, "projections file")
    key, proj = _pick_array(arrays, projections_key, projections_path, "projections", (2, 3))
    if proj.ndim == 2:
        proj = proj[:, :, None]
    angles = _read_angles_table(angles_path, angles_key)
    _check_count(angles.shape[0], proj.shape[2], angles_path, projections_path)
    zyz = (
        angles
        if angles.ndim == 2
        else np.stack([np.zeros_like(angles), angles, np.zeros_like(angles)], axis=1)
    )
    info = {
        "reader": "atomjax.io.read_mat_series",
        "projections": str(projections_path),
        "projections_key": key,
        "angles": str(angles_path),
        "angles_convention": "MATLAB ZYZ (phi, theta, psi) deg; atomjax R = R_zyz^T",
        "matlab_zyz_deg": zyz.tolist(),
    }
    return TiltSeries(
        images=np.ascontiguousarray(np.moveaxis(proj, 2, 0)),
        euler_deg=matlab_zyz_to_euler_deg(zyz),
        pixel_size_A=pixel_size_A,
        probe=probe,
        dose_e_per_A2=dose_e_per_A2,
        provenance={**info, **(provenance or {})},
    )


def _single_axis_or_euler(angles: np.ndarray, tilt_sign: int) -> np.ndarray:
    if tilt_sign not in (1, -1):
        raise ValueError(f"tilt_sign must be 1 or -1, got {tilt_sign}")
    if angles.ndim == 2:
        return angles.copy()
    euler = np.zeros((angles.size, 3))
    euler[:, 1] = tilt_sign * angles
    return euler


def _row_major_stack_series(
    data: np.ndarray, images_path, angles_path, pixel_size_A, tilt_sign: int, provenance: dict
) -> TiltSeries:
    """A (pages, rows, cols) stack with an angles file → TiltSeries, u = column, v = row."""
    angles = _read_angles_table(angles_path, None)
    _check_count(angles.shape[0], data.shape[0], angles_path, images_path)
    return TiltSeries(
        images=np.ascontiguousarray(data.transpose(0, 2, 1)),
        euler_deg=_single_axis_or_euler(angles, tilt_sign),
        pixel_size_A=pixel_size_A,
        provenance={**provenance, "tilt_sign": tilt_sign},
    )


def read_mrc_series(
    mrc_path: PathLike,
    tlt_path: PathLike | None = None,
    pixel_size_A: float | None = None,
    tilt_sign: int = 1,
) -> TiltSeries:
    """An MRC stack (IMOD layout ``data[z, y, x]``) and an IMOD ``.tlt`` file → TiltSeries.

    ``tlt_path``: one tilt angle (degrees) per line, about the image y axis; defaults to
    the MRC path with suffix ``.tlt``. Images are ``data.transpose(0, 2, 1)`` (u = x,
    v = y) and θ = ``tilt_sign`` · tilt about y. ``pixel_size_A`` defaults to the
    header's voxel size x (Å); an error is raised when neither is available.
    """
    import mrcfile

    mrc_path = pathlib.Path(mrc_path)
    _check_path_exists(mrc_path, "MRC file")
    tlt_path = mrc_path.with_suffix(".tlt") if tlt_path is None else pathlib.Path(tlt_path)
    if not tlt_path.exists():
        raise FileNotFoundError(f"tilt-angle (.tlt) file not found: {tlt_path}")
    try:
        with mrcfile.open(mrc_path, mode="r", permissive=False) as mrc:
            data = np.array(mrc.data)
            voxel = mrc.voxel_size
            header_pixel = float(voxel.x)
            if not np.isclose(float(voxel.x), float(voxel.y)):
                raise ValueError(
                    f"{mrc_path} has non-square pixels ({voxel.x} × {voxel.y} Å); "
                    "atomjax needs square pixels"
                )
    except ValueError as err:
        if str(mrc_path) in str(err):
            raise
        raise ValueError(f"{mrc_path} is not a readable MRC file: {err}") from err
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"{mrc_path} holds a {data.ndim}-D array; expected a stack of images")
    if pixel_size_A is None:
        if not header_pixel > 0:
            raise ValueError(
                f"{mrc_path} has no pixel size in its header (voxel size {header_pixel}); "
                "pass pixel_size_A"
            )
        pixel_size_A = header_pixel
    return _row_major_stack_series(
        data,
        mrc_path,
        tlt_path,
        pixel_size_A,
        tilt_sign,
        {
            "reader": "atomjax.io.read_mrc_series",
            "mrc": str(mrc_path),
            "tlt": str(tlt_path),
            "axes": "images[j, u, v] = mrc.data[j, v, u] (u = x, v = y)",
        },
    )


def read_tiff_series(
    tiff_path: PathLike,
    angles_path: PathLike,
    pixel_size_A: float,
    tilt_sign: int = 1,
) -> TiltSeries:
    """A multi-page TIFF (m, rows, cols) and an angles text file → TiltSeries.

    Angles file: one tilt per line (degrees, about the image's vertical axis, θ =
    ``tilt_sign`` · tilt about y), or three columns taken as atomjax Euler triples
    (ψ, θ, φ) in degrees. Images are ``pages.transpose(0, 2, 1)``: u = column (x),
    v = row (y), as for MRC.
    """
    import tifffile

    tiff_path, angles_path = pathlib.Path(tiff_path), pathlib.Path(angles_path)
    _check_path_exists(tiff_path, "TIFF file")
    try:
        data = np.asarray(tifffile.imread(tiff_path))
    except Exception as err:  # tifffile raises several types for bad files
        raise ValueError(f"{tiff_path} is not a readable TIFF file: {err}") from err
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(
            f"{tiff_path} holds an array of shape {data.shape}; expected (pages, rows, cols) "
            "grey-scale images"
        )
    return _row_major_stack_series(
        data,
        tiff_path,
        angles_path,
        pixel_size_A,
        tilt_sign,
        {
            "reader": "atomjax.io.read_tiff_series",
            "tiff": str(tiff_path),
            "angles": str(angles_path),
            "axes": "images[j, u, v] = page_j[v, u] (u = column, v = row)",
        },
    )


# ------------------------------------------------------------------- reference atoms


def read_aet_ground_truth(
    path: PathLike, type_names: dict[int, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AET ground-truth table (``%`` comments; columns type, x, y, z in Å).

    Returns positions (n, 3) in Å in the atomjax frame of :func:`read_mat_series`, and
    species (n,). The file's x runs along the MATLAB columns and y along the rows
    (meshgrid order), so atomjax (x, y, z) = (file y, file x, file z) — found on
    aSi_208, where the published model then scores 208/208 at 17.3 pm by the AET
    pipeline's own scoring (:func:`atomjax.metrics.aet_score`), their published figure.
    ``type_names`` maps the integer types to element symbols (default: the number).
    """
    path = pathlib.Path(path)
    _check_path_exists(path, "ground-truth file")
    table = read_text_table(path, "the ground-truth table")
    if table.shape[1] != 4:
        raise ValueError(f"{path} has {table.shape[1]} columns; expected 4 (type, x, y, z)")
    types = table[:, 0].astype(int)
    names = type_names or {}
    species = np.array([names.get(t, str(t)) for t in types])
    return table[:, [2, 1, 3]].copy(), species


def read_aet_model_voxels(
    path: PathLike,
    pixel_size_A: float,
    n_pixels: int,
    oversampling: int = 3,
    padding_px: float = 2.0,
    model_key: str = "temp_model",
    type_key: str | None = "temp_atomtype",
    type_names: dict[int, str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A traced model in voxels of an oversampled grid (3, N) → positions (N, 3) Å, species.

    Å = (voxel / oversampling - padding_px - c) · pixel_size_A, with c = n_pixels // 2 + 1
    the 1-based centre pixel of an image of ``n_pixels`` (aSi_208: the model then lands
    on the ground truth to within 0.01 Å in its mean). Axes: voxel axis 0 → x (image
    rows), 1 → y, 2 → z, the frame of :func:`read_mat_series`.
    """
    path = pathlib.Path(path)
    arrays = _loadmat(path, "model file")
    _, model = _pick_array(arrays, model_key, path, "model", (2,))
    model = _as_n3(model, path)
    centre = n_pixels // 2 + 1
    pos = (model / oversampling - padding_px - centre) * pixel_size_A
    species = None
    if type_key is not None and type_key in arrays:
        types = np.asarray(arrays[type_key]).reshape(-1).astype(int)
        if types.size == pos.shape[0]:
            names = type_names or {}
            species = np.array([names.get(t, str(t)) for t in types])
    return pos, species


def _as_n3(model: np.ndarray, path: pathlib.Path) -> np.ndarray:
    model = np.asarray(model, dtype=float)
    if model.ndim != 2 or 3 not in model.shape:
        raise ValueError(f"model in {path} has shape {model.shape}; expected (3, N)")
    return model.T.copy() if model.shape[0] == 3 else model.copy()


def read_aet_model_A(
    path: PathLike, centre_A=(0.0, 0.0, 0.0), model_key: str = "model"
) -> np.ndarray:
    """A model (3, N) in Å (e.g. ta_film ``published_model.mat``) → (N, 3) Å - centre_A.

    Axes as :func:`read_aet_model_voxels`; ``centre_A`` is the rotation centre of the
    projections in the model's frame (see :func:`ta_film_area_centre_A`).
    """
    path = pathlib.Path(path)
    _, model = _pick_array(_loadmat(path, "model file"), model_key, path, "model", (2,))
    return _as_n3(model, path) - np.asarray(centre_A, dtype=float)


def ta_film_area_centre_A(align_path: PathLike, area: int = 1) -> np.ndarray:
    """Centre (3,) in Å, in the published-model frame, of ta_film sub-area ``area`` (1-based).

    (CropCen[area] - TA_FILM_FULL_CENTRE_PX) · 0.3216 Å; for area 1 that is
    (-43.42, -46.63, -5.15) Å, and a free fit on the projections gives
    (-43.45, -46.53, -5.08) Å: the constant is right to a third of a pixel.
    """
    align_path = pathlib.Path(align_path)
    arrays = _loadmat(align_path, "alignment file")
    _, cen = _pick_array(arrays, "CropCen", align_path, "crop centres", (2,))
    if not 1 <= area <= cen.shape[0]:
        raise ValueError(f"area must be in 1..{cen.shape[0]}, got {area}")
    return (cen[area - 1].astype(float) - TA_FILM_FULL_CENTRE_PX) * TA_FILM_PIXEL_SIZE_A


# ------------------------------------------------------------------------- datasets

DATASETS = ("aSi_208", "ta_film")


def load_dataset(name: str, root: PathLike) -> TiltSeries:
    """One of the third-party AET datasets (``../shared/data``) with reference atoms.

    ``root``: the folder holding ``aSi_208/`` and ``ta_film/``. "aSi_208": 60 images,
    0.195 Å pixels, the exact ground truth (208 Si) attached. "ta_film": area 1, 46
    images, 0.3216 Å pixels, the whole published model (8284 Ta, not ground truth)
    attached relative to the area's centre; it extends far past the field of view.
    """
    root = pathlib.Path(root)
    if name == "aSi_208":
        folder = root / "aSi_208"
        series = read_mat_series(
            folder / "projections_dose1p6e4.mat",
            folder / "angles.mat",
            ASI_208_PIXEL_SIZE_A,
            projections_key="Trunc_projections_forBM3D",
            angles_key="Angle",
            provenance={"dataset": "aSi_208", "dose_label": "1.6e4 (units not published)"},
        )
        pos, species = read_aet_ground_truth(folder / "ground_truth.txt", {1: "Si"})
        return series.replace(
            atoms_positions_A=pos,
            atoms_species=species,
            provenance={**series.provenance, "atoms": "ground_truth.txt (exact)"},
        )
    if name == "ta_film":
        folder = root / "ta_film"
        series = read_mat_series(
            folder / "projections_area1.mat",
            folder / "angles.mat",
            TA_FILM_PIXEL_SIZE_A,
            projections_key="Proj_sub",
            angles_key="angle",
            provenance={"dataset": "ta_film", "area": 1},
        )
        centre = ta_film_area_centre_A(folder / "alignPara.mat", area=1)
        pos = read_aet_model_A(folder / "published_model.mat", centre)
        return series.replace(
            atoms_positions_A=pos,
            atoms_species=np.full(pos.shape[0], "Ta"),
            provenance={
                **series.provenance,
                "atoms": "published_model.mat (reference, not ground truth), whole film",
                "area_centre_A": centre.tolist(),
            },
        )
    raise ValueError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
