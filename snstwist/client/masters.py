"""
The client's two masters: asking a router for them (C{Onetime_c_to_r}),
and the failover that replaces a dead master1 by master2.

L{Masters} keeps master1 (the one the client is logged in on) and master2
(where it goes next, on another VM).  At most one failover runs at a time:
whoever finds master1 dead (a broken session, a failed command) joins the
failover in progress, or starts one; that is the machine of L{Failover}.
A failover tries master2, then whatever a router offers, waiting longer
after each failed attempt (L{Reconnects}), and gives up after
L{FAILOVER_DEADLINE} seconds.
"""

import random
from typing import Protocol

import attrs
from automat import TypeMachineBuilder, pep614
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.client.errors import ClusterUnreachable
from snstwist.core.backoff import backoffPolicy
from snstwist.core.errors import RemoteError, Status
from snstwist.core.machines import stateOf
from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg

log = Logger()

CALL_TIMEOUT = 5.0
FAILOVER_DEADLINE = 15.0


@attrs.frozen
class Master:
    vm: str
    address: str


def master(address):
    """The L{Master} of a router's C{ServerAddress}, or None for an empty one."""
    return Master(address.vm, address.address) if address.address else None


@attrs.define
class Reconnects:
    """
    The client's run of failed attempts to get a working session: each one
    waits longer than the last (L{backoffPolicy}: exponential, with
    jitter), and the run gives up C{deadline} seconds after it began.  A
    session that works ends the run (L{healthy}).  A session that breaks
    before it works (a timeline that never got its history, a session
    refused) counts as a failed attempt, so a client can not reconnect in a
    tight loop forever.
    """

    clock: object
    deadline: float = FAILOVER_DEADLINE
    delay: object = attrs.field(factory=lambda: backoffPolicy(0.02, 1.0))
    since: float | None = None
    attempts: int = 0
    problem: object = None

    @property
    def troubled(self):
        return self.since is not None

    def failed(self, problem):
        """
        One more attempt failed because of C{problem}: the seconds to wait
        before the next, or L{ClusterUnreachable} once past the deadline
        (and the run starts afresh for whoever tries next).
        """
        now = self.clock.seconds()
        if self.since is None:
            self.since = now
        self.attempts += 1
        self._remember(problem)
        if now - self.since > self.deadline:
            attempts, since = self.attempts, self.since
            cause = self.problem
            self.healthy()
            raise ClusterUnreachable("gave up after %d attempts in %.0fs; cause: %s"
                                     % (attempts, now - since, _describe(cause)))
        return self.delay(self.attempts - 1)

    def unproven(self, problem):
        """A new session that has not worked yet: its loss continues the run."""
        if self.since is None:
            self.since = self.clock.seconds()
        self._remember(problem)

    def note(self, problem):
        """A session of the run ended because of C{problem}: kept if it tells more."""
        self._remember(problem)

    def _remember(self, problem):
        """
        Keep the most telling cause of the run for the give-up line: gRPC
        core sometimes reports a stream the server refused (a session cap,
        say) as INTERNAL "Internal error from Core" when the client was
        already writing on it, so such a report replaces no cause known;
        and our own words for a session that broke (a string) do not
        replace an error a server or router gave in words.  Which of those
        came last is a race between the client's writes and the refusal.
        """
        if self.problem is not None and (
                _coreInternal(problem) or (_worded(self.problem) and not _worded(problem))):
            return
        self.problem = problem

    def healthy(self):
        self.since, self.attempts, self.problem = None, 0, None


def _worded(problem):
    """An error a server or router gave (not a string of ours, not gRPC core's INTERNAL)."""
    if isinstance(problem, Failure):
        problem = problem.value
    return isinstance(problem, Exception) and not _coreInternal(problem)


def _coreInternal(problem):
    if isinstance(problem, Failure):
        problem = problem.value
    return (isinstance(problem, RemoteError) and problem.status is Status.INTERNAL
            and "from Core" in problem.message)


def _describe(problem):
    if isinstance(problem, Failure):
        problem = problem.value
    if isinstance(problem, RemoteError):
        return "%s: %s" % (problem.status.name, problem.message)
    return str(problem) or type(problem).__name__


class Failover(Protocol):
    """The inputs of the failover machine: one failover at a time, joined by all."""

    def join(self, waiter: defer.Deferred) -> None:
        """
        Master1 is dead: start a failover, or join the one in progress.
        C{waiter} fires when it is over (or fails with why it gave up).
        """

    def whenSettled(self, waiter: defer.Deferred) -> None:
        """C{waiter} fires once no failover is in progress (at once if none is)."""

    def finished(self, result: object) -> None:
        """The failover in progress is over: None, or the Failure it gave up with."""


class FailoverWork(Protocol):
    def replaceMaster1(self) -> defer.Deferred:
        """Do the failover; the Deferred fires when a new master1 works."""


def _buildFailover():
    machine = TypeMachineBuilder(Failover, FailoverWork)
    steady = machine.state("steady")
    failingOver = machine.state("failingOver", lambda inputs, work, waiter: [waiter])

    @pep614(steady.upon(Failover.join).to(failingOver))
    def start(inputs: Failover, work: FailoverWork, waiter: defer.Deferred) -> None:
        # The waiter is in the new state's list already.  Should the
        # failover end at once, finished() runs after this transition.
        work.replaceMaster1().addBoth(inputs.finished)

    @pep614(failingOver.upon(Failover.join).loop())
    @pep614(failingOver.upon(Failover.whenSettled).loop())
    def wait(inputs: Failover, work: FailoverWork, waiters: list,
             waiter: defer.Deferred) -> None:
        waiters.append(waiter)

    @pep614(steady.upon(Failover.whenSettled).loop())
    def settled(inputs: Failover, work: FailoverWork, waiter: defer.Deferred) -> None:
        waiter.callback(None)

    @pep614(failingOver.upon(Failover.finished).to(steady))
    def done(inputs: Failover, work: FailoverWork, waiters: list, result: object) -> None:
        # Whoever is told may find master1 dead again: that starts a new
        # failover (the state is steady by now).
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    return machine.build()


_Failover = _buildFailover()


class Masters:
    """
    Master1 and master2 of one client, found through C{routers}.

    C{login(master)} (a coroutine function) logs the client in on C{master}
    and opens its session there; C{abandon()} drops the session on a master
    being replaced; C{onReconnect(address)} is told where a failover goes;
    C{channel(address)} makes a channel (with the client's TLS).
    """

    def __init__(self, routers, user, clock, channel, login, abandon, onReconnect,
                 jitter=random.random):
        self.routers = list(routers)
        self.user = user
        self.clock = clock
        self.channel = channel
        self.login = login
        self.abandon = abandon
        self.onReconnect = onReconnect
        self.master1 = None
        self.master2 = None
        self._closed = False
        self.reconnects = Reconnects(clock, delay=backoffPolicy(0.02, 1.0, jitter=jitter))
        self._refillDelay = backoffPolicy(0.05, 2.0, jitter=jitter)
        self._refillWait = None
        self._failover = _Failover(self)

    @property
    def closed(self):
        return self._closed

    @closed.setter
    def closed(self, closed):
        """The client is closing: nothing more is asked, nothing left waiting."""
        self._closed = closed
        if closed and self._refillWait is not None:
            self._refillWait.cancel()

    @property
    def failingOver(self):
        return stateOf(self._failover) == "failingOver"

    async def ask(self, exclude=()):
        """A router's C{MasterReply} for our user: the first router that answers."""
        request = pb.MasterRequest(user=self.user, exclude_vms=sorted(exclude))
        problems = []
        for address in self.routers:
            channel = self.channel(address)
            try:
                return await grpcbridge.call(pbg.RouterStub(channel).Onetime_c_to_r,
                                             request, timeout=CALL_TIMEOUT)
            except RemoteError as e:
                problems.append("router %s: %s" % (address, e.message))
            finally:
                await grpcbridge.closeChannel(channel)
        raise ClusterUnreachable("; ".join(problems))

    def failOver(self):
        """Start a failover, or join the one in progress."""
        waiter = defer.Deferred()
        self._failover.join(waiter)
        return waiter

    def settled(self):
        """Fires once no failover is in progress."""
        waiter = defer.Deferred()
        self._failover.whenSettled(waiter)
        return waiter

    def replaceMaster1(self):
        return defer.ensureDeferred(self._replaceMaster1())

    async def _replaceMaster1(self):
        dead = self.master1
        self.abandon()
        if self.reconnects.troubled:
            # The last session broke before it worked: not at once again.
            await deferLater(self.clock, self._nextAttempt(dead, self.reconnects.problem),
                             lambda: None)
        candidate = self.master2
        self.master2 = None
        while not self.closed:
            if candidate is None:
                try:
                    reply = await self.ask()
                    candidate = master(reply.master1)
                    self.master2 = master(reply.master2)
                except ClusterUnreachable as e:
                    problem = e
                    candidate = None
            if candidate is not None:
                self.onReconnect(candidate.address)
                try:
                    await self.login(candidate)
                    self.master1 = candidate
                    break
                except RemoteError as e:
                    problem = e
                    candidate = None
            await deferLater(self.clock, self._nextAttempt(dead, problem), lambda: None)
        if self.closed:
            return
        # Until this session works, losing it is one more failed attempt.
        self.reconnects.unproven("the session with %s broke before it worked"
                                 % (self.master1.address,))
        if self.master2 is None or self.master2.vm == self.master1.vm:
            d = defer.ensureDeferred(self._refillMaster2())
            d.addErrback(lambda f: log.failure("finding a new master2 failed", f))

    def _nextAttempt(self, dead, problem):
        try:
            return self.reconnects.failed(problem)
        except ClusterUnreachable as e:
            raise ClusterUnreachable("failover from %s failed: %s" % (
                dead.address if dead else "?", e))

    async def _refillMaster2(self):
        """
        Find a master2 outside master1's VM.  When no router has one yet
        (the other VM's master died too, and its promoted slave registers
        tens of milliseconds later, or that VM is away), ask again, waiting
        longer each time (50 ms doubling to 2 s, with jitter), until one
        is found, master1 changes (a failover asks for itself), the client
        closes, or L{FAILOVER_DEADLINE} has passed: the next failover then
        goes straight to a known master2 instead of asking a router first.
        """
        one = self.master1
        started = self.clock.seconds()
        attempt = 0
        while True:
            try:
                reply = await self.ask(exclude={one.vm})
            except ClusterUnreachable as e:
                if attempt == 0:
                    log.info("no master2 outside {vm} for now: {why}", vm=one.vm, why=e)
            else:
                if self.master1 is one:
                    self.master2 = master(reply.master1)
                return
            if self.master1 is not one or self.closed or (
                    self.clock.seconds() - started > FAILOVER_DEADLINE):
                return
            self.master2 = None
            self._refillWait = deferLater(self.clock, self._refillDelay(attempt), lambda: None)
            try:
                await self._refillWait
            except defer.CancelledError:
                return
            finally:
                self._refillWait = None
            attempt += 1
            if self.master1 is not one or self.failingOver:
                return
