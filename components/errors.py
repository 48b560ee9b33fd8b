"""The one base class for failures a user can act on; the CLI prints them as one line, not a stack trace."""

# Control characters in a message come from outside (file names, CSV cells); escaped, as repr() writes them.
_ESCAPED = {code: repr(chr(code))[1:-1] for code in [*range(32), 127]}


class EarshotError(Exception):
    """An expected failure (bad input, bad settings, a failed check) with a message fit for one line.

    A file name or cell holding a newline must not break that line, so control characters are escaped.
    """

    # Bad input or a refused model fails the same way however often it is retried; a subclass for a fault that
    # may pass (a store that is down) sets this, and the flows retry it later.
    transient = False

    def __init__(self, message: str, *args: object) -> None:
        super().__init__(str(message).translate(_ESCAPED), *args)
