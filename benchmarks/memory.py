"""
Memory of a master per idle connection and per session, at the caps of
snstwist/core/limits.py (MAX_SESSIONS_PER_USER sessions of each user, and
MAX_SESSIONS_PER_ADDRESS from this one address), measured on real processes.

Starts a 2-VM cluster (``python -m snstwist.commands.cluster``) in a temporary
directory and reads vm1's master's VmRSS (/proc/PID/status):

1. idle;
2. with N idle connections (gRPC channels connected, no call), then after
   they are closed;
3. with sessions at the caps: users u0, u1, ... each with the most sessions
   allowed, until the per-address cap is reached; one more session of u0 and
   one of a fresh user are tried (both must be refused, RESOURCE_EXHAUSTED);
   then after they all are closed; and once more (does memory grow from one
   round to the next, or is it only kept by the allocator?).

Usage: python benchmarks/memory.py [--connections 1000] [--rounds 2] [--keep]

A measurement, not a test: it is not run by trial or CI.
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time

import grpc
import grpc.aio

from benchlib.cluster import PASSWORD, Cluster, useTLS
from benchlib.processes import rssKB as rss

from snstwist.core.limits import MAX_SESSIONS_PER_ADDRESS, MAX_SESSIONS_PER_USER
from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.rpc.auth import sessionMetadata
from snstwist.server.sessions import HEARTBEAT

# One TCP connection per channel: channels to one address share a
# connection otherwise.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def ownChannel(address):
    """A TLS channel (the cluster's CA) on a connection of its own."""
    return grpc.aio.secure_channel(
        address, grpcbridge.defaultTLS().channelCredentials(),
        options=OWN_CONNECTION + [("grpc.ssl_target_name_override", grpcbridge.CLUSTER_NAME)])
async def login(stub, user):
    """Log C{user} in (creating it), waiting out the per-address login rate."""
    while True:
        try:
            return await stub.Login(pb.LoginRequest(user=user, password=PASSWORD), timeout=30)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(0.2)


def sockets(pid):
    count = 0
    for fd in os.listdir("/proc/%d/fd" % (pid,)):
        try:
            count += os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:")
        except OSError:
            pass
    return count


async def settled(pid, seconds=3.0):
    """RSS once it has stopped moving for a moment (the reactor caught up)."""
    await asyncio.sleep(seconds)
    return rss(pid)


class Session:
    """One held Bidirectional_s_and_c stream: opens (no timeline), heartbeats."""

    def __init__(self, stub, token):
        self.stop = asyncio.Event()
        self.call = stub.Bidirectional_s_and_c(self.requests(), metadata=sessionMetadata(token))
        self.reader = asyncio.ensure_future(self.read())

    async def requests(self):
        yield pb.ClientMessage(open=pb.SessionOpen(timeline=False))
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), HEARTBEAT)
            except asyncio.TimeoutError:
                yield pb.ClientMessage(heartbeat=pb.Heartbeat())

    async def read(self):
        try:
            async for _ in self.call:
                pass
            return None
        except grpc.aio.AioRpcError as e:
            return e

    async def refused(self, wait=2.0):
        """The status the server ended this stream with, if it did within C{wait}."""
        done, _ = await asyncio.wait([self.reader], timeout=wait)
        return self.reader.result() if done else None

    def close(self):
        self.stop.set()
        self.call.cancel()


async def openSessions(address, users, prefix):
    """C{users} users with MAX_SESSIONS_PER_USER sessions each; (channels, sessions)."""
    channels, sessions = [], []
    for n in range(users):
        channel = ownChannel(address)
        channels.append(channel)
        stub = pbg.SNSStub(channel)
        reply = await login(stub, "%s%d" % (prefix, n))
        for _ in range(MAX_SESSIONS_PER_USER):
            sessions.append(Session(stub, reply.token))
    return channels, sessions


async def closeAll(channels, sessions):
    for s in sessions:
        s.close()
    await asyncio.gather(*(s.reader for s in sessions), return_exceptions=True)
    for channel in channels:
        await channel.close()


async def measure(cluster, args):
    master = [s for s in cluster.status().servers if s.vm == "vm1" and s.role == pb.MASTER][0]
    pid, address = master.pid, master.address
    out = {}
    out["idle"] = await settled(pid)
    print("vm1 master pid %d at %s: idle %d KB, %d sockets" % (
        pid, address, out["idle"], sockets(pid)), flush=True)

    channels = [ownChannel(address)
                for _ in range(args.connections)]
    await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 30) for c in channels))
    held = await settled(pid)
    print("%d idle connections: %d KB (%+d KB, %.1f KB each), %d sockets" % (
        args.connections, held, held - out["idle"], (held - out["idle"]) / args.connections,
        sockets(pid)), flush=True)
    for c in channels:
        await c.close()
    base = await settled(pid)
    print("after closing them: %d KB" % (base,), flush=True)

    users = MAX_SESSIONS_PER_ADDRESS // MAX_SESSIONS_PER_USER
    for round in range(args.rounds):
        before = await settled(pid, 1.0)
        started = time.monotonic()
        channels, sessions = await openSessions(address, users, "r%du" % (round,))
        held = await settled(pid)
        count = len(sessions)
        print("round %d: %d users x %d sessions = %d sessions (opened in %.1fs): %d KB"
              " (%+d KB, %.1f KB per session incl. its share of %d connections)" % (
                  round, users, MAX_SESSIONS_PER_USER, count, time.monotonic() - started, held,
                  held - before, (held - before) / count, users), flush=True)
        stub = pbg.SNSStub(channels[0])
        extra = Session(stub, (await login(stub, "r%du0" % (round,))).token)
        e = await extra.refused()
        print("  one more session of a user at its cap: %s" % (
            "%s: %s" % (e.code().name, e.details()) if e else "NOT refused"), flush=True)
        extra.close()
        extra = Session(stub, (await login(stub, "r%dfresh" % (round,))).token)
        e = await extra.refused()
        print("  a session of a fresh user from this address: %s" % (
            "%s: %s" % (e.code().name, e.details()) if e else "NOT refused"), flush=True)
        extra.close()
        await closeAll(channels, sessions)
        after = await settled(pid)
        print("  after closing them: %d KB (%+d KB kept from before the round)" % (
            after, after - before), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the cluster's directory")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="sns-memory-")
    useTLS(base, os.environ)
    cluster = Cluster(base, 2, base)
    cluster.start()
    try:
        asyncio.run(measure(cluster, args))
    finally:
        left = cluster.stop()
        if left:
            print("killed leftover servers: %s" % (left,), file=sys.stderr)
        # Each run's data, logs and certificates would otherwise stay in
        # /tmp for good (as failover.py, kept only when asked).
        if args.keep:
            print("data and logs in %s" % (base,))
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
