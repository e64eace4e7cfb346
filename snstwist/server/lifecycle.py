"""
The life of one server process around its role machine (L{buddy.Role}):
what it does on becoming master or slave, how a slave takes over (fence the
old master, then take the VM's writer lock), how it stops, and how it ends
when it can not go on.

The role machine decides; this module only carries its outputs out.  It
never answers an RPC: the parts that do read the role from L{CurrentRole}.
"""

import os

from twisted.internet import defer, task
from twisted.logger import Logger

from snstwist import buddy
from snstwist.core import errors, logs
from snstwist.core.observers import Observers
from snstwist.server.process import (
    SETTLE,
    exitWith,
    settleMemory,
    stopOnlyOnce,
    stopReactor,
    withoutCollections,
)
from snstwist.storage.store import DataLocked

log = Logger()

LOCK_RETRY = 0.01


class CurrentRole:
    """
    Which role this process plays: starting, slave, promoting, master or
    stopping, as its role machine says (L{buddy.Role.state}, never a copy).
    The parts that answer differently by role read it (write admission, the
    hello to the routers and to the buddy, membership -> peers); the
    L{Lifecycle} that runs the machine makes it L{follow} the machine.
    Until then (or in a unit test that needs no machine) it is C{fixed}.
    """

    def __init__(self, fixed="starting"):
        self._fixed = fixed
        self._role = None

    def follow(self, role):
        self._role = role

    @property
    def name(self):
        return self._role.state if self._role is not None else self._fixed

    def isMaster(self):
        return self.name == "master"

    def isSlave(self):
        return self.name == "slave"


class Outrun(Exception):
    """Another live server of the VM took its writer lock first: it is the master."""


def lockHolder(data):
    """
    The pid the VM's writer wrote into C{data}/lock when it took the lock
    (L{snstwist.storage.disk.Disk.lock}), or 0 when none can be read.
    """
    try:
        with open(os.path.join(data, "lock"), "rb") as f:
            text = f.read(32).strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def takeLock(node, openStore, clock, deadline, retry=LOCK_RETRY, outrun=lambda: False):
    """
    Take the VM's data over as its writer: C{node} adopts C{openStore()}
    (writer lock and all), tried again every C{retry} seconds while the old
    master still holds the lock, until C{deadline}.  Fires with how many
    updates the mirror had missed; fails with L{DataLocked} past the
    deadline (the old master could not be fenced), with L{Outrun} as soon
    as C{outrun()} says another live server holds the lock (two spares that
    both took the VM over: one wins), or with whatever else went wrong.
    """
    result = defer.Deferred()

    def attempt():
        node.adopt(openStore()).addCallbacks(result.callback, busy)

    def busy(failure):
        if failure.check(DataLocked) and outrun():
            result.errback(Outrun())
        elif failure.check(DataLocked) and clock.seconds() <= deadline:
            clock.callLater(retry, attempt)
        else:
            result.errback(failure)

    attempt()
    return result


class Lifecycle:
    """
    The hooks of one process's role machine (C{serveAsMaster}, C{standBy},
    C{takeOver}, C{shutdown}) and the process around them: the pidfile,
    memory settling, and the exit of a process that can not go on.

    C{serve()} starts serving (gRPC and the router links) or, when already
    serving, says hello again with the new role.  C{masterEnd} and
    C{slaveEnd} are this process's ends of the buddy pair; C{openStore()}
    opens the VM's data as its writer.
    """

    lockDeadline = 10.0
    orphanStop = 10.0
    # A promoted master tells its spare to go on this long after it
    # serves: the spare's warm-up (reading the VM's users, follows and
    # marks, then the master's catch-up) would otherwise compete for the
    # CPU with the promotion's first Logins and its peers' reconnections
    # (benchmarks.md, "Promotion with spares under load").
    promotedSpareDelay = 0.25
    # How a spare hears its order: a class attribute, so that a test can
    # give it another door than this process's stdin.
    awaitGo = staticmethod(buddy.awaitGo)

    def __init__(self, config, current, node, serve, masterEnd, slaveEnd, openStore,
                 reactor, clock):
        self.config = config
        self.current = current
        self.node = node
        self.serve = serve
        self.masterEnd = masterEnd
        self.slaveEnd = slaveEnd
        self.openStore = openStore
        self.reactor = reactor
        self.clock = clock
        self.role = buddy.Role(self)
        current.follow(self.role)
        slaveEnd.lost.add(self.role.masterLost)
        slaveEnd.stopping.add(self.masterStopping)
        self.ready = None
        self.orphaned = None
        self.supervising = None
        self.pidfile = buddy.Pidfile(buddy.runDirectory(config.data), os.getpid())
        # Told once this process serves as its VM's master.
        self.mastering = Observers("serving as master")
        self.settler = task.LoopingCall(settleMemory)
        self.settler.clock = clock

    @property
    def vm(self):
        return self.config.vm

    def start(self):
        """
        Load (a master) or warm up (a slave), then play the role started
        with; a spare first waits for the order to go on (L{awaitGo}).
        """
        if self.clock is self.reactor:
            stopOnlyOnce(self.reactor)
        self.pidfile.write()
        if self.config.role == "master":
            # Alone on the VM until our slave runs: a spare first, so that
            # the VM is not left without a server should we die loading.
            self.masterEnd.alone()
            self.ready = withoutCollections(self.node.load)
            # Serving in a turn of its own: the load's last slice and the
            # freeze of what it loaded end this one (a turn of each bounded).
            self.ready.addCallback(lambda _: task.deferLater(self.clock, 0,
                                                             self.role.startAsMaster))
            self.ready.addCallback(self._settleEvery)
        elif self.config.spare:
            log.info("spare of VM {vm} waiting for the order to go on (pid {pid})",
                     vm=self.vm, pid=os.getpid())
            self.ready = self.awaitGo(self.reactor).addCallback(self._goOn)
        else:
            # A slave settles its memory once warm (standBy).
            self.ready = defer.maybeDeferred(self.role.startAsSlave)
            self.ready.addCallback(self._settleEvery)
        self.ready.addErrback(self.failed)

    def _goOn(self, order):
        """
        The spare's L{buddy.Order} came: go on as a slave; or the process
        that started it ended first.  Then the server it named to take the VM
        over (L{buddy.tellStandby}) does, and this spare, nobody's any more,
        stops; or none is left (it named none, or the one it named is gone
        too): this spare takes the VM over itself, as a slave whose master
        died does, so that the VM is not left without a server.
        """
        if order.go:
            if order.master:
                self.slaveEnd.master = order.master
            if not self.slaveEnd.master:
                log.critical("spare told to go on with no master's address: stopping")
                stopReactor(self.reactor)
                return None
            log.info("spare told to go on as the slave of VM {vm}", vm=self.vm)
            self.role.startAsSlave()
            return self._settleEvery(None)
        standby = order.standby
        if standby is None or (standby and buddy.isServer(standby, self.config.data)):
            log.info("the process that started this spare ended before it needed it"
                     " ({who}): stopping", who="it named nobody to go by" if standby is None
                     else "server %d takes the VM over" % (standby,))
            stopReactor(self.reactor)
            return None
        self.role.lastServerLost("the process that started this spare ended, and no other"
                                 " server of the VM lives (named: %d)" % (standby,))
        return self._settleEvery(None)

    def stop(self):
        """The orderly stop begins: nothing is taken over or respawned any more."""
        for call in (self.orphaned, self.supervising):
            if call is not None and call.active():
                call.cancel()
        if self.settler.running:
            self.settler.stop()
        self.role.stop()

    def _settleEvery(self, _):
        self.settler.start(SETTLE, now=False).addErrback(
            lambda f: log.failure("settling memory failed", f))

    def failed(self, failure):
        """
        The server can not go on (loading or taking over failed): say why
        and exit with status 1, once the services have stopped.
        """
        if failure.check(errors.DataDamaged):
            # One sentence: which file, and what to do.
            log.critical("VM {vm} can not start: {why}", vm=self.vm, why=failure.value.message)
        else:
            log.failure("server of VM {vm} could not start", failure, vm=self.vm)
        exitWith(self.reactor, 1)

    # -- the role machine's hooks (called by buddy.Role only)

    def serveAsMaster(self, promoted):
        logs.setIdentity(self.vm, "master")
        address = self.serve()
        self.mastering()
        # Our slave (a spare told to go on, or a spawn) in a later turn:
        # serving (two gRPC servers, the router links) fills this one.
        self.supervising = self.clock.callLater(
            self.promotedSpareDelay if promoted else 0, self._supervise)
        log.info("master of VM {vm} serving at {address} (pid {pid}, data {data})",
                 vm=self.vm, address=address, pid=os.getpid(), data=self.config.data)

    def _supervise(self):
        self.supervising = None
        self.masterEnd.supervise()

    def standBy(self):
        """
        Register as the VM's standby at once, warm up from the VM's files
        (read without the lock), then dial the master, whose hello answer
        brings whatever the files did not have yet.  A standby is correct
        even cold: taking over reads the files again under the lock.
        """
        logs.setIdentity(self.vm, "slave")
        address = self.serve()
        node = self.node
        d = withoutCollections(node.history.warmUp)
        d.addCallback(lambda _: self.slaveEnd.start())
        d.addErrback(self.failed)
        log.info("slave of VM {vm} at {address} standing by for master {master} (pid {pid})",
                 vm=self.vm, address=address, master=self.slaveEnd.master,
                 pid=self.config.masterPid)

    def takeOver(self, why):
        logs.setIdentity(self.vm, "promoting")
        log.warn("master {pid} of VM {vm} lost ({why}): fencing it and taking over",
                 pid=self.slaveEnd.masterPid(), vm=self.vm, why=why)
        old = self.slaveEnd.masterPid()
        self.slaveEnd.fence()
        # Alone on the VM until we have a slave: a spare at once (or ours,
        # told that nobody would take over from us).
        self.masterEnd.alone()
        d = takeLock(self.node, self.openStore, self.clock,
                     self.clock.seconds() + self.lockDeadline, outrun=lambda: self._outrun(old))

        def locked(added):
            log.info("took the writer lock of {data}; {n} updates not mirrored before",
                     data=self.config.data, n=added)
            self.role.promoted()

        def gaveUp(f):
            if f.check(Outrun):
                log.info("server {pid} took VM {vm} over first: stopping",
                         pid=lockHolder(self.config.data), vm=self.vm)
                stopReactor(self.reactor)
                return
            if f.check(DataLocked):
                log.critical("the old master still holds {data}: giving up",
                             data=self.config.data)
            self.failed(f)

        d.addCallbacks(locked, gaveUp).addErrback(self.failed)

    def _outrun(self, old):
        """Does a live server other than the old master C{old} hold the VM's lock?"""
        holder = lockHolder(self.config.data)
        return holder not in (0, old, os.getpid()) and buddy.isServer(holder, self.config.data)

    def shutdown(self):
        self.slaveEnd.shutdown()
        self.masterEnd.shutdown()

    def masterStopping(self):
        """
        The master is stopping in order and stops us next (SIGTERM): take
        nothing over from now on, and wait for that signal rather than stop
        first (twistd logs a second stop as a critical error).  Should the
        master die before it signals us, we stop by ourselves.
        """
        log.info("master is stopping in order: stopping too")
        self.role.stop()
        self.orphaned = self.clock.callLater(self.orphanStop, stopReactor, self.reactor)
