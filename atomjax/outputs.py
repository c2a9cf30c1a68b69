"""Run-folder outputs: JSON, extended XYZ atom lists and figures, every write atomic.

Every file is written to a temporary file in the destination folder and moved into place
with :func:`os.replace`, so a reader sees either the old file or the complete new one; on
any error the temporary file is removed and the old file is left as it was. Parent folders
are created as needed.

Figures are drawn on :class:`matplotlib.figure.Figure` objects that never enter pyplot's
registry (no global state, no display needed, nothing to leak), rendered with Agg.

Image arrays follow the project's [u, v] convention: ``image[i, j]`` is at u = i, v = j.
Figures show the array as is, so u runs down the page and v across; the axis labels say so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

EXTXYZ_COLUMNS = ("symbols", "positions", "width_A2", "amplitude")
_EXTXYZ_PROPERTIES = "Properties=species:S:1:pos:R:3:width_A2:R:1:amplitude:R:1"
_RESERVED_INFO_KEYS = {"properties", "lattice", "pbc"}

# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    Write the whole file to the yielded path inside the ``with`` block. If the block
    raises, the temporary file is deleted, ``path`` is untouched and the error propagates.
    The new file keeps the permissions of the file it replaces (0644 for a new file).
    """
    target = pathlib.Path(path)
    if target.name in ("", ".", ".."):
        raise ValueError(f"not a file path: {path!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _fsync(fh) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` (bytes-like) to ``path`` atomically; returns the path."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}")
    target = pathlib.Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        _fsync(fh)
    return target


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> pathlib.Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default); returns the path."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    target = pathlib.Path(path)
    with atomic_path(target) as tmp, open(tmp, "w", encoding=encoding, newline="") as fh:
        fh.write(text)
        _fsync(fh)
    return target


# --------------------------------------------------------------------------- JSON


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields") and hasattr(obj, "_asdict")


def _json_key(key: Any) -> str | int | float | bool | None:
    if isinstance(key, str):
        return key
    if isinstance(key, pathlib.PurePath):
        return str(key)
    if isinstance(key, (np.generic,)):
        key = key.item()
    if key is None or isinstance(key, (bool, int, float)):
        return key  # json.dumps turns these into strings
    raise TypeError(f"cannot use a {type(key).__name__} as a JSON object key: {key!r}")


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types, recursively.

    numpy/jax arrays → nested lists; numpy scalars → Python scalars; NaN/±inf → None;
    dataclasses (incl. equinox modules) → dicts of their fields; named tuples → dicts;
    tuples, sets → lists; paths → str. Anything else raises TypeError naming the type.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        if isinstance(obj, (np.bool_, np.integer, np.floating)):
            return to_jsonable(obj.item())
        if isinstance(obj, np.str_):
            return str(obj)
        raise TypeError(f"cannot convert numpy {type(obj).__name__} to JSON: {obj!r}")
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        return {_json_key(k): to_jsonable(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if _is_namedtuple(obj):
        return {k: to_jsonable(v) for k, v in obj._asdict().items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        with contextlib.suppress(TypeError):
            items.sort()
        return items
    if isinstance(obj, np.ndarray) or (
        hasattr(obj, "__array__") and hasattr(obj, "shape") and hasattr(obj, "dtype")
    ):
        a = np.asarray(obj)
        if a.dtype.kind in "biuf":
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                return to_jsonable(a.astype(object).tolist())
            return a.tolist()
        if a.dtype.kind in "OUS":
            return to_jsonable(a.tolist())
        raise TypeError(f"cannot convert an array of dtype {a.dtype} to JSON")
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON: {obj!r:.80}")


def write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    """Write ``to_jsonable(obj)`` as JSON (indent 2, keys in insertion order), atomically.

    The conversion happens before anything is written, so a TypeError for a
    non-serialisable object leaves an existing file untouched.
    """
    text = json.dumps(
        to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False, ensure_ascii=False
    )
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document at ``path`` (UTF-8)."""
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- extended XYZ


def _as_finite(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != shape:
        want = "(" + ", ".join("n" if i == 0 else str(s) for i, s in enumerate(shape)) + ")"
        raise ValueError(f"{name} must have shape {want} = {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN/inf")
    return a


def _info_value(key: str, value: Any) -> str | int | float | bool:
    v = value.item() if isinstance(value, np.generic) else value
    if isinstance(v, pathlib.PurePath):
        v = str(v)
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"info[{key!r}] = {v}: NaN/inf cannot be stored in the comment line")
    if not isinstance(v, (str, bool, int, float)):
        raise ValueError(
            f"info[{key!r}] must be a string or a number (or bool), got {type(value).__name__}"
        )
    return v


def _check_info(info: Mapping[str, Any] | None) -> dict[str, Any]:
    """Plain-typed info that the extxyz comment line will give back unchanged."""
    if not info:
        return {}
    from ase.io.extxyz import key_val_dict_to_str, key_val_str_to_dict

    clean: dict[str, Any] = {}
    for key, value in info.items():
        if not isinstance(key, str):
            raise ValueError(f"info keys must be strings, got {key!r}")
        if key.lower() in _RESERVED_INFO_KEYS:
            raise ValueError(f"info key {key!r} is reserved by the extxyz format")
        clean[key] = _info_value(key, value)
    back = key_val_str_to_dict(key_val_dict_to_str(clean))
    for key, value in clean.items():
        got = back.get(key, None)
        got = got.item() if isinstance(got, np.generic) else got
        if type(got) is not type(value) or got != value:
            raise ValueError(
                f"info[{key!r}] = {value!r} would not survive the extxyz comment line "
                f"(it reads back as {got!r}); store it differently (e.g. in a JSON file)"
            )
    return clean


def _fmt_float(x: float) -> str:
    return f"{repr(float(x)):>24}"


def write_extxyz(
    path: str | os.PathLike,
    positions_A: Any,
    widths_A2: Any,
    amplitudes: Any,
    species: Sequence[str] | None = None,
    info: Mapping[str, Any] | None = None,
    columns: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write atoms to an extended XYZ file (atomically), readable by ``ase.io.read``.

    Per-atom columns: species, pos (Å), ``width_A2`` (Å²) and ``amplitude``, then any
    float ``columns`` ({name: (n,)}, e.g. the standard deviations ``sigma_x_A``). ``species``
    None writes the dummy symbol "X"; otherwise each entry must be a chemical symbol.
    ``info`` (string keys; str/int/float/bool values) goes into the comment line; a value
    the format would read back differently (e.g. the string "1.5", a string with a
    newline) raises ValueError. No cell, pbc F F F.

    ase builds the file, but writes floats as %16.8f, which would cut small amplitudes and
    widths to a few digits; the data rows are therefore rewritten with the shortest
    round-trip representation of each float (``repr``), so reading gives back exactly the
    values written.
    """
    import ase
    import ase.data
    import ase.io

    pos = np.asarray(positions_A, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions_A must have shape (n, 3) in Å, got {pos.shape}")
    n = pos.shape[0]
    pos = _as_finite(pos, "positions_A", (n, 3))
    width = _as_finite(widths_A2, "widths_A2", (n,))
    amp = _as_finite(amplitudes, "amplitudes", (n,))
    if species is None:
        symbols = ["X"] * n
    else:
        symbols = [str(s) for s in np.asarray(species, dtype=str).reshape(-1)]
        if np.ndim(species) != 1 or len(symbols) != n:
            raise ValueError(f"species must have shape (n,) = ({n},), got {np.shape(species)}")
    clean_info = _check_info(info)
    try:
        atoms = ase.Atoms(symbols=symbols, positions=pos, pbc=False)
    except (KeyError, ValueError) as err:
        bad = sorted({s for s in symbols if s not in ase.data.atomic_numbers})
        raise ValueError(
            f"species must be chemical symbols (or 'X'); not recognised: {bad[:10]}"
        ) from err
    atoms.arrays["width_A2"] = width.copy()
    atoms.arrays["amplitude"] = amp.copy()
    extra = {}
    for name, values in (columns or {}).items():
        if name in atoms.arrays or name in EXTXYZ_COLUMNS or not name.isidentifier():
            raise ValueError(f"column name {name!r} is taken or not a plain identifier")
        extra[name] = _as_finite(values, name, (n,))
        atoms.arrays[name] = extra[name].copy()
    atoms.info.update(clean_info)

    buf = io.StringIO()
    ase.io.write(buf, atoms, format="extxyz", columns=[*EXTXYZ_COLUMNS, *extra])
    lines = buf.getvalue().splitlines()
    properties = _EXTXYZ_PROPERTIES + "".join(f":{name}:R:1" for name in extra)
    if n == 0:  # ase types the empty species column as real
        properties = properties.replace("species:S:1", "species:R:1")
    if len(lines) != n + 2 or lines[0].strip() != str(n) or properties not in lines[1]:
        raise RuntimeError(
            "unexpected extxyz layout from ase.io.write; expected "
            f"{properties!r} in {lines[1] if len(lines) > 1 else lines!r:.200}"
        )
    table = np.column_stack([pos, width, amp, *extra.values()]) if n else np.zeros((0, 5))
    rows = [
        f"{s:<3}" + "".join(_fmt_float(v) for v in values)
        for s, values in zip(symbols, table.tolist(), strict=True)
    ]
    for line, row in zip(lines[2:], rows, strict=True):  # same rows as ase's, only more digits
        if line.split()[0] != row.split()[0]:
            raise RuntimeError("extxyz rows from ase.io.write do not match the atoms")
    return atomic_write_text(path, "\n".join(lines[:2] + rows) + "\n")


def read_extxyz(path: str | os.PathLike) -> dict[str, Any]:
    """Read a single-frame extended XYZ file as written by :func:`write_extxyz`.

    Returns ``{"positions_A": (n, 3), "widths_A2": (n,) or None, "amplitudes": (n,) or
    None, "species": (n,) str or None, "info": dict, "columns": {name: (n,)}}`` (the
    further float columns, e.g. the standard deviations). Columns missing from the file come
    back as None; species is None when every symbol is the dummy "X". Info values are
    plain Python types; keys ase moves to a calculator (e.g. "energy") are put back.
    """
    import ase.io

    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"extxyz file not found: {p}")
    frames = ase.io.read(p, index=":", format="extxyz")
    if len(frames) != 1:
        raise ValueError(f"{p} holds {len(frames)} frames; expected exactly one")
    atoms = frames[0]
    symbols = np.asarray(atoms.get_chemical_symbols(), dtype=str)
    info = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in atoms.info.items()}
    if atoms.calc is not None:
        for k, v in getattr(atoms.calc, "results", {}).items():
            if np.ndim(v) == 0:
                info[k] = v.item() if isinstance(v, np.generic) else v

    def column(name: str) -> np.ndarray | None:
        return np.asarray(atoms.arrays[name], dtype=np.float64) if name in atoms.arrays else None

    known = {"numbers", "positions", "width_A2", "amplitude"}
    return {
        "positions_A": np.asarray(atoms.get_positions(), dtype=np.float64),
        "widths_A2": column("width_A2"),
        "amplitudes": column("amplitude"),
        "species": None if (symbols == "X").all() and symbols.size else symbols,
        "info": info,
        "columns": {k: column(k) for k in atoms.arrays if k not in known},
    }


# --------------------------------------------------------------------------- figures


def _new_figure(figsize: tuple[float, float], dpi: int = 100):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def _save_figure(fig, path: str | os.PathLike) -> pathlib.Path:
    """Render ``fig`` with Agg to ``path`` atomically; format from the suffix (png default)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    target = pathlib.Path(path)
    canvas = FigureCanvasAgg(fig)
    fmt = target.suffix.lower().lstrip(".") or "png"
    if fmt not in canvas.get_supported_filetypes():
        raise ValueError(
            f"cannot save a figure as {target.suffix!r}; "
            f"supported: {sorted(canvas.get_supported_filetypes())}"
        )
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt)
    finally:
        fig.clear()
    return target


def _as_vector(x: Any, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries, expected {n}")
    return a


def _default_indices(m: int) -> list[int]:
    return sorted({0, (m - 1) // 2, m - 1})


def r_factor_image(observed: np.ndarray, calculated: np.ndarray) -> float:
    """Σ|obs − calc| / Σ|obs| (NaN when Σ|obs| = 0)."""
    den = float(np.abs(observed).sum())
    return float(np.abs(observed - calculated).sum()) / den if den > 0 else math.nan


def figure_projections(
    path: str | os.PathLike,
    observed: Any,
    calculated: Any,
    labels: Sequence[str],
    indices: Sequence[int] | None = None,
) -> pathlib.Path:
    """Measured | model | residual for chosen images of a tilt series, saved atomically.

    ``observed`` and ``calculated`` are (m, nu, nv); ``labels`` has one entry per image
    (e.g. "θ = −60°"). ``indices`` picks the rows (default: first, middle, last; negative
    indices count from the end). Measured and model share one colour scale; the residual
    (measured − model) uses a symmetric diverging map. Each row's title gives its label
    and R = Σ|obs − calc| / Σ|obs|. Arrays are shown as is: u down, v across.
    """
    obs = np.asarray(observed, dtype=np.float64)
    calc = np.asarray(calculated, dtype=np.float64)
    if obs.ndim != 3:
        raise ValueError(f"observed must have shape (m, nu, nv), got {obs.shape}")
    if calc.shape != obs.shape:
        raise ValueError(
            f"calculated must have the shape of observed {obs.shape}, got {calc.shape}"
        )
    m = obs.shape[0]
    if m == 0 or obs.shape[1] == 0 or obs.shape[2] == 0:
        raise ValueError(f"observed is empty: shape {obs.shape}")
    for name, a in (("observed", obs), ("calculated", calc)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN/inf")
    labels = [str(s) for s in labels]
    if len(labels) != m:
        raise ValueError(f"labels has {len(labels)} entries but there are {m} images")
    if indices is None:
        rows = _default_indices(m)
    else:
        rows = []
        for i in np.asarray(indices).reshape(-1).tolist():
            if not isinstance(i, int) or not -m <= i < m:
                raise ValueError(f"indices: {i!r} is not an image index in [-{m}, {m})")
            rows.append(i % m)
        if not rows:
            raise ValueError("indices is empty: choose at least one image")

    nu, nv = obs.shape[1:]
    panel = 3.4
    aspect = nu / nv
    fig = _new_figure((3 * panel + 1.0, len(rows) * panel * min(max(aspect, 0.4), 2.5) + 0.4))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, i in enumerate(rows):
        o, c = obs[i], calc[i]
        res = o - c
        lo, hi = float(min(o.min(), c.min())), float(max(o.max(), c.max()))
        if hi <= lo:
            hi = lo + 1.0
        lim = float(np.abs(res).max()) or 1.0
        rf = r_factor_image(o, c)
        rf_text = "n/a" if math.isnan(rf) else f"{rf:.4f}"
        panels = (
            (o, f"measured — {labels[i]}", "viridis", lo, hi),
            (c, f"model — {labels[i]}", "viridis", lo, hi),
            (res, f"residual — {labels[i]}, R = {rf_text}", "RdBu_r", -lim, lim),
        )
        for ax, (img, title, cmap, vmin, vmax) in zip(axes[r], panels, strict=True):
            im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("v (pixel) →")
            ax.set_ylabel("u (pixel) ↓")
            fig.colorbar(im, ax=ax, shrink=0.85)
    return _save_figure(fig, path)


def figure_loss(
    path: str | os.PathLike,
    steps: Any,
    loss: Any,
    phase_ends: Sequence[float] | Mapping[str, float] | None = None,
    n_atoms: Any = None,
) -> pathlib.Path:
    """Loss against step on a log axis, saved atomically.

    ``phase_ends`` are steps where an optimisation phase ended (dashed vertical lines); a
    mapping ``{phase name: end step}`` also labels them. ``n_atoms`` (one per step) is
    drawn on a second y axis. Non-positive or NaN losses are left out of the log plot (a
    linear axis is used when no loss is positive).
    """
    s = _as_vector(steps, "steps")
    y = _as_vector(loss, "loss", s.shape[0])
    if s.shape[0] == 0:
        raise ValueError("steps is empty: nothing to plot")
    if not np.isfinite(s).all():
        raise ValueError("steps contains NaN/inf")
    if isinstance(phase_ends, Mapping):
        ends = [(str(k), float(v)) for k, v in phase_ends.items()]
    else:
        ends = [(None, float(v)) for v in (phase_ends or [])]
    atoms = None if n_atoms is None else _as_vector(n_atoms, "n_atoms", s.shape[0])

    fig = _new_figure((7.0, 4.2))
    ax = fig.subplots()
    ok = np.isfinite(y) & (y > 0)
    ax.plot(s, np.where(ok, y, np.nan), color="C0", lw=1.2, label="loss")
    if ok.any():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)" if ok.any() else "loss")
    for name, step in ends:
        ax.axvline(step, color="0.4", ls="--", lw=0.8)
        if name:
            ax.annotate(
                name,
                (step, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                ha="right",
                va="top",
                fontsize=8,
                color="0.3",
            )
    if atoms is not None:
        ax2 = ax.twinx()
        ax2.plot(s, atoms, color="C1", lw=1.0, drawstyle="steps-post", label="atoms")
        ax2.set_ylabel("number of atoms", color="C1")
        ax2.tick_params(axis="y", colors="C1")
    ax.grid(True, which="major", alpha=0.3)
    return _save_figure(fig, path)


def figure_atoms(
    path: str | os.PathLike,
    positions_A: Any,
    values: Any = None,
    truth_A: Any = None,
    values_label: str = "value",
) -> pathlib.Path:
    """Three orthogonal projections (x-y, x-z, y-z) of the atoms, saved atomically.

    Atoms are coloured by ``values`` (n,) (e.g. amplitude; colour bar labelled
    ``values_label``); ``truth_A`` (k, 3) adds the ground truth as hollow circles. Equal
    aspect, axes in Å.
    """
    pos = np.asarray(positions_A, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions_A must have shape (n, 3) in Å, got {pos.shape}")
    n = pos.shape[0]
    pos = _as_finite(pos, "positions_A", (n, 3))
    val = None if values is None else _as_finite(values, "values", (n,))
    truth = None
    if truth_A is not None:
        truth = np.asarray(truth_A, dtype=np.float64)
        if truth.ndim != 2 or truth.shape[1] != 3:
            raise ValueError(f"truth_A must have shape (k, 3) in Å, got {truth.shape}")
        truth = _as_finite(truth, "truth_A", truth.shape)

    size = float(np.clip(3000.0 / max(n, 1), 1.0, 30.0))
    fig = _new_figure((13.0, 4.6))
    axes = fig.subplots(1, 3)
    pairs = ((0, 1), (0, 2), (1, 2))
    names = "xyz"
    sc = None
    for ax, (a, b) in zip(axes, pairs, strict=True):
        if truth is not None and truth.shape[0]:
            ax.scatter(
                truth[:, a],
                truth[:, b],
                s=size * 2.5,
                facecolors="none",
                edgecolors="k",
                linewidths=0.6,
                label="truth",
            )
        if n:
            sc = ax.scatter(
                pos[:, a],
                pos[:, b],
                s=size,
                c=val if val is not None else "C0",
                cmap="viridis" if val is not None else None,
                linewidths=0,
                label="atoms",
            )
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(f"{names[a]} (Å)")
        ax.set_ylabel(f"{names[b]} (Å)")
        ax.set_title(f"{names[a]}-{names[b]} projection", fontsize=10)
    if truth is not None:
        axes[0].legend(loc="upper right", fontsize=8)
    if val is not None and sc is not None:
        fig.colorbar(sc, ax=list(axes), shrink=0.85, label=values_label)
    return _save_figure(fig, path)


def figure_alignment(path: str | os.PathLike, tilts_deg: Any, alignment: Any) -> pathlib.Path:
    """An :class:`atomjax.alignment.Alignment` against tilt: the shifts (u, v) in Å, the
    per-image tilt and rotation corrections where it holds them, and the tilt axis's
    common-line scan where it was estimated; saved atomically."""
    tilts = _as_vector(tilts_deg, "tilts_deg")
    shifts = np.asarray(alignment.shifts_A, float)
    if shifts.shape != (tilts.shape[0], 2):
        raise ValueError(f"{tilts.shape[0]} tilts for shifts of shape {shifts.shape}")
    info = alignment.info or {}
    scan = "scan_deg" in info and "scan_spread" in info
    offsets = [(name, getattr(alignment, name)) for name in ("tilt_offsets_deg",
               "rotation_offsets_deg") if getattr(alignment, name) is not None]  # fmt: skip
    n = 1 + bool(offsets) + scan
    fig = _new_figure((4.2 * n, 3.6))
    axes = np.atleast_1d(fig.subplots(1, n))
    ax = axes[0]
    ax.plot(tilts, shifts[:, 0], "o-", ms=3, label="u")
    ax.plot(tilts, shifts[:, 1], "s-", ms=3, label="v")
    ax.set_xlabel("tilt (°)")
    ax.set_ylabel("shift (Å)")
    ax.set_title("image shifts")
    ax.legend(fontsize=8)
    k = 1
    if offsets:
        ax = axes[k]
        for name, values in offsets:
            ax.plot(tilts, values, "o-", ms=3, label=name.replace("_offsets_deg", ""))
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel("tilt (°)")
        ax.set_ylabel("correction (°)")
        ax.set_title("per-image angles")
        ax.legend(fontsize=8)
        k += 1
    if scan:
        ax = axes[k]
        ax.plot(info["scan_deg"], info["scan_spread"], ".", ms=4)
        ax.axvline(alignment.tilt_axis_deg, color="C3", lw=1)
        ax.set_xlabel("tilt axis α (°)")
        ax.set_ylabel("spread of the profiles")
        ax.set_title(f"common line: α = {alignment.tilt_axis_deg:.2f}°")
    return _save_figure(fig, path)
