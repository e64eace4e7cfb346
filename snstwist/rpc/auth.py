"""
The cluster's shared secret and client session tokens.

Every router and server of a cluster shares one secret: cluster-internal
RPCs, and the operators' views (C{Status}, C{Digest}), need it in the
C{x-sns-secret} metadata.  There is no default: a process given none refuses
to start and says how to give one.  Login hands a client a token that names
its user, signed with a key derived from the secret, so that any master of
the cluster can check it and a session can act only as the user it logged
in as, until it expires or the user's password changes.

A token is C{user|expires|generation time|generation id|mac}: the user, the
second it expires, the key of the password register it was issued under
(the password's generation), and an HMAC-SHA256 of all that under the
cluster's token key.  A master refuses a token whose password generation is
older than the one it holds: a password change revokes every older token on
every VM as soon as the change reaches it.
"""

import functools
import hashlib
import hmac
import os

import attrs

from snstwist.core import errors
from snstwist.core.limits import MAX_TOKEN_CHARS
from snstwist.rpc.grpcbridge import SECRET_METADATA, SESSION_METADATA

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


@attrs.frozen
class Session:
    """What a genuine token says: who, until when, under which password."""

    user: str
    expires: int
    generation: tuple  # (time_us, update id) of the password register


@functools.lru_cache(maxsize=8)
def _tokenKey(secret):
    # Tokens are signed with a key of their own, derived from the secret.
    return hmac.new(secret.encode(), b"snstwist session token v1", hashlib.sha256).digest()


def _mac(secret, payload):
    return hmac.new(_tokenKey(secret), payload.encode(), hashlib.sha256).hexdigest()


def makeToken(secret, user, expires, generation=(0, "")):
    payload = "%s|%d|%d|%s" % (user, expires, generation[0], generation[1])
    return "%s|%s" % (payload, _mac(secret, payload))


def readToken(secret, token):
    """The L{Session} of a genuine C{token}; L{errors.NotLoggedIn} for anything else."""
    payload, _, mac = token.rpartition("|")
    if len(token) > MAX_TOKEN_CHARS or not payload:
        raise errors.NotLoggedIn()
    if not hmac.compare_digest(_mac(secret, payload).encode(), mac.encode()):
        raise errors.NotLoggedIn()
    user, expires, time_us, identifier = payload.split("|")
    return Session(user, int(expires), (int(time_us), identifier))


class GenuineTokens:
    """
    The tokens of the secret C{secret} found genuine lately, and what each
    says: a client sends its token with every call, and its HMAC need not
    be computed again each time (it was 2% of a master's reactor under
    posting load).  A token is remembered as the exact string it is, so
    anything else is checked anew; at most L{size} are, then all are
    forgotten.  Expiry and the password generation are checked on every
    call (L{sessionOf}), not here.
    """

    size = 4096

    def __init__(self, secret):
        self.secret = secret
        self._genuine = {}

    def read(self, token):
        """The L{Session} of a genuine C{token}; L{errors.NotLoggedIn} for anything else."""
        session = self._genuine.get(token)
        if session is None:
            session = readToken(self.secret, token)
            if len(self._genuine) >= self.size:
                self._genuine.clear()
            self._genuine[token] = session
        return session


def sessionMetadata(token):
    return ((SESSION_METADATA, token),)


def sessionOf(callContext, secret, now, generationOf=lambda user: None, tokens=None):
    """
    The L{Session} a call acts as, from its token: genuine, not expired at
    C{now}, and issued under the user's current password generation
    (C{generationOf(user)}, None when this VM does not know it yet).
    C{tokens} (L{GenuineTokens} of C{secret}) remembers those checked.
    """
    token = callContext.metadata.get(SESSION_METADATA, "")
    session = readToken(secret, token) if tokens is None else tokens.read(token)
    stillValid(session.user, session.expires, session.generation, now, generationOf)
    return session


def stillValid(user, expires, generation, now, generationOf):
    """
    Refuse (NotLoggedIn) what a session of C{user} whose token lasts until
    C{expires}, issued under the password C{generation}, does at C{now}
    once that token has expired or the password has changed.
    """
    if expires <= now:
        raise errors.NotLoggedIn("your session has expired: log in again")
    current = generationOf(user)
    if current is not None and generation < current:
        raise errors.NotLoggedIn("your password was changed: log in again")


def userOf(callContext, secret, now=0, generationOf=lambda user: None):
    """The user a call acts as, from its session token."""
    return sessionOf(callContext, secret, now, generationOf).user
