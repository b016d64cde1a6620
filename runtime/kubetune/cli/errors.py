"""Exceptions the CLI turns into a one-line message and an exit code instead of a traceback."""


class UserError(Exception):
    """A mistake in the user's input: printed as `kubetune: error: ...`, exit code 1."""

    exit_code = 1
