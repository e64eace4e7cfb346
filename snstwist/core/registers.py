"""
The keys of last-writer-wins registers, packed into one int each.

A follow relation, or a user's password, is a register whose last write
wins, ordered by its update's key (hybrid logical time, update id), the
update id being "<origin>/<seq>".  Every server process holds every such
register (a follow for each pair ever followed, a password for each user),
so each costs as little as can be: the key's time, its origin (numbered
once per process, L{Keys}), its seq and the register's one-bit value in a
single int, where a key as a tuple was a tuple, an int, a string of the
update id and an object of the register (about 250 bytes against 44).

Packed keys compare as the tuples do: by time (the int's high bits), and
at equal times by the update ids as strings, which are rebuilt for that
rare comparison only.  Nothing here is rounded or dropped: a register
decides exactly as one holding the whole key would.
"""

from snstwist.core.model import updateId

_VALUE_BITS = 1
_ORIGIN_BITS = 32
_SEQ_BITS = 63  # limits.MAX_SEQ
_ORIGIN_SHIFT = _VALUE_BITS
_SEQ_SHIFT = _ORIGIN_SHIFT + _ORIGIN_BITS
_TIME_SHIFT = _SEQ_SHIFT + _SEQ_BITS
_ORIGIN_MASK = (1 << _ORIGIN_BITS) - 1
_SEQ_MASK = (1 << _SEQ_BITS) - 1


class Keys:
    """
    Packs register keys with a bit of value, numbering the origins it
    meets (a process meets one per master run of the cluster: at most
    about L{limits.MAX_ORIGINS}, far below 2**32).
    """

    def __init__(self, origins=()):
        # Numbered in the order given (a snapshot's keys were packed so,
        # L{snstwist.storage.snapshot}), then in the order met.
        self._origins = list(origins)
        self._numbers = {origin: n for n, origin in enumerate(self._origins)}
        if len(self._numbers) != len(self._origins) or len(self._origins) > _ORIGIN_MASK + 1:
            raise ValueError("origins must be distinct and fewer than 2**32")

    @property
    def origins(self):
        """The origins numbered so far, in the order of their numbers (do not change it)."""
        return self._origins

    def pack(self, time_us, origin, seq, value):
        """The int of the key (C{time_us}, C{origin}/C{seq}) with the bit C{value}."""
        number = self._numbers.get(origin)
        if number is None:
            number = self._numbers[origin] = len(self._origins)
            if number > _ORIGIN_MASK:
                raise OverflowError("more than 2**32 origins")
            self._origins.append(origin)
        return ((((time_us << _SEQ_BITS) | seq) << _ORIGIN_BITS | number) << _VALUE_BITS
                | bool(value))

    def key(self, packed):
        """The (time_us, update id) that C{packed} holds."""
        return (packed >> _TIME_SHIFT,
                updateId(self._origins[(packed >> _ORIGIN_SHIFT) & _ORIGIN_MASK],
                         (packed >> _SEQ_SHIFT) & _SEQ_MASK))

    def unpack(self, packed):
        """(time_us, origin, seq, value) of C{packed}: what L{pack} was given."""
        return (packed >> _TIME_SHIFT, self._origins[(packed >> _ORIGIN_SHIFT) & _ORIGIN_MASK],
                (packed >> _SEQ_SHIFT) & _SEQ_MASK, bool(packed & 1))

    @staticmethod
    def value(packed):
        """The bit of value C{packed} holds (following, for a follow)."""
        return bool(packed & 1)

    def newer(self, time_us, origin, seq, packed):
        """Is the key (C{time_us}, C{origin}/C{seq}) greater than the one C{packed} holds?"""
        held = packed >> _TIME_SHIFT
        if time_us != held:
            return time_us > held
        return updateId(origin, seq) > self.key(packed)[1]
