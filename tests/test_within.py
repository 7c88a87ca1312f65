"""
L{ockamtw.deferred.within}: an operation with a time limit, as the
command line's and the Orchestrator's HTTP clients call.
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.deferred import TimedOut, within


class WithinTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.inner = Deferred()
        self.d = within(self.clock, 5, lambda: self.inner)

    def test_result_in_time(self):
        self.clock.advance(4.9)
        self.inner.callback("answer")
        self.assertEqual(self.successResultOf(self.d), "answer")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failure_in_time_is_kept(self):
        self.inner.errback(ValueError("refused"))
        self.failureResultOf(self.d, ValueError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_time_limit(self):
        """
        The operation is cancelled at the limit; whatever it fails with
        then (here its own error, as an HTTP client's), the caller sees
        TimedOut.
        """
        self.d.addErrback(lambda _: None)  # setUp's call, which times out too
        self.inner = Deferred(lambda d: d.errback(ValueError("the client's own words")))
        self.d = within(self.clock, 5, lambda: self.inner)
        self.clock.advance(4.9)
        self.assertNoResult(self.d)
        self.clock.advance(0.1)
        self.failureResultOf(self.d, TimedOut)

    def test_cancelled_by_the_caller(self):
        self.d.cancel()
        self.failureResultOf(self.d, CancelledError)
        self.assertTrue(self.inner.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])
