"""
When a round of the store's background disk work starts (a checkpoint of
the WAL, a flush of the post files): some delay after the batch that first
asks for one, but at the end of a batch rather than at a timer's moment.

A round fsyncs on the disk the batches' commits fsync on, and a commit that
meets it waits behind it (the file system's journal commits one at a time):
a round started by a timer lands anywhere between two posts, and at 100
posts a second one commit in thirty or so met a checkpoint or a flush,
which made the tail of a post's time to its followers' screens.  Started
as the batch that finds it due is handed back, a round has the disk to
itself until the next post arrives.  With no batch after it is due, a timer
starts it L{grace} seconds later: a quiet store is not kept waiting.
"""


class AfterBatches:
    """
    Calls C{start()} once a round is due: L{batch} (a batch was written)
    starts it at once when it is due; otherwise a timer on C{clock} starts
    it L{grace} seconds after it is due.  L{started} says a round began (whoever
    began it); L{cancel} stops the timer.
    """

    grace = 0.05

    def __init__(self, clock, start):
        self.clock = clock
        self.start = start
        self.due = None  # when the next round is due, once a batch asked for one
        self.later = None

    def batch(self, delay):
        """
        A batch was written and wants a round: start it if it is due (the
        first batch since the last round makes it due C{delay} seconds on).
        """
        now = self.clock.seconds()
        if self.due is None:
            self.due = now + delay
        if now >= self.due:
            self.start()
        elif self.later is None:
            self.later = self.clock.callLater(self.due - now + self.grace, self._quiet)

    def _quiet(self):
        self.later = None
        self.start()

    def started(self):
        """A round began: the next is due a delay after the next batch."""
        self.cancel()
        self.due = None

    def cancel(self):
        if self.later is not None:
            if self.later.active():
                self.later.cancel()
            self.later = None
