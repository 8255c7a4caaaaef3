"""The one exception type webly raises for bad input: the CLI prints it as a single line."""


class WeblyError(Exception):
    """A user-facing error: the message says what was wrong and where (file, line, key)."""
