"""
A cluster on a L{snstwist.testbed.netbed.NetBed}: the router and each VM in a
host of their own, started, watched and stopped exactly as C{sns-cluster}
does (L{snstwist.commands.cluster.ClusterService}); only the place differs.
And what a VM holds on disk (L{snapshot}), to compare the VMs of a run.

Used by the chaos run and the multi-host integration tests (tests/beds.py).
"""

import os

from snstwist import buddy
from snstwist.commands.cluster import ClusterService
from snstwist.testbed.netbed import IP


class NetCluster(ClusterService):
    """
    An C{sns-cluster} whose router and VMs run in the hosts of a bed:
    host C{router} and hosts C{vm1}, C{vm2}, ...  It starts, watches and
    stops them exactly as C{sns-cluster} does; only the place differs.
    """

    routerPort = 3410
    serverPort = 7000

    def __init__(self, bed, base, vms, secret=None, reactor=None, out=None, hostEnv=None):
        ClusterService.__init__(self, base, vms, "%s:%d" % (bed.address("router"),
                                                             self.routerPort),
                                secret, reactor, out or (lambda line: None))
        self.bed = bed
        # More environment for the processes of some hosts ({host: {name: value}}),
        # such as a clock that disagrees ($SNS_CLOCK_SKEW).
        self.hostEnv = hostEnv or {}

    def command(self, name, args, env):
        env = dict(env, **self.hostEnv.get(name, {}))
        return buddy.BuddyCommand(IP, tuple(self.bed.command(name, args)), env)

    def vmListen(self, index):
        return "%s:%d" % (self.bed.address("vm%d" % (index + 1,)), self.serverPort)


def snapshot(data):
    """
    What a VM holds on disk, to compare VMs: the bytes of each post file and
    the rows of the replicated tables.  Blocking: run it on a thread.
    """
    import sqlite3

    posts = {}
    folder = os.path.join(data, "posts")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        with open(os.path.join(folder, name), "rb") as f:
            posts[name] = f.read()
    rows = {}
    db = sqlite3.connect("file:%s?mode=ro" % (os.path.join(data, "sns.sqlite3"),), uri=True)
    try:
        for table, order in (("users", "name"), ("follows", "follower, followee"),
                             ("record", "origin, seq")):
            rows[table] = db.execute("SELECT * FROM %s ORDER BY %s" % (table, order)).fetchall()
    finally:
        db.close()
    return {"posts": posts, **rows}
