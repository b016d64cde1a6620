"""Exceptions the CLI turns into a one-line message and an exit code instead of a traceback."""


class UserError(Exception):
    """A mistake in the user's input: printed as `kubetune: error: ...`, exit code 1."""

    exit_code = 1


class NotAvailable(UserError):
    """A mode this version does not implement yet: said plainly, exit code 2."""

    exit_code = 2

    def __init__(self, mode: str, issue: int, what: str):
        super().__init__(f"'{mode}' is not available yet in kubetune {_version()}: {what} lands with issue #{issue}")


def _version() -> str:
    from kubetune import __version__

    return __version__
