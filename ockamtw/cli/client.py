"""
A client of a node's control API for a Twisted program: treq over the
node's UNIX socket.  The command line itself calls nodes with
L{ockamtw.cli.oneshot.BlockingControlClient} (no reactor, no Twisted
imports); both answer alike, in the words of L{ockamtw.cli.oneshot}.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from treq.client import HTTPClient
from twisted.internet import defer, endpoints
from twisted.internet.error import ConnectError
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ..deferred import TimedOut, within
from .nodes import CLIError
from .oneshot import CALL_TIMEOUT, NodeClient, closed_without_answer, decode_answer, no_answer_within, url_of

__all__ = ["CALL_TIMEOUT", "ControlClient", "url_of"]


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    def __init__(self, reactor, path: str) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri):
        return endpoints.UNIXClientEndpoint(self.reactor, self.path, timeout=10)


class ControlClient(NodeClient):
    """
    Calls one node's control API; every call returns the decoded JSON or
    raises L{CLIError} with the node's one-line reason.

    @param unreachable: called when the socket cannot be reached; returns
        the one-line reason (by default: the node is not running).
    """

    def __init__(self, reactor, name: str, socket_path: str, unreachable: Optional[Callable[[], str]] = None) -> None:
        NodeClient.__init__(self, name, socket_path, unreachable)
        self.reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(reactor, _UnixSocket(reactor, socket_path), pool=self._pool)
        self._http = HTTPClient(agent)

    async def call(self, method: str, path: Union[str, Sequence[str]], body=None, timeout: Optional[float] = None):
        """
        C{method} on C{path} (a string, or segments quoted one by one); the
        call fails after C{timeout} seconds (L{CALL_TIMEOUT} by default)
        with one line saying the node did not answer.
        """
        data, limit = self._request(body, timeout)

        async def go():
            response = await self._http.request(
                method, url_of(path), data=data, headers={b"content-type": [b"application/json"]}
            )
            return response, await response.content()

        # Cancelling the call (Ctrl-C) is not the node's failure: it ends
        # as CancelledError, whatever the HTTP client makes of it.
        try:
            response, raw = await within(self.reactor, limit, lambda: defer.Deferred.fromCoroutine(go()))
        except TimedOut:
            raise no_answer_within(self.name, limit) from None
        except defer.CancelledError:
            raise
        except (ConnectError, OSError) as e:
            raise CLIError(self._not_reachable()) from e
        except (ResponseFailed, ResponseNeverReceived):
            raise closed_without_answer(self.name) from None
        return decode_answer(self.name, response.code, raw)

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
