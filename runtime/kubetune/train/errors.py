"""The training engine's one error type."""


class TrainError(Exception):
    """A configuration, checkpoint or run this engine cannot go on with, explained in one line."""
