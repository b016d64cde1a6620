"""The one family of errors kubetune explains in a line: `kubetune: error: <message>` and the exit code, never a
traceback. Every layer raises its own kind (each package's errors module subclasses these); the CLI catches
`KubetuneError` once (kubetune/cli/main.py). Anything else that escapes is a bug and keeps its traceback."""

from __future__ import annotations


class KubetuneError(Exception):
    """A failure the user can act on, said in one line that names the field, file or row."""

    exit_code = 1


class UserError(KubetuneError):
    """A mistake in the command line, a config or a manifest."""


class DataError(KubetuneError):
    """A dataset that cannot be read or does not fit its format (names the file and row)."""


class StorageError(KubetuneError):
    """A URI that cannot be resolved or transferred; the message names it (and never a credential)."""


class ModelLoadError(KubetuneError):
    """A model, tokenizer or adapter that cannot be loaded as asked."""


class TrainError(KubetuneError):
    """A configuration, checkpoint or run the training engine cannot go on with."""


class ConvertError(KubetuneError):
    """A checkpoint, adapter or model that cannot be converted, merged or split."""
