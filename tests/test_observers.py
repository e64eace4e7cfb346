"""Observers: how one piece tells others what happened without knowing them."""

from twisted.trial.unittest import SynchronousTestCase

from snstwist.core.observers import Observers


class ObserversTests(SynchronousTestCase):
    def test_every_observer_hears_each_event_in_the_order_they_subscribed(self):
        heard = []
        observers = Observers("tests")
        observers.add(lambda n: heard.append(("first", n)))
        observers.add(lambda n: heard.append(("second", n)))
        observers(1)
        observers(2)
        self.assertEqual(heard, [("first", 1), ("second", 1), ("first", 2), ("second", 2)])

    def test_a_failing_observer_is_logged_and_the_next_still_hears(self):
        heard = []
        observers = Observers("tests")

        def broken(n):
            raise ZeroDivisionError(n)

        observers.add(broken)
        observers.add(heard.append)
        observers(7)
        self.assertEqual(heard, [7])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_a_removed_observer_hears_nothing_more(self):
        heard = []
        observers = Observers("tests")
        observers.add(heard.append)
        observers(1)
        observers.remove(heard.append)
        observers(2)
        self.assertEqual(heard, [1])
