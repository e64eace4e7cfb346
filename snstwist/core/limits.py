"""
Every bound on what a client or a peer may send, in one place: the table
the README's "Limits" section and docs/design.md describe.  Add a row there
when you add a bound here.

This module only names numbers (and the two patterns a name must match);
it never checks anything.  The C{check*} functions of L{snstwist.core.model}
apply these bounds where data enters (a client's request in the servicers
and sessions, a peer's message in replication, the router and the buddy
link) and answer INVALID_ARGUMENT (a value too long, malformed or out of
its window) or RESOURCE_EXHAUSTED (too many of something).  An error
message names the bound and quotes at most L{MAX_ECHO} characters of what
was sent (L{excerpt}).
"""

import re

from snstwist.rpc import sns_pb2 as pb

# A live session (Bidirectional_s_and_c) carries a heartbeat each way every
# this many seconds; either end gives the other up after three missed.
SESSION_HEARTBEAT = 2.0
# A server's stream to a router carries a heartbeat (the server's load)
# every this many seconds; the router gives a silent server up after four.
ROUTER_HEARTBEAT = 0.5

# The largest gRPC message any channel or server of ours sends or receives
# (grpcbridge sets both ends to it).
MAX_MESSAGE_BYTES = 1 << 20

# Of the values a client sends.
MAX_USERNAME = 32
USERNAME = re.compile(r"[A-Za-z0-9_.\-]{1,%d}\Z" % (MAX_USERNAME,))
MAX_POST_CHARS = 1000
MAX_REQUEST_ID = 64
REQUEST_ID = re.compile(r"[\x21-\x7e]{0,%d}\Z" % (MAX_REQUEST_ID,))
HISTORY = 20            # posts of history sent, at most
MAX_EXCLUDED_VMS = 16   # VMs a client may exclude when asking the router

# Of the values peers (servers, routers) send.  VM names follow the
# username rule; an origin is "<vm>.<incarnation>", an update id
# "<origin>/<seq>".
MAX_INCARNATION = 24
MAX_ORIGIN = MAX_USERNAME + 1 + MAX_INCARNATION
ORIGIN = re.compile(r"[A-Za-z0-9_.\-]{1,%d}\Z" % (MAX_ORIGIN,))
MAX_SEQ = 2**63 - 1     # SQLite integers are signed 64-bit
MAX_TIME_US = 2**63 - 1  # times are never negative
MAX_UPDATE_ID = MAX_ORIGIN + 1 + len(str(MAX_SEQ))
MAX_ADDRESS = 270       # host:port; a DNS name is at most 253 characters
MAX_HEARTBEAT_USERS = 100
MAX_PEER_STREAMS = 16   # peer streams a master reports in one heartbeat
MAX_ERROR_TEXT = 120    # why a stream last broke, as a server reports it
MAX_ORIGINS = 10000     # origins in one version vector
MAX_EXTRA = 10000       # out-of-order sequence numbers of one origin
MAX_SERVERS = 128       # server processes registered with one router

# Times a peer sends (update and read-mark times, in microseconds since the
# epoch) may be at most this far ahead of our own clock: a peer whose clock
# runs further ahead has its updates refused (and retried by its
# anti-entropy) until ours catches up.  Never adopted into our hybrid clock.
CLOCK_WINDOW_US = 5 * 60 * 10**6

def _largestUpdate():
    """The largest update the bounds above allow: a post at every maximum."""
    wide = "\U0001f600"  # four bytes of UTF-8 per character
    origin = "o" * MAX_ORIGIN
    biggest = pb.Update(origin=origin, seq=MAX_SEQ, time_us=MAX_TIME_US,
                        request_id="r" * MAX_REQUEST_ID)
    biggest.post.id = "i" * MAX_UPDATE_ID
    biggest.post.author = "a" * MAX_USERNAME
    biggest.post.time_us = MAX_TIME_US
    biggest.post.text = wide * MAX_POST_CHARS
    return biggest


# The most bytes one update takes on the wire, and how many fit in one
# replication or buddy message (UpdateBatch inside ReplicationMessage): each
# update costs its bytes plus a tag and a length, the batch a tag and a
# length more.  Anything accepted always fits in one message.
MAX_UPDATE_BYTES = _largestUpdate().ByteSize()
UPDATES_PER_MESSAGE = (MAX_MESSAGE_BYTES - 16) // (MAX_UPDATE_BYTES + 4)

# Users are a grow-only set held in every server's memory (names, password
# hashes, follows): bounded so that a server at the cap stays well inside
# its memory (docs/benchmarks.md, "Memory per user").  Nothing sends them
# all in one message: LIST is sent LIST_PAGE names of each of its lists a
# page, a digest DIGEST_PAGE post files a page, so every page fits one
# message whatever the number of users (tests/test_limits.py).
MAX_USERS = 100000
# The users one user may follow: checked where a FOLLOW is accepted (a
# follow at it is refused, FAILED_PRECONDITION: the user unfollows someone
# first, a retry alone never helps).  Every follow is held by every server
# process, and a timeline (its history, a catch-up) reads one author per
# user followed: the bound keeps one account from costing every process
# megabytes, or its own timeline reads thousands of authors
# (docs/benchmarks.md, "Memory per user").  A VM applies the follows other
# VMs accepted whatever its own count (a peer can not refuse a replicated
# write and converge): concurrent follows of one user on VMs that do not
# see each other's go past it, by at most MAX_FOLLOWS per such VM.
MAX_FOLLOWS = 5000
LIST_PAGE = 5000
DIGEST_PAGE = 2000
# A digest page also ends once it has read this many bytes of post files
# (always one file at least): it is read on the VM's disk thread.
DIGEST_PAGE_BYTES = 16 << 20
# A line of an import file (sns-admin import), in bytes: a post line is at
# most about 12 KB (1,000 characters, each escaped as two \uXXXX), a
# version vector line about 100 bytes an origin.  Longer lines are refused
# by their number, never read whole.
MAX_IMPORT_LINE_BYTES = 16 << 20
# A LIST page token: "<users part>/<followers part>", each part "" (from
# the first), "*" (done) or ">" and the last name sent.
MAX_PAGE_TOKEN = 2 * (MAX_USERNAME + 1) + 1


# An error message quotes at most this much of the input it refuses: a 20 KB
# name must not come back whole (nor overflow gRPC's 8 KB metadata limit,
# which would turn INVALID_ARGUMENT into RESOURCE_EXHAUSTED).
MAX_ECHO = 40

# Timeline sessions.  A live reader that falls this many pushed posts
# behind is cut off (it is too slow for live push); a catch-up (the history,
# or everything a returning reader missed) is sent a page at a time, the next
# page only once the reader has taken most of the last, so it is never cut
# off, however long.
MAX_SESSION_QUEUE = 1000
# Live posts that become durable while a session's stream is still writing
# go out together, at most this many in one message (so many of the largest
# posts still fit in one: fewer than UPDATES_PER_MESSAGE).
PUSH_BATCH = min(100, UPDATES_PER_MESSAGE)
# Requests whose pushed copy a master remembers, so that a second copy of a
# retried post is never pushed live (sessions.SessionHub.publish).
PUSHED_MEMORY = 10000
CATCH_UP_PAGE = 200
# Posts a session may have in flight on its own stream (sent, not yet
# answered); past it a post is answered RESOURCE_EXHAUSTED at once.  Every
# answer is a message on the session's stream, bounded by MAX_SESSION_QUEUE.
MAX_SESSION_POSTS = 100
# A resumed timeline sends the version vector its screen covers, and is sent
# first what the vector lacks up to its cursor.  Reading that costs the
# updates the vector lacks, so a vector lacking more than this many (one
# kept from long ago, or a hostile one) is not read: the timeline resumes
# by its cursor alone, as a client without a vector does.
RESUME_GAP_MAX = 50000

# Sessions and connections.  A master holds at most this many live sessions
# (Bidirectional_s_and_c streams) of one user, and from one IP address;
# past either the stream is refused with RESOURCE_EXHAUSTED.  gRPC closes a
# connection that has carried no call for IDLE_CONNECTION_SECONDS, and a
# server process takes at most MAX_CONNECTIONS connections in all, and
# at most MAX_CONNECTIONS_PER_ADDRESS from one IP address (gRPC counts
# connections per server only: the newest past that are shut down within a
# second, grpcbridge/addresscap.py).
MAX_SESSIONS_PER_USER = 10
MAX_SESSIONS_PER_ADDRESS = 3000
IDLE_CONNECTION_SECONDS = 300
MAX_CONNECTIONS = 10000
MAX_CONNECTIONS_PER_ADDRESS = 3000


# -- accounts (issue 12)
MAX_PASSWORD_CHARS = 256
MAX_PASSWORD_HASH_CHARS = 256
# argon2id at OWASP's minimum (19 MiB, 2 passes, 1 lane): about 50 ms of one
# core on an idle machine.  Hashing runs on at most HASHING_THREADS threads,
# never the reactor, with at most HASHING_QUEUE waiting; past that, logins
# are refused with RESOURCE_EXHAUSTED rather than queued without bound.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19456
ARGON2_PARALLELISM = 1
HASHING_THREADS = 2
HASHING_QUEUE = 32
# A session token lives this long; a live client renews it at half-life.
TOKEN_LIFETIME = 24 * 3600.0
MAX_TOKEN_CHARS = 512

# -- rates (token buckets: RATE tokens a second, at most BURST saved up)
# (sns-server --posts-per-second changes the posts' rate; the burst is
# always that many seconds' worth.)
POSTS_PER_USER_RATE = 20.0
POSTS_PER_USER_BURST_SECONDS = 5.0
LOGINS_PER_ADDRESS_RATE = 20.0
LOGINS_PER_ADDRESS_BURST = 50.0
# After N failed logins in a row, a user (or an address) waits
# FAILED_LOGIN_DELAY * 2**(N-1) seconds, at most FAILED_LOGIN_MAX_DELAY,
# before the next attempt is heard; a success clears it.
FAILED_LOGIN_DELAY = 0.5
FAILED_LOGIN_MAX_DELAY = 30.0
# Buckets and failure counts kept, each (the least recently used go first).
MAX_TRACKED = 10000


def excerpt(value, limit=MAX_ECHO):
    """C{repr(value)}, cut to C{limit} characters, saying how long the value was."""
    quoted = repr(value)
    if len(quoted) <= limit:
        return quoted
    size = " (%d characters)" % (len(value),) if isinstance(value, (str, bytes)) else ""
    return quoted[:limit] + "..." + size
