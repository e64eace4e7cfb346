"""
twistd plugins' options and services: C{sns-router}, C{sns-server},
C{sns-cluster}, C{sns-web}.

Each C{Options.postOptions} installs the asyncio reactor (grpc.aio and Twisted
share its loop).  That must happen here, at option parsing, and never when a
plugin module is imported: plugin modules are imported only when twistd
rebuilds its dropin cache.

This module imports the cluster (for sns-cluster's options); the helpers it
shares with the command-line programs live in L{snstwist.commands.commandline}, which
imports nothing of the cluster, so that sns-client does not load the server.
"""

import os
from types import SimpleNamespace

from twisted.python import usage

from snstwist.commands.cluster import ClusterOptions
from snstwist.commands.commandline import (
    INSECURE_FLAG,
    SECRET_OPTION,
    TLS_SERVER_OPTIONS,
    installReactor,
    parseAddress,
    parseRouters,
    readSecret,
    readTLS,
)
from snstwist.core.limits import POSTS_PER_USER_RATE
from snstwist.core.model import checkUsername


class _Common(usage.Options):
    optParameters = [
        SECRET_OPTION,
        ["metrics", None, None,
         "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port)."],
    ] + TLS_SERVER_OPTIONS
    optFlags = [INSECURE_FLAG]

    def postOptions(self):
        if self["metrics"]:
            self["metrics"] = parseAddress(self["metrics"], "--metrics")
        # Refuse to start without a secret, or without TLS unless told:
        # checked here, before twistd daemonizes, so that the sentence
        # reaches the operator.
        self["secret"] = readSecret(self["secret-file"])
        self["tls"], self["tlsArgs"] = readTLS(self, server=True)
        installReactor()

    def secret(self):
        return self["secret"]


def parsePeerListen(options, nextPort):
    """
    The cluster port's address: C{--peer-listen}, else the C{--listen} host
    with the next port (C{nextPort}, when that is not 0) or any free port.
    """
    if options["peer-listen"]:
        return parseAddress(options["peer-listen"], "--peer-listen")
    host, port = options["listen"].rsplit(":", 1)
    port = int(port)
    return "%s:%d" % (host, port + 1 if nextPort and 0 < port < 65535 else 0)


def _logAs(options, *words):
    from snstwist.core import logs
    logs.configure(getattr(options, "parent", None), *words)


class RouterOptions(_Common):
    synopsis = "[--listen HOST:PORT] [--peer-listen HOST:PORT]"
    optParameters = [
        ["listen", "l", "0.0.0.0:3410", "Address to serve clients (and operators) on."],
        ["peer-listen", None, None,
         "Address to serve the cluster's servers on, with mutual TLS: their --router"
         " (default: the --listen host, the next port; 3411 by default)."],
    ]

    def postOptions(self):
        self["listen"] = parseAddress(self["listen"], "--listen")
        self["peer-listen"] = parsePeerListen(self, nextPort=True)
        _logAs(self, "router")
        _Common.postOptions(self)


class ServerOptions(_Common):
    synopsis = ("--router HOST:PORT[,HOST:PORT] [--vm NAME] [--listen HOST:PORT]"
                " [--peer-listen HOST:PORT] [--data DIR]")
    optParameters = [
        ["router", "r", None,
         "Router(s) to register with, comma-separated: their cluster ports"
         " (sns-router's --peer-listen)."],
        ["vm", None, "vm1", "Name of this server's VM (one data directory)."],
        ["listen", "l", "127.0.0.1:0", "Address to serve clients on (port 0: any free port)."],
        ["peer-listen", None, None,
         "Address to serve the cluster's other processes on, with mutual TLS"
         " (default: the --listen host, any free port)."],
        ["data", "d", None, "Data directory of the VM (default: ./sns-data/VM)."],
        ["role", None, "master", "master (the default) or slave; masters spawn their slave."],
        ["buddy", None, None,
         "For a slave: its master's address (a spare's comes with its order to go on)."],
        ["buddy-pid", None, 0, "For a slave: its master's pid (for fencing).", int],
        ["posts-per-second", None, None,
         "Posts one user may make per second (a token bucket holding five"
         " seconds' worth; default %g)." % (POSTS_PER_USER_RATE,), float],
        ["token-lifetime", None, None,
         "Seconds a session token lasts (default 24 hours); clients renew"
         " theirs at half its life, and a timeline ends with its token.", float],
    ]
    optFlags = [
        ["spare", None, "For a slave: start, then wait for the order to go on (on stdin"
         " from the master or slave that spawned it, which keeps it as a spare)."],
    ]

    def postOptions(self):
        if not self["router"]:
            raise usage.UsageError("--router HOST:PORT is required")
        self["router"] = parseRouters(self["router"])
        self["listen"] = parseAddress(self["listen"], "--listen")
        self["peer-listen"] = parsePeerListen(self, nextPort=False)
        try:
            checkUsername(self["vm"])
        except Exception:
            raise usage.UsageError("--vm must be 1-32 of A-Z a-z 0-9 _ . -")
        if not self["data"]:
            self["data"] = os.path.join("sns-data", self["vm"])
        self["data"] = os.path.abspath(self["data"])
        if self["posts-per-second"] is not None and not self["posts-per-second"] > 0:
            raise usage.UsageError("--posts-per-second must be more than 0")
        if self["token-lifetime"] is not None and not self["token-lifetime"] >= 2:
            raise usage.UsageError("--token-lifetime must be at least 2 seconds")
        if self["role"] not in ("master", "slave"):
            raise usage.UsageError("--role is master or slave")
        if self["role"] == "slave" and not (self["buddy"] or self["spare"]):
            # A spare hears its master's address with its order to go on.
            raise usage.UsageError("a slave needs --buddy MASTER_ADDRESS")
        if self["spare"] and self["role"] != "slave":
            raise usage.UsageError("--spare is for a slave (--role slave)")
        parent = getattr(self, "parent", None)
        self["logfile"] = parent.get("logfile") if parent is not None else None
        _logAs(self, self["vm"], "spare" if self["spare"] else self["role"])
        _Common.postOptions(self)


class WebOptions(_Common):
    synopsis = "--router HOST:PORT[,HOST:PORT] [--listen HOST:PORT]"
    optParameters = [
        ["router", "r", "127.0.0.1:3410", "Router(s) of the cluster, comma-separated."],
        ["listen", "l", "127.0.0.1:8080", "Address to serve the web pages on (port 0: any)."],
    ]

    def postOptions(self):
        self["router"] = parseRouters(self["router"])
        self["listen"] = parseAddress(self["listen"], "--listen")
        _logAs(self, "web")
        _Common.postOptions(self)


def makeWebService(options):
    from twisted.internet import reactor

    from snstwist.rpc import grpcbridge
    from snstwist.web.app import WebService
    from snstwist.web.people import clientFactory
    grpcbridge.useTLS(options["tls"])
    return _withMetrics(WebService(options["listen"], options["router"], options.secret(),
                                   clientFactory(options["router"], reactor), reactor),
                        options)


def _withMetrics(service, options):
    if options["metrics"]:
        from snstwist.core.metrics import MetricsService
        MetricsService(options["metrics"]).setServiceParent(service)
    return service


def makeRouterService(options):
    from snstwist.router import RouterService
    from snstwist.rpc import grpcbridge
    grpcbridge.useTLS(options["tls"])
    return _withMetrics(RouterService(options["listen"], options.secret(),
                                      peerListen=options["peer-listen"]), options)


def makeServerService(options):
    from snstwist.rpc import grpcbridge
    from snstwist.server.config import ServerConfig
    from snstwist.server.service import ServerService
    grpcbridge.useTLS(options["tls"])
    return _withMetrics(ServerService(ServerConfig(
        vm=options["vm"], listen=options["listen"], routers=options["router"],
        data=options["data"], secret=options.secret(), role=options["role"],
        master=options["buddy"], masterPid=options["buddy-pid"], spare=bool(options["spare"]),
        logfile=options["logfile"],
        metricsListen=options["metrics"], postRate=options["posts-per-second"],
        tlsArgs=options["tlsArgs"], peerListen=options["peer-listen"],
        tokenLifetime=options["token-lifetime"])), options)


def makeClusterService(options):
    from snstwist.commands.cluster import ClusterService
    return ClusterService.fromOptions(options)


# What the ServiceMakers of twisted/plugins/snstwist_plugins.py name: each has
# the Options and makeService that twistd looks for.
router = SimpleNamespace(Options=RouterOptions, makeService=makeRouterService)
server = SimpleNamespace(Options=ServerOptions, makeService=makeServerService)
cluster = SimpleNamespace(Options=ClusterOptions, makeService=makeClusterService)
web = SimpleNamespace(Options=WebOptions, makeService=makeWebService)
