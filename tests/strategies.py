"""
Hypothesis strategies for snstwist's values, shared by the test modules, and
the plain builders they use (example-based tests call those directly).

Generated names and origins come from small pools on purpose: writes then
collide (the same user created on two VMs, one pair followed and unfollowed
at equal times), which is where replicas could disagree.
"""

from hypothesis import strategies as st

from snstwist.core.model import FollowChange, Post, Update, updateId

NAMES = ("alice", "bob", "carol", "dave")
ORIGINS = ("vm1.a", "vm2.a", "vm3.a", "vm1.b")

# The microseconds formatTime can write: from the epoch to the end of 9999.
LAST_US = 253402300800 * 10**6 - 1


# -- builders

def userUpdate(origin, seq, time_us, name):
    return Update(origin=origin, seq=seq, time_us=time_us, user=name)


def postUpdate(origin, seq, time_us, author, text="hello", requestId=""):
    post = Post(id=updateId(origin, seq), author=author, time_us=time_us, text=text)
    return Update(origin=origin, seq=seq, time_us=time_us, post=post,
                  request_id=requestId)


def followUpdate(origin, seq, time_us, follower, followee, following=True):
    return Update(origin=origin, seq=seq, time_us=time_us,
                  follow=FollowChange(follower, followee, following))


# -- strategies

def names():
    return st.sampled_from(NAMES)


def origins():
    return st.sampled_from(ORIGINS)


def postTexts():
    """Short post texts of any characters, newlines included."""
    return st.text(min_size=1, max_size=40)


def clockTimes():
    """
    Update timestamps from a narrow range, so that equal times (broken by
    update id) come up often.
    """
    return st.integers(min_value=1, max_value=50)


def microseconds():
    """Any time formatTime can write, in microseconds since the epoch."""
    return st.integers(min_value=0, max_value=LAST_US)


def followChanges():
    return st.builds(FollowChange, names(), names(), st.booleans()).filter(
        lambda f: f.follower != f.followee)


def changes():
    """What one update changes, as the arguments of one of the builders."""
    return st.one_of(
        st.tuples(st.just(userUpdate), names()),
        st.tuples(st.just(postUpdate), names(), postTexts()),
        st.builds(lambda f: (followUpdate, f.follower, f.followee, f.following),
                  followChanges()),
    )


@st.composite
def updateLists(draw, max_size=30):
    """
    Users, posts and follow changes from several origins, each origin
    numbering its own updates 1, 2, 3... so that (origin, seq) is unique.
    """
    entries = draw(st.lists(st.tuples(origins(), clockTimes(), changes()),
                            max_size=max_size))
    seqs = {}
    updates = []
    for origin, time_us, (build, *args) in entries:
        seqs[origin] = seqs.get(origin, 0) + 1
        updates.append(build(origin, seqs[origin], time_us, *args))
    return updates


# -- hostile values: at, just past and far past each bound (tests/test_adversarial.py)

# Characters a hostile sender likes: terminal escapes, NUL, newlines, bidi
# overrides, a combining mark, a wide emoji, the replacement character.
NASTY = "\x00\x1b\x07\n\r\t\x7f\u0085\u2028\u202e\u0301\U0001f600\ufffd/:. _-"


def hostileText(bound, alphabet=None):
    """
    Strings around a length C{bound}: empty, at the bound, one past it, far
    past it, of valid characters (C{alphabet}) or of anything protobuf
    allows (no lone surrogates: protobuf refuses to encode them).
    """
    anything = st.characters(exclude_categories=["Cs"])
    nasty = st.sampled_from(NASTY)
    good = st.sampled_from(alphabet) if alphabet else st.characters(
        min_codepoint=0x21, max_codepoint=0x7e)
    sizes = st.sampled_from([0, 1, bound - 1, bound, bound + 1, bound * 2, bound * 100 + 7])
    return st.one_of(
        st.builds(lambda n, c: c * n, sizes, good),
        st.builds(lambda n, c: c * n, sizes, nasty),
        st.text(anything, max_size=bound + 2),
        st.text(st.one_of(good, nasty), min_size=max(bound - 2, 0), max_size=bound + 2),
        st.sampled_from(["", " ", "..", "/", "a/b", "a\nb", "\x1b[2J", "9" * 30]),
    )


def hostileInts(bits, signed=True):
    """Integers of a wire type: zero, one, the extremes, and anything between."""
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    return st.one_of(st.sampled_from(sorted({low, low + 1, -1 if signed else 0, 0, 1,
                                            high - 1, high})),
                     st.integers(low, high))


def hostileTimes(now_us, window):
    """Times around the clock window of C{now_us}, and extreme ones."""
    return st.one_of(
        st.sampled_from([0, 1, now_us, now_us + window, now_us + window + 1,
                         now_us + 100 * window, LAST_US, 2 ** 63 - 1, -1, -(2 ** 63)]),
        st.integers(-(2 ** 63), 2 ** 63 - 1))


def hostileLists(elements, bound):
    """Repeated fields: empty, at the bound, past it, and one value many times."""
    return st.one_of(
        st.lists(elements, max_size=5),
        st.builds(lambda x, n: [x] * n, elements,
                  st.sampled_from([2, bound, bound + 1, bound * 3])),
    )
