"""
What the client library raises: the cluster refused a command, refused the
password, or could not be reached.  Programs built on the library (sns-client,
sns-web, the benchmarks) catch these, never a transport's errors.
"""


class CommandFailed(Exception):
    """The cluster refused a command: C{code} is its L{snstwist.core.errors.Status}."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidPassword(CommandFailed):
    """The cluster refused the user's password."""


class ClusterUnreachable(Exception):
    """No router or no master could be reached."""
