"""How the entry points (train.py, test.py, ...) end: an exit status that a job script can act
on, and at most one line on stderr that says why (the statuses: docs/exit-status.md).

Under launch.py, which names a folder in OUTCOME_DIR_ENV, every process records its status and
line there and exits 0; launch.py then prints the line once and ends with the status. torchrun's
own status only says whether some process failed, and its report of a failed process belongs to
crashes.

Standard library only: the entry points import this module before anything else, so that a
Ctrl-C or SIGTERM in the seconds that their other imports take (torch) ends the process at once
with one line instead of a traceback. main() takes signals over from there.
"""

import atexit
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

OUTCOME_DIR_ENV = "TRAIN_OUTCOME_DIR"  # set by launch.py: the folder its processes record their outcomes in
LAUNCH_COMMAND_ENV = "TRAIN_LAUNCH_COMMAND"  # set by launch.py: its command, for the line that says how to resume
LAUNCHER_PID_ENV = "TRAIN_LAUNCHER_PID"  # set by launch.py: its process id (its processes stop when it dies)

_decided = False  # finish() was called: the outcome stands, whatever signal comes now
# Under torchrun: a SIGINT or SIGTERM that came before main() listened. It is kept, not acted on,
# until the processes have met (engine/signals.py's listening() takes it over): a process that
# ended at once would leave the others waiting for it in their start-up for half an hour.
early_signal: int | None = None


def finish(status: int, line: str, show: bool = True) -> int:
    """End with `status` and `line` ("": nothing to say); returns the status for sys.exit.
    `show`: whether this process prints (under torchrun, rank 0 alone). Under launch.py the
    process records both for launch.py instead and returns 0. From here on a SIGINT or SIGTERM
    that reaches the start-up handler changes nothing."""
    global _decided
    _decided = True
    folder = os.environ.get(OUTCOME_DIR_ENV)
    if folder:
        try:
            record = Path(folder) / f"rank{os.environ.get('RANK', '0')}.json"
            record.write_text(json.dumps({"status": status, "line": line}))
            return 0
        except OSError:
            pass  # unrecorded: this process's own status and line, as without launch.py
    if line and show:
        print(line, file=sys.stderr)
    return status


def read_outcomes(folder: Path) -> dict[int, tuple[int, str]]:
    """The (status, line) that each process recorded in `folder` with finish(), by rank; a
    record that a kill cut short is left out."""
    outcomes = {}
    for path in folder.glob("rank*.json"):
        try:
            record = json.loads(path.read_text())
            outcomes[int(path.stem.removeprefix("rank"))] = (int(record["status"]), str(record["line"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return outcomes


def _launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _end_at_once(signal_number: int, frame: FrameType | None) -> None:
    """SIGINT or SIGTERM before main() listens for it: nothing is running that could save, so end
    now with one line. Under torchrun the first one is kept instead (`early_signal`), and acted
    on by every process together once they have met; a second SIGINT ends at once."""
    global early_signal
    if _decided:
        return
    if _launched_by_torchrun() and early_signal is None:
        early_signal = signal_number
        return
    line = f"interrupted by signal {signal_number}; nothing was written"
    sys.exit(finish(128 + signal_number, line, show=os.environ.get("RANK", "0") == "0"))


def _runs_an_entry_point() -> bool:
    """Whether this process runs one of the project's scripts (`python train.py`, torchrun's
    processes), rather than a test or a notebook that imports it and keeps its own handlers."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    return script is not None and Path(script).resolve().parent == Path(__file__).resolve().parent


def _ignore_late_signals() -> None:
    """At exit: ignore SIGINT and SIGTERM, which Python would otherwise reset to their default
    (death, and another exit status) while it finalizes."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)


def _stop_with_the_launcher() -> None:
    """Under launch.py, on Linux: have the kernel send this process SIGTERM when launch.py dies,
    however it dies (kill -9 of the job's process group included: torchrun starts its processes
    in sessions of their own, out of that group), so that training saves its position and stops
    instead of running on unseen. A launcher already gone by now is the same signal."""
    if sys.platform != "linux" or not os.environ.get(OUTCOME_DIR_ENV):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and launcher.isdigit() and os.getppid() != int(launcher):
        os.kill(os.getpid(), signal.SIGTERM)


def _writable_std_streams() -> None:
    """A script started with stdout or stderr closed (`2>&-`) gets them as None: write into
    nothing rather than fail at the first progress bar or log line."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - for the life of the process


if _runs_an_entry_point() and threading.current_thread() is threading.main_thread():
    _writable_std_streams()
    for _number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_number, _end_at_once)
    atexit.register(_ignore_late_signals)
    _stop_with_the_launcher()
