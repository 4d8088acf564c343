"""Ctrl-C (SIGINT) where there is nothing to save: while a script imports torch, during test.py,
during a dry run. Each ends at once with one line and status 130, without a traceback. (A
signal during training saves the position: tests/test_resume.py.)"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import train
from parse_config import ConfigParser

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [script for script in ("train.py", "test.py", "sweep.py") if (PROJECT_ROOT / script).is_file()]
INTERRUPTED = "interrupted by signal 2; nothing was written"

# A model whose forward takes a while: the fit check runs it first, saying so on stdout.
SLOW_MODEL = '''

class SlowModel(MnistModel):
    """MnistModel with a slow forward (5 s), announced on stdout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        print("forward", flush=True)
        time.sleep(5)
        return super().forward(x)
'''


class Script:
    """`python ARGS` in `project`, in a session of its own (so that it can be sent a terminal's
    Ctrl-C), with its stdout and stderr collected as they come."""

    def __init__(self, project: Path, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, *args], cwd=project, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True,
                                        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=lambda s=stream, i=into: i.extend(iter(s.readline, "")), daemon=True).start()

    def wait_for(self, found: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not found():
            assert self.process.poll() is None, "".join(self.err)[-2000:]
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)

    def interrupt(self) -> tuple[int, list[str], str]:
        """Ctrl-C; the exit status, stderr's lines (without `-X importtime`'s) and stdout."""
        os.killpg(self.process.pid, signal.SIGINT)
        status = self.process.wait(timeout=60)
        time.sleep(0.1)  # the readers take the last lines
        lines = [line.rstrip("\n") for line in self.err if not line.startswith("import time:")]
        return status, lines, "".join(self.out)


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_while_torch_is_imported_is_one_line(script: str) -> None:
    job = Script(PROJECT_ROOT, "-X", "importtime", script, "-c", "no-such-config.json")
    job.wait_for(lambda: any(line.split("|")[-1].strip().startswith("torch.") for line in job.err))  # in `import torch`
    status, lines, _ = job.interrupt()
    assert (status, lines) == (130, [INTERRUPTED])


@pytest.fixture(scope="module")
def slow_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project's code, copied, with SlowModel added to model/model.py."""
    def skipped(folder: str, names: list[str]) -> list[str]:
        return [name for name in names if name in {"__pycache__", ".git", ".venv", "data", "saved", "tests"}]

    project = Path(shutil.copytree(PROJECT_ROOT, tmp_path_factory.mktemp("slow") / "project", ignore=skipped))
    with (project / "model" / "model.py").open("a") as file:
        file.write(SLOW_MODEL)
    return project


def test_ctrl_c_stops_a_dry_run(slow_project: Path, make_config: Callable[..., dict[str, Any]],
                                tmp_path: Path) -> None:
    config = tmp_path / "slow.json"
    config.write_text(json.dumps(make_config(arch={"type": "SlowModel", "args": {}})))
    job = Script(slow_project, "train.py", "-c", str(config), "--dry-run")
    job.wait_for(lambda: "forward\n" in job.out)
    started = time.monotonic()
    status, lines, out = job.interrupt()
    assert (status, lines) == (130, [INTERRUPTED]) and "dry run passed" not in out
    assert time.monotonic() - started < 4  # at once, not after the slow step
    assert not (tmp_path / "saved").exists()


def test_ctrl_c_during_test_py_is_one_line(slow_project: Path, make_config: Callable[..., dict[str, Any]],
                                           tmp_path: Path) -> None:
    parser = ConfigParser(make_config(trainer__epochs=1), run_id="run")
    train.train(parser)
    assert parser.run_dir is not None
    checkpoint = torch.load(parser.run_dir / "latest.pth", weights_only=True)
    checkpoint["arch"] = checkpoint["config"]["arch"]["type"] = "SlowModel"  # the same weights
    torch.save(checkpoint, tmp_path / "slow.pth")
    job = Script(slow_project, "test.py", "-r", str(tmp_path / "slow.pth"))
    job.wait_for(lambda: "forward\n" in job.out)
    status, lines, _ = job.interrupt()
    assert (status, lines) == (130, [INTERRUPTED])


@pytest.mark.parametrize("redirect", ["2>&-", ">&-", "| head -n 1", ">/dev/full"])
def test_a_closed_broken_or_full_output_stream_changes_nothing(
    make_config: Callable[..., dict[str, Any]], tmp_path: Path, redirect: str,
) -> None:
    """stdout or stderr closed (`2>&-`), a pipe whose reader left (`| head`), a full device: the
    run trains and saves as with a terminal, with no traceback for its log lines or bars."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(make_config(trainer__epochs=1, trainer__verbosity=2)))
    command = f"{shlex.quote(sys.executable)} train.py -c {shlex.quote(str(config))} --run-id out {redirect}"
    errors = tmp_path / "stderr.txt"
    if "2>" not in redirect:
        command += f" 2>{shlex.quote(str(errors))}"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    said = errors.read_text() if errors.exists() else ""
    assert "Traceback" not in said and "Error" not in said and "Exception ignored" not in said, said[-2000:]
    assert (tmp_path / "saved" / "Mnist_LeNet" / "out" / "latest.pth").is_file()


SECOND_CTRL_C = """
import atexit, os, signal, time
from engine.signals import stop_request

atexit.register(time.sleep, 600)  # a clean-up that never ends, as one that waits for a lock does
with stop_request.listening():
    os.kill(os.getpid(), signal.SIGINT)  # the first: a request to stop, recorded
    time.sleep(0.2)
    assert stop_request.pending() == signal.SIGINT
    os.kill(os.getpid(), signal.SIGINT)  # the second: out, now
    time.sleep(600)
"""


def test_a_second_ctrl_c_ends_the_process_without_its_clean_up() -> None:
    """A second SIGINT ends the process there and then: raising an exception from the signal
    handler (SystemExit) ran the clean-up, which can wait for ever for a lock that the exception
    left held (seen once: a double Ctrl-C with data loader workers, on a loaded machine, never ended)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SECOND_CTRL_C], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (
        130, "interrupted by signal 2 twice; stopped at once, without saving its position\n"), done.stderr
    assert time.monotonic() - started < 30
