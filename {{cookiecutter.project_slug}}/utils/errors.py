"""The one exception type for mistakes in what the user gave us."""


class InputError(Exception):
    """A bad CLI argument, config value, checkpoint or data path.

    The entry points print its message as one line on stderr and exit with status 2,
    without a traceback: the message must name the key or file, the bad value and
    what is expected. Bugs in user code are *not* InputErrors and keep their traceback.
    """
