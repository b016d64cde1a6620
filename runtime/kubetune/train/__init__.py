"""The training engine behind `kubetune train`."""
