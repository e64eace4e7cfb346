"""
Version vectors: what a replica holds, as ranges of sequence numbers per
origin (an origin is one master's run: C{<vm>.<incarnation>}).  A peer's
hello carries one, and what it lacks is what the vector lacks.  Pure
values: no I/O.  (L{snstwist.core.state} re-exports both names.)
"""

import attrs

from snstwist.rpc import sns_pb2 as pb


@attrs.define
class Seen:
    """The sequence numbers seen from one origin: 1..contiguous, plus extra."""

    contiguous: int = 0
    extra: set = attrs.field(factory=set)
    top: int = attrs.field(default=0, eq=False)

    def __attrs_post_init__(self):
        self.top = max(self.extra, default=self.contiguous)

    def has(self, seq):
        return seq <= self.contiguous or seq in self.extra

    def add(self, seq):
        if seq == self.contiguous + 1 and not self.extra:
            # The next in order with nothing out of order held: most adds.
            self.contiguous = seq
            if seq > self.top:
                self.top = seq
            return True
        if self.has(seq):
            return False
        self.extra.add(seq)
        self.top = max(self.top, seq)
        while self.contiguous + 1 in self.extra:
            self.contiguous += 1
            self.extra.discard(self.contiguous)
        return True

    def discard(self, seq):
        """
        Forget C{seq} (a write that failed).  C{top} stays what it was: an
        upper bound is all L{lacking} needs.
        """
        if seq <= self.contiguous:
            self.extra.update(range(seq + 1, self.contiguous + 1))
            self.contiguous = seq - 1
        else:
            self.extra.discard(seq)


class VersionVector:
    """What a replica holds, per origin."""

    def __init__(self):
        self.origins = {}

    def has(self, origin, seq):
        seen = self.origins.get(origin)
        return seen is not None and seen.has(seq)

    def add(self, origin, seq):
        seen = self.origins.get(origin)
        if seen is None:
            seen = self.origins[origin] = Seen()
        return seen.add(seq)

    def discard(self, origin, seq):
        seen = self.origins.get(origin)
        if seen is not None:
            seen.discard(seq)

    def count(self):
        return sum(s.contiguous + len(s.extra) for s in self.origins.values())

    def merge(self, other):
        """Hold, besides what is held here, everything C{other} holds."""
        for origin, theirs in other.origins.items():
            mine = self.origins.setdefault(origin, Seen())
            if theirs.contiguous > mine.contiguous:
                mine.contiguous = theirs.contiguous
                mine.extra = {seq for seq in mine.extra if seq > mine.contiguous}
            for seq in theirs.extra:
                mine.add(seq)
            while mine.contiguous + 1 in mine.extra:
                mine.contiguous += 1
                mine.extra.discard(mine.contiguous)
            mine.top = max(mine.top, theirs.top)

    def lacking(self, other):
        """How many updates held here C{other} (a version vector, or None) lacks."""
        if other is None:
            return self.count()
        n = 0
        for origin, mine in self.origins.items():
            theirs = other.origins.get(origin)
            if theirs is None:
                n += mine.contiguous + len(mine.extra)
                continue
            if mine.contiguous > theirs.contiguous:
                # Of 1..mine.contiguous, those past theirs and not among
                # their out-of-order ones.
                n += mine.contiguous - theirs.contiguous - sum(
                    1 for s in theirs.extra if s <= mine.contiguous)
            n += sum(1 for s in mine.extra if not theirs.has(s))
        return n

    def toProto(self):
        return pb.VersionVector(origins=[
            pb.OriginRange(origin=o, contiguous=s.contiguous, extra=sorted(s.extra))
            for o, s in sorted(self.origins.items())
        ])

    @classmethod
    def fromProto(cls, message):
        vv = cls()
        for r in message.origins:
            vv.origins[r.origin] = Seen(r.contiguous, set(r.extra))
        return vv
