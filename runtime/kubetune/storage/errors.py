"""The storage layer's errors, of the KubetuneError family: StorageError for what the user must fix (a missing
object, a bad URI, refused credentials), StorageUnavailable for an outage that may pass."""

from kubetune.errors import StorageError, StorageUnavailable

__all__ = ["StorageError", "StorageUnavailable"]
