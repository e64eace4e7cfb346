"""
What one message on a replication stream costs, against one update in it.

One process, both ends: a ``BroadcastPosts`` stream over TLS on loopback
between grpcbridge's client (``openStream``, as a ``PeerLink``) and server
(a ``Servicer``, as the ``ReplicaReceiver``'s), on the asyncio reactor.  The
sender sends UPDATES updates (posts of 100 characters) in messages of K,
the next message once the receiver's ack of the last has come back (a
ping-pong, as a stream carrying writes as they come, between idle turns,
does); the CPU the process used (both ends, gRPC's own threads included)
is divided by the messages and by the updates.  Each K is run twice, in
turn.

    python benchmarks/streams.py --updates 6000 --per-message 1,2,4,16

Prints one JSON line per run.  A measurement, not a test.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install()

from twisted.internet import defer, task  # noqa: E402

from snstwist.rpc import grpcbridge  # noqa: E402
from snstwist.rpc import sns_pb2 as pb  # noqa: E402
from snstwist.rpc.certs import ensureClusterCerts  # noqa: E402

CLUSTER = pb.DESCRIPTOR.services_by_name["Cluster"]


def update(seq):
    """The seq-th post of one origin, as the replication stream carries it."""
    u = pb.Update(origin="vm1.abcdefgh", seq=seq, time_us=1764489600000000 + seq,
                  request_id="request-%d" % (seq,))
    u.post.id = "vm1.abcdefgh/%d" % (seq,)
    u.post.author = "user%d" % (seq % 100,)
    u.post.time_us = u.time_us
    u.post.text = "x" * 100
    return u


class Receiver:
    """Acks each message's ids at once, as one message."""

    def makeConnection(self, stream):
        self.stream = stream

    def messageReceived(self, message):
        self.stream.send(pb.ReplicationMessage(ack=pb.ReplicaAck(
            ids=[u.post.id for u in message.updates.updates])))

    def connectionLost(self, reason):
        pass


class Sender:
    """Sends C{batches} one message at a time, the next once the last is acked."""

    def __init__(self, batches):
        self.batches = batches
        self.sent = 0
        self.done = defer.Deferred()

    def makeConnection(self, stream):
        self.stream = stream
        self.next()

    def next(self):
        if self.sent == len(self.batches):
            self.done.callback(None)
            return
        self.stream.send(pb.ReplicationMessage(
            updates=pb.UpdateBatch(updates=self.batches[self.sent])))
        self.sent += 1

    def messageReceived(self, message):
        self.next()

    def connectionLost(self, reason):
        pass


async def measure(updates, sizes):
    def register(server, openStreams):
        grpcbridge.Servicer(
            streams={m.name: (lambda ctx: Receiver()) for m in CLUSTER.methods
                     if m.client_streaming},
            unary={m.name: (lambda request, ctx: None) for m in CLUSTER.methods
                   if not m.client_streaming},
            openStreams=openStreams).register(server, CLUSTER)

    service = grpcbridge.GrpcServerService("127.0.0.1:0", register)
    service.startService()
    await service.started
    channel = grpcbridge.channel(service.address)
    from snstwist.rpc import sns_pb2_grpc as pbg
    everything = [update(seq) for seq in range(1, updates + 1)]
    for size in sizes:
        batches = [everything[i:i + size] for i in range(0, updates, size)]
        sender = Sender(batches)
        grpcbridge.openStream(pbg.ClusterStub(channel).BroadcastPosts, sender)
        wall, cpu = time.monotonic(), time.process_time()
        await sender.done
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        sender.stream.abort()
        print(json.dumps({"updates_per_message": size, "messages": len(batches),
                          "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                          "cpu_us_per_message_and_ack": round(1e6 * cpu / len(batches), 1),
                          "cpu_us_per_update": round(1e6 * cpu / updates, 1),
                          "load": os.getloadavg()[0]}), flush=True)
    await grpcbridge.closeChannel(channel)
    await service.stopService()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=6000)
    parser.add_argument("--per-message", default="1,2,4,16",
                        help="updates per message, comma-separated (each run twice, in turn)")
    args = parser.parse_args()
    sizes = [int(k) for k in args.per_message.split(",")] * 2
    tls = tempfile.mkdtemp(prefix="sns-streams-")
    ca, cert, key = ensureClusterCerts(os.path.join(tls, "tls"))
    os.environ.update(SNS_TLS_CA=ca, SNS_TLS_CERT=cert, SNS_TLS_KEY=key)
    task.react(lambda reactor: defer.ensureDeferred(measure(args.updates, sizes)))


if __name__ == "__main__":
    main()
