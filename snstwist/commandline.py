"""
What every snstwist program does with its command line: install the asyncio
reactor, parse addresses, read the cluster's secret, and run a command-line
program to its exit status.

The command-line programs (sns-client, sns-status, sns-compare, sns-cluster)
and the twistd plugins' options (L{snstwist.tap}) share this module.  It
imports nothing of the cluster's own code, so that a client program does not
load the server, buddy or cluster modules.
"""

import sys

from twisted.python import usage


def installReactor():
    """Install Twisted's asyncio reactor, or check that it is the one installed."""
    from twisted.internet import asyncioreactor
    # Never call install() a second time: it makes a new asyncio loop, the
    # current one from then on, before it finds the reactor installed, and
    # grpc.aio would then run on a loop that nothing drives.
    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install()
    else:
        from twisted.internet import reactor
        if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
            raise usage.UsageError(
                "snstwist runs on the asyncio reactor, but %s is installed:"
                " drop the --reactor option" % (type(reactor).__name__,))


def runCommand(name, options, argv, main):
    """
    The body of every command-line program here: parse C{argv} with
    C{options} (a usage error prints the usage and exits 2; the options
    install the asyncio reactor), run C{main(reactor, options)}, a coroutine
    function, and return the exit status it returns.
    """
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write("%s\n%s: %s\n" % (options, name, e))
        return 2
    from twisted.internet import defer, reactor

    status = []

    def failed(failure):
        sys.stderr.write("%s: %s\n" % (name, failure.getErrorMessage()))
        status.append(1)

    def started():
        d = defer.ensureDeferred(main(reactor, options))
        d.addCallbacks(status.append, failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(started)
    reactor.run()
    return status[0] if status else 1


def parseAddress(text, what):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        from snstwist.model import excerpt
        raise usage.UsageError("%s must be HOST:PORT, not %s" % (what, excerpt(text)))
    return "%s:%d" % (host, int(port))


def parseRouters(text):
    routers = [parseAddress(a.strip(), "--router") for a in text.split(",") if a.strip()]
    if not routers:
        raise usage.UsageError("--router needs at least one HOST:PORT")
    return routers


SECRET_OPTION = ["secret-file", None, None,
                 "File holding the cluster's shared secret (default: $SNS_SECRET)."]


def readSecret(path):
    """The cluster secret (L{auth.loadSecret}), or a usage error saying how to give one."""
    from snstwist.auth import MissingSecret, loadSecret
    try:
        return loadSecret(path)
    except MissingSecret as e:
        raise usage.UsageError(str(e))
