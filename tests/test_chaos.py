"""
The chaos run's short mode (about two minutes of faults), as CI runs it:
kills, stops, partitions, cut-off hosts and (where iptables is installed)
latency, under load; nothing acknowledged may be lost.  And its checks,
on records and snapshots made by hand: each finds what it is for, and only
that.
"""

import json
import os

from twisted.internet import reactor
from twisted.trial import unittest

from snstwist.testbed import chaos, netbed
from snstwist.testbed.verdict import Record, postsIn
from tests.beds import skipUnlessNamespaces
from tests.test_integration import inlineAsync

MINUTES = float(os.environ.get("SNS_CHAOS_MINUTES", "1.5"))


class ChaosRunTests(unittest.TestCase):
    timeout = 900

    @inlineAsync
    async def test_nothing_acknowledged_is_lost_under_faults(self):
        """
        Faults at random times for a minute and a half; then, healed: no
        acknowledged write lost, every VM the same, every reader shown each
        acknowledged post of whom it follows exactly once, nothing leaked.
        """
        skipUnlessNamespaces()
        lines = []
        run = chaos.Chaos(reactor, MINUTES, base=os.path.abspath(self.mktemp()),
                          lag=netbed.lagUnavailable() is None, out=lines.append)
        result = await run.run()
        report = "\n".join(lines + [result.table(), result.details()])
        self.assertTrue(result.ok, report)
        self.assertGreater(sum(result.faults.values()), 0, report)
        self.assertGreater(result.acked, 0, report)


def postFile(*posts):
    """A post file's bytes: one JSON record a line, as the store writes them."""
    return "".join(json.dumps({"author": a, "text": t}) + "\n" for a, t in posts).encode()


def recordOf(*events):
    record = Record()
    for event in events:
        record.event(event)
    return record


def ack(user, text, id="o/1"):
    return {"ev": "ack", "op": "post", "user": user, "text": text, "id": id, "copies": 2}


def shown(reader, author, text, id="o/1", inc=0):
    return {"ev": "shown", "user": reader, "author": author, "text": text, "id": id, "inc": inc}


def follow(user, target, ev="ack", op="follow", **more):
    return dict(ev=ev, op=op, user=user, target=target, **more)


class CheckTests(unittest.SynchronousTestCase):
    """The chaos run's checks, on what the worker could have reported."""

    def test_posts_in_a_snapshot_are_known_by_author_and_text(self):
        snapshot = {"posts": {"ann.txt": postFile(("ann", "one"), ("ann", "two"))}}
        self.assertEqual(postsIn(snapshot), {("ann", "one"), ("ann", "two")})

    def test_an_acknowledged_post_missing_from_the_files_is_lost(self):
        record = recordOf(ack("ann", "kept"), ack("ann", "gone"),
                          {"ev": "fail", "op": "post", "user": "ann", "text": "never acked",
                           "definite": False})
        lost = record.lost({("ann", "kept")})
        self.assertEqual([(a["user"], a["text"]) for a in lost], [("ann", "gone")])

    def test_a_follow_is_judged_by_the_last_answered_command(self):
        """
        The row must match the last command that had an answer; a command
        that failed without one leaves the pair unjudged, and a definite
        refusal says which state the relation is in.
        """
        record = recordOf(
            follow("ann", "bob"), follow("ann", "bob", op="unfollow"),
            follow("ann", "cat"),
            follow("ann", "dan", ev="fail", definite=False),
            follow("ann", "eve", ev="fail", definite=True, code="ALREADY_EXISTS"))
        snapshot = {"follows": [("ann", "bob", 1), ("ann", "dan", 1)]}
        self.assertEqual(record.followsWrong(snapshot),
                         [(("ann", "bob"), False), (("ann", "cat"), True),
                          (("ann", "eve"), True)])

    def test_a_refusal_after_an_acknowledged_command_changes_nothing(self):
        """
        A refusal wrote nothing: after an acknowledged follow, an unfollow
        refused by a master that does not hold that follow yet (a failover
        to a VM without its second copy) leaves the pair judged by the
        follow; likewise a refusal after one that failed without an answer
        leaves the pair unjudged.
        """
        record = recordOf(
            follow("ann", "bob"),
            follow("ann", "bob", op="unfollow", ev="fail", definite=True,
                   code="FAILED_PRECONDITION"),
            follow("ann", "cat"), follow("ann", "cat", op="unfollow"),
            follow("ann", "cat", ev="fail", definite=True, code="ALREADY_EXISTS"),
            follow("ann", "dan", ev="fail", definite=False),
            follow("ann", "dan", op="unfollow", ev="fail", definite=True,
                   code="FAILED_PRECONDITION"))
        self.assertEqual(record.followsWrong({"follows": [("ann", "bob", 1), ("ann", "dan", 1)]}),
                         [])
        self.assertEqual(record.followsWrong({"follows": [("ann", "cat", 1)]}),
                         [(("ann", "bob"), True), (("ann", "cat"), False)])

    def test_a_post_shown_twice_in_one_incarnation_is_a_duplicate(self):
        """
        Twice by id, or twice by text (a retried post stored under two ids);
        a reader started again shows the history again, which is not one.
        """
        record = recordOf(shown("rea", "ann", "a", id="o/1"), shown("rea", "ann", "a", id="o/1"),
                          shown("rea", "ann", "b", id="o/2"), shown("rea", "ann", "b", id="p/1"),
                          shown("rea", "ann", "a", id="o/1", inc=1))
        self.assertEqual(record.duplicates(),
                         [("rea", "o/1", "ann", "a"), ("rea", "p/1", "ann", "b")])

    def test_an_acknowledged_post_a_follower_never_saw_is_missing(self):
        record = recordOf(ack("ann", "seen"), ack("ann", "unseen"), ack("bob", "not followed"),
                          shown("rea", "ann", "seen"))
        self.assertEqual(record.missing({"rea": ["ann"]}), [("rea", "ann", "unseen")])

    def test_a_shown_post_in_no_file_is_a_phantom(self):
        record = recordOf(shown("rea", "ann", "stored"), shown("rea", "ann", "invented"))
        phantoms = record.phantoms({("ann", "stored")})
        self.assertEqual([e["text"] for e in phantoms], ["invented"])
