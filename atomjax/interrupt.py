"""Stop a long fit cleanly: SIGINT (Ctrl-C) or SIGTERM asks it to stop, it keeps its work.

Inside :func:`stop_requests` the first SIGINT or SIGTERM only sets a flag: the fit
finishes the compiled piece it is in, writes a checkpoint and its current atoms, and
returns (the run is "interrupted" and can be resumed). A second signal raises
:class:`KeyboardInterrupt` at once, as Ctrl-C normally does. Handlers are installed
only in the main thread and only by the outermost :func:`stop_requests`; inner ones
share its flag, so a signal that arrives while an app prepares the run is not lost.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Whether a stop was asked for, and by which signal."""

    def __init__(self):
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, name: str = "request") -> None:
        self.signal_name = name


_ACTIVE: list[StopFlag] = []


@contextlib.contextmanager
def stop_requests(enabled: bool = True, message: bool = True) -> Iterator[StopFlag]:
    """Yield the :class:`StopFlag` that SIGINT / SIGTERM set while the block runs.

    enabled=False (or outside the main thread) yields a flag no signal sets.
    """
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    flag = StopFlag()
    install = enabled and threading.current_thread() is threading.main_thread()
    previous = {}

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.request(signal.Signals(signum).name)
        if message:
            print(
                f"\n{flag.signal_name}: stopping after the current piece of the fit and "
                "saving the work (send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    if install:
        for s in SIGNALS:
            previous[s] = signal.signal(s, handler)
    _ACTIVE.append(flag)
    try:
        yield flag
    finally:
        _ACTIVE.remove(flag)
        for s, old in previous.items():
            signal.signal(s, old)
