"""
What a chaos run found: the events its worker reported (L{Record}), the
checks that hold them against what the VMs hold on disk, and the verdict
(L{Result}) with the table C{sns-chaos} prints.

Every check here is a pure function of the record and a VM's snapshot
(L{snstwist.testbed.netcluster.snapshot}), so it can be read, and tested,
apart from the processes and faults that produced them.
"""

import json

import attrs

FAULTS = ("kill-router", "kill-master", "kill-slave", "kill-vm", "stop-master",
          "stop-slave", "partition", "isolate", "latency")


@attrs.define
class Record:
    """What the worker reported, as it reported it."""

    acked: list = attrs.Factory(list)
    failed: list = attrs.Factory(list)
    shown: list = attrs.Factory(list)
    reconnects: int = 0
    gaveUp: int = 0
    errors: list = attrs.Factory(list)
    ops: list = attrs.Factory(list)  # every follow/unfollow outcome, in order

    def event(self, event):
        kind = event["ev"]
        if kind == "ack":
            self.acked.append(event)
        elif kind == "fail":
            self.failed.append(event)
        elif kind == "shown":
            self.shown.append(event)
        elif kind == "reconnect":
            self.reconnects += 1
        elif kind == "gave-up":
            self.gaveUp += 1
        elif kind == "error":
            self.errors.append(event)
        if kind in ("ack", "fail") and event["op"] != "post":
            self.ops.append(event)

    # -- the checks: what the worker reported against what a VM holds

    def lost(self, posts):
        """Acknowledged posts that are not among C{posts} (from L{postsIn})."""
        return [a for a in self.acked
                if a["op"] == "post" and (a["user"], a["text"]) not in posts]

    def followsWrong(self, snapshot):
        """
        (follower, followee) pairs whose row in C{snapshot} is not what the
        last acknowledged command on them left.  A command that failed
        without a definite answer may or may not have been applied: its pair
        is not judged (until a later acknowledged command on it).  A definite
        refusal (ALREADY_EXISTS, FAILED_PRECONDITION) wrote nothing: it says
        the relation's state only where no command on the pair came before
        it, since after one it is the view of the master that answered,
        which may not hold the client's own earlier write yet (its second
        copy on another VM than the client's master2, which is preferred,
        not promised: docs/design.md section 5).
        """
        last = {}
        for event in self.ops:
            pair = (event["user"], event["target"])
            if event["ev"] == "ack":
                last[pair] = event["op"] == "follow"
            elif event.get("definite"):
                last.setdefault(pair, event["code"] == "ALREADY_EXISTS")
            else:
                last[pair] = None
        rows = {(r[0], r[1]): bool(r[2]) for r in snapshot["follows"]}
        return [(pair, want) for pair, want in sorted(last.items())
                if want is not None and rows.get(pair, False) != want]

    def shownBy(self):
        """reader -> the posts its timeline showed, in order."""
        shown = {}
        for event in self.shown:
            shown.setdefault(event["user"], []).append(event)
        return shown

    def missing(self, follows):
        """
        (reader, author, text) of each acknowledged post of someone the
        reader follows (C{follows}: reader -> followees) that its timeline
        never showed.
        """
        shown = self.shownBy()
        missing = []
        for reader, followees in follows.items():
            seen = {(e["author"], e["text"]) for e in shown.get(reader, ())}
            missing += [(reader, a["user"], a["text"]) for a in self.acked
                        if a["op"] == "post" and a["user"] in followees
                        and (a["user"], a["text"]) not in seen]
        return missing

    def duplicates(self):
        """Posts a reader was shown twice (by id, or by text) in one incarnation."""
        duplicates = []
        for reader, events in self.shownBy().items():
            # A reader started again (its failover gave up) is a new
            # sns-client: it prints the recent history again, as it should.
            seen = set()
            texts = set()
            for e in events:
                key = (e["inc"], e["author"], e["text"])
                if (e["inc"], e["id"]) in seen or key in texts:
                    duplicates.append((reader, e["id"], e["author"], e["text"]))
                seen.add((e["inc"], e["id"]))
                texts.add(key)
        return duplicates

    def phantoms(self, posts):
        """Posts a timeline showed that are not among C{posts}."""
        return [e for e in self.shown if (e["author"], e["text"]) not in posts]


def postsIn(snapshot):
    """
    (author, text) of every post in a VM's files (a L{snapshot}).  A post is
    known by its text (each poster's texts are unique), not by its id: a
    post whose master died before it answered, retried on another VM, is
    stored twice and shown once, as the earlier copy, whichever id the
    retry was answered with.
    """
    posts = set()
    for data in snapshot["posts"].values():
        for line in data.decode("utf-8").splitlines():
            record = json.loads(line)
            posts.add((record["author"], record["text"]))
    return posts


@attrs.define
class Result:
    faults: dict
    acked: int
    ackedOneCopy: int
    failed: int
    lost: list
    followsWrong: list
    duplicates: list
    missing: list
    phantoms: list
    vmsDiffer: list
    leaked: list
    converge: float
    reconnects: int
    gaveUp: int
    errors: list
    stuck: dict
    stragglers: list
    shown: int
    minutes: float

    @property
    def ok(self):
        return not (self.lost or self.followsWrong or self.duplicates or self.missing
                    or self.phantoms or self.vmsDiffer or self.leaked
                    or self.errors or self.stuck) and self.converge >= 0

    def details(self):
        """The first items of every check that found something, one a line."""
        lines = []
        for name in ("lost", "followsWrong", "duplicates", "missing", "phantoms", "vmsDiffer",
                     "leaked", "stragglers", "errors", "stuck"):
            items = getattr(self, name)
            if items:
                lines.append("%s (%d), first ones:" % (name, len(items)))
                for item in list(items.items() if isinstance(items, dict) else items)[:10]:
                    lines.append("    %s" % (item,))
        return "\n".join(lines)

    def table(self):
        rows = [("faults injected", "")]
        for kind in FAULTS:
            rows.append(("  " + kind, str(self.faults.get(kind, 0))))
        rows += [
            ("  total", str(sum(self.faults.values()))),
            ("writes acknowledged", "%d (%d with one copy)" % (self.acked, self.ackedOneCopy)),
            ("writes failed (not acknowledged)", str(self.failed)),
            ("acknowledged writes lost", str(len(self.lost) + len(self.followsWrong))),
            ("posts shown on timelines", str(self.shown)),
            ("duplicates on screen", str(len(self.duplicates))),
            ("acknowledged posts never shown to a follower", str(len(self.missing))),
            ("posts shown that are in no file", str(len(self.phantoms))),
            ("VMs that differ after healing", str(len(self.vmsDiffer))),
            ("processes leaked", str(len(self.leaked))),
            ("  still exiting when the cluster's stop returned", str(len(self.stragglers))),
            ("errors in the clients' worker", str(len(self.errors))),
            ("writers never answered after healing", str(len(self.stuck))),
            ("client failovers (Reconnecting)", str(self.reconnects)),
            ("readers whose failover gave up (started again)", str(self.gaveUp)),
            ("time to converge after the last heal",
             "%.1f s" % (self.converge,) if self.converge >= 0 else "did not converge"),
        ]
        width = max(len(r[0]) for r in rows)
        lines = ["| %-*s | %s |" % (width, "what", "count"),
                 "|%s|---|" % ("-" * (width + 2),)]
        lines += ["| %-*s | %s |" % (width, a, b) for a, b in rows]
        return "\n".join(lines)
