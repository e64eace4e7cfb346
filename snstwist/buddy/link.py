"""
The two ends of C{BuddyConnection}, the stream between a VM's master and
its slave: L{SlaveLink} (the slave dials) and L{MasterLink} (the master
answers).  Hello with pids, heartbeats both ways with a timeout that
catches a hung process (not only a dead one), and the orderly-shutdown
notice.  What to do about a lost or hung buddy is the caller's (the role,
the supervisor): a link only reports.
"""

from typing import Protocol

from automat import TypeMachineBuilder, pep614
from twisted.logger import Logger

from snstwist.core import errors
from snstwist.core.machines import stateOf
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


class SlaveLinkInputs(Protocol):
    """What can happen to the slave's link to its master."""

    def start(self) -> None:
        """Dial the master."""

    def heardHello(self, pid: int) -> None:
        """The master said hello: its pid is C{pid}."""

    def streamLost(self, why: str) -> None:
        """The stream broke or ended."""

    def silent(self, why: str) -> None:
        """The master's heartbeats stopped (the stream is aborted already)."""

    def masterStopping(self) -> None:
        """The master announced an orderly stop."""

    def masterEnded(self) -> None:
        """The kernel says the master's process ended (L{processes.watchParent})."""

    def redial(self) -> None:
        """The wait before dialling again is over."""

    def close(self) -> None:
        """We are done with the master: no more reports."""

    def _tryAgain(self, why: str) -> None:
        """A stream failed before the master's hello, within the window."""

    def _giveUp(self, why: str) -> None:
        """A stream failed before the master's hello, past the window."""


def _buildSlaveLink():
    machine = TypeMachineBuilder(SlaveLinkInputs, SlaveLink)
    idle = machine.state("idle")
    reaching = machine.state("reaching")  # dialled; the master's hello not heard yet
    waiting = machine.state("waiting", lambda inputs, link, why: link.clock.callLater(
        link.redialDelay, inputs.redial))
    linked = machine.state("linked")  # the master said hello
    done = machine.state("done")

    @pep614(idle.upon(SlaveLinkInputs.start).to(reaching))
    def dial(inputs: SlaveLinkInputs, link: SlaveLink) -> None:
        link.since = link.clock.seconds()
        link.connect(link)

    @pep614(waiting.upon(SlaveLinkInputs.redial).to(reaching))
    def redial(inputs: SlaveLinkInputs, link: SlaveLink, pending: object) -> None:
        link.connect(link)

    @pep614(reaching.upon(SlaveLinkInputs.heardHello).to(linked))
    @pep614(linked.upon(SlaveLinkInputs.heardHello).loop())
    def learnPid(inputs: SlaveLinkInputs, link: SlaveLink, pid: int) -> None:
        link.masterPid = pid

    @pep614(reaching.upon(SlaveLinkInputs.streamLost).loop())
    def notReached(inputs: SlaveLinkInputs, link: SlaveLink, why: str) -> None:
        # Which way it goes depends on the time: the next input says.
        if link.clock.seconds() - link.since < TIMEOUT:
            inputs._tryAgain(why)
        else:
            inputs._giveUp(why)

    @pep614(reaching.upon(SlaveLinkInputs._tryAgain).to(waiting))
    def tryAgain(inputs: SlaveLinkInputs, link: SlaveLink, why: str) -> None:
        if link.redials == 0:
            log.info("master not reached yet ({why}): dialling again", why=why)
        link.redials += 1

    @pep614(reaching.upon(SlaveLinkInputs._giveUp).to(done))
    @pep614(linked.upon(SlaveLinkInputs.streamLost).to(done))
    def broke(inputs: SlaveLinkInputs, link: SlaveLink, why: str) -> None:
        link.onMasterLost("buddy stream broke: %s" % (why,))

    @pep614(reaching.upon(SlaveLinkInputs.silent).to(done))
    @pep614(linked.upon(SlaveLinkInputs.silent).to(done))
    def hung(inputs: SlaveLinkInputs, link: SlaveLink, why: str) -> None:
        link.onMasterLost("master hung: " + why)

    @pep614(reaching.upon(SlaveLinkInputs.masterEnded).to(done))
    @pep614(linked.upon(SlaveLinkInputs.masterEnded).to(done))
    def ended(inputs: SlaveLinkInputs, link: SlaveLink) -> None:
        # Dead for sure, not merely unreached: no window to dial again in.
        # (Its stream ends with the channel, which the take-over closes.)
        link.onMasterLost("master process ended")

    @pep614(waiting.upon(SlaveLinkInputs.masterEnded).to(done))
    def endedMeanwhile(inputs: SlaveLinkInputs, link: SlaveLink, pending: object) -> None:
        pending.cancel()
        link.onMasterLost("master process ended")

    @pep614(reaching.upon(SlaveLinkInputs.masterStopping).to(done))
    @pep614(linked.upon(SlaveLinkInputs.masterStopping).to(done))
    def stopping(inputs: SlaveLinkInputs, link: SlaveLink) -> None:
        link.onMasterStopping()

    @pep614(idle.upon(SlaveLinkInputs.close).to(done))
    @pep614(reaching.upon(SlaveLinkInputs.close).to(done))
    @pep614(linked.upon(SlaveLinkInputs.close).to(done))
    @pep614(done.upon(SlaveLinkInputs.close).loop())
    def closeStream(inputs: SlaveLinkInputs, link: SlaveLink) -> None:
        if link.stream is not None:
            link.stream.close()

    @pep614(waiting.upon(SlaveLinkInputs.close).to(done))
    def cancelRedial(inputs: SlaveLinkInputs, link: SlaveLink, pending: object) -> None:
        pending.cancel()

    @pep614(waiting.upon(SlaveLinkInputs.silent).to(done))
    def hungMeanwhile(inputs: SlaveLinkInputs, link: SlaveLink, pending: object,
                      why: str) -> None:
        # The stream's end reached us before its silence did.
        pending.cancel()
        link.onMasterLost("master hung: " + why)

    # Once done, nothing is reported again; the late end of a stream we
    # closed, or of one whose master went silent, changes nothing.
    for ignored in (SlaveLinkInputs.heardHello, SlaveLinkInputs.streamLost,
                    SlaveLinkInputs.silent, SlaveLinkInputs.masterStopping,
                    SlaveLinkInputs.masterEnded):
        done.upon(ignored).loop().returns(None)
    idle.upon(SlaveLinkInputs.masterEnded).loop().returns(None)
    return machine.build()


class SlaveLink(_BuddyEnd):
    """
    The slave's end of C{BuddyConnection}: C{connect(link)} opens a stream
    to the master and connects this link to it; C{onMasterHello(hello)}
    hears the master's hello (what it holds: C{hello.have}).  A broken stream or missing
    heartbeats mean the master is lost, and so does the kernel's word that
    its process ended (L{masterEnded}); a stopping notice means the pair is
    being shut down in order.  Either is reported once (the link is then
    done), and only until L{close}.

    Until the master's hello has arrived, a failed stream is dialled again
    for up to TIMEOUT: a live master on a loaded machine may miss one
    connection attempt, and a slave must never fence a live master for that.
    The redial interval is fixed, not a L{backoffPolicy}: one slave dials
    one master on its own VM within a 2 s window, so there is no crowd to
    spread out, and a longer wait would only use up the window.

    The link is a typed Automat machine (L{SlaveLinkInputs}): idle,
    reaching, waiting (to dial again), linked, done.
    """

    redialDelay = HEARTBEAT / 5

    def __init__(self, clock, hello, onMasterLost, onMasterStopping, connect,
                 onMasterHello=lambda hello: None):
        self.clock = clock
        self.hello = hello
        self.onMasterLost = onMasterLost
        self.onMasterStopping = onMasterStopping
        self.onMasterHello = onMasterHello
        self.connect = connect
        self.stream = None
        self.beats = None
        self.masterPid = None
        self.since = None
        self.redials = 0
        self._machine = _SlaveLink(self)
        self.start = self._machine.start
        self.silent = self._machine.silent
        self.masterEnded = self._machine.masterEnded
        self.close = self._machine.close

    @property
    def state(self):
        """idle, reaching, waiting, linked or done."""
        return stateOf(self._machine)

    def messageReceived(self, message):
        if not self._checked(message):
            return
        self.beats.heard()
        kind = message.WhichOneof("kind")
        if kind == "hello":
            self._machine.heardHello(message.hello.pid)
            if self.state == "linked":
                self.onMasterHello(message.hello)
        elif kind == "stopping":
            self._machine.masterStopping()

    def connectionLost(self, reason):
        self._stopBeats()
        self._machine.streamLost(reason.getErrorMessage() if reason else "ended")


_SlaveLink = _buildSlaveLink()


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
