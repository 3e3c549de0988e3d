"""Signal handling shared by training, tracking and sweeps.

Ctrl-C, SIGTERM (a scheduler, `kill`) and SIGHUP (a closed SSH session) all stop a run as
Ctrl-C does: the run ends KILLED and a sweep gives its trials back.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signal_handlers(
    signums: tuple[int, ...], handler: Callable[[int, FrameType | None], object]
) -> Iterator[None]:
    """`handler` for `signums` inside the block, the previous handlers restored after it.

    A signal the process was started ignoring stays ignored: `nohup` ignores SIGHUP so that a
    run outlives its terminal, and a shell without job control starts a background command
    with SIGINT ignored, so that the Ctrl-C meant for the foreground leaves it running. Only
    the main thread receives signals (and may set handlers): elsewhere, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = [signum for signum in signums if signal.getsignal(signum) is not signal.SIG_IGN]
    previous = [signal.signal(signum, handler) for signum in handled]
    try:
        yield
    finally:
        for signum, restored in zip(handled, previous, strict=True):
            signal.signal(signum, restored)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C, SIGTERM or SIGHUP that arrives inside the block until it ends, then
    deliver it to the handler it was meant for (training's holds a first stop until its
    update ends; a second stops it).

    Used around `create_run` (interrupted after the store wrote the run but before it
    returned, we would never learn the run's id to mark it KILLED) and around each write to a
    database or a file: cut mid-transaction, SQLite kept the write lock on the connection,
    and every later write of the process, its run's end included, failed 'database is
    locked'.
    """
    caught: list[int] = []
    with signal_handlers(STOPS, lambda signum, _: caught.append(signum)):
        yield
    for signum in caught:
        signal.raise_signal(signum)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM or SIGHUP inside the block raises KeyboardInterrupt, as Ctrl-C does.

    The default action of both ends the process on the spot: its run would stay RUNNING,
    its buffered metrics unwritten.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with signal_handlers(STOPS[1:], interrupt):  # Ctrl-C raises it already
        yield


class StopAfterUpdate:
    """Handler for Ctrl-C and SIGTERM during training: the first is held until the update in
    progress ends, so that the checkpoint written on the way out holds whole updates; a
    second one stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {signum}")
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {self.signum}")
