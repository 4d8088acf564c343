"""The exceptions that end a run with a known exit status (InputError: a mistake in what the
user gave us), and the one-line reason of any exception."""


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its class name when it has none: a reason that
    fits in a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class InputError(Exception):
    """A bad CLI argument, config value, checkpoint or data path.

    The entry points print its message as one line on stderr and exit with status 2,
    without a traceback: the message must name the key or file, the bad value and
    what is expected. Bugs in user code are *not* InputErrors and keep their traceback.
    """

    EXIT_STATUS = 2


def exit_status_of(exc: BaseException) -> int | None:
    """The exit status that `exc` ends an entry point with, printed as one `error:` line: its
    class's EXIT_STATUS (InputError 2, TrainingDiverged 3); None for any other exception, a bug
    that keeps its traceback."""
    status = getattr(type(exc), "EXIT_STATUS", None)
    return status if isinstance(status, int) else None


class TrainingInterrupted(Exception):
    """Training stopped on a signal (SIGINT, SIGTERM) after saving `latest.pth`; train.py exits
    with 128 + the signal number, as a shell reports a process killed by that signal."""

    def __init__(self, signal_number: int, checkpoint: str | None) -> None:
        if checkpoint is None:
            message = f"interrupted by signal {signal_number} before training started; nothing was saved"
        else:
            message = f"interrupted by signal {signal_number}; resume with: python train.py -r {checkpoint}"
        super().__init__(message)
        self.signal_number = signal_number
        self.checkpoint = checkpoint


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite. No checkpoint holding the weights it produced
    is written; train.py prints one line and exits with EXIT_STATUS."""

    EXIT_STATUS = 3

    def __init__(self, epoch: int, batch: int, batches: int, last_good: str | None) -> None:
        resume = (f"the last good checkpoint is {last_good}" if last_good is not None
                  else "no checkpoint of this run was written")
        super().__init__(
            f"training diverged: the loss is NaN or infinite in epoch {epoch} at batch {batch} of {batches}; "
            f"{resume}; try a lower 'optimizer.args.lr' or set 'trainer.clip_grad_norm'"
        )
