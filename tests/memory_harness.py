"""
Nodes in memory: a node on a L{MemoryReactorClock}, with accepted TCP
connections to it on L{StringTransport}s (L{MemoryMixin}; the relay and
machine tests), and L{ListeningReactor}, a L{MemoryReactorClock} whose TCP
ports behave as the kernel's (the control API tests).  Nothing touches a
socket or waits for time to pass.
"""

from __future__ import annotations

from typing import Dict

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

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


@implementer(IListeningPort)
class ListeningPort:
    """
    A port of a L{ListeningReactor}: it listens until C{stopListening},
    which (as a real port's) returns a Deferred.
    """

    def __init__(self, reactor: "ListeningReactor", address: IPv4Address, factory) -> None:
        self.reactor = reactor
        self.address = address
        self.factory = factory
        self.listening = True

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred:
        if self.listening:
            self.listening = False
            del self.reactor.listening[self.address.port]
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return self.address


class ListeningReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose TCP listeners behave as the kernel's: port
    0 is given a free port number, a port that is listened on cannot be
    listened on again (on any interface) until it stops, C{getHost} tells
    the interface asked for, and C{stopListening} returns a Deferred.
    C{listening} maps each port number listened on to its L{ListeningPort}.
    (IPv4 only.)
    """

    #: The first port number given for port 0.
    FIRST_FREE = 40000

    def __init__(self) -> None:
        MemoryReactorClock.__init__(self)
        self.listening: Dict[int, ListeningPort] = {}
        self._next = self.FIRST_FREE

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port == 0:
            while self._next in self.listening:
                self._next += 1
            port = self._next
        if port in self.listening:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        MemoryReactorClock.listenTCP(self, port, factory, backlog, interface)
        listening = ListeningPort(self, IPv4Address("TCP", interface or "0.0.0.0", port), factory)
        self.listening[port] = listening
        return listening
