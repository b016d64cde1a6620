"""The one error type of the storage layer."""


class StorageError(Exception):
    """A URI that cannot be resolved or transferred; the message names it (and never a credential)."""
