"""torchrun, with the exit status a job scheduler needs: python launch.py [TORCHRUN OPTIONS] train.py ...

Runs torchrun's launcher (its options, its processes) in this process and ends as one `python
train.py` would: 0 finished (also when a signal came after the last optimizer step), 2 bad
input, 3 diverged, 128 + the signal after a stop that saved the position, or whatever status
train.py ends with, with train.py's one line on stderr, printed once. A process that crashes
ends it with torchrun's report and status 1. Each process records its status and line in a
folder named by TRAIN_OUTCOME_DIR and exits 0 (exit_status.py), so that torchrun sees a failure
only in a crash. With several nodes, every node runs launch.py and every one ends so.

Signals: torchrun starts each process in a session of its own, so a signal to this job's
process group (a terminal's Ctrl-C, `kill -- -PGID`, a batch script's trap) reaches this
launcher alone. It passes every SIGTERM and SIGINT straight on to the processes, which save
their position and stop (a second SIGINT: at once); torchrun's own handling of them (a
traceback, status 1 whatever the processes did, a kill after 30 s) is left out. Before the
processes start (the rendezvous) a signal stops torchrun; once they have ended (torchrun then
waits for the other nodes), it changes nothing.
"""

import argparse
import logging
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from exit_status import LAUNCH_COMMAND_ENV, LAUNCHER_PID_ENV, OUTCOME_DIR_ENV, read_outcomes

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Forwarder:
    """The SIGTERM and SIGINT handler: passes each signal on to the processes that this process
    started (torchrun's processes); while there are none, calls `idle` with it."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.idle: Callable[[int], None] | None = None

    def __call__(self, signal_number: int, frame: FrameType | None) -> None:
        self.received.append(signal_number)
        children = child_processes(os.getpid())
        for pid in children:
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                pass
        if not children and self.idle is not None:
            self.idle(signal_number)


def child_processes(parent: int) -> list[int]:
    """The processes whose parent is `parent` (Linux /proc; empty elsewhere)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == parent:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return children


def leave_stop_signals_to(options: argparse.Namespace) -> None:
    """Take SIGTERM and SIGINT off the signals that torchrun handles (its `--signals_to_handle`;
    versions without the option handle them regardless: torchrun passes them on to the processes
    itself, as SignalException, and their recorded outcomes still decide)."""
    if hasattr(options, "signals_to_handle"):
        kept = [name.strip() for name in options.signals_to_handle.split(",")
                if name.strip() not in ("SIGTERM", "SIGINT")]
        options.signals_to_handle = ",".join(kept) or "SIGHUP"  # torchrun takes no empty list


def stopped_by(failure: object, received: list[int]) -> int | None:
    """The stop signal (SIGTERM, SIGINT: one this launcher passed on, or one sent to the processes
    themselves, as SLURM does) that every failed process died of or exited with 128 + it (a
    second Ctrl-C, or a signal before a process could listen); None: a crash."""
    codes = [failure_.exitcode for failure_ in failure.failures.values()]  # type: ignore[attr-defined]
    for number in dict.fromkeys([*received, *STOP_SIGNALS]):
        if all(code in (-number, 128 + number) for code in codes):
            return number
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    forwarder = Forwarder()
    for number in STOP_SIGNALS:
        signal.signal(number, forwarder)
    # torch's C++ warnings in this process alone (a store's socket errors, each with a C++ stack, as
    # when another node's agent takes the rendezvous store away at the end): off unless asked for
    quiet = "TORCH_CPP_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"  # read once, as torch loads
    from torch.distributed import run as torchrun  # seconds: a signal meanwhile is kept in `received`

    if quiet:
        del os.environ["TORCH_CPP_LOG_LEVEL"]  # the processes keep torch's default

    if forwarder.received:
        return end(128 + forwarder.received[0], f"interrupted by signal {forwarder.received[0]} before training "
                                                "started; nothing was saved")
    options = torchrun.parse_args(args)
    leave_stop_signals_to(options)
    launcher = ["python", "launch.py", *args[: args.index(options.training_script)]]
    with tempfile.TemporaryDirectory(prefix="launch-") as folder:
        os.environ[OUTCOME_DIR_ENV] = folder
        os.environ[LAUNCH_COMMAND_ENV] = shlex.join(launcher)
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
        failure = run_torchrun(torchrun.run, options, forwarder, Path(folder))
        outcomes = read_outcomes(Path(folder))
    return end(*outcome(failure, outcomes, forwarder.received))


def run_torchrun(run: Callable[..., object], options: argparse.Namespace, forwarder: Forwarder,
                 folder: Path) -> Exception | None:
    """Run torchrun's launcher; the ChildFailedError (a process failed) or SignalException
    (torchrun stopped on a signal) it ended with, or None."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

    def stop_torchrun(signal_number: int) -> None:
        if not read_outcomes(folder):  # before the processes started (a rendezvous): torchrun's own stop
            raise SignalException(f"got signal {signal_number}", sigval=signal.Signals(signal_number))
        # after they ended: torchrun waits for the other nodes' processes, whose launchers have their signal

    forwarder.idle = stop_torchrun
    # torchrun's own words on a stop that this launcher passed on ("Received 15 death signal", or
    # "failed (exitcode: -15)" for a process the signal reached before it could listen): the one
    # line launch.py prints says it
    logging.getLogger("torch.distributed.elastic.agent.server.api").addFilter(
        lambda record: "death signal" not in str(record.msg))
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(
        lambda record: not (str(record.msg).startswith("failed (exitcode") and record.args
                            and record.args[0] in [-number for number in STOP_SIGNALS]))
    # once this node's processes have ended, the node that hosts the rendezvous store may finish
    # first and take the store away: the others' exit barrier, keep-alive and shutdown then fail
    # on it (a traceback and warnings, nothing changed), which the outcome line makes moot
    store_gone = ("Error waiting on exit barrier", "has failed to send a keep-alive heartbeat",
                  "has failed to shutdown the rendezvous")

    def keep_while_running(record_: logging.LogRecord) -> bool:
        return not any(words in str(record_.msg) for words in store_gone) or not read_outcomes(folder)

    for name in ("agent.server.api", "rendezvous.dynamic_rendezvous"):
        logging.getLogger(f"torch.distributed.elastic.{name}").addFilter(keep_while_running)
    try:
        record(run)(options)
    except (ChildFailedError, SignalException) as exc:
        return exc
    finally:
        forwarder.idle = None
    return None


def outcome(failure: Exception | None, outcomes: dict[int, tuple[int, str]], received: list[int]) -> tuple[int, str]:
    """The status and line that launch.py ends with; raises `failure` again for a crash (torchrun's
    report, status 1) and for a signal that torchrun handles itself (SIGHUP, SIGQUIT). A process
    that failed after recording its outcome (a late signal) has decided: the outcome stands."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(failure, ChildFailedError) and not set(failure.failures) <= set(outcomes):
        number = stopped_by(failure, received)
        if number is not None:
            return 128 + number, f"interrupted by signal {number}; stopped without saving its position"
        said = (line for _, (_, line) in sorted(outcomes.items()) if line)
        for line in dict.fromkeys(said):  # what the processes that did not crash had to say, once
            print(line, file=sys.stderr)
        raise failure
    if outcomes:
        return outcomes[min(outcomes)]  # every process took the same decision: the lowest rank's words
    if failure is not None:  # torchrun's SignalException
        number = int(failure.sigval)  # type: ignore[attr-defined]
        if number not in STOP_SIGNALS:
            raise failure
        return 128 + number, f"interrupted by signal {number} before training started; nothing was saved"
    return 0, ""  # a script that records no outcome, finished


def end(status: int, line: str) -> int:
    """Print `line` (if any) on stderr; `status`, for sys.exit."""
    if line:
        print(line, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
