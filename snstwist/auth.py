"""
The cluster's shared secret and client session tokens.

Cluster-internal RPCs need the shared secret in the C{x-sns-secret} metadata.
Login hands a client a token that names its user, signed with the secret, so
that any master of the cluster can check it and a session can act only as the
user it logged in as.
"""

import hashlib
import hmac
import os

from twisted.logger import Logger

from snstwist import errors
from snstwist.grpcbridge import SECRET_METADATA, SESSION_METADATA

log = Logger()

DEFAULT_SECRET = "snstwist-insecure-default-secret"


def loadSecret(path=None):
    """The secret from C{path}, else $SNS_SECRET, else the insecure default."""
    if path:
        with open(path) as f:
            secret = f.read().strip()
        if not secret:
            raise ValueError("secret file %s is empty" % (path,))
        return secret
    secret = os.environ.get("SNS_SECRET")
    if secret:
        return secret
    log.warn("no cluster secret given (--secret-file or $SNS_SECRET):"
             " using the insecure default")
    return DEFAULT_SECRET


def secretMetadata(secret):
    return ((SECRET_METADATA, secret),)


def checkSecret(callContext, secret):
    given = callContext.metadata.get(SECRET_METADATA, "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise errors.PermissionDenied(
            "this RPC is internal to the cluster and needs its shared secret")


def makeToken(secret, user):
    mac = hmac.new(secret.encode(), user.encode(), hashlib.sha256).hexdigest()[:32]
    return "%s:%s" % (user, mac)


def sessionMetadata(token):
    return ((SESSION_METADATA, token),)


def userOf(callContext, secret):
    """The user a call acts as, from its session token."""
    token = callContext.metadata.get(SESSION_METADATA, "")
    user, _, mac = token.rpartition(":")
    if user and hmac.compare_digest(makeToken(secret, user), token):
        return user
    raise errors.NotLoggedIn()
