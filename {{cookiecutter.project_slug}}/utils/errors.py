"""The exceptions that end a run with a status of its own (InputError, a mistake in what the user
gave us: 2; a stop on a signal: 128 + signal; a diverged loss: 3; a full disk: 4), and the one-line
reason of any exception."""

import difflib


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its class name when it has none: a reason that
    fits in a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def listed(names: list[str], limit: int | None = 10) -> str:
    """`names` joined by commas for a message, the first `limit` of them (all with None) and
    the count when there are more."""
    if limit is None or len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


def did_you_mean(word: str, choices: list[str]) -> str:
    """`; did you mean 'AdamW'?` for the choice closest to `word` (case aside), or ""."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.75)
    return f"; did you mean '{by_lower[close[0]]}'?" if close else ""


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
    is written; train.py prints one line and exits with EXIT_STATUS. `bad_samples`: the
    dataset indices of that batch's samples whose data were already NaN or infinite (then the
    data, not the learning rate, are to blame)."""

    EXIT_STATUS = 3

    def __init__(self, epoch: int, batch: int, batches: int, last_good: str | None,
                 bad_samples: list[int] | None = None) -> None:
        resume = (f"the last good checkpoint is {last_good}" if last_good is not None
                  else "no checkpoint of this run was written")
        where = f"training diverged: the loss is NaN or infinite in epoch {epoch} at batch {batch} of {batches}"
        if bad_samples:
            shown = ", ".join(map(str, bad_samples[:5])) + (", ..." if len(bad_samples) > 5 else "")
            message = (f"{where}, and the data of that batch already hold NaN or infinite values "
                       f"(dataset samples {shown}): check the data; {resume}")
        else:
            message = f"{where}; {resume}; try a lower 'optimizer.args.lr' or set 'trainer.clip_grad_norm'"
        super().__init__(message)
        self.bad_samples = bad_samples or []


class DiskFull(Exception):
    """No space left on a file system, or the disk quota reached, while writing `file` of a run.
    A save stages every file before it replaces any (utils/staged_files.py), so the run folder is
    as the last complete save left it, resumable from `checkpoint` once there is space. train.py
    prints one line and exits with EXIT_STATUS: a job script can tell it from a crash (1) and
    from bad input (2), and knows that requeueing alone will not help."""

    EXIT_STATUS = 4

    def __init__(self, problem: str, file: str, checkpoint: str | None = None) -> None:
        """`problem`: e.g. `no space left on /scratch (/dev/sdb1)`."""
        super().__init__(problem, file, checkpoint)
        self.problem, self.file, self.checkpoint = problem, file, checkpoint

    def __str__(self) -> str:
        then = (f"the run can be resumed from {self.checkpoint} once there is space" if self.checkpoint
                else "no checkpoint of this run was written")
        return f"{self.problem} writing {self.file}; {then}"

    def resumable_from(self, checkpoint: str | None) -> "DiskFull":
        """The same failure, naming the checkpoint the run can be resumed from."""
        return DiskFull(self.problem, self.file, checkpoint)
