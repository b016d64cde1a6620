"""The training engine's error, one of the KubetuneError family."""

from kubetune.errors import TrainError

__all__ = ["TrainError"]
