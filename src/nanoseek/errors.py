"""``NanoseekError``: the one user-facing error type of nanoseek."""


class NanoseekError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name.

    The CLI prints its message on one line (no traceback) and exits with status 2.
    """
