"""
Deferred helpers shared by the node and its features: operations in
progress that several callers wait for, and waiting for many at once.

A leaf module: it imports nothing of ockamtw.
"""

from __future__ import annotations

from typing import Callable, Dict

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
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
