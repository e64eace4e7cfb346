"""
What every snstwist program does with its command line: install the asyncio
reactor, parse addresses, read the cluster's secret, and run a command-line
program to its exit status.

The command-line programs (sns-client, sns-status, sns-compare, sns-cluster)
and the twistd plugins' options (L{snstwist.commands.tap}) share this module.  It
imports nothing of the cluster's own code, so that a client program does not
load the server, buddy or cluster modules.
"""

import os
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
        from snstwist.core.limits import excerpt
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
    from snstwist.rpc.auth import MissingSecret, loadSecret
    try:
        return loadSecret(path)
    except MissingSecret as e:
        raise usage.UsageError(str(e))


TLS_CA_OPTION = ["tls-ca", None, None,
                 "The cluster's CA certificate, PEM (default: $SNS_TLS_CA;"
                 " sns-cluster prints its path)."]
TLS_SERVER_OPTIONS = [
    ["tls-cert", None, None, "This process's certificate, PEM (default: $SNS_TLS_CERT)."],
    ["tls-key", None, None, "Its private key, PEM (default: $SNS_TLS_KEY)."],
    TLS_CA_OPTION,
]
INSECURE_FLAG = ["insecure", None, "No TLS: everything, the secret too, travels in clear."]

HOW_TO_MAKE_CERTIFICATES = (
    "make a CA and certificates with: sns-admin certs --dir DIR --host HOST"
    " (sns-cluster makes its own and prints the CA's path)")


def readTLS(options, server, environ=None):
    """
    The L{grpcbridge.TLS} the options (or $SNS_TLS_CA, $SNS_TLS_CERT,
    $SNS_TLS_KEY) name, or None with C{--insecure}; a usage error saying how
    to give them otherwise.  Returns (tls, the same choice as arguments for
    a process started by this one).
    """
    from snstwist.rpc import certs
    from snstwist.rpc.grpcbridge import TLS
    environ = os.environ if environ is None else environ
    ca = options["tls-ca"] or environ.get("SNS_TLS_CA")
    cert = key = None
    if server:
        cert = options["tls-cert"] or environ.get("SNS_TLS_CERT")
        key = options["tls-key"] or environ.get("SNS_TLS_KEY")
    if options["insecure"]:
        return None, ["--insecure"]
    if not ca or (server and not (cert and key)):
        need = "--tls-cert, --tls-key and --tls-ca" if server else "--tls-ca FILE"
        raise usage.UsageError("no TLS: give %s; %s; or --insecure to send everything in"
                               " clear" % (need, HOW_TO_MAKE_CERTIFICATES))
    try:
        tls = TLS.load(ca, cert, key)
        certs.checkPem(tls.ca, tls.cert, tls.key)
    except OSError as e:
        raise usage.UsageError("cannot read %s: %s" % (e.filename, e.strerror))
    except ValueError as e:
        raise usage.UsageError("%s; %s" % (e, HOW_TO_MAKE_CERTIFICATES))
    args = ["--tls-ca", os.path.abspath(ca)]
    if server:
        args += ["--tls-cert", os.path.abspath(cert), "--tls-key", os.path.abspath(key)]
    return tls, args
