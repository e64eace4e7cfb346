"""
Domain errors, and the one table that maps each to a gRPC status.

Domain code raises these; only the gRPC edge (grpcbridge) turns them into
statuses, and only the CLI turns statuses into the course client's sentences.
"""

import grpc


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


class UnknownUser(SNSError):
    """No such user."""


class AlreadyFollowing(SNSError):
    """You already follow that user."""


class NotFollowing(SNSError):
    """You do not follow that user."""


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


class Overloaded(SNSError):
    """Too many requests in flight; try again."""


_STATUS = {
    InvalidUsername: grpc.StatusCode.INVALID_ARGUMENT,
    FollowSelf: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidPost: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownUser: grpc.StatusCode.NOT_FOUND,
    AlreadyFollowing: grpc.StatusCode.ALREADY_EXISTS,
    NotFollowing: grpc.StatusCode.FAILED_PRECONDITION,
    NotMaster: grpc.StatusCode.UNAVAILABLE,
    NoMasterAvailable: grpc.StatusCode.UNAVAILABLE,
    NotBuddy: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotLoggedIn: grpc.StatusCode.UNAUTHENTICATED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def statusFor(exc):
    """The (grpc.StatusCode, message) answering C{exc}."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls], exc.message
    return grpc.StatusCode.INTERNAL, "internal error"
