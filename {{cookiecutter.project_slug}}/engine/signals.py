"""SIGINT and SIGTERM as a request to stop, for the training process and its data workers.

Schedulers (SLURM at its time limit, `scancel`, Kubernetes) and a terminal's Ctrl-C signal
every process of a job, DataLoader workers included, and a process may get the same signal
more than once (SLURM signals every process of a step and torchrun forwards it again). So:

- the training process turns the first SIGINT or SIGTERM into a request that the trainer reads
  between batches; repeated SIGTERMs are the same request; a second SIGINT (a user's double
  Ctrl-C) ends the process at once, without saving or cleaning up (`end_now`);
- DataLoader worker processes ignore both: the training process decides when to stop, and a
  worker killed under it would turn a clean stop into a crash. Workers are started with the
  signals blocked, so that none lands in the moment before a worker has set itself to ignore it.
"""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

import exit_status

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The signal that asked this process to stop (None: none did). `listening()` installs
    the handlers for the duration of a block; nested blocks share the outermost one's state."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._depth = 0

    def pending(self) -> int | None:
        """The signal that asked to stop, inside a `listening()` block (None outside one: a
        signal there is not recorded, and `signal_number` may be an earlier block's)."""
        return self.signal_number if self._depth else None

    def _handle(self, signal_number: int, frame: FrameType | None) -> None:
        if self.signal_number is None:
            self.signal_number = signal_number
        elif signal_number == signal.SIGINT:  # pressed twice: the user wants out now
            line = f"interrupted by signal {signal_number} twice; stopped at once, without saving its position"
            end_now(exit_status.finish(128 + signal_number, line, show=os.environ.get("RANK", "0") == "0"))
        # a repeated SIGTERM is the same request: already being handled

    @contextmanager
    def listening(self) -> Iterator["StopRequest"]:
        """Record SIGINT and SIGTERM instead of dying of them, inside this block (main thread
        only: elsewhere signals cannot be handled and the block changes nothing)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        if self._depth == 0:
            self.signal_number = exit_status.early_signal  # under torchrun: one kept from the start-up
            exit_status.early_signal = None
            previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                for number, handler in previous.items():
                    signal.signal(number, handler)


def end_now(status: int) -> NoReturn:
    """End the process with `status` at once, with no clean-up: an exception raised from a
    signal handler lands at any point of the program, inside a data loader's queue between
    taking a lock and the block that releases it among them, and the clean-up that then needs
    that lock waits for ever. What this skips is safe to skip: files are only ever renamed into
    place whole (an unfinished `.NAME.XXXX.tmp` can stay), the run folder's lock goes with the
    process, and data loader workers end once they see their parent gone."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


stop_request = StopRequest()  # the process's one; train.py and the trainer listen through it


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while processes are started (they inherit the blocked
    mask); signals that arrive meanwhile are delivered when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals() -> None:
    """In a DataLoader worker: ignore SIGINT and SIGTERM, then take back the block it was
    started with (a signal that arrived meanwhile is now discarded)."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
