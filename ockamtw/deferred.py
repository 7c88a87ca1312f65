"""
Deferred helpers shared by the node, its features and its clients:
operations in progress that several callers wait for, waiting for many at
once, and a call with a time limit.

A leaf module: it imports nothing of ockamtw.
"""

from __future__ import annotations

from typing import Callable, Dict

from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred, succeed
from twisted.python.failure import Failure


class InFlight:
    """
    Operations in progress that several callers wait for, by key: the first
    caller starts one, later callers get a Deferred of the same result.
    """

    def __init__(self) -> None:
        self._waiting: Dict[object, list] = {}

    def __contains__(self, key) -> bool:
        return key in self._waiting

    def wait(self, key, start: Callable[[], Deferred]) -> Deferred:
        """
        A new Deferred of the result of the operation C{key}, started with
        C{start()} unless it is already in progress.
        """
        d: Deferred = Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        # Registered before starting: start() may fire synchronously.
        self._waiting[key] = [d]
        maybeDeferred(start).addBoth(self._done, key)
        return d

    def _done(self, result, key) -> None:
        for d in self._waiting.pop(key, []):
            if d.called:
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def cancel_all(self) -> None:
        """
        Cancel every caller's Deferred (the operations themselves go on).
        """
        waiting, self._waiting = self._waiting, {}
        for ds in waiting.values():
            for d in ds:
                d.cancel()


def gather(ds) -> Deferred:
    """
    A Deferred that fires when all of C{ds} have (errors are consumed).
    """
    ds = list(ds)
    if not ds:
        return succeed(None)
    return DeferredList(ds, consumeErrors=True).addCallback(lambda _: None)


class TimedOut(Exception):
    """
    L{within}'s operation did not end within its time limit.
    """


def within(clock, seconds: float, start: Callable[[], Deferred]) -> Deferred:
    """
    The result of C{start()}, cancelled after C{seconds} on C{clock}: then
    it fails with L{TimedOut}, whatever the operation made of being
    cancelled (an HTTP client says C{ResponseNeverReceived}, say).
    Cancelling the returned Deferred cancels the operation and fails with
    C{CancelledError} all the same.
    """
    inner = start()
    why: list = []

    def cancel(_) -> None:
        why.append(CancelledError)
        inner.cancel()

    def expire() -> None:
        why.append(TimedOut)
        inner.cancel()

    timer = clock.callLater(seconds, expire)

    def ended(result):
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure) and why:
            return Failure(CancelledError() if why[0] is CancelledError else TimedOut(seconds))
        return result

    outer = Deferred(cancel)
    inner.addBoth(ended).chainDeferred(outer)
    return outer
