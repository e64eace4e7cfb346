"""
The cluster's shared secret and client session tokens.

Every router and server of a cluster shares one secret: cluster-internal
RPCs, and the operators' views (C{Status}, C{Digest}), need it in the
C{x-sns-secret} metadata.  There is no default: a process given none refuses
to start and says how to give one.  Login hands a client a token that names
its user, signed with a key derived from the secret, so that any master of
the cluster can check it and a session can act only as the user it logged
in as.
"""

import hashlib
import hmac
import os

from snstwist import errors
from snstwist.grpcbridge import SECRET_METADATA, SESSION_METADATA

MIN_SECRET_CHARS = 16

HOW_TO_GIVE_A_SECRET = (
    "give the cluster's shared secret with --secret-file FILE or $SNS_SECRET"
    " (make one with: openssl rand -hex 32 > FILE; sns-cluster writes one to"
    " DIR/secret)")


class MissingSecret(ValueError):
    """No usable cluster secret was given."""


def loadSecret(path=None, environ=None):
    """
    The secret from the file C{path}, else from $SNS_SECRET.  Raises
    L{MissingSecret} (with a sentence saying how to give one) when there is
    none, or when it is too short to be a secret.
    """
    environ = os.environ if environ is None else environ
    if path:
        try:
            with open(path) as f:
                secret = f.read().strip()
        except OSError as e:
            raise MissingSecret("cannot read the secret file %s (%s): %s"
                                % (path, e.strerror, HOW_TO_GIVE_A_SECRET))
        where = "the secret file %s" % (path,)
    else:
        secret = environ.get("SNS_SECRET", "").strip()
        where = "$SNS_SECRET"
        if not secret:
            raise MissingSecret("no cluster secret: " + HOW_TO_GIVE_A_SECRET)
    if len(secret) < MIN_SECRET_CHARS:
        raise MissingSecret("%s holds %d characters; a secret has at least %d: %s"
                            % (where, len(secret), MIN_SECRET_CHARS, HOW_TO_GIVE_A_SECRET))
    return secret


def secretMetadata(secret):
    return ((SECRET_METADATA, secret),)


def checkSecret(callContext, secret):
    given = callContext.metadata.get(SECRET_METADATA, "")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode()):
        raise errors.PermissionDenied(
            "this RPC needs the cluster's shared secret (--secret-file or $SNS_SECRET)")


def makeToken(secret, user):
    mac = hmac.new(secret.encode(), user.encode(), hashlib.sha256).hexdigest()[:32]
    return "%s:%s" % (user, mac)


def sessionMetadata(token):
    return ((SESSION_METADATA, token),)


def userOf(callContext, secret):
    """The user a call acts as, from its session token."""
    token = callContext.metadata.get(SESSION_METADATA, "")
    user, _, mac = token.rpartition(":")
    # compare_digest refuses non-ASCII str: a hostile token must get
    # UNAUTHENTICATED, not an internal error.
    if user and token.isascii() and hmac.compare_digest(makeToken(secret, user), token):
        return user
    raise errors.NotLoggedIn()
