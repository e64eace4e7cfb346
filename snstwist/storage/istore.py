"""
L{IStore}: the one narrow interface of a VM's durable storage, implemented
by L{store.SQLiteStore} and, for tests, L{memory.MemoryStore}.
"""

from zope.interface import Attribute, Interface


class IStore(Interface):
    """Durable storage of the updates a VM holds."""

    def open(known=None, posts=True):
        """
        Take the VM's writer lock and read what a replica holds in memory:
        the users, passwords, follow changes and last read marks, and the
        newest posts of each author (L{state.HOT_POSTS} and one more); with
        a version vector C{known}, every stored update it lacks instead;
        with C{posts} false, nothing (a start: it reads the state a page at
        a time, L{statePage}, and no post, L{floors}); with C{posts} None,
        nothing (a warm slave taking over pages what it lacks, L{missing}).
        A Deferred list of L{Update}s; L{held} says what is stored.
        """

    def statePage(after, limit):
        """
        A Deferred (updates, position): at most C{limit} of the stored
        updates of a replica's state (the users, passwords, follow changes
        and each user's last read mark, no post; a store may give a follow
        pair's last writer instead of its changes, as a tuple (follower,
        followee, time_us, origin, seq, following)), from after the position
        C{after} (None: the first page; else the position a page gave), and
        the position of the next page (None: this was the last).  What was
        stored when the last L{open} or L{read} read L{held} is in the
        pages; what is stored later may be.
        """

    def stateSnapshot():
        """
        A Deferred of the state snapshot the store keeps (an object with
        C{covers}, the version vector of what it holds, and C{origins},
        C{maxTime}, C{count} and C{parts()}: L{snstwist.core.stateload}), or
        of None if it keeps none it can use (none, torn, or covering what
        L{held} lacks): then the state is read with L{statePage}.
        """

    def stateSince(covers, after, limit):
        """
        Like L{statePage}, the state updates stored that the version vector
        C{covers} (a snapshot's) lacks: what a start applies after the snapshot.
        """

    def keepSnapshots():
        """As the VM's writer (after L{open}), keep the state snapshot up to date."""

    def held():
        """The L{VersionVector} of the updates stored or being written (after L{open})."""

    def missing(remote, limit, after=None):
        """
        A Deferred list of at most C{limit} stored updates that the version
        vector C{remote} lacks, in (origin, seq) order, after the (origin,
        seq) C{after}: one page of what a peer lacks.
        """

    def byRequests(keys):
        """A Deferred {(requester, request id): earliest stored update} of C{keys}."""

    def requests(keys, requesters):
        """
        A Deferred ({(requester, request id): earliest stored update} of
        C{keys}, {requester: its greatest request id stored} of those of
        C{requesters} with one): a retry's lookup and the floors of
        L{snstwist.core.requests.RememberedRequests}, in one reading.
        """

    def page(authors, cursor, limit, inclusive=False):
        """
        A Deferred list of at most C{limit} updates of the posts shown by
        C{authors} after the post key C{cursor} (from it if C{inclusive}),
        oldest first.
        """

    def uncovered(authors, covered, after, upto, limit):
        """
        A Deferred list of at most C{limit} updates of the posts shown by
        C{authors} that the version vector C{covered} lacks, with post keys
        after C{after} and up to C{upto}, oldest first.
        """

    def newest(authors, limit):
        """A Deferred {author: [update]}: the C{limit} newest shown posts of each, oldest first."""

    def floors():
        """
        {author: the key of its newest post stored (shown or not)}, as the
        last L{open} with C{posts} false saw it (the same reading as
        L{held}): what a replica that read no window needs
        (L{state.Replica.startCold}); empty after any other open.
        """

    def persist(updates, hidden=frozenset(), displaced=()):
        """
        Make C{updates} durable.  The Deferred fires once all of them are on
        disk and flushed.  Updates already stored are ignored.  Posts whose
        id is in C{hidden} (duplicates of a request already shown) are stored
        but not shown; the already stored posts C{displaced} by an earlier
        copy of their request stop being shown.
        """

    def close():
        """Finish pending writes and release the writer lock (Deferred)."""

    problem = Attribute(
        "None, or the L{errors.StorageFailed} saying why the disk refuses writes now")
    onProblem = Attribute("Called with C{problem} each time a batch of writes fails")
