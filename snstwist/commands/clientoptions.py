"""
The options of C{sns-client}: the router(s), the user, the cluster's CA and
the password (from a file, $SNS_PASSWORD, or asked on a terminal), checked
before anything connects.
"""

import getpass
import os
import sys

from twisted.python import usage

from snstwist.commands.commandline import INSECURE_FLAG, TLS_CA_OPTION
from snstwist.core.limits import MAX_PASSWORD_CHARS, USERNAME, excerpt


def readPassword(path, environ, stdin, ask=getpass.getpass):
    """
    The user's password: from the file C{path} (its first line), else
    $SNS_PASSWORD, else asked on the terminal without echo.  Raises
    L{usage.UsageError} saying how to give one when there is none.
    """
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise usage.UsageError("cannot read the password file %s: %s" % (path, e.strerror))
    elif environ.get("SNS_PASSWORD"):
        password = environ["SNS_PASSWORD"]
    elif stdin.isatty():
        password = ask("Password: ")
    else:
        raise usage.UsageError("no password: give --password-file FILE or $SNS_PASSWORD"
                               " (on a terminal the client asks for it)")
    if not 1 <= len(password) <= MAX_PASSWORD_CHARS:
        raise usage.UsageError("a password is 1-%d characters" % (MAX_PASSWORD_CHARS,))
    return password


class Options(usage.Options):
    synopsis = ("--router HOST:PORT[,HOST:PORT] --user NAME --tls-ca FILE"
                " [--password-file FILE]")
    optParameters = [
        ["router", "r", None, "Router address(es), comma-separated."],
        ["user", "u", None, "Your username: 1-32 of A-Z a-z 0-9 _ . -"],
        ["password-file", None, None,
         "File whose first line is your password (default: $SNS_PASSWORD,"
         " else asked on the terminal)."],
        TLS_CA_OPTION,
    ]
    optFlags = [INSECURE_FLAG]

    def postOptions(self):
        from snstwist.commands.commandline import installReactor, parseRouters, readTLS
        if not self["router"] or not self["user"]:
            raise usage.UsageError("both --router and --user are required")
        self["router"] = parseRouters(self["router"])
        if not USERNAME.match(self["user"]):
            raise usage.UsageError("invalid username %s: use 1-32 of A-Z a-z 0-9 _ . -"
                                   % (excerpt(self["user"]),))
        self["tls"], _ = readTLS(self, server=False)
        self["password"] = readPassword(self["password-file"], os.environ, sys.stdin)
        installReactor()
