"""
The role of one server process: starting, slave, promoting, master,
stopping; a typed Automat machine.

The role changes only by its inputs (L{RoleInputs}); the server does the
work of each change in its hooks (L{RoleHooks}) and asks the role which it
is through L{Role.state}, never through a copy of its own.
"""

from typing import Protocol

from automat import TypeMachineBuilder, pep614

from snstwist.core import metrics
from snstwist.core.machines import stateOf


class RoleInputs(Protocol):
    """What can happen to a server process's role."""

    def startAsMaster(self) -> None:
        """Started with the master role (its data loaded)."""

    def startAsSlave(self) -> None:
        """Started with the slave role."""

    def masterLost(self, why: str) -> None:
        """The master's stream broke or its heartbeats stopped."""

    def promoted(self) -> None:
        """Fencing done and writer lock taken."""

    def lastServerLost(self, why: str) -> None:
        """
        A spare's spawner ended, and no other server of the VM lives to take
        it over (L{orders}): the spare takes it over itself.
        """

    def stop(self) -> None:
        """Orderly shutdown (SIGTERM, or the master's stopping notice)."""


class RoleHooks(Protocol):
    """The server's work on each change of role."""

    def serveAsMaster(self, promoted: bool) -> None:
        """
        Serve clients and replicate; spawn and watch the slave.  C{promoted}:
        a slave that took over (not a master started as one).
        """

    def standBy(self) -> None:
        """Mirror the master's updates and watch the master."""

    def takeOver(self, why: str) -> None:
        """Fence the lost master and take the writer lock."""

    def shutdown(self) -> None:
        """Tell the buddy we stop in order."""


def _build():
    machine = TypeMachineBuilder(RoleInputs, RoleHooks)
    starting = machine.state("starting")
    slave = machine.state("slave")
    promoting = machine.state("promoting")
    master = machine.state("master")
    stopping = machine.state("stopping")

    @pep614(starting.upon(RoleInputs.startAsMaster).to(master))
    def serveAsMaster(inputs: RoleInputs, hooks: RoleHooks) -> None:
        hooks.serveAsMaster(False)

    @pep614(starting.upon(RoleInputs.startAsSlave).to(slave))
    def standBy(inputs: RoleInputs, hooks: RoleHooks) -> None:
        hooks.standBy()

    @pep614(slave.upon(RoleInputs.masterLost).to(promoting))
    @pep614(starting.upon(RoleInputs.lastServerLost).to(promoting))
    def takeOver(inputs: RoleInputs, hooks: RoleHooks, why: str) -> None:
        hooks.takeOver(why)

    @pep614(promoting.upon(RoleInputs.promoted).to(master))
    def promoted(inputs: RoleInputs, hooks: RoleHooks) -> None:
        metrics.promotions.inc()
        hooks.serveAsMaster(True)

    # A second report of the lost master while taking over, or a report
    # about ourselves once master (a stale link), changes nothing; only a
    # spare waiting for its order (still starting) hears of the last
    # server's end.
    promoting.upon(RoleInputs.masterLost).loop().returns(None)
    master.upon(RoleInputs.masterLost).loop().returns(None)
    for state in (slave, promoting, master):
        state.upon(RoleInputs.lastServerLost).loop().returns(None)

    @pep614(starting.upon(RoleInputs.stop).to(stopping))
    @pep614(slave.upon(RoleInputs.stop).to(stopping))
    @pep614(promoting.upon(RoleInputs.stop).to(stopping))
    @pep614(master.upon(RoleInputs.stop).to(stopping))
    def shutdown(inputs: RoleInputs, hooks: RoleHooks) -> None:
        hooks.shutdown()

    # A stop during start-up (SIGTERM while loading) must not be undone
    # when the loading finishes; nothing is taken over once stopping.
    for ignored in (RoleInputs.startAsMaster, RoleInputs.startAsSlave, RoleInputs.stop,
                    RoleInputs.masterLost, RoleInputs.promoted, RoleInputs.lastServerLost):
        stopping.upon(ignored).loop().returns(None)
    return machine.build()


_RoleMachine = _build()


class Role:
    """
    The role of one server process.  C{hooks} (a L{RoleHooks}) does the
    work of each transition; the inputs are those of L{RoleInputs}.
    """

    def __init__(self, hooks):
        self._machine = _RoleMachine(hooks)
        self.startAsMaster = self._machine.startAsMaster
        self.startAsSlave = self._machine.startAsSlave
        self.masterLost = self._machine.masterLost
        self.promoted = self._machine.promoted
        self.lastServerLost = self._machine.lastServerLost
        self.stop = self._machine.stop

    @property
    def state(self):
        """
        The name of the current state: "starting", "slave", "promoting",
        "master" or "stopping"; read from the machine, never kept beside it
        (L{stateOf} says why it is not an input).  The state has changed by
        the time a transition's hooks run.
        """
        return stateOf(self._machine)
