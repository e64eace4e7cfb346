"""
The two ends of C{BuddyConnection}, the stream between a VM's master and
its slave: L{SlaveLink} (the slave dials) and L{MasterLink} (the master
answers).  Hello with pids, heartbeats both ways with a timeout that
catches a hung process (not only a dead one), and the orderly-shutdown
notice.  What to do about a lost or hung buddy is the caller's (the role,
the supervisor): a link only reports.
"""

from twisted.logger import Logger

from snstwist.core import errors
from snstwist.core.model import checkHeartbeat, checkServerHello, checkVersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.heartbeat import Heartbeat

log = Logger()

HEARTBEAT = 0.25
_BEAT = pb.BuddyMessage(heartbeat=pb.Heartbeat())
TIMEOUT = 8 * HEARTBEAT  # 2 s: a hung master is caught, a starved one is not


def checkBuddyMessage(message):
    """The bounds of a C{BuddyConnection} message."""
    kind = message.WhichOneof("kind")
    if kind == "hello":
        checkServerHello(message.hello)
        checkVersionVector(message.hello.have)
    elif kind == "heartbeat":
        checkHeartbeat(message.heartbeat)


class _BuddyEnd:
    """
    What both ends of C{BuddyConnection} do: say hello with our pid,
    heartbeat, notice silence (C{silent(why)}), and announce an orderly stop.
    """

    stream = None
    beats = None

    def makeConnection(self, stream):
        self.stream = stream
        stream.send(pb.BuddyMessage(hello=self.hello()))
        self.beats = Heartbeat(self.clock, HEARTBEAT, TIMEOUT, lambda: stream.send(_BEAT),
                               self._silent)

    def _silent(self, seconds):
        self.stream.abort()
        self.silent("no heartbeat for %.2fs" % (seconds,))

    def _checked(self, message):
        """
        Is C{message} within its bounds?  A buddy that breaks them is treated
        as one that went silent.
        """
        try:
            checkBuddyMessage(message)
        except errors.SNSError as e:
            log.warn("bad message from buddy: {e}", e=e.message)
            self.stream.abort(e)
            return False
        return True

    def sendStopping(self):
        if self.stream is not None:
            self.stream.send(pb.BuddyMessage(stopping=True))

    def _stopBeats(self):
        if self.beats is not None:
            self.beats.stop()
        self.stream = None


class SlaveLink(_BuddyEnd):
    """
    The slave's end of C{BuddyConnection}: C{connect(link)} opens a stream
    to the master and connects this link to it.  A broken stream or missing
    heartbeats mean the master is lost; a stopping notice means the pair is
    being shut down in order.

    Until the master's hello has arrived, a failed stream is dialled again
    for up to TIMEOUT: a live master on a loaded machine may miss one
    connection attempt, and a slave must never fence a live master for that.
    The redial interval is fixed, not a L{backoffPolicy}: one slave dials
    one master on its own VM within a 2 s window, so there is no crowd to
    spread out, and a longer wait would only use up the window.
    """

    redialDelay = HEARTBEAT / 5

    def __init__(self, clock, hello, onMasterLost, onMasterStopping, connect):
        self.clock = clock
        self.hello = hello
        self.onMasterLost = onMasterLost
        self.onMasterStopping = onMasterStopping
        self.connect = connect
        self.stream = None
        self.beats = None
        self.masterPid = None
        self.closing = False
        self.since = None
        self.redial = None
        self.redials = 0

    def start(self):
        """Dial the master."""
        self.since = self.clock.seconds()
        self.connect(self)

    def _redial(self):
        self.redial = None
        if not self.closing:
            self.connect(self)

    def silent(self, why):
        self.closing = True
        self.onMasterLost("master hung: " + why)

    def messageReceived(self, message):
        if not self._checked(message):
            return
        self.beats.heard()
        kind = message.WhichOneof("kind")
        if kind == "hello":
            self.masterPid = message.hello.pid
        elif kind == "stopping":
            self.closing = True
            self.onMasterStopping()

    def close(self):
        self.closing = True
        if self.redial is not None and self.redial.active():
            self.redial.cancel()
        self.redial = None
        if self.stream is not None:
            self.stream.close()

    def connectionLost(self, reason):
        self._stopBeats()
        if self.closing:
            return
        why = reason.getErrorMessage() if reason else "ended"
        if self.masterPid is None and self.clock.seconds() - self.since < TIMEOUT:
            if self.redials == 0:
                log.info("master not reached yet ({why}): dialling again", why=why)
            self.redials += 1
            self.redial = self.clock.callLater(self.redialDelay, self._redial)
            return
        self.onMasterLost("buddy stream broke: %s" % (why,))


class MasterLink(_BuddyEnd):
    """
    The master's end of C{BuddyConnection}: learns the slave's pid and
    address from its hello, and kills a slave whose heartbeats stop.
    """

    def __init__(self, clock, hello, onSlaveHello, onSlaveHung, onSlaveStopping):
        self.clock = clock
        self.hello = hello
        self.onSlaveHello = onSlaveHello
        self.onSlaveHung = onSlaveHung
        self.onSlaveStopping = onSlaveStopping
        self.stream = None
        self.beats = None
        self.slave = None

    def silent(self, why):
        self.onSlaveHung(self.slave, why)

    def messageReceived(self, message):
        if not self._checked(message):
            return
        self.beats.heard()
        kind = message.WhichOneof("kind")
        if kind == "hello":
            self.slave = message.hello
            self.onSlaveHello(self, message.hello)
        elif kind == "stopping" and self.slave is not None:
            self.onSlaveStopping(self.slave.pid)

    def connectionLost(self, reason):
        self._stopBeats()
