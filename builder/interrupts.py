"""Stop nld-build promptly on SIGINT / SIGTERM, in Python code and in native builders alike.

`stop_on_signals()` installs handlers that record the request and raise `Interrupted` (a BaseException,
like KeyboardInterrupt, so `except Exception` does not swallow it and staged folders are removed).
Native code that calls back into Python (TensorRT's logger and progress monitor) must not see an
exception: it would be lost inside the bindings. Inside `held()` a signal is only recorded; the native
side polls `requested()` (the progress monitor cancels the build) and `Interrupted` is raised on leaving.
After `finishing()` signals are recorded and ignored: the work is done and its output is being committed.
A second signal while stopping is ignored, so clean-up is never cut short.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal arrived; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_requested: int | None = None
_held = 0
_finishing = False


def _handle(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested is not None:
        return  # already stopping
    _requested = signum
    if _held == 0 and not _finishing:
        raise Interrupted(signum)


def requested() -> int | None:
    """The stop signal received, or None."""
    return _requested


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread while inside (a no-op elsewhere)."""
    global _requested, _held, _finishing
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested, _held, _finishing = None, 0, False
    previous = {number: signal.signal(number, _handle) for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _requested, _finishing = None, False  # library calls after this one are not stopped


@contextmanager
def held() -> Iterator[None]:
    """Run native code that calls back into Python: signals inside only record the request, which
    raises `Interrupted` on leaving (also one that came before)."""
    global _held
    _held += 1
    try:
        yield
    except Exception:
        if _requested is not None and not _finishing:  # e.g. the cancelled build's error: the stop caused it
            raise Interrupted(_requested) from None
        raise
    finally:
        _held -= 1
    if _requested is not None and _held == 0 and not _finishing:
        raise Interrupted(_requested)


def finishing() -> None:
    """The work is complete: later signals (until `stop_on_signals` is left) are recorded, not raised."""
    global _finishing
    _finishing = True
