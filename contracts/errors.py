"""The one exception type a user can cause: the CLI prints its message as one line, no traceback."""


class CnnserveError(Exception):
    """A problem with the user's input or environment; the message says what to do."""
