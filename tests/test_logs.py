"""
Log lines name the VM, the role and the pid, one event per line; the
processes of a VM share one log file, appended to and rotated by its real
size, one rotation at a time (two instances, and real processes).
"""

import glob
import os

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import logs
from tests.processes import spawn


def event(**fields):
    base = {"log_format": "promoted after buddy {pid} died", "pid": 42,
            "log_level": LogLevel.info, "log_namespace": "snstwist.server.api", "log_time": 0}
    base.update(fields)
    return base


class LogFormatTests(SynchronousTestCase):
    def setUp(self):
        self.addCleanup(logs.setIdentity, "sns")

    def test_each_line_names_the_vm_role_and_pid(self):
        """The identity set for this process is in every line."""
        logs.setIdentity("vm2", "master")
        line = logs._format(event())
        self.assertIn("[vm2 master pid=%d snstwist.server.api#info]" % (os.getpid(),), line)
        self.assertTrue(line.endswith("promoted after buddy 42 died\n"))

    def test_a_role_change_shows_in_later_lines(self):
        """After a promotion the lines say master."""
        logs.setIdentity("vm1", "slave")
        before = logs._format(event())
        logs.setIdentity("vm1", "master")
        self.assertIn("vm1 slave", before)
        self.assertIn("vm1 master", logs._format(event()))

    def test_a_traceback_stays_on_one_line(self):
        """An event with a failure is still exactly one line."""
        failure = Failure(ZeroDivisionError("division by zero"))
        line = logs._format(event(log_failure=failure, log_level=LogLevel.error))
        self.assertEqual(line.count("\n"), 1)
        self.assertIn("ZeroDivisionError", line)

    def test_each_line_has_its_time_to_the_microsecond(self):
        """Lines of several processes can be put in order to the microsecond."""
        line = logs._format(event(log_time=1_700_000_000.123456))
        stamp = line.split(" ", 1)[0]
        self.assertRegex(stamp, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.123456[+-]\d{4}$")

    def test_a_time_rounded_up_to_a_whole_second_names_the_next_second(self):
        """Rounding up to a whole second moves to the next second (never .1000000)."""
        self.assertEqual(logs.formatTime(1_700_000_000.9999996)[:26],
                         logs.formatTime(1_700_000_001.0)[:26])
        self.assertRegex(logs.formatTime(1_700_000_000.9999996), r"\.000000[+-]\d{4}$")


class SharedLogFileTests(SynchronousTestCase):
    def test_processes_logging_to_one_file_do_not_write_over_each_other(self):
        """
        Each process opens the file once and writes its lines as they come:
        every line of each is kept, whole (two opens here stand for two
        processes).
        """
        path = self.mktemp()
        first = logs.SharedLogFile.fromFullPath(path)
        second = logs.SharedLogFile.fromFullPath(path)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        for n in range(3):
            first.write("first %d\n" % (n,))
            second.write("second %d\n" % (n,))
        with open(path) as f:
            self.assertEqual(sorted(f.read().splitlines()),
                             sorted(["first %d" % (n,) for n in range(3)]
                                    + ["second %d" % (n,) for n in range(3)]))

    def test_the_file_rotates_by_its_size_counting_every_writers_lines(self):
        """
        Two writers of 100 bytes limit, 10-byte lines in turn: the file
        rotates when it holds 100 bytes whoever wrote them (not when each
        writer wrote 100), and each rotated file holds its limit, not a few
        lines moved away by a second rotation.
        """
        path = self.mktemp()
        first = logs.SharedLogFile.fromFullPath(path, rotateLength=100)
        second = logs.SharedLogFile.fromFullPath(path, rotateLength=100)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        lines = []
        for n in range(30):
            for name, writer in (("a", first), ("b", second)):
                lines.append("%s %07d\n" % (name, n))
                writer.write(lines[-1])
        rotated = [path + ".%d" % (i,) for i in (5, 4, 3, 2, 1)]
        self.assertEqual(sorted(glob.glob(path + ".[0-9]*")), sorted(rotated))
        self.assertEqual([os.path.getsize(p) for p in rotated], [100] * 5)
        self.assertEqual("".join(_read(p) for p in rotated + [path]), "".join(lines))

    def test_a_writer_follows_anothers_rotation(self):
        """
        One writer rotated the file: the other's next line goes to the new
        file, and the other does not rotate it again.
        """
        path = self.mktemp()
        first = logs.SharedLogFile.fromFullPath(path, rotateLength=100)
        second = logs.SharedLogFile.fromFullPath(path, rotateLength=100)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        first.write("x" * 99 + "\n")
        first.write("first, after its rotation\n")
        second.write("second, after the other's rotation\n")
        self.assertEqual((_read(path + ".1"), _read(path), glob.glob(path + ".2")),
                         ("x" * 99 + "\n", "first, after its rotation\n"
                          "second, after the other's rotation\n", []))


def _read(path):
    with open(path) as f:
        return f.read()


# One process of SharedLogFileProcessTests: C{argv[1]} writes C{argv[3]}
# numbered lines to the log C{argv[2]}, rotated at 2,000 bytes.
WRITER = """
import sys
from snstwist.core.logs import SharedLogFile
name, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = SharedLogFile.fromFullPath(path, rotateLength=2000)
for n in range(count):
    log.write("%s %06d %s\\n" % (name, n, "." * 30))
"""


class SharedLogFileProcessTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_processes_writing_at_once_rotate_one_at_a_time_and_lose_no_line(self):
        """
        Three processes append 3,000 lines each to one log rotated at 2,000
        bytes: every line is in exactly one file, each rotated file holds
        at least its limit (no file moved away by a second rotation just
        after the first) and at most a few lines more (those written while
        it was being rotated), and the current one is under its limit.
        """
        path = os.path.abspath(self.mktemp())
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        count, names = 3000, ("a", "b", "c")
        children = [spawn(self, ["-c", WRITER, name, path, str(count)], path=here)
                    for name in names]
        codes = yield defer.gatherResults([child.ended for child in children])
        self.assertEqual(codes, [0, 0, 0], [c.err for c in children])
        rotated = sorted(glob.glob(path + ".[0-9]*"), key=lambda p: -int(p.rsplit(".", 1)[1]))
        self.assertEqual(sorted(int(p.rsplit(".", 1)[1]) for p in rotated),
                         list(range(1, len(rotated) + 1)))
        line = len("a 000000 %s\n" % ("." * 30,))
        sizes = [os.path.getsize(p) for p in rotated]
        self.assertTrue(all(2000 <= size <= 2000 + 2 * len(names) * line for size in sizes),
                        sizes)
        self.assertLess(os.path.getsize(path), 2000 + len(names) * line)
        written = [line for p in rotated + [path] for line in _read(p).splitlines()]
        self.assertEqual(sorted(written), sorted("%s %06d %s" % (name, n, "." * 30)
                                                 for name in names for n in range(count)))
        # Each writer's lines, in the order of the files, are in its order.
        for name in names:
            mine = [w for w in written if w.startswith(name + " ")]
            self.assertEqual(mine, sorted(mine))
