"""
The command line's client of a node's control API: treq over the node's
UNIX socket.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from treq.client import HTTPClient
from twisted.internet import endpoints
from twisted.internet.error import ConnectError
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .nodes import CLIError


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    def __init__(self, reactor, path: str) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri):
        return endpoints.UNIXClientEndpoint(self.reactor, self.path, timeout=10)


class ControlClient:
    """
    Calls one node's control API; every call returns the decoded JSON or
    raises L{CLIError} with the node's one-line reason.
    """

    def __init__(self, reactor, name: str, socket_path: str) -> None:
        self.name = name
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(reactor, _UnixSocket(reactor, socket_path), pool=self._pool)
        self._http = HTTPClient(agent)

    async def call(self, method: str, path: str, body=None):
        url = "http://node/" + "/".join(quote(p, safe="") for p in path.strip("/").split("/"))
        data = json.dumps(body).encode() if body is not None else None
        try:
            response = await self._http.request(
                method, url, data=data, headers={b"content-type": [b"application/json"]}
            )
            raw = await response.content()
        except (ConnectError, OSError) as e:
            raise CLIError(
                f"node {self.name} is not running (start it with: ockam node start {self.name})"
            ) from e
        try:
            result = json.loads(raw)
        except ValueError:
            raise CLIError(f"node {self.name} answered something that is not JSON") from None
        if response.code != 200:
            message = result.get("error") if isinstance(result, dict) else None
            raise CLIError(message or f"node {self.name} answered HTTP {response.code}")
        return result

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
