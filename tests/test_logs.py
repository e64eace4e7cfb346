"""Log lines name the VM, the role and the pid, one event per line."""

import os

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import logs


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
