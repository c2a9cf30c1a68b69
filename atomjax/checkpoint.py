"""Checkpoints of a reconstruction: the fit's state at a piece or phase boundary.

A checkpoint is a folder (``<run folder>/checkpoint``) with two files:

* ``state_<phase>_<step>.eqx``: the leaves of (parameters, optimizer state, learning
  rate scale), written by :func:`equinox.tree_serialise_leaves`;
* ``checkpoint.json``: where the fit stands (``phase`` phases done, ``step`` steps of the
  next one done), the history so far, the learning rates, the settings and the
  series' description with its fingerprint, and the name of the state file.

The state file is written first and the JSON that points at it last (each atomically),
so a crash at any moment leaves the previous checkpoint whole. Resuming needs the same
series (by fingerprint) and the same settings, except those in
:data:`RESUME_MAY_CHANGE`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import equinox as eqx

from . import outputs
from .data import TiltSeries

CHECKPOINT_JSON = "checkpoint.json"
#: settings a resumed run may change: more phases, another number of devices
RESUME_MAY_CHANGE = ("optim.n_phases", "shard_devices")


def series_info(series: TiltSeries) -> dict[str, Any]:
    """What identifies a tilt series: its size, pixel size and content fingerprint."""
    return {
        "n_angles": series.n_angles,
        "image_shape": list(series.image_shape),
        "pixel_size_A": float(series.pixel_size_A),
        "sha256": series.fingerprint(),
    }


def exists(folder: pathlib.Path | None) -> bool:
    return folder is not None and (pathlib.Path(folder) / CHECKPOINT_JSON).is_file()


def read_meta(folder: pathlib.Path) -> dict[str, Any]:
    return json.loads((pathlib.Path(folder) / CHECKPOINT_JSON).read_text())


def save(folder: pathlib.Path, phase: int, step: int, state, meta: dict[str, Any]) -> None:
    """Write ``state`` (a pytree of arrays) and ``meta`` as the checkpoint at ``phase``
    phases and ``step`` further steps; older state files are removed afterwards."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"state_{phase:04d}_{step:06d}.eqx"
    tmp = folder / (name + ".tmp")
    eqx.tree_serialise_leaves(tmp, state)
    os.replace(tmp, folder / name)
    meta = dict(meta, phase=phase, step=step, state_file=name)
    outputs.write_json(folder / CHECKPOINT_JSON, meta)
    for old in folder.glob("state_*.eqx"):
        if old.name != name:
            old.unlink()


def load(folder: pathlib.Path, like) -> Any:
    """The state saved in ``folder``, shaped like the pytree ``like``."""
    meta = read_meta(folder)
    return eqx.tree_deserialise_leaves(pathlib.Path(folder) / meta["state_file"], like)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(meta: dict, settings: dict, info: dict) -> None:
    """Refuse to resume with another series or other settings, naming what differs.

    ``settings``: the run's settings as a plain dict (``ReconstructConfig.to_dict``);
    ``info``: :func:`series_info` of the series given now.
    """
    saved_info = meta.get("series") or {}
    shape_keys = ("n_angles", "image_shape", "pixel_size_A")
    if any(saved_info.get(k) != info.get(k) for k in shape_keys):
        raise ValueError(
            "the checkpoint was written for a series "
            f"{ {k: saved_info.get(k) for k in shape_keys} }, not this one "
            f"{ {k: info.get(k) for k in shape_keys} }; resume with the same tilt series"
        )
    if "sha256" in saved_info and saved_info["sha256"] != info.get("sha256"):
        raise ValueError(
            "the tilt series differs from the one this run was started with: same size and "
            f"pixel size, but other content (fingerprint {info.get('sha256', '')[:12]}… "
            f"vs the run's {saved_info['sha256'][:12]}…: other, changed or reordered images "
            "or angles); resume with the same tilt series, or start a new run"
        )
    saved, now = flatten(meta["config"]), flatten(settings)
    keys = (set(saved) | set(now)) - set(RESUME_MAY_CHANGE)
    changed = sorted(k for k in keys if saved.get(k) != now.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ValueError(
            f"the settings differ from the checkpoint's ({detail}); resume with the same "
            "settings (only optim.n_phases may change) or start a new run folder"
        )
