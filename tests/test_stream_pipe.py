"""
The in-process stream transports of C{ockam:} endpoints
(L{ockamtw.portal.pipe}), in memory: what a protocol sees is what it would
see on a TCP socket (data in order, flow control, half-close, the close
after the data, reasons).
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ockamtw.portal.pipe import OckamAddress, StreamTransport, pipe
from ockamtw.twisted_internals import unsent


class Recorder(Protocol):
    def __init__(self) -> None:
        self.events = []
        self.data = b""
        self.reads = []
        self.reason = None

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.reads.append(len(data))

    def connectionLost(self, reason) -> None:
        self.events.append("lost")
        self.reason = reason


@implementer(IHalfCloseableProtocol)
class HalfRecorder(Recorder):
    def readConnectionLost(self) -> None:
        self.events.append("read closed")

    def writeConnectionLost(self) -> None:
        self.events.append("write closed")


class PipeTestCase(SynchronousTestCase):
    def make(self, a_protocol=None, b_protocol=None):
        self.clock = Clock()
        self.a, self.b = pipe(self.clock, OckamAddress("/service/a"), OckamAddress("/service/b"))
        self.pa = a_protocol or Recorder()
        self.pb = b_protocol or Recorder()
        self.a.connect(self.pa)
        self.b.connect(self.pb)

    def settle(self) -> None:
        for _ in range(20):
            self.clock.advance(0)


class InterfaceTests(PipeTestCase):
    def test_interfaces(self):
        self.make()
        for end in (self.a, self.b):
            verifyObject(ITransport, end)
            verifyObject(IConsumer, end)
            verifyObject(IPushProducer, end)

    def test_addresses(self):
        self.make()
        self.assertEqual(self.a.getHost(), OckamAddress("/service/a"))
        self.assertEqual(self.a.getPeer(), OckamAddress("/service/b"))
        self.assertEqual(self.b.getPeer(), OckamAddress("/service/a"))
        self.assertEqual(str(self.b.getPeer()), "ockam:/service/a")

    def test_made(self):
        self.make()
        self.assertEqual(self.pa.events, ["made"])
        self.assertIs(self.pa.transport, self.a)


class DataTests(PipeTestCase):
    def test_both_ways_in_order(self):
        self.make()
        self.a.write(b"hello ")
        self.a.writeSequence([b"wor", b"ld"])
        self.b.write(b"back")
        self.assertEqual(self.pb.data, b"hello world")
        self.assertEqual(self.pa.data, b"back")

    def test_not_bytes(self):
        self.make()
        self.assertRaises(TypeError, self.a.write, "text")

    def test_reads_are_at_most_bufferSize(self):
        self.make()
        self.b.bufferSize = 1000
        self.a.write(b"x" * 2500)
        self.assertEqual(self.pb.reads, [1000, 1000, 500])

    def test_written_before_connect(self):
        """
        What one end writes before the other has a protocol is read once it
        has one.
        """
        clock = Clock()
        a, b = pipe(clock, OckamAddress("a"), OckamAddress("b"))
        pa, pb = Recorder(), Recorder()
        a.connect(pa)
        a.write(b"early")
        b.connect(pb)
        clock.advance(0)
        self.assertEqual(pb.data, b"early")


class FlowTests(PipeTestCase):
    def test_paused_reader_holds_data(self):
        self.make()
        self.b.pauseProducing()
        self.a.write(b"abc")
        self.assertEqual(self.pb.data, b"")
        self.assertEqual(unsent(self.a), 3)
        self.b.resumeProducing()
        self.assertEqual(self.pb.data, b"")  # a later reactor round, as a socket
        self.settle()
        self.assertEqual(self.pb.data, b"abc")
        self.assertEqual(unsent(self.a), 0)

    def test_streaming_producer_paused_and_resumed(self):
        """
        A streaming producer registered with one end is paused while more
        than C{bufferSize} bytes it wrote wait at the paused other end, and
        resumed once they are read: StringTransport's producerState shows it.
        """
        self.make()
        source = StringTransport()
        self.a.bufferSize = 4096
        self.a.registerProducer(source, True)
        self.b.pauseProducing()
        self.a.write(b"x" * 4096)
        self.assertEqual(source.producerState, "producing")
        self.a.write(b"x")
        self.assertEqual(source.producerState, "paused")
        self.b.resumeProducing()
        self.settle()
        self.assertEqual(len(self.pb.data), 4097)
        self.assertEqual(source.producerState, "producing")

    def test_pull_producer(self):
        """
        A pull producer is asked for more once what it wrote is read.
        """
        self.make()
        calls = []

        class Pull:
            def resumeProducing(self_):
                calls.append(1)
                if len(calls) <= 3:
                    self.a.write(b"%d" % len(calls))
                else:
                    self.a.unregisterProducer()

            def stopProducing(self_):
                calls.append("stop")

        self.a.registerProducer(Pull(), False)
        self.settle()
        self.assertEqual(self.pb.data, b"123")
        self.assertEqual(len(calls), 4)

    def test_registered_twice(self):
        self.make()
        self.a.registerProducer(StringTransport(), True)
        self.assertRaises(RuntimeError, self.a.registerProducer, StringTransport(), True)

    def test_producer_stopped_at_close(self):
        self.make()
        source = StringTransport()
        self.a.registerProducer(source, True)
        self.b.loseConnection()
        self.settle()
        self.assertEqual(source.producerState, "stopped")


class CloseTests(PipeTestCase):
    def test_close_after_data(self):
        """
        loseConnection: the other end reads what was written, then both
        lose the connection cleanly, in a later reactor round.
        """
        self.make()
        self.a.write(b"last words")
        self.a.loseConnection()
        self.assertEqual(self.pa.events, ["made"])
        self.settle()
        self.assertEqual(self.pb.data, b"last words")
        self.assertEqual(self.pa.events, ["made", "lost"])
        self.assertEqual(self.pb.events, ["made", "lost"])
        self.pa.reason.trap(error.ConnectionDone)
        self.pb.reason.trap(error.ConnectionDone)
        self.assertTrue(self.a.disconnected and self.b.disconnected)

    def test_close_waits_for_paused_reader(self):
        """
        The closing end is closed once its data is read: a paused reader
        keeps it open, as a socket's unsent bytes do.
        """
        self.make()
        self.b.pauseProducing()
        self.a.write(b"data")
        self.a.loseConnection()
        self.settle()
        self.assertEqual(self.pa.events, ["made"])
        self.assertEqual(unsent(self.a), 4)
        self.b.resumeProducing()
        self.settle()
        self.assertEqual(self.pb.data, b"data")
        self.assertEqual(self.pa.events, ["made", "lost"])
        self.assertEqual(self.pb.events, ["made", "lost"])

    def test_close_reason(self):
        self.make()
        self.a.close_reason = error.ConnectionLost("link to the other side closed")
        self.a.loseConnection()
        self.settle()
        self.pb.reason.trap(error.ConnectionLost)
        self.assertIn("link to the other side closed", str(self.pb.reason.value))
        self.pa.reason.trap(error.ConnectionDone)

    def test_abort(self):
        self.make()
        self.b.pauseProducing()
        self.a.write(b"never read")
        self.a.abortConnection()
        self.settle()
        self.pa.reason.trap(error.ConnectionAborted)
        self.pb.reason.trap(error.ConnectionLost)
        self.assertEqual(self.pb.data, b"")

    def test_lose_twice(self):
        self.make()
        self.a.loseConnection()
        self.a.loseConnection()
        self.b.loseConnection()
        self.settle()
        self.assertEqual(self.pa.events, ["made", "lost"])
        self.assertEqual(self.pb.events, ["made", "lost"])

    def test_write_after_close_dropped(self):
        self.make()
        self.a.loseConnection()
        self.settle()
        self.a.write(b"late")
        self.b.write(b"late")
        self.assertEqual(self.pb.data, b"")

    def test_stopProducing_closes(self):
        self.make()
        self.b.stopProducing()
        self.settle()
        self.assertEqual(self.pa.events, ["made", "lost"])

    def test_closed_before_connected(self):
        """
        An end never connected to a protocol is closed with its peer.
        """
        clock = Clock()
        a, b = pipe(clock, OckamAddress("a"), OckamAddress("b"))
        pa = Recorder()
        a.connect(pa)
        a.loseConnection()
        for _ in range(5):
            clock.advance(0)
        self.assertEqual(pa.events, ["made", "lost"])
        self.assertTrue(b.disconnected)


class HalfCloseTests(PipeTestCase):
    def test_half_close(self):
        """
        loseWriteConnection: after the data, the other end's half-closeable
        protocol reads an end of file and may still write; this end is told
        writeConnectionLost once its data is read.
        """
        self.make(HalfRecorder(), HalfRecorder())
        self.a.write(b"question")
        self.a.loseWriteConnection()
        self.settle()
        self.assertEqual(self.pb.data, b"question")
        self.assertEqual(self.pb.events, ["made", "read closed"])
        self.assertEqual(self.pa.events, ["made", "write closed"])
        self.b.write(b"answer")
        self.assertEqual(self.pa.data, b"answer")
        self.a.write(b"ignored")  # this end's write side is shut
        self.b.loseConnection()
        self.settle()
        self.assertEqual(self.pb.data, b"question")
        self.assertEqual(self.pa.events, ["made", "write closed", "lost"])
        self.assertEqual(self.pb.events, ["made", "read closed", "lost"])

    def test_eof_ends_a_plain_protocol(self):
        """
        A protocol that is not half-closeable loses the connection at end
        of file, as on a socket; so does the other end.
        """
        self.make(HalfRecorder(), Recorder())
        self.a.write(b"x")
        self.a.loseWriteConnection()
        self.settle()
        self.assertEqual(self.pb.data, b"x")
        self.assertEqual(self.pb.events, ["made", "lost"])
        self.pb.reason.trap(error.ConnectionDone)
        self.assertEqual(self.pa.events[-1], "lost")

    def test_eof_waits_for_paused_reader(self):
        self.make(HalfRecorder(), HalfRecorder())
        self.b.pauseProducing()
        self.a.loseWriteConnection()
        self.settle()
        self.assertEqual(self.pb.events, ["made"])
        self.b.resumeProducing()
        self.settle()
        self.assertEqual(self.pb.events, ["made", "read closed"])


class FailingProtocolTests(PipeTestCase):
    def test_dataReceived_raises(self):
        class Boom(Recorder):
            def dataReceived(self, data):
                raise ValueError("boom")

        self.make(Recorder(), Boom())
        self.a.write(b"x")
        self.settle()
        self.assertEqual(self.pb.events, ["made", "lost"])
        self.pb.reason.trap(ValueError)
        self.pa.reason.trap(error.ConnectionLost)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class UnsentTests(SynchronousTestCase):
    def test_unsent_of_plain_objects(self):
        self.assertIsNone(unsent(StringTransport()))
        self.assertIsNone(unsent(object()))

    def test_unsent_of_a_stream(self):
        a, b = pipe(Clock(), OckamAddress("a"), OckamAddress("b"))
        self.assertIsInstance(a, StreamTransport)
        self.assertEqual(unsent(a), 0)


class RefillTests(PipeTestCase):
    def test_writer_that_writes_when_drained(self):
        """
        A streaming producer that writes again as soon as it is resumed
        (while the reader is still reading what it wrote before): its new
        data is read too.
        """
        self.make()
        self.a.bufferSize = 10

        class Refill:
            def __init__(self_):
                self_.left = 5

            def pauseProducing(self_):
                pass

            def resumeProducing(self_):
                if self_.left:
                    self_.left -= 1
                    self.a.write(b"x" * 20)

            def stopProducing(self_):
                pass

        self.b.pauseProducing()
        self.a.registerProducer(Refill(), True)
        self.a.write(b"x" * 20)
        self.b.resumeProducing()
        self.settle()
        self.assertEqual(len(self.pb.data), 120)
