"""
The sns-client command line against docs/design.md section 6, line by line.

C{CommandLine} is driven through a StringTransport with a fake client whose
Deferreds the tests fire, so every test is synchronous: nothing runs on the
reactor, nothing waits.
"""

import io
import os
import time

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from snstwist.client.client import ClusterUnreachable, CommandFailed, InvalidPassword
from snstwist.commands.cli import CommandLine, formatPost
from snstwist.core import errors
from snstwist.core.limits import MAX_FOLLOWS
from snstwist.core.model import Post
from snstwist.rpc import sns_pb2 as pb

OK = "Command completed successfully"
UNKNOWN = "Command failed with unknown reason"
INVALID_COMMAND = "Command failed with invalid command"
INVALID_USERNAME = "Command failed with invalid username"
INVALID_PASSWORD = "Command failed with invalid password"

# Tue Nov 24 11:48:30 2026 UTC.
WHEN_US = 1795520910 * 1000000


class FakeClient:
    """
    Stands in for L{snstwist.client.client.Client}.  Each call is recorded; a method
    named in C{answers} answers at once (an exception instance fails), any
    other returns a Deferred the test fires from C{pending}.
    """

    def __init__(self, user="alice", **answers):
        self.user = user
        self.onPost = None
        self.onReconnect = None
        self.answers = {"connect": pb.LoginReply(), **answers}
        self.calls = []
        self.pending = []

    def _call(self, *call):
        self.calls.append(call)
        if call[0] in self.answers:
            answer = self.answers[call[0]]
            if isinstance(answer, Exception):
                return defer.fail(answer)
            return defer.succeed(answer)
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def connect(self):
        return self._call("connect")

    def follow(self, target):
        return self._call("follow", target)

    def unfollow(self, target):
        return self._call("unfollow", target)

    def list(self):
        return self._call("list")

    def timeline(self):
        return self._call("timeline")

    def post(self, text):
        return self._call("post", text)

    def commands(self):
        """The calls made, without the log-in."""
        return [c for c in self.calls if c != ("connect",)]


def post(text, author="bob", time_us=WHEN_US):
    return Post(id="vm1/1", author=author, time_us=time_us, text=text)


class CommandLineTestCase(unittest.SynchronousTestCase):
    def start(self, client, interactive=False):
        """Connect a CommandLine for C{client} to a StringTransport."""
        self.client = client
        self.err = io.StringIO()
        self.cli = CommandLine(client, interactive=interactive, err=self.err)
        self.transport = StringTransport()
        self.cli.makeConnection(self.transport)
        return self.cli

    def type(self, *lines):
        """Type C{lines}, as if from a terminal or a pipe."""
        self.cli.dataReceived(b"".join(line.encode("utf-8") + b"\n" for line in lines))

    def output(self):
        """What was printed, line by line."""
        return self.transport.value().decode("utf-8").splitlines()

    def useTimeZone(self, tz):
        """Run this test in time zone C{tz}; the old one is restored afterwards."""
        old = os.environ.get("TZ")

        def restore():
            if old is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = old
            time.tzset()

        self.addCleanup(restore)
        os.environ["TZ"] = tz
        time.tzset()


class CommandTests(CommandLineTestCase):
    def test_follow_prints_success(self):
        """A FOLLOW the cluster accepts prints the success line."""
        self.start(FakeClient(follow=pb.WriteReply()))
        self.type("FOLLOW bob")
        self.assertEqual(self.output(), [OK])
        self.assertEqual(self.client.commands(), [("follow", "bob")])

    def test_unfollow_prints_success(self):
        """An UNFOLLOW the cluster accepts prints the success line."""
        self.start(FakeClient(unfollow=pb.WriteReply()))
        self.type("UNFOLLOW bob")
        self.assertEqual(self.output(), [OK])
        self.assertEqual(self.client.commands(), [("unfollow", "bob")])

    def test_list_prints_all_users_and_followers(self):
        """LIST prints success, then all users and your followers, comma-separated."""
        reply = pb.ListReply(all_users=["a", "b", "c"], followers=["x", "y"])
        self.start(FakeClient(list=reply))
        self.type("LIST")
        self.assertEqual(self.output(), [OK, "All users: a, b, c", "Followers: x, y"])

    def test_commands_are_case_insensitive(self):
        """follow, Follow and FOLLOW are the same command."""
        self.start(FakeClient(follow=pb.WriteReply(), list=pb.ListReply()))
        self.type("follow bob", "Follow carol", "lIsT")
        self.assertEqual(self.client.commands(),
                         [("follow", "bob"), ("follow", "carol"), ("list",)])

    def test_username_argument_keeps_its_case(self):
        """Only the command is case-insensitive, not the username after it."""
        self.start(FakeClient(follow=pb.WriteReply()))
        self.type("follow Bob")
        self.assertEqual(self.client.commands(), [("follow", "Bob")])

    def test_logs_in_once_at_start(self):
        """The client logs in as it starts, before any command, and only once."""
        self.start(FakeClient(follow=pb.WriteReply()))
        self.assertEqual(self.client.calls, [("connect",)])
        self.type("FOLLOW bob", "FOLLOW carol")
        self.assertEqual(self.client.calls,
                         [("connect",), ("follow", "bob"), ("follow", "carol")])

    def test_commands_typed_during_the_login_wait_for_it(self):
        """A line typed while the login is under way runs once it is done."""
        client = FakeClient(follow=pb.WriteReply())
        del client.answers["connect"]
        self.start(client)
        self.type("FOLLOW bob")
        self.assertEqual(client.calls, [("connect",)])
        client.pending[0].callback(pb.LoginReply())
        self.assertEqual(client.calls, [("connect",), ("follow", "bob")])
        self.assertEqual(self.output(), [OK])

    def test_over_long_line_is_an_invalid_command(self):
        """A line longer than the line limit is refused, not buffered on."""
        cli = self.start(FakeClient())
        self.type("x" * (cli.MAX_LENGTH + 1))
        self.assertEqual(self.output(), [INVALID_COMMAND])
        self.assertEqual(self.client.commands(), [])

    def test_commands_after_an_over_long_line_are_still_answered(self):
        """The line after an over-long one is read as a command of its own."""
        cli = self.start(FakeClient(list=pb.ListReply(all_users=["a"])))
        self.type("x" * (cli.MAX_LENGTH * 2 + 7), "LIST")
        self.assertEqual(self.output(), [INVALID_COMMAND, OK, "All users: a", "Followers:"])

    def test_a_last_line_without_newline_counts_at_eof(self):
        """printf 'LIST' (no newline) still runs LIST before the client ends."""
        self.start(FakeClient(list=pb.ListReply(all_users=["a"])))
        self.cli.dataReceived(b"LIST")
        self.assertEqual(self.output(), [])
        self.cli.readConnectionLost()
        self.assertEqual(self.output(), [OK, "All users: a", "Followers:"])

    def test_blank_line_does_nothing(self):
        """An empty line is not a command and prints nothing."""
        self.start(FakeClient())
        self.type("", "   ")
        self.assertEqual((self.output(), self.client.commands()), ([], []))


class RefusalTests(CommandLineTestCase):
    def assertRefusal(self, method, code, command, line):
        """The cluster refusing C{command} with C{code} prints exactly C{line}."""
        self.start(FakeClient(**{method: CommandFailed(code, "refused")}))
        self.type(command)
        self.assertEqual(self.output(), [line])

    def test_follow_unknown_user(self):
        """FOLLOW of a user who does not exist (NOT_FOUND)."""
        self.assertRefusal("follow", errors.Status.NOT_FOUND, "FOLLOW nobody",
                           "Input username does not exists, command failed")

    def test_unfollow_unknown_user(self):
        """UNFOLLOW of a user who does not exist (NOT_FOUND)."""
        self.assertRefusal("unfollow", errors.Status.NOT_FOUND, "UNFOLLOW nobody",
                           "Input username does not exists, command failed")

    def test_follow_someone_already_followed(self):
        """FOLLOW of a user you already follow (ALREADY_EXISTS)."""
        self.assertRefusal("follow", errors.Status.ALREADY_EXISTS, "FOLLOW bob",
                           "Input username already exists, command failed")

    def test_unfollow_someone_not_followed(self):
        """UNFOLLOW of a user you do not follow (FAILED_PRECONDITION)."""
        self.assertRefusal("unfollow", errors.Status.FAILED_PRECONDITION, "UNFOLLOW bob",
                           "Command failed with not a follower")

    def test_follow_past_the_most_one_may_follow(self):
        """FOLLOW by a user who follows as many as one may (FAILED_PRECONDITION): its own line."""
        self.assertRefusal("follow", errors.Status.FAILED_PRECONDITION, "FOLLOW bob",
                           "Command failed with too many follows (at most %d)" % (MAX_FOLLOWS,))

    def test_server_rejects_username(self):
        """A username the server finds invalid (INVALID_ARGUMENT)."""
        self.assertRefusal("follow", errors.Status.INVALID_ARGUMENT, "FOLLOW bob",
                           INVALID_USERNAME)

    def test_unmapped_status_is_unknown_reason(self):
        """A status with no sentence of its own prints the unknown-reason line."""
        self.assertRefusal("follow", errors.Status.RESOURCE_EXHAUSTED, "FOLLOW bob",
                           UNKNOWN)

    def test_unmapped_status_cause_goes_to_err(self):
        """The cause of an unknown-reason failure is written on the err stream."""
        self.start(FakeClient(follow=CommandFailed(errors.Status.INTERNAL, "disk on fire")))
        self.type("FOLLOW bob")
        self.assertIn("disk on fire", self.err.getvalue())


class LocalCheckTests(CommandLineTestCase):
    """Lines refused before anything is asked of the cluster."""

    def assertRefusedLocally(self, command, line):
        self.start(FakeClient())
        self.type(command)
        self.assertEqual(self.output(), [line])
        self.assertEqual(self.client.commands(), [])

    def test_follow_invalid_username(self):
        """FOLLOW of a name that is not a valid username."""
        self.assertRefusedLocally("FOLLOW b@d", INVALID_USERNAME)

    def test_follow_too_long_username(self):
        """FOLLOW of a name longer than 32 characters."""
        self.assertRefusedLocally("FOLLOW " + "b" * 33, INVALID_USERNAME)

    def test_follow_yourself(self):
        """FOLLOW of your own name."""
        self.assertRefusedLocally("FOLLOW alice", INVALID_USERNAME)

    def test_unfollow_yourself(self):
        """UNFOLLOW of your own name."""
        self.assertRefusedLocally("UNFOLLOW alice", INVALID_USERNAME)

    def test_unknown_command(self):
        """A command that does not exist."""
        self.assertRefusedLocally("SHOUT bob", INVALID_COMMAND)

    def test_follow_without_argument(self):
        """FOLLOW with no username."""
        self.assertRefusedLocally("FOLLOW", INVALID_COMMAND)

    def test_unfollow_without_argument(self):
        """UNFOLLOW with no username."""
        self.assertRefusedLocally("UNFOLLOW", INVALID_COMMAND)

    def test_follow_with_extra_argument(self):
        """FOLLOW with two usernames."""
        self.assertRefusedLocally("FOLLOW bob carol", INVALID_COMMAND)

    def test_list_with_argument(self):
        """LIST takes no argument."""
        self.assertRefusedLocally("LIST all", INVALID_COMMAND)

    def test_timeline_with_argument(self):
        """TIMELINE takes no argument."""
        self.assertRefusedLocally("TIMELINE bob", INVALID_COMMAND)


class UnreachableTests(CommandLineTestCase):
    def test_unreachable_cluster_prints_unknown_reason(self):
        """A cluster that can not be reached gives the unknown-reason line."""
        self.start(FakeClient(connect=ClusterUnreachable("router 127.0.0.1:3410: refused")))
        self.type("LIST")
        self.assertEqual(self.output(), [UNKNOWN])

    def test_unreachable_cluster_cause_goes_to_err(self):
        """The cause of an unreachable cluster is written on the err stream."""
        self.start(FakeClient(connect=ClusterUnreachable("router 127.0.0.1:3410: refused")))
        self.type("LIST")
        self.assertIn("router 127.0.0.1:3410: refused", self.err.getvalue())

    def test_failing_connect_is_unknown_reason(self):
        """Any error while connecting (not only ClusterUnreachable) is unknown reason."""
        self.start(FakeClient(connect=ConnectionRefusedError("no route")))
        self.type("FOLLOW bob")
        self.assertEqual(self.output(), [UNKNOWN])
        self.assertIn("no route", self.err.getvalue())

    def test_unreachable_during_command_is_unknown_reason(self):
        """A command that finds the cluster gone gives the unknown-reason line."""
        self.start(FakeClient(follow=ClusterUnreachable("failover failed")))
        self.type("FOLLOW bob")
        self.assertEqual(self.output(), [UNKNOWN])
        self.assertIn("failover failed", self.err.getvalue())

    def test_unexpected_client_error_is_unknown_reason(self):
        """Any other error from the client gives the unknown-reason line, cause on err."""
        self.start(FakeClient(follow=RuntimeError("boom")))
        self.type("FOLLOW bob")
        self.assertEqual(self.output(), [UNKNOWN])
        self.assertIn("RuntimeError: boom", self.err.getvalue())

    def test_unreachable_is_remembered(self):
        """After an unreachable cluster, the command line says so (for the exit status)."""
        cli = self.start(FakeClient(connect=ClusterUnreachable("down")))
        self.type("LIST")
        self.assertTrue(cli.unreachable)

    def test_next_command_tries_to_connect_again(self):
        """A failed log-in is retried by the next command."""
        client = FakeClient(connect=ClusterUnreachable("down"), list=pb.ListReply())
        self.start(client)
        self.type("LIST")
        client.answers["connect"] = pb.LoginReply()
        self.type("LIST")
        self.assertEqual(client.calls, [("connect",), ("connect",), ("connect",), ("list",)])
        self.assertEqual(self.output()[1], OK)


class LoginAtStartTests(CommandLineTestCase):
    def test_a_wrong_password_with_no_command_is_refused(self):
        """
        A wrong password is told even when nothing is typed: one line, and
        the client is done (refused: exit 1).
        """
        wrong = InvalidPassword(errors.Status.UNAUTHENTICATED, "invalid password")
        cli = self.start(FakeClient(connect=wrong))
        self.assertEqual(self.output(), [INVALID_PASSWORD])
        self.assertTrue(cli.refused)
        self.successResultOf(cli.done)

    def test_a_wrong_password_runs_no_command(self):
        """Lines typed after a refused login are not run, nor answered."""
        wrong = InvalidPassword(errors.Status.UNAUTHENTICATED, "invalid password")
        self.start(FakeClient(connect=wrong, list=pb.ListReply()))
        self.type("LIST", "FOLLOW bob")
        self.assertEqual((self.output(), self.client.commands()), ([INVALID_PASSWORD], []))

    def test_a_terminal_is_prompted_once_the_login_is_done(self):
        """On a terminal the first prompt waits for the login."""
        client = FakeClient()
        del client.answers["connect"]
        self.start(client, interactive=True)
        self.assertEqual(self.transport.value(), b"")
        client.pending[0].callback(pb.LoginReply())
        self.assertEqual(self.transport.value(), b"Cmd> ")

    def test_a_wrong_password_on_a_terminal_is_not_prompted(self):
        """On a terminal a refused login prints its line and no prompt."""
        wrong = InvalidPassword(errors.Status.UNAUTHENTICATED, "invalid password")
        self.start(FakeClient(connect=wrong), interactive=True)
        self.assertEqual(self.output(), [INVALID_PASSWORD])

    def test_eof_with_nothing_typed_after_a_login_is_done(self):
        """EOF with no command, logged in: done, nothing printed (exit 0)."""
        cli = self.start(FakeClient())
        cli.readConnectionLost()
        self.successResultOf(cli.done)
        self.assertEqual((self.output(), cli.unreachable, cli.refused), ([], False, False))

    def test_eof_waits_for_the_login(self):
        """EOF with no command waits for the login to be answered."""
        client = FakeClient()
        del client.answers["connect"]
        cli = self.start(client)
        cli.readConnectionLost()
        self.assertNoResult(cli.done)
        client.pending[0].errback(
            InvalidPassword(errors.Status.UNAUTHENTICATED, "invalid password"))
        self.successResultOf(cli.done)
        self.assertEqual((self.output(), cli.refused), ([INVALID_PASSWORD], True))

    def test_an_unreachable_cluster_at_start_is_said_once_at_eof(self):
        """
        A login at start that can not reach the cluster says nothing then;
        with nothing typed, EOF gives the unknown-reason line with the
        cause (exit 1).
        """
        cli = self.start(FakeClient(connect=ClusterUnreachable("router 127.0.0.1:3410: refused")))
        self.assertEqual(self.output(), [])
        cli.readConnectionLost()
        self.successResultOf(cli.done)
        self.assertEqual((self.output(), cli.unreachable), ([UNKNOWN], True))
        self.assertIn("router 127.0.0.1:3410: refused", self.err.getvalue())

    def test_an_unreachable_cluster_is_said_once_per_command_not_again_at_eof(self):
        """A command that found the cluster unreachable said so: EOF adds nothing."""
        cli = self.start(FakeClient(connect=ClusterUnreachable("down")))
        self.type("LIST")
        cli.readConnectionLost()
        self.successResultOf(cli.done)
        self.assertEqual(self.output(), [UNKNOWN])


class FormatPostTests(CommandLineTestCase):
    def test_post_line_format(self):
        """A post is one line: sender (ctime) >> text."""
        self.useTimeZone("UTC")
        self.assertEqual(formatPost(post("hello world")),
                         "bob (Tue Nov 24 11:48:30 2026) >> hello world")

    def test_post_time_is_local_time(self):
        """The time of a post is shown in the local time zone."""
        self.useTimeZone("EST5")
        expected = "bob (%s) >> hi" % (time.ctime(WHEN_US / 1e6),)
        self.assertEqual(formatPost(post("hi")), expected)
        self.assertIn("06:48:30", expected)

    def test_newline_in_post_stays_on_one_line(self):
        """A newline in a post's text can not break the timeline line."""
        line = formatPost(post("one\ntwo\r\nthree"))
        self.assertEqual(len(line.splitlines()), 1)
        self.assertTrue(line.endswith(r">> one\ntwo\r\nthree"))

    def test_escape_sequences_in_a_post_are_shown_visibly(self):
        """
        ESC, BEL, backspace and DEL reach the terminal as ^[, ^G, ^H and ^?:
        a post can not clear, recolour or retitle the reader's screen.
        """
        self.useTimeZone("UTC")
        line = formatPost(post("\x1b[2J\x1b]0;owned\x07x\x08\x7fy"))
        self.assertEqual(line, "bob (Tue Nov 24 11:48:30 2026) >> ^[[2J^[]0;owned^Gx^H^?y")

    def test_c1_controls_in_a_post_are_shown_visibly(self):
        """A one-character CSI (U+009B) and NEL (U+0085) are shown as M-^[ and M-^E."""
        line = formatPost(post("a\x9b2Jb\x85c"))
        self.assertTrue(line.endswith(">> aM-^[2JbM-^Ec"), line)

    def test_no_control_character_reaches_the_terminal(self):
        """Whatever the text, the line holds no control character but tab, and is one line."""
        text = "".join(chr(c) for c in range(0, 0xA0)) + "\u2028\u2029 done"
        line = formatPost(post(text))
        self.assertEqual(len(line.splitlines()), 1)
        raw = [c for c in line if c != "\t" and (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0)]
        self.assertEqual(raw, [])
        self.assertTrue(line.endswith(r"\u2028\u2029 done"))

    def test_printable_unicode_is_shown_as_it_is(self):
        """Accents, CJK and emoji are not escaped; a tab stays a tab."""
        line = formatPost(post("café 東京 \U0001F600\tend"))
        self.assertTrue(line.endswith(">> café 東京 \U0001F600\tend"))


class TimelineTests(CommandLineTestCase):
    def enterTimeline(self, client=None):
        """Type TIMELINE and let the client deliver an empty history."""
        client = client or FakeClient(timeline=None, post=pb.WriteReply())
        self.start(client)
        self.type("TIMELINE")
        return client

    def test_timeline_announces_itself(self):
        """TIMELINE prints that you are in the timeline."""
        self.enterTimeline()
        self.assertEqual(self.output(), ["Now you are in the timeline"])

    def test_history_follows_the_announcement(self):
        """The history comes after the announcement, one line per post, oldest first."""
        self.useTimeZone("UTC")
        client = self.enterTimeline(FakeClient())
        client.onPost(post("first", time_us=WHEN_US))
        client.onPost(post("second", time_us=WHEN_US + 1000000))
        client.pending[0].callback(None)
        self.assertEqual(self.output(), [
            "Now you are in the timeline",
            "bob (Tue Nov 24 11:48:30 2026) >> first",
            "bob (Tue Nov 24 11:48:31 2026) >> second",
        ])

    def test_live_posts_are_printed(self):
        """Posts arriving after the history are printed as they come."""
        self.useTimeZone("UTC")
        client = self.enterTimeline()
        client.onPost(post("live", author="carol"))
        self.assertEqual(self.output()[-1], "carol (Tue Nov 24 11:48:30 2026) >> live")

    def test_lines_typed_in_timeline_are_posted(self):
        """Every line typed in timeline mode is posted, commands included."""
        client = self.enterTimeline()
        self.type("hello", "FOLLOW bob")
        self.assertEqual(client.commands(),
                         [("timeline",), ("post", "hello"), ("post", "FOLLOW bob")])

    def test_blank_lines_in_timeline_are_not_posted(self):
        """An empty line in timeline mode posts nothing."""
        client = self.enterTimeline()
        self.type("", "  ")
        self.assertEqual(client.commands(), [("timeline",)])

    def test_posting_prints_nothing(self):
        """A successful post adds no line of its own."""
        self.enterTimeline()
        self.type("hello")
        self.assertEqual(self.output(), ["Now you are in the timeline"])

    def test_lines_wait_for_the_history(self):
        """A line typed before the history has arrived is posted after it."""
        client = self.enterTimeline(FakeClient(post=pb.WriteReply()))
        self.type("hello")
        self.assertEqual(client.commands(), [("timeline",)])
        client.pending[0].callback(None)
        self.assertEqual(client.commands(), [("timeline",), ("post", "hello")])

    def test_failed_timeline_stays_in_command_mode(self):
        """TIMELINE on an unreachable cluster fails, and the next line is a command."""
        client = FakeClient(connect=ClusterUnreachable("down"), list=pb.ListReply())
        self.start(client)
        self.type("TIMELINE")
        client.answers["connect"] = pb.LoginReply()
        self.type("LIST")
        self.assertEqual(self.output()[:2], [UNKNOWN, OK])
        self.assertEqual(client.commands(), [("list",)])


class OrderTests(CommandLineTestCase):
    def test_one_command_at_a_time(self):
        """The next command is not started before the previous one was answered."""
        client = FakeClient()
        self.start(client)
        self.type("FOLLOW bob", "FOLLOW carol")
        self.assertEqual(client.commands(), [("follow", "bob")])
        client.pending[0].callback(pb.WriteReply())
        self.assertEqual(client.commands(), [("follow", "bob"), ("follow", "carol")])

    def test_quick_answer_does_not_overtake_a_slow_one(self):
        """A command the client answers at once still replies after a slow one before it."""
        client = FakeClient(list=pb.ListReply(all_users=["a"], followers=["x"]))
        self.start(client)
        self.type("FOLLOW bob", "LIST")
        self.assertEqual(self.output(), [])
        client.pending[0].errback(CommandFailed(errors.Status.ALREADY_EXISTS, "dup"))
        self.assertEqual(self.output(), [
            "Input username already exists, command failed",
            OK, "All users: a", "Followers: x",
        ])

    def test_local_refusal_waits_for_the_command_before_it(self):
        """A line refused locally is still answered after the pending command."""
        client = FakeClient()
        self.start(client)
        self.type("FOLLOW bob", "NONSENSE")
        self.assertEqual(self.output(), [])
        client.pending[0].callback(pb.WriteReply())
        self.assertEqual(self.output(), [OK, INVALID_COMMAND])


class EndOfInputTests(CommandLineTestCase):
    def test_eof_with_nothing_pending_is_done(self):
        """EOF after every command was answered fires done at once."""
        cli = self.start(FakeClient(list=pb.ListReply()))
        self.type("LIST")
        cli.readConnectionLost()
        self.assertIsNone(self.successResultOf(cli.done))

    def test_eof_waits_for_pending_commands(self):
        """EOF fires done only once every command typed has been answered."""
        client = FakeClient()
        cli = self.start(client)
        self.type("FOLLOW bob", "FOLLOW carol")
        cli.readConnectionLost()
        client.pending[0].callback(pb.WriteReply())
        self.assertNoResult(cli.done)
        client.pending[1].callback(pb.WriteReply())
        self.successResultOf(cli.done)
        self.assertEqual(self.output(), [OK, OK])

    def test_eof_waits_for_posts_to_be_acknowledged(self):
        """EOF in timeline mode fires done only once every post was acknowledged."""
        client = FakeClient(timeline=None)
        cli = self.start(client)
        self.type("TIMELINE", "hello")
        cli.readConnectionLost()
        self.assertNoResult(cli.done)
        client.pending[0].callback(pb.WriteReply())
        self.successResultOf(cli.done)

    def test_eof_waits_for_the_history(self):
        """EOF right after TIMELINE fires done only once the history was printed."""
        client = FakeClient()
        cli = self.start(client)
        self.type("TIMELINE")
        cli.readConnectionLost()
        self.assertNoResult(cli.done)
        client.pending[0].callback(None)
        self.successResultOf(cli.done)

    def test_eof_after_a_failed_command_is_done(self):
        """A failed command does not keep EOF from finishing."""
        cli = self.start(FakeClient(connect=ClusterUnreachable("down")))
        self.type("LIST")
        cli.readConnectionLost()
        self.successResultOf(cli.done)


class PromptTests(CommandLineTestCase):
    def test_interactive_prompts_at_start(self):
        """On a terminal the prompt is shown before the first command."""
        self.start(FakeClient(), interactive=True)
        self.assertEqual(self.transport.value(), b"Cmd> ")

    def test_interactive_prompts_after_each_reply(self):
        """On a terminal the prompt comes back after each reply."""
        self.start(FakeClient(follow=pb.WriteReply()), interactive=True)
        self.type("FOLLOW bob")
        self.assertEqual(self.transport.value(), b"Cmd> " + OK.encode() + b"\nCmd> ")

    def test_no_prompt_when_not_interactive(self):
        """From a pipe no prompt is printed."""
        self.start(FakeClient(follow=pb.WriteReply()), interactive=False)
        self.type("FOLLOW bob", "NONSENSE")
        self.assertNotIn(b"Cmd>", self.transport.value())

    def test_no_prompt_in_timeline(self):
        """In timeline mode the prompt is not shown."""
        self.start(FakeClient(timeline=None, post=pb.WriteReply()), interactive=True)
        self.type("TIMELINE", "hello")
        self.assertEqual(self.transport.value(),
                         b"Cmd> Now you are in the timeline\n")


class ReconnectTests(CommandLineTestCase):
    def test_failover_prints_reconnecting(self):
        """A failover prints Reconnecting to HOST:PORT..."""
        client = FakeClient()
        self.start(client)
        client.onReconnect("127.0.0.3:5000")
        self.assertEqual(self.output(), ["Reconnecting to 127.0.0.3:5000..."])


class CopiesTests(CommandLineTestCase):
    def test_a_timeline_given_up_on_is_unknown_reason_with_the_cause(self):
        """
        When the client gives up restoring a live timeline, the unknown-reason
        line is printed, the cause goes to stderr, and the exit status is 1.
        """
        client = FakeClient(timeline=None)
        self.start(client)
        self.type("TIMELINE")
        client.onLost(ClusterUnreachable("gave up after 30 attempts in 15s"))
        self.assertEqual(self.output(), ["Now you are in the timeline", UNKNOWN])
        self.assertIn("gave up after 30 attempts", self.err.getvalue())
        self.assertTrue(self.cli.unreachable)

    def test_a_session_given_up_on_in_command_mode_prints_nothing(self):
        """Out of the timeline, the next command finds out (and says so) itself."""
        client = FakeClient()
        self.start(client)
        client.onLost(ClusterUnreachable("gave up"))
        self.assertEqual(self.output(), [])

    def test_a_write_stored_on_one_vm_only_is_said_on_stderr(self):
        """copies=1: stdout keeps the contract line, stderr says why it matters."""
        self.start(FakeClient(follow=pb.WriteReply(copies=1)))
        self.type("FOLLOW bob")
        self.assertEqual(self.output(), [OK])
        self.assertIn("stored on one VM only", self.err.getvalue())

    def test_a_write_on_two_vms_says_nothing_more(self):
        """copies=2 is the normal case: nothing on stderr."""
        self.start(FakeClient(follow=pb.WriteReply(copies=2)))
        self.type("FOLLOW bob")
        self.assertEqual((self.output(), self.err.getvalue()), ([OK], ""))
