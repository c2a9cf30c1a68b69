"""The run folder: what it holds, who may write into it, and its record.

A reconstruction writes into one folder: its results (``atoms.extxyz``,
``report.json``, figures), its ``checkpoint/`` and its record, ``run.json``. The
record says what the run is and how far it got:

* ``status``: "running", "interrupted" (stopped by a signal, or its process ended
  without a word), "finished" or "failed" (with the error);
* the series it reads (size, pixel size and content fingerprint), every setting, and
  what the caller adds (the command-line app: the data description with its paths, the
  whole settings tree and the command), so the folder alone is enough to resume;
* ``outputs``: the files the run made;
* ``parts``, for a run made of several runs (:func:`atomjax.reconstruct_starts`): their
  run folders inside it; the run can be resumed when any of them holds a checkpoint.

Rules (:func:`claim`):

* a folder another process is writing into is never touched (an advisory lock,
  ``.atomjax.lock``, held for the whole run and released by the system when the process
  ends, however it ends);
* a folder that holds a run — finished, interrupted or failed — is continued only with
  ``resume``, and replaced only with ``overwrite``; then the old run's outputs are
  removed first, so the folder never mixes two runs' files. Files atomjax did not
  write are never removed;
* a folder with no run in it is used as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
import shutil
import socket
from collections.abc import Iterator
from typing import Any

from . import outputs

try:  # advisory locks (POSIX); without them two runs into one folder are not detected
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

RUN_JSON = "run.json"
LOCK_NAME = ".atomjax.lock"
CHECKPOINT_DIR = "checkpoint"
#: what atomjax writes into a run folder; an overwrite removes these (and the record's
#: ``outputs``), never anything else
OUTPUT_NAMES = (
    "atoms.extxyz",
    "report.json",
    "projections.png",
    "loss.png",
    "atoms.png",
    "atoms_sigma.png",
    "truth.extxyz",
    "reconstruct.log",
    ".hydra",
    CHECKPOINT_DIR,
    RUN_JSON,
)
STATUSES = ("running", "interrupted", "finished", "failed")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message names the way out."""


@dataclasses.dataclass(frozen=True)
class FolderState:
    """What a folder holds: ``status`` is "empty" or one of :data:`STATUSES`."""

    path: pathlib.Path
    status: str
    record: dict[str, Any] | None
    has_checkpoint: bool
    holder_pid: int | None = None

    def describe(self) -> str:
        """Say what the run is, e.g. "a finished run (6 of 6 phases, started 2026-12-01 10:00)"."""
        r = self.record or {}
        progress = r.get("progress") or {}
        done, total = progress.get("phase"), progress.get("n_phases")
        parts = []
        if done is not None and total is not None:
            parts.append(f"{done} of {total} phases")
        if r.get("started_at"):
            parts.append(f"started {r['started_at'][:16].replace('T', ' ')}")
        detail = f" ({', '.join(parts)})" if parts else ""
        article = "an" if self.status[0] in "aeiou" else "a"
        return f"{article} {self.status} run{detail}"


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def read_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = pathlib.Path(folder) / RUN_JSON
    return outputs.read_json(path) if path.is_file() else None


def _lock_holder(folder: pathlib.Path) -> int | None:
    """The pid holding the folder's lock (0 when unknown), or None when it is free."""
    lock = folder / LOCK_NAME
    if fcntl is None or not lock.is_file():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def inspect(folder: str | os.PathLike) -> FolderState:
    """The state of ``folder`` (it need not exist)."""
    path = pathlib.Path(folder)
    has_ckpt = (path / CHECKPOINT_DIR / "checkpoint.json").is_file()
    if not path.is_dir():
        return FolderState(path, "empty", None, False)
    record = read_record(path)
    if not has_ckpt and record:  # a run made of runs (several starts): any part's checkpoint
        has_ckpt = any((path / part / CHECKPOINT_DIR / "checkpoint.json").is_file()
                       for part in record.get("parts") or [] if "/" not in part)  # fmt: skip
    held = None if path.resolve() in _HELD else _lock_holder(path)
    if held is not None:
        return FolderState(path, "running", record, has_ckpt, held)
    if record is not None:
        status = record.get("status", "finished")
        if status == "running":  # its process ended without saying so (killed)
            status = "interrupted"
        return FolderState(path, status, record, has_ckpt)
    # folders written before run.json existed
    if (path / "report.json").is_file():
        return FolderState(path, "finished", None, has_ckpt)
    if has_ckpt:
        return FolderState(path, "interrupted", None, has_ckpt)
    return FolderState(path, "empty", None, False)


def check_use(state: FolderState, resume: bool, overwrite: bool) -> None:
    """Raise :class:`RunFolderError` unless ``state`` may be used as asked
    (FileNotFoundError when there is nothing to resume)."""
    where = str(state.path)
    if state.status == "running":
        pid = f" (process {state.holder_pid})" if state.holder_pid else ""
        raise RunFolderError(
            f"a run is writing into {where} right now{pid}: wait for it to end, stop it, or "
            "choose another folder"
        )
    if resume:
        if state.status == "empty":
            raise FileNotFoundError(f"nothing to resume in {where}: it holds no run, no checkpoint")
        if not state.has_checkpoint:
            raise RunFolderError(
                f"{where} holds {state.describe()} but no checkpoint (it ran with "
                "checkpoint=false), so it cannot be resumed; start a new run "
                "(overwrite=true to replace it)"
            )
        return
    if state.status == "empty" or overwrite:
        return
    if state.status == "finished":
        resume_hint = " or resume=true to continue it (e.g. with more optim.n_phases)"
    elif state.has_checkpoint:
        resume_hint = " or resume=true to continue it from its checkpoint"
    else:
        resume_hint = ""
    raise RunFolderError(
        f"{where} holds {state.describe()}, which a new run would replace: give "
        f"overwrite=true to replace it{resume_hint}, or choose another folder"
    )


def clear(folder: pathlib.Path, record: dict | None = None, keep: tuple[str, ...] = ()) -> None:
    """Remove the outputs of the run in ``folder``: :data:`OUTPUT_NAMES` and the record's
    ``outputs``, except ``keep``; never the lock, never anything outside the folder."""
    names = set(OUTPUT_NAMES) | set((record or {}).get("outputs") or [])
    for name in sorted(names - set(keep) - {LOCK_NAME}):
        if not name or "/" in name or name in (".", ".."):
            continue  # only names directly inside the folder
        target = folder / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)


_HELD: dict[pathlib.Path, RunFolder] = {}


class RunFolder:
    """A folder this process holds: its record, written by :meth:`update`."""

    def __init__(self, path: pathlib.Path, record: dict[str, Any]):
        self.path = path
        self.record = record

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into the record and write ``run.json`` (atomically)."""
        self.record.update(fields, updated_at=_now())
        outputs.write_json(self.path / RUN_JSON, self.record)

    def record_error(self, error: BaseException) -> None:
        """Record that the run ended by ``error``: "interrupted" for a second signal
        (KeyboardInterrupt), else "failed" with the error."""
        aborted = isinstance(error, KeyboardInterrupt)
        self.update(
            status="interrupted" if aborted else "failed",
            error="stopped at once by a second signal" if aborted else repr(error)[:2000],
        )

    def add_outputs(self, *names: str) -> None:
        made = list(self.record.get("outputs") or [])
        made += [n for n in names if n not in made]
        self.update(outputs=made)

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        return self.path / CHECKPOINT_DIR


@contextlib.contextmanager
def claim(
    folder: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    keep: tuple[str, ...] = (),
) -> Iterator[RunFolder]:
    """Hold ``folder`` for one run (see the module's rules) and yield its :class:`RunFolder`.

    resume: continue the run in it; overwrite: replace the run in it (its outputs but
    ``keep`` are removed first). Claiming a folder this process already holds yields the
    same handle and checks nothing again (the app claims first, then the library).
    """
    path = pathlib.Path(folder)
    key = path.resolve()
    if key in _HELD:
        yield _HELD[key]
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = None
    if fcntl is not None:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            check_use(dataclasses.replace(inspect(path), status="running"), resume, overwrite)
            raise  # check_use always raises for a running folder
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    try:
        _HELD[key] = None  # inspect() below must not see our own lock
        state = inspect(path)
        check_use(state, resume, overwrite)
        if resume:
            record = dict(state.record or {})
        else:  # a new run: no file of an earlier one stays (stale .hydra, logs, figures)
            clear(path, state.record, keep)
            record = {}
        record.update(status="running", pid=os.getpid(), host=socket.gethostname())
        record.setdefault("started_at", _now())
        run = RunFolder(path, record)
        _HELD[key] = run
        yield run
    finally:
        _HELD.pop(key, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
