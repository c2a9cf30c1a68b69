"""Tilt series from microscope files, read through RosettaSciIO (``rsciio``).

Formats (chosen from the file extension, or by name):

* Gatan DigitalMicrograph ``.dm3`` / ``.dm4`` (``digitalmicrograph``; read-only in rsciio),
* EMD ``.emd``, Velox (Thermo Fisher) and Berkeley/NCEM (``emd``),
* FEI TIA ``.ser`` / ``.emi`` (``tia``; read-only in rsciio),
* HyperSpy ``.hspy`` / ``.h5`` / ``.hdf5`` (``hspy``).

rsciio is an optional dependency: ``pip install "atomjax[microscope]"``.

The image stack is the file's 3-D signal with two image axes; a file that holds several
(Velox: HAADF, DF, ...) needs ``signal`` (a substring of the title, or an index). The
stack axis is the navigation axis (or, for a file that marks none, the axis in degrees,
else array axis 0). Axes follow :mod:`atomjax.io`'s MRC/TIFF readers: the images of the
stack are ``(rows, cols) = (y, x)`` and atomjax's are ``images[j, u, v] = stack[j, v, u]``
(u = x = column, v = y = row); the tilt is about the image y axis (v), θ = ``tilt_sign`` ·
tilt. Pixel size from the image axes' scale and units (nm, pm, Å, µm, mm, m) in Å.
Tilt angles, first match wins: ``angles`` or ``tlt`` when given; the stack axis when its
units are degrees (or radians); a per-image ``Acquisition_instrument.*.Stage.tilt_alpha``
in the metadata. Otherwise an error says which setting to give.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import warnings
from typing import Any

import numpy as np

from . import io, outputs
from .data import TiltSeries

PathLike = str | os.PathLike

#: file extension → rsciio plugin
EXTENSIONS = {
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".emd": "emd",
    ".ser": "tia",
    ".emi": "tia",
    ".hspy": "hspy",
    ".h5": "hspy",
    ".hdf5": "hspy",
}

#: names accepted for ``kind`` (``data.format``) → rsciio plugin
FORMATS = {
    "digitalmicrograph": "digitalmicrograph",
    "dm": "digitalmicrograph",
    "dm3": "digitalmicrograph",
    "dm4": "digitalmicrograph",
    "gatan": "digitalmicrograph",
    "emd": "emd",
    "velox": "emd",
    "tia": "tia",
    "ser": "tia",
    "emi": "tia",
    "hspy": "hspy",
    "hyperspy": "hspy",
    "h5": "hspy",
    "hdf5": "hspy",
}

_LABELS = {
    "digitalmicrograph": "DigitalMicrograph (DM3/DM4)",
    "emd": "EMD (Velox or Berkeley)",
    "tia": "TIA (SER/EMI)",
    "hspy": "HyperSpy (.hspy)",
}

# Length units → Å, looked up in lower case ("Å" and the angstrom sign both become "å";
# "µ" is the micro sign, "μ" the Greek mu).
_LENGTH_A = {
    "m": 1e10,
    "mm": 1e7,
    "µm": 1e4,
    "μm": 1e4,
    "um": 1e4,
    "micron": 1e4,
    "nm": 10.0,
    "å": 1.0,
    "a": 1.0,
    "ang": 1.0,
    "angstrom": 1.0,
    "ångström": 1.0,
    "pm": 0.01,
}
_NO_UNITS = {"", "[]", "<undefined>", "undefined", "none", "px", "pixel", "pixels", "pix"}
_DEGREES = {"deg", "degree", "degrees", "°", "º"}
_RADIANS = {"rad", "radian", "radians"}
_PLAUSIBLE_PIXEL_A = (1e-3, 1e3)


class MissingDependencyError(ImportError, ValueError):
    """rsciio (or h5py) is not installed; both an ImportError and a ValueError."""


def format_of(path: PathLike, kind: str | None = None) -> str:
    """The rsciio plugin for ``path``: ``kind`` (a name in :data:`FORMATS`) or the extension."""
    if kind is not None:
        fmt = FORMATS.get(str(kind).strip().lower())
        if fmt is None:
            raise ValueError(
                f"unknown microscope file format {kind!r}; known: {sorted(set(FORMATS))}"
            )
        return fmt
    suffix = pathlib.Path(path).suffix.lower()
    fmt = EXTENSIONS.get(suffix)
    if fmt is None:
        raise ValueError(
            f"cannot tell the microscope file format of {path} from its extension "
            f"{suffix or '(none)'!r}; supported extensions: {', '.join(EXTENSIONS)} "
            "(or give the format: data.format / kind=)"
        )
    return fmt


def _plugin(fmt: str):
    try:
        return importlib.import_module(f"rsciio.{fmt}")
    except ImportError as err:
        raise MissingDependencyError(
            f"reading {_LABELS[fmt]} files needs RosettaSciIO with h5py ({err}); "
            'install them with: pip install "atomjax[microscope]"'
        ) from err


def _read_signals(path: pathlib.Path, fmt: str) -> list[dict]:
    module = _plugin(fmt)
    kwargs: dict[str, Any] = {"lazy": False}
    if fmt == "emd":
        kwargs["select_type"] = "images"  # Velox: skip spectra (ignored for Berkeley EMD)
    try:
        signals = module.file_reader(str(path), **kwargs)
    except Exception as err:  # the readers raise many types for files they cannot parse
        raise ValueError(
            f"{path} is not a readable {_LABELS[fmt]} file: {type(err).__name__}: {err}"
        ) from err
    return list(signals or [])


# --------------------------------------------------------------------------- signals


def _title(sig: dict, index: int) -> str:
    title = (sig.get("metadata") or {}).get("General", {}).get("title")
    return str(title) if title not in (None, "") else f"#{index} (untitled)"


def _unit(axis: dict) -> str:
    units = axis.get("units")
    return "" if units is None else str(units).strip()


def _is_angle_unit(units: str) -> bool:
    return units.lower() in _DEGREES | _RADIANS


def _stack_axis(sig: dict) -> int | None:
    """The array axis along which a 3-D signal stacks its images, or None if not a stack."""
    data, axes = sig.get("data"), sig.get("axes") or []
    if data is None or np.ndim(data) != 3 or len(axes) != 3:
        return None
    dtype = np.dtype(data.dtype)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        return None
    nav = [i for i, a in enumerate(axes) if a.get("navigate")]
    if len(nav) == 1:
        return nav[0]
    if not nav:  # e.g. Berkeley EMD, which does not record which axes navigate
        angular = [i for i, a in enumerate(axes) if _is_angle_unit(_unit(a))]
        return angular[0] if len(angular) == 1 else 0
    return None  # two or three navigation axes: a spectrum image or a 4-D-like signal


def _describe(sig: dict, index: int) -> str:
    data = sig.get("data")
    shape = "×".join(str(n) for n in np.shape(data)) if data is not None else "?"
    what = "image stack" if _stack_axis(sig) is not None else f"{np.ndim(data)}-D signal"
    dtype = getattr(data, "dtype", "?")
    return f"{_title(sig, index)!r} ({what}, {shape}, {dtype})"


def _choose_signal(signals: list[dict], choice, path: pathlib.Path) -> int:
    """Index of the image stack to read: by ``choice`` (title substring or index), or the
    only stack in the file."""
    found = "; ".join(_describe(s, i) for i, s in enumerate(signals)) or "no signals"
    if choice is not None and not (isinstance(choice, str) and not choice.strip()):
        if isinstance(choice, int) and not isinstance(choice, bool):
            if not -len(signals) <= choice < len(signals):
                raise ValueError(
                    f"signal index {choice} is out of range: {path} holds {len(signals)} "
                    f"signals: {found}"
                )
            index = choice % len(signals)
        else:
            text = str(choice).strip().lower()
            titles = [_title(s, i).lower() for i, s in enumerate(signals)]
            hits = [i for i, t in enumerate(titles) if text in t]
            exact = [i for i in hits if titles[i] == text]
            if len(exact) == 1:
                hits = exact
            if len(hits) != 1:
                which = "no signal" if not hits else "several signals"
                raise ValueError(
                    f"{which} of {path} match signal={choice!r} (a substring of the title); "
                    f"signals in the file: {found}"
                )
            index = hits[0]
        if _stack_axis(signals[index]) is None:
            raise ValueError(
                f"signal {_describe(signals[index], index)} of {path} is not a 3-D stack of "
                "images (angle, rows, cols); choose another with data.signal / signal="
            )
        return index
    stacks = [i for i, s in enumerate(signals) if _stack_axis(s) is not None]
    if len(stacks) == 1:
        return stacks[0]
    if not stacks:
        raise ValueError(
            f"{path} holds no 3-D stack of images (angle, rows, cols); signals in the file: "
            f"{found}. A tilt series saved as one file per tilt must first be stacked "
            "(e.g. hyperspy.api.stack) and saved as .hspy"
        )
    titles = ", ".join(repr(_title(signals[i], i)) for i in stacks)
    raise ValueError(
        f"{path} holds several image stacks ({titles}); choose one with data.signal / "
        "signal= (a substring of the title, or its index)"
    )


# ---------------------------------------------------------------------- calibration


def _axis_length_A(axis: dict) -> float | None:
    """An axis' scale in Å, None when it has no length units; unknown units raise."""
    units = _unit(axis)
    if units.lower() in _NO_UNITS:
        return None
    factor = _LENGTH_A.get(units.lower())
    if factor is None:
        raise ValueError(f"units {units!r}, not a length atomjax knows (m, mm, µm, nm, Å, pm)")
    return float(axis.get("scale", 1.0)) * factor


def _pixel_size_A(
    image_axes: list[dict], given: float | None, path: pathlib.Path, title: str
) -> tuple[float, dict]:
    """(pixel size in Å, provenance) from the two image axes (rows, cols) or ``given``."""
    calibration = [
        {"name": a.get("name"), "units": _unit(a), "scale": float(a.get("scale", 1.0))}
        for a in image_axes
    ]
    info: dict[str, Any] = {"image_axes": calibration}
    if given is not None:
        given = float(given)
        if not (np.isfinite(given) and given > 0):
            raise ValueError(f"pixel_size_A must be a positive number of Å, got {given}")
        info["pixel_size_source"] = "given (pixel_size_A)"
        return given, info
    where = f"{path} (signal {title!r})"
    sizes = []
    for i, axis in enumerate(image_axes):
        name = "rows (y)" if i == 0 else "columns (x)"
        try:
            size = _axis_length_A(axis)
        except ValueError as err:
            raise ValueError(
                f"{where}: the image axis along the {name} has {err}; give the pixel size "
                "in Å as data.pixel_size_A (pixel_size_A=)"
            ) from None
        if size is None:
            raise ValueError(
                f"{where} has no pixel size: the image axis along the {name} has no length "
                f"units (axes[].units = {_unit(axis)!r}, scale {axis.get('scale')}); give the "
                "pixel size in Å as data.pixel_size_A (pixel_size_A=)"
            )
        if not (np.isfinite(size) and size > 0):
            raise ValueError(
                f"{where}: the pixel size along the {name} is {size} Å; give a pixel size "
                "in Å as data.pixel_size_A (pixel_size_A=)"
            )
        sizes.append(size)
    if not np.isclose(sizes[0], sizes[1], rtol=1e-6, atol=0.0):
        raise ValueError(
            f"{where} has non-square pixels ({sizes[0]:g} Å along y, {sizes[1]:g} Å along "
            "x); atomjax needs square pixels (resample the images, or override with "
            "data.pixel_size_A)"
        )
    lo, hi = _PLAUSIBLE_PIXEL_A
    if not lo <= sizes[1] <= hi:
        warnings.warn(
            f"{where}: the file's pixel size is {sizes[1]:g} Å, outside {lo:g}–{hi:g} Å; "
            "check the calibration or give data.pixel_size_A",
            stacklevel=3,
        )
    info["pixel_size_source"] = f"file ({calibration[1]['scale']:g} {calibration[1]['units']})"
    return sizes[1], info


def _file_angles_deg(sig: dict, stack_axis: int, n: int) -> tuple[np.ndarray | None, str]:
    """Tilt angles (n,) in degrees the file itself gives, and where they came from."""
    axis = sig["axes"][stack_axis]
    units = _unit(axis).lower()
    if units in _DEGREES | _RADIANS:
        if axis.get("axis") is not None:  # a non-uniform axis (HyperSpy)
            values = np.asarray(axis["axis"], dtype=float).reshape(-1)
        else:
            offset, scale = float(axis.get("offset", 0.0)), float(axis.get("scale", 1.0))
            values = offset + scale * np.arange(n)
        if values.size == n:
            if units in _RADIANS:
                values = np.degrees(values)
            return values, f"the stack axis {axis.get('name')!r} ({_unit(axis)})"
    metadata = sig.get("metadata") or {}
    for scope, group in (metadata.get("Acquisition_instrument") or {}).items():
        tilt = ((group or {}).get("Stage") or {}).get("tilt_alpha")
        if tilt is not None and np.size(tilt) == n and n > 1:
            values = np.asarray(tilt, dtype=float).reshape(-1)
            return values, f"metadata Acquisition_instrument.{scope}.Stage.tilt_alpha"
    return None, ""


def _given_angles(angles, tlt) -> tuple[np.ndarray | None, str]:
    """Angles from ``angles`` (numbers, Euler triples or a file) or ``tlt`` (a file)."""
    if angles is not None and tlt is not None:
        raise ValueError("give the tilt angles once: data.angles or data.tlt, not both")
    source = angles if tlt is None else tlt
    if source is None:
        return None, ""
    if isinstance(source, str | os.PathLike):
        path = pathlib.Path(source)
        return io._read_angles_table(path, None), str(path)
    values = np.asarray(source, dtype=float)
    if values.ndim == 0 or values.size == 0:
        raise ValueError(f"data.angles must be a list of tilts in degrees, got {source!r}")
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 3)):
        raise ValueError(
            f"data.angles has shape {values.shape}; expected (m,) tilts or (m, 3) Euler triples"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("data.angles contains NaN or infinite values")
    return values, "given (angles)"


# --------------------------------------------------------------------------- reader


def read_microscope_series(
    path: PathLike,
    kind: str | None = None,
    angles=None,
    tlt: PathLike | None = None,
    pixel_size_A: float | None = None,
    tilt_sign: int = 1,
    signal: str | int | None = None,
) -> TiltSeries:
    """A tilt series from a DM3/DM4, EMD, SER/EMI or .hspy file → TiltSeries.

    kind: the format (:data:`FORMATS`), default from the extension (:data:`EXTENSIONS`).
    angles: (m,) tilts in degrees or (m, 3) Euler triples (ψ, θ, φ), or a file of them;
    tlt: an IMOD-style ``.tlt`` file (one tilt per line, degrees). Either overrides the
    file's own angles. pixel_size_A: overrides the file's calibration. tilt_sign: +1 or
    -1, as :func:`atomjax.io.read_mrc_series`. signal: which image stack of a file that
    holds several (a case-insensitive substring of the title, or an index).
    Images come back as float32 (m, nx, ny) = ``[angle, u, v]`` (see the module doc).
    """
    path = pathlib.Path(path)
    fmt = format_of(path, kind)
    if isinstance(tilt_sign, bool) or tilt_sign not in (1, -1):
        raise ValueError(f"tilt_sign must be 1 or -1, got {tilt_sign!r}")
    given, given_source = _given_angles(angles, tlt)
    io._check_path_exists(path, f"{_LABELS[fmt]} file")
    signals = _read_signals(path, fmt)
    index = _choose_signal(signals, signal, path)
    sig, title = signals[index], _title(signals[index], index)
    stack_axis = _stack_axis(sig)
    axis = sig["axes"][stack_axis]
    stack = np.moveaxis(np.asarray(sig["data"]), stack_axis, 0)
    image_axes = [a for i, a in enumerate(sig["axes"]) if i != stack_axis]
    n = stack.shape[0]

    px, px_info = _pixel_size_A(image_axes, pixel_size_A, path, title)
    file_angles, file_source = _file_angles_deg(sig, stack_axis, n)
    if given is not None:
        tilts, source = given, given_source
    elif file_angles is not None:
        tilts, source = file_angles, file_source
    else:
        raise ValueError(
            f"{path} (signal {title!r}) gives no tilt angles: its stack axis "
            f"{axis.get('name')!r} has units {_unit(axis)!r}, not degrees, and the metadata "
            f"has no per-image tilt; give the {n} tilts in degrees as data.angles (a list) "
            "or data.tlt (a .tlt file, one tilt per line)"
        )
    if tilts.shape[0] != n:
        raise ValueError(
            f"{tilts.shape[0]} tilt angles ({source}) but {n} images in {path} "
            f"(signal {title!r}): the numbers must match"
        )
    images = np.ascontiguousarray(stack.transpose(0, 2, 1), dtype=np.float32)
    provenance = {
        "reader": "atomjax.microscope.read_microscope_series",
        "file": str(path),
        "format": fmt,
        "rsciio_version": str(getattr(importlib.import_module("rsciio"), "__version__", "?")),
        "signal": title,
        "signal_index": index,
        "signals_in_file": [_title(s, i) for i, s in enumerate(signals)],
        "dtype_in_file": str(np.asarray(sig["data"]).dtype),
        "stack_axis": {"index": stack_axis, "name": axis.get("name"), "units": _unit(axis)},
        "axes": "images[j, u, v] = stack[j, v, u] (u = x = column, v = y = row)",
        **px_info,
        "angles_source": source,
        "file_angles_deg": None if file_angles is None else [float(a) for a in file_angles],
        "tilt_sign": int(tilt_sign),
    }
    return TiltSeries(
        images=images,
        euler_deg=io._single_axis_or_euler(np.asarray(tilts, dtype=float), int(tilt_sign)),
        pixel_size_A=px,
        provenance=outputs.to_jsonable(provenance),
    )
