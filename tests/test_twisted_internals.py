"""
The one module that reads Twisted's private state
(L{ockamtw.twisted_internals}), on each side: a real Twisted TCP transport
gives figures, and any other transport the fallback (C{None}), which the
callers turn into the public path.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ockamtw.flow import send_now
from ockamtw.twisted_internals import idle_socket, unsent

from tests.helpers import async_test, deadline, wait_until


class Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.arrived = Deferred()

    def dataReceived(self, data):
        self.data += data
        if len(self.data) >= 5 and not self.arrived.called:
            self.arrived.callback(self.data)


class RealTransportTests(TestCase):
    @async_test
    async def test_tcp_transport(self):
        server = Collect()
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(lambda: server))
        self.addCleanup(port.stopListening)
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol())
        self.addCleanup(client.transport.abortConnection)
        t = client.transport
        self.assertEqual(unsent(t), 0)
        self.assertIs(idle_socket(t), t.socket)
        t.write(b"abc")  # buffered by Twisted until the reactor writes it
        self.assertEqual(unsent(t), 3)
        self.assertIsNone(idle_socket(t))  # holds something: not idle
        await wait_until(lambda: unsent(t) == 0, 5, "Twisted writing its buffer")
        self.assertIs(idle_socket(t), t.socket)
        send_now(t, [b"de"], 2)
        got = await deadline(server.arrived, 5, "the bytes")
        self.assertEqual(got, b"abcde")


class FallbackTests(SynchronousTestCase):
    def test_other_transport(self):
        t = StringTransport()
        self.assertIsNone(unsent(t))
        self.assertIsNone(idle_socket(t))
        send_now(t, [b"ab", b"cd"], 20000)  # the public path: writeSequence
        self.assertEqual(t.value(), b"abcd")
