"""What the CLI raises for a user's mistake; kubetune/cli/main.py prints every KubetuneError in one line."""

from kubetune.errors import KubetuneError, UserError

__all__ = ["KubetuneError", "UserError"]
