"""The one base class for failures a user can act on; the CLI prints them as one line, not a stack trace."""


class EarshotError(Exception):
    """An expected failure (bad input, bad settings, a failed check) with a message fit for one line."""
