"""The storage layer's error, one of the KubetuneError family."""

from kubetune.errors import StorageError

__all__ = ["StorageError"]
