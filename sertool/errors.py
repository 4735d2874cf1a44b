"""The one exception type the CLI turns into a clear message instead of a traceback."""


class SertoolError(Exception):
    """A problem the user can fix: bad input, a bad flag, a missing file.

    The message must name the file, row or flag involved and say what to do. The CLI prints it as
    ``error: <message>`` and exits with status 2; anything else escaping a command is a bug.
    """
