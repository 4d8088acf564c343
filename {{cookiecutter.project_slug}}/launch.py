"""torchrun, with the exit status a job scheduler needs: python launch.py [TORCHRUN OPTIONS] train.py ...

torchrun exits 1 with its own traceback when it is sent SIGTERM, whatever its workers did, so a
job script cannot tell "stopped and saved, requeue me" from a crash. This wrapper runs torchrun
and ends with 128 + the signal (143 for SIGTERM, 130 for SIGINT) when training stopped on a
signal after saving its position (rank 0 says so in a file named by TRAIN_STOP_REPORT), and
with torchrun's own status otherwise.

Signals: torchrun runs in a session of its own, so a signal to this job's process group (a
terminal's Ctrl-C, `kill -- -PGID`, a batch script's trap) reaches this wrapper alone, which
passes the first SIGTERM or SIGINT on to torchrun exactly once; torchrun hands it to its
workers, which save and stop. Repeated SIGTERMs are the same request; a second SIGINT is passed
on too, and makes the workers exit at once.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

STOP_REPORT_ENV = "TRAIN_STOP_REPORT"  # the variable train.py reads (train.STOP_REPORT_ENV)


class Forwarder:
    """Passes SIGTERM and SIGINT on to the torchrun process: the first one, and a second SIGINT."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.forwarded: list[int] = []

    def __call__(self, signal_number: int, frame: FrameType | None) -> None:
        if self.forwarded and not (signal_number == signal.SIGINT and len(self.forwarded) == 1):
            return
        self.forwarded.append(signal_number)
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
        if len(self.forwarded) == 2:  # a double Ctrl-C reaches each worker's own process group too
            for pid in descendants(self.process.pid):
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass


def descendants(root: int) -> list[int]:
    """Every process below `root` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    with tempfile.TemporaryDirectory(prefix="launch-") as folder:
        report = Path(folder) / "stopped.json"
        env = dict(os.environ, **{STOP_REPORT_ENV: str(report)})
        command = [sys.executable, "-m", "torch.distributed.run", *args]
        process = subprocess.Popen(command, env=env, start_new_session=True)
        forwarder = Forwarder(process)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, forwarder)
        status = process.wait()
        if report.is_file():
            stopped = json.loads(report.read_text())
            launcher_options = args[: next((i for i, arg in enumerate(args) if arg.endswith(".py")), len(args))]
            print(f"interrupted by signal {stopped['signal']}; resume with: python launch.py "
                  f"{' '.join(launcher_options)} train.py -r {stopped['checkpoint']}", file=sys.stderr)
            return 128 + int(stopped["signal"])
        return status if status >= 0 else 128 - status  # killed by a signal: as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
