"""A copy of what the console shows, in the run folder's log file.

:class:`ConsoleLog` replaces ``sys.stdout`` and ``sys.stderr`` by copies that write
both to the terminal and to a log. Until :meth:`ConsoleLog.attach` names the file the
text is kept in memory, so a run that is refused before it has a folder writes no
log, and one that gets its folder keeps everything from its first line. Progress bars
redraw one line with carriage returns; the log keeps the last state of each line.
"""

from __future__ import annotations

import io
import os
import pathlib
import sys


class _Copy(io.TextIOBase):
    """A text stream that writes to ``stream`` and hands whole lines to ``log``."""

    def __init__(self, stream, log: ConsoleLog):
        self._stream = stream
        self._log = log
        self._pending = ""

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._log.line(line.rsplit("\r", 1)[-1])
        return len(text) if n is None else n

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        last = self._pending.rsplit("\r", 1)[-1]
        if last.strip():
            self._log.line(last)
        self._pending = ""

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", "utf-8")


class ConsoleLog:
    """``with ConsoleLog() as log: ...; log.attach(path)`` — see the module docstring."""

    def __init__(self):
        self._lines: list[str] = []
        self._file = None
        self._saved = None
        self._copies: list[_Copy] = []

    def __enter__(self) -> ConsoleLog:
        self._saved = (sys.stdout, sys.stderr)
        self._copies = [_Copy(sys.stdout, self), _Copy(sys.stderr, self)]
        sys.stdout, sys.stderr = self._copies
        return self

    def __exit__(self, *exc) -> bool:
        for copy in self._copies:
            copy.finish()
        sys.stdout, sys.stderr = self._saved
        if self._file is not None:
            self._file.close()
            self._file = None
        return False

    def line(self, text: str) -> None:
        if self._file is None:
            self._lines.append(text)
        else:
            self._file.write(text + "\n")
            self._file.flush()

    def attach(self, path: str | os.PathLike, append: bool = False) -> None:
        """Write what was shown so far to ``path`` (appending when resuming) and go on."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        if append and path.stat().st_size:
            self._file.write("\n")
        for text in self._lines:
            self._file.write(text + "\n")
        self._lines = []
        self._file.flush()

    @property
    def attached(self) -> bool:
        return self._file is not None
