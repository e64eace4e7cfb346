"""
A server's two possible ends of its buddy pair (C{BuddyConnection} and
C{Onetime_s_to_buddy}), as the server sees them:

- L{MasterEnd}: a master spawns its slave (through a
  L{buddy.BuddySupervisor}), answers the slave's C{BuddyConnection} and keeps
  the slave warm with a L{buddyfeed.BuddyFeed} of every durable update.  Master and
  slave alike keep a spare process (started ahead, imported, waiting): the
  next slave of the VM, should the slave die or the slave become master;
- L{SlaveEnd}: a slave dials its master's C{BuddyConnection}, says when the
  master is lost or stopping, and fences it before taking over.

The links, the supervisor and the fencing themselves are L{buddy}'s; this
module only ties them to a node and a channel.
"""

import functools
import os
import sys

from twisted.internet import defer
from twisted.logger import Logger

from snstwist import buddy
from snstwist.core import metrics
from snstwist.core.observers import Observers
from snstwist.core.state import VersionVector
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.server.buddyfeed import slaveFeed

log = Logger()

# How long after its pair is complete a server starts its spare: the
# spare's imports (a CPU for about 0.35 s) then come after the pair's
# start, the promotion or the respawn, not in the middle of them.
SPARE_DELAY = 1.0

def slaveCommand(config, address=None, spare=False):
    """
    The command that starts the slave of the master started with C{config}
    and serving the cluster at C{address}: the same VM, data, routers and
    limits, on a free port of the same host.  With C{spare}, the slave
    starts as a spare: imported and waiting for the order to go on, which
    names the master's address (L{buddy.tellGo}), so that a spare can be
    started before its spawner serves.
    """
    host = config.listen.rsplit(":", 1)[0]
    # Never a pipe to us: a slave outlives its master when it takes over,
    # and a full pipe to a hung master would block it.
    args = buddy.twistdArgs(config.logfile if config.logfile and config.logfile != "-"
                            else os.path.join(config.data, "buddies.log"))
    args += ["sns-server", "--role", "slave", "--vm", config.vm,
             "--listen", host + ":0", "--data", config.data,
             "--router", ",".join(config.routers), "--buddy-pid", str(os.getpid())]
    args += ["--spare"] if spare else ["--buddy", address]
    if config.metricsListen:
        # Master and slave run at once: the slave serves its metrics on
        # a free port of the same host (it logs which).
        args += ["--metrics", config.metricsListen.rsplit(":", 1)[0] + ":0"]
    if config.postRate:
        args += ["--posts-per-second", repr(config.postRate)]
    if config.tokenLifetime:
        args += ["--token-lifetime", repr(config.tokenLifetime)]
    args += config.tlsArgs
    env = dict(os.environ, SNS_SECRET=config.secret, GRPC_ENABLE_FORK_SUPPORT="0")
    return buddy.BuddyCommand(sys.executable, tuple(args), env, buddy.runDirectory(config.data),
                              None if spare else address)


class MasterEnd:
    """
    The master's end of its buddy pair.  C{hello()} is what we tell the
    slave about ourselves; C{command()} the L{buddy.BuddyCommand} that
    starts a slave; C{reactor} spawns it; C{feedTo(address, secret)} makes
    the L{buddyfeed.BuddyFeed} to a slave (L{buddyfeed.slaveFeed}, over gRPC, by
    default).
    Subscribe L{durable} to the node: what is durable here is what the slave
    is fed.  L{fed} counts what every feed of ours carried.

    L{spares} keeps this process's spare (C{command(spare=True)}), started
    L{SPARE_DELAY} after L{keepSpare}, which is called once the pair is
    complete (a master's slave said hello; a slave is a ready standby), so
    that it does not compete with the pair's start for a CPU; the
    supervisor of our slave makes the spare its next slave.
    """

    def __init__(self, node, clock, reactor, secret, hello, command, feedTo=None,
                 fed=None, current=None):
        self.node = node
        self.current = current
        # The pid of our master while we are a slave (the slave's end says).
        self.master = lambda: 0
        self.clock = clock
        self.reactor = reactor
        self.secret = secret
        self.hello = hello
        self.command = command
        self.feedTo = feedTo if feedTo is not None else functools.partial(slaveFeed,
                                                                          clock=clock)
        self.supervisor = None
        self._spares = None
        self._spareDue = None
        self.slaveLink = None
        self.feed = None
        self.fed = fed if fed is not None else metrics.Traffic()

    @property
    def spares(self):
        if self._spares is None:
            self._spares = buddy.BuddySupervisor(self.command(spare=True), self.reactor,
                                                 spare=True, onSpawn=self.tellSpare)
        return self._spares

    def standby(self):
        """
        The server that would take this VM over should this process end now:
        our master while we are a slave, our slave (spawned, or a spare told to
        go on) while we are master and have one; 0 for nobody (a master
        starting or without a slave, a slave or a spare taking over).  None
        while stopping: a spare then hears nothing more.  (A process that
        starts as a slave keeps no spare until it is a ready standby.)
        """
        role = self.current.name if self.current is not None else "starting"
        if role == "slave":
            return self.master() or 0
        if role == "master":
            return (self.supervisor.pid if self.supervisor is not None else None) or 0
        return 0 if role in ("promoting", "starting") else None

    def alone(self):
        """
        This process may be its VM's only server (a master starting, a slave
        or a spare taking over): keep a spare from now on, started at once
        unless one runs, so that a process holding a pipe to us exists as
        early as it can and takes the VM over should we end too (it hears
        that nobody else would); a spare that runs is told so.
        """
        if self._spareDue is not None and self._spareDue.active():
            self._spareDue.cancel()
        if self.spares.state == "running":
            self.tellSpare()
        else:
            self.spares.start()

    def tellSpare(self, _=None):
        """
        Tell our spare, if one waits, who takes the VM over should we end
        before we tell it to go on (L{buddy.tellStandby}): whenever that
        changes (our spare started, our slave started or ended, our
        take-over), so that a spare whose spawner ended knows whether to stop
        or to take the VM over itself.
        """
        process = self._spares.process if self._spares is not None else None
        standby = self.standby()
        if process is not None and standby is not None:
            buddy.tellStandby(process, standby)

    def keepSpare(self):
        """Keep a spare from now on: start one L{SPARE_DELAY} from now, unless one runs."""
        if self._spareDue is None or not self._spareDue.active():
            self._spareDue = self.clock.callLater(SPARE_DELAY, self.spares.start)

    def supervise(self):
        """Spawn our slave (our spare, when there is one), and again whenever it dies."""
        self.supervisor = buddy.BuddySupervisor(self.command(), self.reactor,
                                                spares=self.spares, onSpawn=self.tellSpare,
                                                onEnd=self.tellSpare)
        self.supervisor.start()

    def connection(self):
        """The protocol of one C{BuddyConnection} stream from our slave."""
        return buddy.MasterLink(self.clock, self.hello, self.slaveHello, self.slaveHung,
                                self.slaveStopping)

    def slaveHello(self, link, hello):
        """A (new) slave said hello: feed it everything it lacks, then every durable update."""
        log.info("slave {pid} at {address} connected", pid=hello.pid, address=hello.address)
        if self.supervisor is not None:
            # The slave we spawned is up: the pair is complete.
            self.keepSpare()
        if self.feed is not None:
            self.feed.close().addErrback(
                lambda f: log.failure("closing the feed to the old slave failed", f))
        self.slaveLink = link
        feed = self.feed = self.feedTo(hello.address, self.secret)
        feed.traffic = self.fed
        d = self.node.history.missingPages(VersionVector.fromProto(hello.have), feed.pushPage)
        d.addErrback(lambda f: None if f.check(defer.CancelledError) else log.failure(
            "catching the slave up failed", f))

    def slaveHung(self, hello, why):
        if self.supervisor is not None:
            self.supervisor.kill(why)

    def slaveStopping(self, pid):
        if self.supervisor is not None:
            self.supervisor.stopping(pid)

    def durable(self, updates):
        if self.feed is not None:
            self.feed.push(updates)

    def shutdown(self):
        """Tell the slave we stop in order (it must not take over)."""
        if self.slaveLink is not None:
            self.slaveLink.sendStopping()

    @defer.inlineCallbacks
    def stop(self):
        """Stop the slave and the spare (TERM, then KILL) and close the feed."""
        if self._spareDue is not None and self._spareDue.active():
            self._spareDue.cancel()
        stops = [sup.stop() for sup in (self.supervisor, self._spares) if sup is not None]
        yield defer.gatherResults(stops, consumeErrors=True)
        if self.feed is not None:
            yield self.feed.close()


class SlaveEnd:
    """
    The slave's end of its buddy pair: dials C{master}'s C{BuddyConnection}
    (once L{start}ed) and tells the observers of L{lost} (with why) and of
    L{stopping} what becomes of the master, and those of L{ready} when the
    slave holds (C{held()}, a version vector) all the master held at its
    hello.  With a C{reactor}, the end of the master's process, our parent,
    is also watched through the kernel (L{buddy.watchParent}).  C{masterPid}
    is the pid we were told at start; the master's hello says it again;
    it is fenced only while it is still a server on C{data}, the VM's data
    directory (L{buddy.fence}).
    """

    def __init__(self, clock, secret, master, masterPid, hello, held=VersionVector,
                 reactor=None, data=None):
        self.clock = clock
        self.data = data
        self.reactor = reactor
        self.secret = secret
        self.master = master
        self.startPid = masterPid
        self.hello = hello
        self.held = held
        self.lost = Observers("the master's loss")
        self.stopping = Observers("the master's orderly stop")
        self.ready = Observers("the standby's readiness")
        self.channel = None
        self.link = None
        self.closed = False
        # What the master held when it said hello, until we hold it too.
        self._target = None

    def start(self):
        if self.closed:
            # Stopped while warming up: a stopping slave dials nobody.
            return
        self.channel = grpcbridge.channel(self.master)
        self.link = buddy.SlaveLink(self.clock, self.hello, self.lost, self.stopping, self._dial,
                                    self.masterHello)
        self.link.start()
        if self.reactor is not None:
            # The master spawned us: the kernel tells us at once when its
            # process ends, before its stream's end reaches gRPC.
            watched = buddy.watchParent(self.startPid, self.reactor.callFromThread,
                                        self.link.masterEnded)
            if not watched and self._masterGone():
                # It ended while we started (imports, warm-up): no signal
                # will come, and dialling it for a while would only wait.
                self.link.masterEnded()

    def _masterGone(self):
        """
        Has the master that spawned us ended?  We were reparented, and its
        pid is no server on our data any more (a slave started by hand,
        naming a master that is not its parent, never thinks so of a live one).
        """
        return (self.startPid and os.getppid() != self.startPid
                and not buddy.isServer(self.startPid, self.data))

    def masterHello(self, hello):
        """The master said hello: what it holds (C{hello.have}) is what to hold to be ready."""
        self._target = VersionVector.fromProto(hello.have)
        self.mirrored()

    def mirrored(self):
        """
        Updates from the master were applied: once we hold everything the
        master held when it said hello, we are a ready standby, and the
        observers of L{ready} hear it (once a hello) at once, not at some
        later heartbeat.
        """
        if self._target is not None and self._target.lacking(self.held()) == 0:
            log.info("standby ready: holding all {n} updates master {pid} held at its hello",
                     n=self._target.count(), pid=self.masterPid())
            self._target = None
            self.ready()

    def _dial(self, link):
        grpcbridge.openStream(pbg.ClusterStub(self.channel).BuddyConnection,
                              link, metadata=auth.secretMetadata(self.secret))

    def masterPid(self):
        link = self.link
        return (link.masterPid if link is not None else None) or self.startPid

    def fence(self):
        """Make sure the old master can never write again, and let go of its channel."""
        buddy.fence(self.masterPid(), self.data)
        if self.channel is not None:
            grpcbridge.closeChannel(self.channel).addErrback(
                lambda f: log.failure("closing the channel to the old master failed", f))

    def shutdown(self):
        """Tell the master we stop in order, and stop dialling it."""
        self.closed = True
        if self.link is not None:
            self.link.sendStopping()
            self.link.close()
