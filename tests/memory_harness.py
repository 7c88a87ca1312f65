"""
Nodes in memory: a node on a L{MemoryReactorClock}, with accepted TCP
connections to it on L{StringTransport}s (L{MemoryMixin}; the relay and
machine tests).  Nothing touches a socket or waits for time to pass.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from ockamtw import Node
from ockamtw.transport.tcp import MODE_ACCEPTED, _FrameFactory


class MemoryMixin:
    """
    A node on a L{MemoryReactorClock} and connections to it on
    L{StringTransport}s.
    """

    node_name = "n2"

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.node = Node(self.reactor, name=self.node_name)
        # These connections stand in for peers that may stay silent; their
        # first-frame timeout is tested in tests.test_connection_limits.
        self.node.tcp.guard.limits.first_frame_timeout = None
        self._port = 5555

    def connect(self):
        """
        @return: C{(protocol, transport, connection)} of a new accepted
            connection.
        """
        proto = _FrameFactory(self.node.tcp, MODE_ACCEPTED).buildProtocol(None)
        t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", self._port))
        self._port += 1
        proto.makeConnection(t)
        return proto, t, proto.connection

    def lose(self, proto):
        proto.connectionLost(Failure(ConnectionDone()))

    def text(self, conn) -> str:
        return str(conn.address)
