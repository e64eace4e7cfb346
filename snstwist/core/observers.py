"""
A list of observers of one kind of event: how a piece tells others what
happened without knowing who they are (the node tells the live sessions and
the slave's feed what became durable; a server's lifecycle tells its parts
which role it now plays); and a waiter for several events at once.
"""

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


class Observers:
    """
    Call every observer with each event, in the order they subscribed.  One
    observer raising is logged and does not keep the others from hearing.
    """

    def __init__(self, what):
        self.what = what
        self._observers = []

    def add(self, observer):
        self._observers.append(observer)

    def remove(self, observer):
        self._observers.remove(observer)

    def __call__(self, *args):
        for observer in list(self._observers):
            try:
                observer(*args)
            except Exception:
                log.failure("an observer of {what} failed", what=self.what)


class CountDown:
    """
    Waits among the Deferreds of several events as one of them (it has
    their C{callback} and C{errback}), called back once for each: fires
    its C{deferred} when the last is, or with the first failure (later ones
    consumed).  How the node waits for a replication message's updates to
    be flushed with one object, not a Deferred each and a C{gatherResults}.
    """

    __slots__ = ("deferred", "waiting")

    def __init__(self, waiting):
        self.deferred = defer.Deferred()
        self.waiting = waiting

    @classmethod
    def among(cls, lists):
        """One waiting in each of C{lists} (of Deferreds): its Deferred."""
        waiter = cls(len(lists))
        for waiting in lists:
            waiting.append(waiter)
        return waiter.deferred

    def callback(self, result):
        self.waiting -= 1
        if not self.waiting and not self.deferred.called:
            self.deferred.callback(None)

    def errback(self, failure):
        if not self.deferred.called:
            self.deferred.errback(failure)
