"""
A list of observers of one kind of event: how a piece tells others what
happened without knowing who they are (the node tells the live sessions and
the slave's feed what became durable; a server's lifecycle tells its parts
which role it now plays).
"""

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
