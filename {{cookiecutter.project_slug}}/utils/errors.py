"""The one exception type for mistakes in what the user gave us."""


class InputError(Exception):
    """A bad CLI argument, config value, checkpoint or data path.

    The entry points print its message as one line on stderr and exit with status 2,
    without a traceback: the message must name the key or file, the bad value and
    what is expected. Bugs in user code are *not* InputErrors and keep their traceback.
    """


class TrainingInterrupted(Exception):
    """Training stopped on a signal (SIGINT, SIGTERM) after saving `latest.pth`; train.py exits
    with 128 + the signal number, as a shell reports a process killed by that signal."""

    def __init__(self, signal_number: int, checkpoint: str) -> None:
        super().__init__(f"interrupted by signal {signal_number}; resume with: python train.py -r {checkpoint}")
        self.signal_number = signal_number
