"""
A new slave says it is a ready standby as soon as it is one: once it holds
everything its master held when it said hello, every router hears its load
at once (a heartbeat out of turn), not at the next periodic heartbeat, which
would add up to a heartbeat's interval to every standby's readiness.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist import buddy
from snstwist.core.state import VersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.buddylink import SlaveEnd
from snstwist.server.routerlink import RouterLink, RouterLinks
from tests.fakes import FakeStream, secret
from tests.servers import serverParts


def vector(origin, upTo):
    vv = VersionVector()
    for seq in range(1, upTo + 1):
        vv.add(origin, seq)
    return vv


def masterHello(have):
    return pb.BuddyHello(vm="vm1", role=pb.MASTER, pid=1000, address="127.0.0.2:4000",
                         incarnation="i1000", have=have.toProto())


def userBatch(origin, seqs):
    updates = []
    for seq in seqs:
        u = pb.Update(origin=origin, seq=seq, time_us=seq)
        u.user.name = "user%d" % (seq,)
        updates.append(u)
    return pb.UpdateBatch(updates=updates)


class SlaveLinkHelloTests(SynchronousTestCase):
    def test_the_masters_hello_is_heard_with_what_it_holds(self):
        heard = []
        link = buddy.SlaveLink(Clock(), lambda: pb.BuddyHello(pid=2),
                               onMasterLost=lambda why: None, onMasterStopping=lambda: None,
                               connect=lambda link: link.makeConnection(FakeStream()),
                               onMasterHello=heard.append)
        link.start()
        hello = masterHello(vector("vm1.a", 3))
        link.messageReceived(pb.BuddyMessage(hello=hello))
        link.close()
        link.messageReceived(pb.BuddyMessage(hello=hello))  # done: not heard
        self.assertEqual(heard, [hello])


class SlaveEndReadyTests(SynchronousTestCase):
    def slaveEnd(self):
        held = VersionVector()
        end = SlaveEnd(Clock(), "s", "127.0.0.1:1", 1000, lambda: pb.BuddyHello(),
                       lambda: held)
        ready = []
        end.ready.add(lambda: ready.append(held.count()))
        return end, held, ready

    def test_ready_once_it_holds_what_the_master_held_at_its_hello(self):
        end, held, ready = self.slaveEnd()
        end.mirrored()  # no hello yet: nothing to hold
        end.masterHello(masterHello(vector("vm1.a", 3)))
        held.add("vm1.a", 1)
        held.add("vm1.a", 3)
        end.mirrored()
        self.assertEqual(ready, [])
        held.add("vm1.a", 2)
        end.mirrored()
        held.add("vm1.a", 4)
        end.mirrored()
        self.assertEqual(ready, [3])

    def test_a_slave_holding_all_already_is_ready_at_the_hello(self):
        end, held, ready = self.slaveEnd()
        held.merge(vector("vm1.a", 2))
        end.masterHello(masterHello(vector("vm1.a", 2)))
        self.assertEqual(ready, [2])

    def test_a_new_hello_is_waited_for_again(self):
        """After a redial, the master's new hello says what to hold."""
        end, held, ready = self.slaveEnd()
        end.masterHello(masterHello(vector("vm1.a", 0)))
        end.masterHello(masterHello(vector("vm1.a", 1)))
        held.add("vm1.a", 1)
        end.mirrored()
        self.assertEqual(ready, [0, 1])


class MirroredTests(SynchronousTestCase):
    def test_a_batch_from_the_master_is_applied_before_the_observers_hear(self):
        slave = serverParts(self, "slave", secret="s")
        counts = []
        slave.internal.mirrored.add(lambda: counts.append(slave.node.replica.seen.count()))
        reply = slave.internal.onetimeSToBuddy(userBatch("vm1.a", [1, 2]), secret("s"))
        self.assertEqual((reply.applied, counts), (2, [2]))


class RouterReportTests(SynchronousTestCase):
    def test_every_router_hears_the_load_at_once(self):
        updates = [0]

        def load():
            return pb.Heartbeat(updates=updates[0])

        links = RouterLinks(("127.0.0.1:2", "127.0.0.1:3"), Clock(), "s", "vm1", None,
                            lambda: pb.ServerHello(), load, lambda peers: None)
        streams = []
        for address in links.routers:
            link = RouterLink(links.clock, "s", address, links.hello, links.load,
                              links.membershipChanged)
            streams.append(FakeStream())
            link.makeConnection(streams[-1])
            links.links.append(link)
        before = [len(s.sent) for s in streams]
        updates[0] = 42
        links.report()
        self.assertEqual([[m.heartbeat.updates for m in s.sent[n:]]
                          for s, n in zip(streams, before)], [[42], [42]])

    def test_a_router_connected_hears_the_hello_then_the_load(self):
        link = RouterLink(Clock(), "s", "127.0.0.1:2", lambda: pb.ServerHello(vm="vm1"),
                          lambda: pb.Heartbeat(updates=7), lambda address, membership: None)
        stream = FakeStream()
        link.makeConnection(stream)
        self.assertEqual([m.WhichOneof("kind") for m in stream.sent], ["hello", "heartbeat"])
        self.assertEqual(stream.sent[1].heartbeat.updates, 7)
