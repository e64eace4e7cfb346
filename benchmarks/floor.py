"""
The floor of post -> follower's screen on this machine: the same layout as
``run.py --latency`` (a poster process, a server process between, a
follower process holding a server-push stream) in bare ``grpc.aio`` on plain
asyncio, with no Twisted and no snstwist code on the path, paced at the
same rate, beside a paced echo in the same run.  What the cluster's same-VM
figure pays above this is the cluster's code; what this pays is the
machine's.

    python benchmarks/floor.py [--rounds N] [--seconds S] [--rate R]
                               [--variants push,inline,thread,sqlite] [--tls on,off]

The server (the "relay") serves one bidi method with snstwist's session
types (``ClientMessage`` in, ``ServerPush`` out): a stream that opens with
``timeline`` set is a follower's, to which every post is pushed; any other
is a poster's, whose ``PostRequest`` messages become a ``Post`` each,
pushed to the followers and then answered (``PostAnswer``), as a master
pushes before it answers.  What the relay does between a post's arrival
and its push is the variant:

- ``push``: nothing; the post is pushed at once.
- ``inline``: a record of the post (``--record`` bytes, 512 by default)
  written in place into a file written whole before (as a reused WAL is)
  and ``fdatasync``'d, on the event loop: the floor of any design that
  shows a post only once durable, with no thread handoff at all.
- ``thread``: the same write and sync on a thread of its own (one handoff
  there, one back: a lock-free queue in, ``call_soon_threadsafe`` out).
- ``sqlite``: a row of the post inserted and committed in a SQLite
  database (WAL, ``synchronous=FULL``) on that thread; a PASSIVE
  checkpoint every ``CHECKPOINT_EVERY`` commits, queued after a commit,
  so that the WAL is overwritten in place as the store's is.
- ``peer``: ``sqlite``, and each post also sent, as it arrives, to a
  second relay process (a peer, on a stream of its own) that commits its
  copy the same way: as the poster's master sends its update to the other
  VM at the accept, whose commit then shares this machine's one disk with
  the master's.
- ``peer-after``: ``peer``, but the copy is sent to the peer once the
  post is committed here (and pushed): the two commits do not overlap, and
  the peer's copy is a commit later.

Each configuration (a variant, with or without TLS) runs in fresh
processes: the relay, then the follower (its stream open), then the
poster, which calls the relay's unary echo paced at the rate (the
yardstick of ``run.py``: without TLS; with TLS on, also over TLS), then
posts at the rate on its session stream; each post's text carries
``time.time()`` taken before it is written, and the follower takes
``time.time()`` as the post comes out of its stream.  TLS is that of the
cluster: a throw-away CA, the relay's certificate naming ``snstwist``, the
clients showing theirs.  The first ``--warmup`` seconds of each phase are
not counted.  Rounds run every configuration in turn, so that all share
the machine's moments.  Prints one line a configuration and writes
``floor.json`` to ``--out``.

A measurement, not a test; run it under the bench lock.
"""

import argparse
import asyncio
import json
import os
import queue
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import zlib

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

import echo  # noqa: E402  (benchmarks/echo.py: its handler and method)
from snstwist.rpc import sns_pb2 as pb  # noqa: E402

SERVICE = "bench.Floor"
SESSION = "/%s/Session" % (SERVICE,)
OPTIONS = [("grpc.so_reuseport", 0)]
VARIANTS = ("push", "inline", "thread", "sqlite", "peer", "peer-after")
# A few megabytes of journal, overwritten in place round and round.
JOURNAL_BYTES = 4 << 20
CHECKPOINT_EVERY = 100


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def stdinLines(loop):
    """Lines of stdin, read on a thread, as an asyncio queue (None at EOF)."""
    lines = asyncio.Queue()

    def read():
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def credentials(tls):
    """Client credentials for the TLS directory C{tls}: its CA, our certificate shown."""
    with open(os.path.join(tls, "ca.pem"), "rb") as f:
        ca = f.read()
    with open(os.path.join(tls, "node.pem"), "rb") as f:
        cert = f.read()
    with open(os.path.join(tls, "node.key"), "rb") as f:
        key = f.read()
    return ca, cert, key


def channelTo(target, tls, name):
    if tls is None:
        return grpc.aio.insecure_channel(target, options=OPTIONS)
    ca, cert, key = credentials(tls)
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert),
                                   options=OPTIONS + [("grpc.ssl_target_name_override", name)])


# -- the relay's durable points --------------------------------------------


class Journal:
    """Records of C{size} bytes written in place, round and round, each synced."""

    def __init__(self, path, size):
        self.size = size
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        block = b"\0" * (1 << 20)
        for _ in range(JOURNAL_BYTES // len(block)):
            os.write(self.fd, block)
        os.fsync(self.fd)
        self.offset = 0

    def write(self, post):
        body = post.SerializeToString()
        head = len(body).to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little")
        record = (head + body).ljust(self.size, b"\0")
        os.pwrite(self.fd, record, self.offset)
        os.fdatasync(self.fd)
        self.offset = (self.offset + self.size) % JOURNAL_BYTES


class Table:
    """A row a post in SQLite (WAL, synchronous FULL); made and used on one thread."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.execute("CREATE TABLE posts (id TEXT PRIMARY KEY, author TEXT, time_us INTEGER,"
                        " text TEXT, request TEXT)")
        self.db.execute("CREATE INDEX posts_by_author ON posts (author, time_us)")
        self.commits = 0

    def write(self, post):
        self.db.execute("BEGIN")
        self.db.execute("INSERT INTO posts VALUES (?, ?, ?, ?, ?)",
                        (post.id, post.author, post.time_us, post.text, post.request))
        self.db.execute("COMMIT")
        self.commits += 1

    def checkpoint(self):
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")


class Worker:
    """One thread of its own: jobs in on a queue, results back through the loop."""

    def __init__(self, loop):
        self.loop = loop
        self.jobs = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            job, future = self.jobs.get()
            try:
                result = job()
            except Exception as e:
                if future is not None:
                    self.loop.call_soon_threadsafe(future.set_exception, e)
                continue
            if future is not None:
                self.loop.call_soon_threadsafe(future.set_result, result)

    def call(self, job):
        future = self.loop.create_future()
        self.jobs.put((job, future))
        return future

    def later(self, job):
        """Run C{job} after what is queued; nobody waits for it."""
        self.jobs.put((job, None))


def durablePoint(variant, directory, record, loop):
    """
    What the relay awaits between a post's arrival and its push: a coroutine
    function of the post, or None for the ``push`` variant.
    """
    if variant == "push":
        return None
    if variant == "inline":
        journal = Journal(os.path.join(directory, "journal"), record)

        async def inline(post):
            journal.write(post)

        return inline
    worker = Worker(loop)
    if variant == "thread":
        journal = Journal(os.path.join(directory, "journal"), record)

        async def threaded(post):
            await worker.call(lambda: journal.write(post))

        return threaded
    made = []
    worker.later(lambda: made.append(Table(os.path.join(directory, "floor.sqlite3"))))

    def commit(post):
        table = made[0]
        table.write(post)
        if table.commits % CHECKPOINT_EVERY == 0:
            worker.later(table.checkpoint)

    async def committed(post):
        await worker.call(lambda: commit(post))

    return committed


# -- the processes ---------------------------------------------------------


class Relay:
    """The server between poster and follower: pushes each post to every follower."""

    def __init__(self, durable, peer=None, peerAfter=False):
        self.durable = durable
        self.peer = peer  # the queue of a stream to a peer relay, or None
        self.peerAfter = peerAfter  # sent there once durable here, not on arrival
        self.followers = []
        self.seq = 0

    async def session(self, requests, context):
        first = await anext(requests)
        if first.open.timeline:
            # Registered before it is told it is ready: no post is missed.
            pushes = asyncio.Queue()
            self.followers.append(pushes)
            try:
                yield pb.ServerPush(ready=pb.SessionReady())
                while True:
                    yield await pushes.get()
            finally:
                self.followers.remove(pushes)
            return
        yield pb.ServerPush(ready=pb.SessionReady())
        async for message in requests:
            if not message.HasField("post"):
                continue
            self.seq += 1
            post = pb.Post(id="relay/%d" % (self.seq,), author="poster",
                           time_us=int(time.time() * 1e6), text=message.post.text,
                           request=message.post.request_id)
            if self.peer is not None and not self.peerAfter:
                self.peer.put_nowait(message)
            if self.durable is not None:
                await self.durable(post)
            push = pb.ServerPush(post=post)
            for pushes in self.followers:
                pushes.put_nowait(push)
            if self.peer is not None and self.peerAfter:
                self.peer.put_nowait(message)
            yield pb.ServerPush(answer=pb.PostAnswer(
                request_id=post.request, reply=pb.WriteReply(id=post.id, copies=1)))


async def relay(args):
    loop = asyncio.get_running_loop()
    server = grpc.aio.server(options=OPTIONS)
    peer = None
    if args.peer:
        peer = await connectPeer(args.peer, args.tls, args.tls_name)
    variant = "sqlite" if args.variant.startswith("peer") else args.variant
    floor = Relay(durablePoint(variant, args.dir, args.record, loop), peer,
                  args.variant == "peer-after")
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(SERVICE, {
            "Session": grpc.stream_stream_rpc_method_handler(
                floor.session, request_deserializer=pb.ClientMessage.FromString,
                response_serializer=pb.ServerPush.SerializeToString)}),
        grpc.method_handlers_generic_handler("bench.Echo", {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo.echo, request_deserializer=pb.PostRequest.FromString,
                response_serializer=pb.WriteReply.SerializeToString)})))
    plain = server.add_insecure_port("127.0.0.1:0")
    addresses = {"plain": "127.0.0.1:%d" % (plain,)}
    if args.tls:
        ca, cert, key = credentials(args.tls)
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=False))
        addresses["tls"] = "127.0.0.1:%d" % (port,)
    await server.start()
    emit(event="ready", pid=os.getpid(), **addresses)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    lines = stdinLines(loop)
    loop.create_task(lines.get()).add_done_callback(lambda _: stop.set())
    await stop.wait()
    await server.stop(0)


async def connectPeer(target, tls, name):
    """A session stream to a peer relay, open: the queue of its outgoing messages."""
    loop = asyncio.get_running_loop()
    outgoing, messages = sessionMessages(pb.ClientMessage(open=pb.SessionOpen()))
    call = sessionCall(channelTo(target, tls, name))(messages)
    ready = loop.create_future()

    async def read():
        async for push in call:
            if push.HasField("ready") and not ready.done():
                ready.set_result(None)

    loop.create_task(read())
    await ready
    return outgoing


def sessionMessages(first):
    """A session's outgoing messages: C{first}, then what is put on the queue returned."""
    outgoing = asyncio.Queue()
    outgoing.put_nowait(first)

    async def messages():
        while True:
            message = await outgoing.get()
            if message is None:
                return
            yield message

    return outgoing, messages()


def sessionCall(channel):
    return channel.stream_stream(SESSION, request_serializer=pb.ClientMessage.SerializeToString,
                                 response_deserializer=pb.ServerPush.FromString)


async def follower(args):
    loop = asyncio.get_running_loop()
    channel = channelTo(args.target, args.tls, args.tls_name)
    outgoing, messages = sessionMessages(pb.ClientMessage(open=pb.SessionOpen(timeline=True)))
    call = sessionCall(channel)(messages)
    arrivals = []

    async def read():
        async for push in call:
            now = time.time()
            if push.HasField("ready"):
                emit(event="ready", pid=os.getpid())
            elif push.HasField("post"):
                words = push.post.text.split()
                if len(words) == 3 and words[0] == "floor" and int(words[2]) > args.skip:
                    arrivals.append(round((now - float(words[1])) * 1000, 3))

    reading = loop.create_task(read())
    lines = stdinLines(loop)
    while (line := await lines.get()) is not None and line.split() != ["stop"]:
        pass
    emit(event="result", lat=arrivals)
    outgoing.put_nowait(None)
    reading.cancel()
    await channel.close()


async def paced(rate, seconds, warmup, act):
    """
    Call C{act(n)} (a coroutine function) at C{rate} a second for C{seconds},
    each due time kept whatever the one before took; the latencies (ms) of
    those after C{warmup} seconds, and how many were sent.
    """
    start = time.perf_counter()
    due, n, latencies = start, 0, []
    while True:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        if t0 >= start + seconds:
            return latencies, n
        n += 1
        due += 1.0 / rate
        took = await act(n)
        if took is not None and t0 >= start + warmup:
            latencies.append(took)


async def echoPaced(channel, rate, seconds, warmup):
    call = channel.unary_unary(echo.METHOD, request_serializer=pb.PostRequest.SerializeToString,
                               response_deserializer=pb.WriteReply.FromString)
    await call(pb.PostRequest(text="x" * 40), timeout=10)

    async def once(n):
        t0 = time.perf_counter()
        await call(pb.PostRequest(text="x" * 40, request_id="e-%d" % (n,)), timeout=10)
        return round((time.perf_counter() - t0) * 1000, 3)

    latencies, _ = await paced(rate, seconds, warmup, once)
    return latencies


async def poster(args):
    loop = asyncio.get_running_loop()
    plain = channelTo(args.plain, None, None)
    secure = channelTo(args.target, args.tls, args.tls_name) if args.tls else plain
    outgoing, messages = sessionMessages(pb.ClientMessage(open=pb.SessionOpen()))
    call = sessionCall(secure)(messages)
    answers = []

    async def read():
        async for push in call:
            if push.HasField("ready"):
                emit(event="ready", pid=os.getpid())
            elif push.HasField("answer"):
                answers.append(push.answer.request_id)

    reading = loop.create_task(read())
    lines = stdinLines(loop)
    line = await lines.get()
    words = (line or "").split()
    if not words or words[0] != "go":
        return
    seconds, warmup = float(words[1]), float(words[2])
    result = {"echo_plain": await echoPaced(plain, args.rate, seconds, warmup)}
    if args.tls:
        result["echo_tls"] = await echoPaced(secure, args.rate, seconds, warmup)

    async def post(n):
        # The send time is taken just before the message is handed to gRPC.
        text = "floor %.6f %d" % (time.time(), n)
        outgoing.put_nowait(pb.ClientMessage(post=pb.PostRequest(
            text=text, request_id="p-%d" % (n,))))

    _, sent = await paced(args.rate, seconds, 0.0, post)
    deadline = time.monotonic() + 5
    while len(answers) < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    emit(event="result", sent=sent, answered=len(answers), **result)
    outgoing.put_nowait(None)
    reading.cancel()
    await asyncio.gather(plain.close(), secure.close())


# -- the run ---------------------------------------------------------------


def configuration(args, variant, tls, work):
    """One variant, with TLS or without, in fresh processes; its figures."""
    from benchlib.processes import PY, Child, stopEach
    from benchlib.stats import summarize

    here = os.path.abspath(__file__)
    name = "%s-%s" % (variant, "tls" if tls else "plain")
    directory = tempfile.mkdtemp(prefix=name + "-", dir=work)
    tlsArgs = ["--tls", os.path.join(work, "tls"), "--tls-name", args.tls_name] if tls else []
    load0 = os.getloadavg()[0]
    children = []
    try:
        peerArgs = []
        if variant.startswith("peer"):
            peerChild = Child("peer-" + name, [PY, here, "relay", "--variant", "sqlite", "--dir",
                                               tempfile.mkdtemp(prefix="peer-", dir=directory)]
                              + tlsArgs, work)
            children.append(peerChild)
            peerArgs = ["--peer", peerChild.expect("ready", 30)["tls" if tls else "plain"]]
        relayChild = Child("relay-" + name, [PY, here, "relay", "--variant", variant,
                                             "--dir", directory, "--record", str(args.record)]
                           + tlsArgs + peerArgs, work)
        children.append(relayChild)
        ready = relayChild.expect("ready", 30)
        target = ready["tls" if tls else "plain"]
        skip = int(args.rate * args.warmup)
        followerChild = Child("follower-" + name, [PY, here, "follower", "--target", target,
                                                   "--skip", str(skip)] + tlsArgs, work)
        children.append(followerChild)
        followerChild.expect("ready", 30)
        posterChild = Child("poster-" + name, [PY, here, "poster", "--target", target,
                                               "--plain", ready["plain"],
                                               "--rate", str(args.rate)] + tlsArgs, work)
        children.append(posterChild)
        posterChild.expect("ready", 30)
        posterChild.send("go %s %s" % (args.seconds, args.warmup))
        sent = posterChild.expect("result", 3 * args.seconds + 60)
        followerChild.send("stop")
        shown = followerChild.expect("result", 30)
    finally:
        stopEach(children)
    out = {"variant": variant, "tls": tls, "load_before": round(load0, 2),
           "load_after": round(os.getloadavg()[0], 2), "sent": sent["sent"],
           "answered": sent["answered"], "shown": summarize(shown["lat"]),
           "echo_plain": summarize(sent["echo_plain"])}
    if tls:
        out["echo_tls"] = summarize(sent["echo_tls"])
    out["ratio_to_plain_echo"] = round(out["shown"]["p50"] / out["echo_plain"]["p50"], 2)
    shutil.rmtree(directory, ignore_errors=True)
    return out


def line(r):
    tls = " (tls echo p50 %.3f)" % (r["echo_tls"]["p50"],) if r["tls"] else ""
    return ("%-7s %-5s post->screen p50 %.3f p90 %.3f p99 %.3f ms (n %d); paced echo p50 %.3f"
            " p99 %.3f%s; p50 ratio %.2f; load %.2f -> %.2f"
            % (r["variant"], "tls" if r["tls"] else "plain", r["shown"]["p50"],
               r["shown"]["p90"], r["shown"]["p99"], r["shown"]["n"], r["echo_plain"]["p50"],
               r["echo_plain"]["p99"], tls, r["ratio_to_plain_echo"], r["load_before"],
               r["load_after"]))


def run(args):
    from snstwist.rpc.certs import makeCA, makeNode

    work = tempfile.mkdtemp(prefix="sns-floor-")
    try:
        tls = os.path.join(work, "tls")
        makeCA(tls)
        makeNode(tls, "node", hosts=["127.0.0.1"])
        results = []
        for n in range(args.rounds):
            for mode in args.tls:
                for variant in args.variants:
                    r = configuration(args, variant, mode == "on", work)
                    r["round"] = n + 1
                    results.append(r)
                    sys.stdout.write(line(r) + "\n")
                    sys.stdout.flush()
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "floor.json")
        with open(path, "w") as f:
            json.dump({"argv": sys.argv[1:], "results": results}, f, indent=1)
        sys.stdout.write("results: %s\n" % (path,))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    r = sub.add_parser("relay")
    r.add_argument("--variant", choices=VARIANTS, required=True)
    r.add_argument("--dir", required=True)
    r.add_argument("--record", type=int, default=512)
    r.add_argument("--peer", default=None, help="a peer relay's address (variant peer)")
    for p in (sub.add_parser("follower"), sub.add_parser("poster")):
        p.add_argument("--target", required=True)
        p.add_argument("--skip", type=int, default=0)
        p.add_argument("--plain")
        p.add_argument("--rate", type=float, default=100.0)
    for p in sub.choices.values():
        p.add_argument("--tls", default=None, help="a directory with ca.pem, node.pem, node.key")
        p.add_argument("--tls-name", default="snstwist")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="each phase's length")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rate", type=float, default=100.0, help="posts (and echoes) a second")
    parser.add_argument("--record", type=int, default=512, help="the journal record's bytes")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        type=lambda s: [v for v in s.split(",") if v in VARIANTS])
    parser.add_argument("--tls", default="on,off", type=lambda s: s.split(","),
                        help="on, off or both (on,off): TLS on every channel as the cluster")
    parser.add_argument("--tls-name", default="snstwist")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "bench-results"))
    args = parser.parse_args()
    if args.role == "relay":
        asyncio.run(relay(args))
    elif args.role == "follower":
        asyncio.run(follower(args))
    elif args.role == "poster":
        asyncio.run(poster(args))
    else:
        run(args)


if __name__ == "__main__":
    main()
