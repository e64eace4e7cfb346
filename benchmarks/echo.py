"""
The yardstick of docs/design.md section 10: a bare ``grpc.aio`` unary echo server
and its load generator, on plain asyncio (no Twisted, no snstwist code in
the path), for ``benchmarks/run.py``.

    python benchmarks/echo.py server --listen 127.0.0.1:0
    python benchmarks/echo.py client --target HOST:PORT --clients M [--rate N]

The echo carries snstwist's own wire types (a ``PostRequest`` in, a
``WriteReply`` out), so both sides pay the same protobuf cost as a post.
The client gives each of its M concurrent callers its own channel, as each
snstwist ``Client`` has its own (``--shared-channel`` to multiplex them on
one).

Both speak JSON lines on stdout (``{"event": "ready", ...}``,
``{"event": "result", ...}``); the client waits for ``go SECONDS [WARMUP]``
on stdin before it starts, so that every load process starts together.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

from snstwist.rpc import sns_pb2 as pb  # noqa: E402

METHOD = "/bench.Echo/Echo"
OPTIONS = [("grpc.so_reuseport", 0)]


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def echo(request, context):
    return pb.WriteReply(id=request.request_id, copies=1)


async def serve(listen):
    server = grpc.aio.server(options=OPTIONS)
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=pb.PostRequest.FromString,
            response_serializer=pb.WriteReply.SerializeToString)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    emit(event="ready", address="%s:%d" % (host, port), pid=os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def watchStdin():
        # The orchestrator closes our stdin (or dies): stop then too.
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watchStdin, daemon=True).start()
    await stop.wait()
    await server.stop(0.5)


async def load(target, clients, shared, text, rate=None):
    channels = [grpc.aio.insecure_channel(target)]
    if not shared:
        channels += [grpc.aio.insecure_channel(target) for _ in range(clients - 1)]
    calls = [ch.unary_unary(METHOD, request_serializer=pb.PostRequest.SerializeToString,
                            response_deserializer=pb.WriteReply.FromString)
             for ch in channels]
    # Every channel connected before the clock starts, as every snstwist
    # client is logged in before its clock starts.
    await asyncio.gather(*(c(pb.PostRequest(text=text), timeout=10) for c in calls))
    emit(event="ready", clients=clients, channels=len(channels))
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    words = line.split()
    if not words or words[0] != "go":
        return
    duration = float(words[1])
    warmup = float(words[2]) if len(words) > 2 else 0.0
    start = time.perf_counter()
    begin, end = start + warmup, start + warmup + duration
    latencies = []
    errors = [0]

    async def caller(i):
        call = calls[i % len(calls)]
        n = 0
        due = start + i / (rate * clients) if rate else None
        while True:
            if due is not None:
                # Paced: one call every 1/rate seconds (each caller), as the
                # latency phase's posters post, so that the processes idle
                # between calls as they do there.
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                due += 1.0 / rate
            t0 = time.perf_counter()
            if t0 >= end:
                return
            n += 1
            try:
                await call(pb.PostRequest(text=text, request_id="%d-%d" % (i, n)), timeout=10)
            except grpc.aio.AioRpcError:
                errors[0] += 1
                continue
            t1 = time.perf_counter()
            if begin <= t0 and t1 <= end:
                latencies.append(round((t1 - t0) * 1000, 3))

    await asyncio.gather(*(caller(i) for i in range(clients)))
    emit(event="result", ok=len(latencies), errors=errors[0], seconds=duration,
         lat=latencies)
    await asyncio.gather(*(ch.close() for ch in channels))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", default="127.0.0.1:0")
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--clients", type=int, default=1)
    c.add_argument("--shared-channel", action="store_true")
    c.add_argument("--text", default="x" * 40)
    c.add_argument("--rate", type=float, default=None,
                   help="calls a second for each caller, paced (default: back to back)")
    args = parser.parse_args()
    if args.mode == "server":
        asyncio.run(serve(args.listen))
    else:
        asyncio.run(load(args.target, args.clients, args.shared_channel, args.text, args.rate))


if __name__ == "__main__":
    main()
