"""Graceful stops: SIGTERM and Ctrl-C (SIGINT) finish the step, save, and exit.

Inside `graceful()`, the first SIGTERM or SIGINT only sets a flag, which the
train loop reads once per step: it then saves a checkpoint of the step it has
just finished and returns normally (exit code 0), so a preempted or
interrupted run loses nothing. A second Ctrl-C raises `KeyboardInterrupt` at
once, for a user who does not want to wait for the step and the save; the run
then resumes from its previous checkpoint. Further SIGTERMs change nothing (a
preemption's grace period ends in SIGKILL anyway).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}


class StopRequest:
    """Whether a stop was requested, and by which signal."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: signal.Signals | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
        self._event.set()

    @property
    def name(self) -> str:
        return NAMES.get(self.signal, str(self.signal)) if self.signal else ""


def _write_stderr(text: str) -> None:
    # os.write: a handler may run while sys.stderr is mid-write, and the
    # buffered stream is not reentrant.
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


@contextlib.contextmanager
def graceful(
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> Iterator[StopRequest]:
    """Turns `signals` into a stop request while inside the block.

    Outside the main thread (where Python delivers no signals) the request is
    never set by a signal; the previous handlers are restored on exit.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, _frame: object) -> None:
        if request.is_set():
            if signum == signal.SIGINT:
                _write_stderr("\nsecond Ctrl-C: stopping now, without saving this step\n")
                raise KeyboardInterrupt
            return
        request.set(signum)
        again = "; press Ctrl-C again to stop at once" if signal.SIGINT in signals else ""
        _write_stderr(
            f"\n{request.name}: stopping after this step with a checkpoint{again}\n")

    previous = {s: signal.signal(s, handle) for s in signals}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
