"""
Domain errors, and the one table that maps each to the status of a failed
call.

Domain code raises these; only the gRPC edge (grpcbridge) turns them into
gRPC statuses, and a failed call into a L{RemoteError}; only the CLI turns
statuses into the course client's sentences.  Nothing here knows gRPC.
"""

import enum


class Status(enum.Enum):
    """
    How a call failed.  The names and numbers are gRPC's status codes, which
    is what crosses the wire; L{snstwist.rpc.grpcbridge} converts by name.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class SNSError(Exception):
    """Base of every error a caller is meant to see."""

    def __init__(self, message=None):
        super().__init__(message or self.__doc__.strip())

    @property
    def message(self):
        return self.args[0]


class InvalidUsername(SNSError):
    """Usernames are 1-32 characters of A-Z, a-z, 0-9, '_', '.' and '-'."""


class FollowSelf(SNSError):
    """You can not follow or unfollow yourself."""


class InvalidPost(SNSError):
    """A post is 1-1000 characters of UTF-8 text."""


class InvalidRequest(SNSError):
    """The request is malformed."""


class InvalidPassword(SNSError):
    """A password is 1-256 characters."""


class WrongPassword(SNSError):
    """Invalid password."""


class UnknownUser(SNSError):
    """No such user."""


class AlreadyFollowing(SNSError):
    """You already follow that user."""


class NotFollowing(SNSError):
    """You do not follow that user."""


class TooManyFollows(SNSError):
    """You follow as many users as one may: unfollow one first."""


class NotMaster(SNSError):
    """This server is not the master of its VM."""


class NoMasterAvailable(SNSError):
    """No live master server is registered with the router."""


class NotBuddy(SNSError):
    """This server has no buddy to talk to."""


class PermissionDenied(SNSError):
    """Wrong or missing cluster secret."""


class NotLoggedIn(SNSError):
    """Missing or invalid session token: call Login first."""


class TooMany(SNSError):
    """Too many values: a bound on a count was reached."""


class Overloaded(SNSError):
    """Too many requests in flight; try again."""


class TooManySessions(SNSError):
    """Too many live sessions (of this user, or from this address) on this master."""


class StorageFailed(SNSError):
    """
    This VM can not write to its disk (full, or no file descriptors left).
    A write refused with it was not applied; one in flight when the disk
    failed is kept and stored once the disk takes writes again, so its
    outcome is unknown to the client, whose retry (same request id) is
    applied once.
    """


class DataDamaged(SNSError):
    """A file of the VM's data directory is damaged."""


class RateLimited(Overloaded):
    """Too many requests; slow down."""


class RemoteError(SNSError):
    """
    A call to another process failed: C{status} (a L{Status}) says how,
    C{message} is what the other side said (or the status's name).
    """

    def __init__(self, status, message=""):
        super().__init__(message or status.name)
        self.status = status


_STATUS = {
    InvalidUsername: Status.INVALID_ARGUMENT,
    FollowSelf: Status.INVALID_ARGUMENT,
    InvalidPost: Status.INVALID_ARGUMENT,
    InvalidRequest: Status.INVALID_ARGUMENT,
    InvalidPassword: Status.INVALID_ARGUMENT,
    WrongPassword: Status.UNAUTHENTICATED,
    UnknownUser: Status.NOT_FOUND,
    AlreadyFollowing: Status.ALREADY_EXISTS,
    NotFollowing: Status.FAILED_PRECONDITION,
    TooManyFollows: Status.FAILED_PRECONDITION,
    NotMaster: Status.UNAVAILABLE,
    NoMasterAvailable: Status.UNAVAILABLE,
    NotBuddy: Status.FAILED_PRECONDITION,
    PermissionDenied: Status.PERMISSION_DENIED,
    NotLoggedIn: Status.UNAUTHENTICATED,
    TooMany: Status.RESOURCE_EXHAUSTED,
    Overloaded: Status.RESOURCE_EXHAUSTED,
    TooManySessions: Status.RESOURCE_EXHAUSTED,
    StorageFailed: Status.UNAVAILABLE,
}


def statusFor(exc):
    """The (L{Status}, message) answering C{exc}."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls], exc.message
    return Status.INTERNAL, "internal error"
