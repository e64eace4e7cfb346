"""
C{sns-client}: the interactive client, in the style of the course client.

    sns-client --router HOST:PORT --user NAME [--password-file FILE]

The password: asked for on a terminal (no echo), else read from
C{--password-file} or $SNS_PASSWORD.  The first login of a name creates the
account with it; a wrong one ends the client with one line and exit 1.

Commands (case-insensitive): FOLLOW <user>, UNFOLLOW <user>, LIST, TIMELINE,
PASSWORD (the next line is the new password, not echoed on a terminal).
In timeline mode every line typed is posted.  Reading commands from a pipe
works the same as typing them; EOF ends the client once everything typed has
been answered.  The sentences printed are the contract of docs/design.md section 6,
and L{SENTENCES} is the one table that maps the cluster's statuses to them.
"""

import re
import sys
import time

from twisted.internet import defer, stdio
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from snstwist.client.client import Client, ClusterUnreachable, CommandFailed, InvalidPassword
from snstwist.commands.clientoptions import Options
from snstwist.core import errors
from snstwist.core.errors import RemoteError, Status
from snstwist.core.limits import MAX_FOLLOWS, MAX_PASSWORD_CHARS
from snstwist.core.model import checkUsername
from snstwist.rpc import grpcbridge

OK = "Command completed successfully"
INVALID_COMMAND = "Command failed with invalid command"
INVALID_USERNAME = "Command failed with invalid username"
INVALID_PASSWORD = "Command failed with invalid password"
NEW_PASSWORD_PROMPT = "New password: "
UNKNOWN = "Command failed with unknown reason"
TIMELINE = "Now you are in the timeline"
PROMPT = "Cmd> "

SENTENCES = {
    Status.NOT_FOUND: "Input username does not exists, command failed",
    Status.ALREADY_EXISTS: "Input username already exists, command failed",
    Status.INVALID_ARGUMENT: INVALID_USERNAME,
    Status.FAILED_PRECONDITION: "Command failed with not a follower",
}
# A FOLLOW past limits.MAX_FOLLOWS (an UNFOLLOW's FAILED_PRECONDITION is "not a follower").
TOO_MANY_FOLLOWS = "Command failed with too many follows (at most %d)" % (MAX_FOLLOWS,)


def sentenceOf(code, command=None):
    """The line for C{command} (upper case) refused with C{code}, or None."""
    follow = (command, code) == ("FOLLOW", Status.FAILED_PRECONDITION)
    return TOO_MANY_FOLLOWS if follow else SENTENCES.get(code)

_ARGUMENTS = {"FOLLOW": 1, "UNFOLLOW": 1, "LIST": 0, "TIMELINE": 0, "PASSWORD": 0}


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\u2028": "\\u2028",
            "\u2029": "\\u2029"}


def _visible(char):
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        # Caret notation, as cat -v shows it: ESC is ^[, DEL is ^?.
        return "^" + chr(code ^ 0x40)
    # C1 controls (U+0080-U+009F; U+009B is a one-character CSI).
    return "M-^" + chr((code - 0x80) ^ 0x40)


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def visibleText(text):
    """
    C{text} with every terminal control character shown visibly, so that a
    post can neither rewrite the reader's screen nor break its line: a
    newline is C{\\n}, ESC is C{^[}, a C1 control such as CSI is C{M-^[}.
    """
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group()) or _visible(m.group()), text)


def formatPost(post):
    """One timeline line: C{sender (Tue Nov 24 11:48:30 2026) >> text}."""
    return "%s (%s) >> %s" % (post.author, time.ctime(post.time_us / 1e6),
                              visibleText(post.text))


@implementer(IHalfCloseableProtocol)
class CommandLine(Protocol):
    """
    Reads commands, one at a time, and prints the course client's replies.

    Lines are split here rather than by LineReceiver, whose handling of an
    over-long line drops whatever follows it in the buffer: here a line
    longer than C{MAX_LENGTH} is answered as an invalid command and the
    next line is read as usual, and a last line without a newline still
    counts at EOF.
    """

    MAX_LENGTH = 64 * 1024
    _buffer = b""
    _skipping = False

    def __init__(self, client, interactive, err=None):
        self.client = client
        self.interactive = interactive
        self.err = err or sys.stderr
        self.inTimeline = False
        self.loggedIn = False
        self.queue = defer.succeed(None)
        self.done = defer.Deferred()
        self.closed = defer.Deferred()
        self.unreachable = False
        self.refused = False
        self.newPassword = False
        self.startProblem = None
        client.onPost = self._showPost
        client.onReconnect = lambda address: self.say("Reconnecting to %s..." % (address,))
        client.onLost = self._sessionLost

    def say(self, line):
        self.transport.write((line + "\n").encode("utf-8"))

    def prompt(self):
        if self.refused:
            return
        if self.newPassword:
            if self.interactive:
                self.transport.write(NEW_PASSWORD_PROMPT.encode())
                _echo(False)
        elif self.interactive and not self.inTimeline:
            self.transport.write(PROMPT.encode())

    def connectionMade(self):
        # Log in at once, as the course client does: a wrong password is
        # told (one line, exit 1) even when no command is typed.  Lines
        # typed meanwhile wait behind it; the first prompt comes after it.
        self.queue.addCallback(lambda _: defer.ensureDeferred(self._logIn()))
        self.queue.addErrback(self._crashed)

    async def _logIn(self):
        try:
            await self._ensureConnected()
        except InvalidPassword:
            self._refuse()
        except Exception as e:
            # Not now: the first command tries again and says why it could
            # not; with none typed, the end of input does (readConnectionLost).
            self.startProblem = e
        finally:
            self.prompt()

    def _refuse(self):
        """A wrong password ends the client: one line, exit 1."""
        self.say(INVALID_PASSWORD)
        self.refused = True
        if not self.done.called:
            self.done.callback(None)

    def lineReceived(self, line):
        text = line.decode("utf-8", "replace").rstrip("\r")
        self.queue.addCallback(lambda _: defer.ensureDeferred(self._handle(text)))
        self.queue.addErrback(self._crashed)

    def dataReceived(self, data):
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.MAX_LENGTH:
                    # Too long already: drop it, and the rest of the line.
                    self._buffer = b""
                    self._skipping = True
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            if self._skipping or len(line) > self.MAX_LENGTH:
                self._skipping = False
                self.lineLengthExceeded(line)
            else:
                self.lineReceived(line)

    def lineLengthExceeded(self, line):
        self.queue.addCallback(lambda _: self.say(INVALID_COMMAND))

    def _crashed(self, failure):
        self.err.write("sns-client: %s\n" % (failure.getTraceback(),))

    async def _handle(self, text):
        if self.refused:
            return
        try:
            if self.newPassword:
                self.newPassword = False
                await self._changePassword(text)
                return
            if self.inTimeline:
                if text.strip():
                    await self._ensureConnected()
                    self._copies(await self.client.post(text))
                return
            await self._command(text)
        except InvalidPassword:
            self._refuse()
        except CommandFailed as e:
            if self.inTimeline:
                self.say("Post failed: %s" % (e.message,))
            else:
                self.say(SENTENCES.get(e.code, UNKNOWN))
                if e.code not in SENTENCES:
                    self.err.write("sns-client: %s\n" % (e.message,))
        except (ClusterUnreachable, RemoteError) as e:
            self.unreachable = True
            self.say(UNKNOWN)
            self.err.write("sns-client: cannot reach the cluster: %s\n" % (e,))
        except Exception as e:
            self.say(UNKNOWN)
            self.err.write("sns-client: %s: %s\n" % (type(e).__name__, e))
        finally:
            self.prompt()

    async def _ensureConnected(self):
        if not self.loggedIn:
            try:
                await self.client.connect()
            except CommandFailed:
                raise
            except Exception as e:
                raise ClusterUnreachable(str(e))
            self.loggedIn = True

    async def _command(self, text):
        words = text.split()
        if not words:
            return
        command, args = words[0].upper(), words[1:]
        if _ARGUMENTS.get(command) != len(args):
            self.say(INVALID_COMMAND)
            return
        if command in ("FOLLOW", "UNFOLLOW"):
            try:
                target = checkUsername(args[0])
            except errors.InvalidUsername:
                self.say(INVALID_USERNAME)
                return
            if target == self.client.user:
                self.say(INVALID_USERNAME)
                return
            await self._ensureConnected()
            method = self.client.follow if command == "FOLLOW" else self.client.unfollow
            try:
                self._copies(await method(target))
            except CommandFailed as e:
                if sentenceOf(e.code, command) != TOO_MANY_FOLLOWS:
                    raise
                return self.say(TOO_MANY_FOLLOWS)
            self.say(OK)
        elif command == "LIST":
            await self._ensureConnected()
            reply = await self.client.list()
            self.say(OK)
            self.say(("All users: " + ", ".join(reply.all_users)).rstrip())
            self.say(("Followers: " + ", ".join(reply.followers)).rstrip())
        elif command == "PASSWORD":
            await self._ensureConnected()
            # The next line is the new password.
            self.newPassword = True
        else:
            await self._ensureConnected()
            self.say(TIMELINE)
            self.inTimeline = True
            await self.client.timeline()

    async def _changePassword(self, text):
        if self.interactive:
            _echo(True)
            self.transport.write(b"\n")
        if not 1 <= len(text) <= MAX_PASSWORD_CHARS:
            self.say(INVALID_PASSWORD)
            return
        try:
            await self.client.changePassword(text)
        except CommandFailed as e:
            if e.code not in (Status.UNAUTHENTICATED, Status.INVALID_ARGUMENT):
                raise
            self.say(INVALID_PASSWORD)
            return
        self.say(OK)

    def _copies(self, reply):
        """
        A write the cluster could store on one VM only is accepted and will
        be replicated when another VM is up: say so, on stderr, so that the
        reply lines on stdout stay the contract's.
        """
        if reply is not None and getattr(reply, "copies", 2) == 1:
            self.err.write("sns-client: stored on one VM only for now; it is replicated"
                           " when another VM is up\n")

    def _showPost(self, post):
        self.say(formatPost(post))

    def _sessionLost(self, error):
        """The client gave up restoring the live timeline: say so, once."""
        if self.inTimeline and not self.unreachable:
            self.unreachable = True
            self.say(UNKNOWN)
            self.err.write("sns-client: the timeline stopped: %s\n" % (error,))

    def readConnectionLost(self):
        # EOF: a last line without a newline counts; finish what was typed,
        # then end.
        if self._skipping:
            self.lineLengthExceeded(b"")
        elif self._buffer:
            self.lineReceived(self._buffer)
        self._buffer, self._skipping = b"", False
        self.queue.addBoth(lambda _: self._ended())

    def _ended(self):
        if self.done.called:
            return
        if not (self.loggedIn or self.unreachable or self.refused):
            # Nothing typed reached the cluster, and the login at start
            # could not: say so once, as a command would (exit 1).
            self.unreachable = True
            self.say(UNKNOWN)
            self.err.write("sns-client: cannot reach the cluster: %s\n" % (self.startProblem,))
        self.done.callback(None)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(None)
        self.closed.callback(None)


def _echo(on):
    """Turn the terminal's echo on or off (for typing a new password)."""
    try:
        import termios
        fd = sys.stdin.fileno()
        attributes = termios.tcgetattr(fd)
        if on:
            attributes[3] |= termios.ECHO
        else:
            attributes[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attributes)
    except (ImportError, OSError, ValueError):
        pass  # not a terminal after all


async def run(reactor, options):
    grpcbridge.useTLS(options["tls"])
    client = Client(options["router"], options["user"], options["password"], clock=reactor)
    cli = CommandLine(client, interactive=sys.stdin.isatty())
    stdio.StandardIO(cli, reactor=reactor)
    await cli.done
    await client.close()
    cli.transport.loseConnection()
    await cli.closed
    return 1 if cli.unreachable or cli.refused else 0


def main(argv=None):
    """The C{sns-client} command."""
    from snstwist.commands.commandline import runCommand
    return runCommand("sns-client", Options(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
