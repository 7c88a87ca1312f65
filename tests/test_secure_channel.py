"""
Integration tests of secure channels (C{docs/protocol.md}, section 7):
in-process nodes on the global reactor joined by real loopback sockets on
port 0, as in L{tests.test_relay} and L{tests.test_portal_seed}.

  - mutual authentication, and the peer identity on every decrypted message;
  - a refused identity, on either side; our own identity refused unless
    explicitly allowed;
  - tampered, malformed, replayed, reordered and reflected frames (a
    L{tests.secure_harness.Tap} worker inserted in the channel's route on
    the responder's node sees, alters, holds and re-sends the encrypted
    frames);
  - the responder's handshake timeout;
  - a channel through a relay whose node never sees the plaintext;
  - C{/secure/NAME} in MultiAddr routes (direct and after a relay hop);
  - C{authorized} lists on outlets, inlets and listeners;
  - a raw-socket initiator with no ockamtw code: a Noise XX initiator, the
    identity export and every BARE message written by hand in this file.

Nothing sleeps: waits are events or conditions checked until a deadline.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ockamtw import Address, Route, Worker, decode_string, encode_string
from ockamtw.access import ANYONE
from ockamtw.flow import STREAM_WINDOW
from ockamtw.portal import FLOW_CHUNK
from ockamtw.interfaces import ILink, ILinkWorker
from ockamtw.status import UP
from ockamtw.errors import RequestTimeout, RouteUnreachable
from ockamtw.relay import Forwarder
from ockamtw.secure.channel import REPLAY_WINDOW, ChannelEnd, SecureChannelListener, TrustPolicy
from ockamtw.secure.codec import (
    CreateResponderChannelMessage,
    IdentityChannelMessage,
    decode_encrypted_payload,
    decode_key_exchange,
    encode_encrypted_payload,
    encode_key_exchange,
)
from ockamtw.secure.errors import SecureChannelError
from ockamtw.secure.identity import LocalIdentity, import_identity
from ockamtw.secure.noise import HandshakeState
from ockamtw.transport.tcp import TcpConnection
from ockamtw.wire import TransportMessage, decode_body

from .helpers import (
    HERE,
    RawFrameClient,
    async_test,
    connect_raw,
    deadline,
    h_address,
    h_frame,
    h_message,
    h_string,
    held_port,
    log_watch,
    uvarint,
    wait_until,
)
from .portal_harness import Collector, EchoTarget, h_payload, r_frame, r_uvarint
from .secure_harness import Inbox, SecureTestCase

LOOPBACK = "tcp:0:interface=127.0.0.1"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
ENCRYPTOR = re.compile(r"^0#[0-9a-f]{32}$")
IDENTIFIER = re.compile(r"^P[0-9a-f]{64}$")
MARKER = b"SECRET-PLAINTEXT-1234"

with open(os.path.join(HERE, "data", "secure-channel-vectors.json")) as _f:
    VECTORS = json.load(_f)


def other_identifier() -> str:
    """
    The identifier of an identity that takes part in nothing.
    """
    return LocalIdentity.create().identifier


# --- workers used by the tests -------------------------------------------------


def flip(index: int):
    def action(payload: bytes) -> bytes:
        b = bytearray(payload)
        b[index] ^= 0x01
        return bytes(b)

    return action


class ManualInitiator(Worker):
    """
    An initiator driven step by step with ockamtw's Noise and codec (no
    L{ChannelEnd}): for refusals a well-behaved initiator cannot provoke.
    """

    access = ANYONE

    def __init__(self) -> None:
        self.hs = HandshakeState(True)
        self.frames = []
        self._waiting = []
        self.remote = None

    def started(self, node, address) -> None:
        Worker.started(self, node, address)
        self.backwards = node.start_worker(None, Inbox())

    def receive(self, message) -> None:
        self.frames.append(message)
        still = []
        for n, d in self._waiting:
            if len(self.frames) >= n and not d.called:
                d.callback(self.frames[n - 1])
            elif not d.called:
                still.append((n, d))
        self._waiting = still

    def frame(self, n: int, seconds: float = 5) -> Deferred:
        """
        Fires with the C{n}th frame received (1-based).
        """
        if len(self.frames) >= n:
            return succeed(self.frames[n - 1])
        d: Deferred = Deferred()
        self._waiting.append((n, d))
        return deadline(d, seconds, f"frame {n} at the manual initiator")

    def send_m1(self, route) -> None:
        msg1 = self.hs.write_message(b"")
        payload = CreateResponderChannelMessage.for_initiator(msg1, self.backwards).encode()
        self.node.send(route, payload, sender=self.address)

    def send_m3(self, m2) -> None:
        self.remote = m2.return_route
        self.hs.read_message(decode_key_exchange(m2.payload))
        msg3 = self.hs.write_message(b"")
        self.h = self.hs.h
        self.send_cs, self.recv_cs = self.hs.ockam_split()
        self.node.send(self.remote, encode_key_exchange(msg3), sender=self.address)

    def open(self, message) -> TransportMessage:
        n, ciphertext = decode_encrypted_payload(message.payload)
        return TransportMessage.decode(self.recv_cs.decrypt_at(n, ciphertext, b""))

    def seal(self, counter: int, onward, ret, payload: bytes) -> None:
        plaintext = TransportMessage(Route(onward), Route(ret), payload).encode()
        ciphertext = self.send_cs.encrypt_at(counter, plaintext, b"")
        self.node.send(self.remote, encode_encrypted_payload(counter, ciphertext), sender=self.address)


# --- trust policy -------------------------------------------------------------------------


class TrustPolicyTests(SynchronousTestCase):
    def test_everyoneButSelf(self):
        own, peer = other_identifier(), other_identifier()
        policy = TrustPolicy()
        policy.check(own, peer)
        with self.assertRaises(SecureChannelError) as cm:
            policy.check(own, own)
        self.assertIn("own identity", str(cm.exception))

    def test_allowSelf(self):
        own = other_identifier()
        TrustPolicy(allow_self=True).check(own, own)
        TrustPolicy([own], allow_self=True).check(own, own)

    def test_list(self):
        own, a, b = other_identifier(), other_identifier(), other_identifier()
        policy = TrustPolicy([a])
        policy.check(own, a)
        self.assertRaises(SecureChannelError, policy.check, own, b)
        # Listing our own identifier does not allow it: only allow_self does.
        self.assertRaises(SecureChannelError, TrustPolicy([own]).check, own, own)
        self.assertRaises(SecureChannelError, TrustPolicy([]).check, own, a)


# --- 1. mutual authentication ----------------------------------------------------------------------


class MutualAuthenticationTests(SecureTestCase):
    @async_test
    async def test_mutualAuthentication(self):
        """
        Each end learns the other's identifier; decrypted messages carry it
        as local metadata, and their return route starts at the encryptor of
        the end that decrypted them.
        """
        n1, n2, at = await self.pair()
        probe = Inbox(reply=b"!")
        n2.start_worker("probe", probe)
        enc = await self.within(n1.create_secure_channel(f"{at}/service/api", timeout=5), 6, "channel")
        self.assertIsInstance(enc, Address)
        self.assertRegex(str(enc), ENCRYPTOR)
        self.assertRegex(n1.identity.identifier, IDENTIFIER)
        init = n1.secure_channels[enc.value]
        self.assertEqual(init.peer_identifier, n2.identity.identifier)
        self.assertEqual(init.state, "up")
        self.assertEqual(init.status, UP)
        verifyObject(ILink, init)
        verifyObject(ILinkWorker, n1.worker_at(enc))
        self.assertIs(n1.link_of(enc), init)
        self.assertIsNone(n1.link_of(init.decryptor))
        # Worker addresses: three random ones on each side.
        for a in (init.decryptor, init.encryptor, init.backwards):
            self.assertRegex(a.value, HEX32)
            self.assertIs(n1.worker_at(a).end, init)

        self.assertEqual(await self.round_trip(n1, enc, "hello"), "HELLO")
        reply = await self.within(n1.request(Route([enc, Address.local("uppercase")]), encode_string("x"), 5), 6, "x")
        self.assertEqual(reply.local, {"identity": n2.identity.identifier})
        self.assertEqual(reply.return_route, Route([enc, Address.local("uppercase")]))

        resp = self.responder(n2)
        self.assertEqual(resp.state, "up")
        self.assertEqual(resp.peer_identifier, n1.identity.identifier)
        self.assertNotEqual(resp.encryptor, enc)

        reply = await self.within(n1.request(Route([enc, Address.local("probe")]), b"abc", 5), 6, "probe")
        self.assertEqual(reply.payload, b"abc!")
        (seen,) = probe.messages
        self.assertEqual(seen.payload, b"abc")
        self.assertEqual(seen.local, {"identity": n1.identity.identifier})
        self.assertEqual(len(seen.return_route), 2, seen.return_route)
        self.assertEqual(seen.return_route[0], resp.encryptor)
        self.assertRegex(seen.return_route[1].value, HEX32)  # n1's reply worker

    @async_test
    async def test_deleteSecureChannel(self):
        n1, n2, at = await self.pair()
        enc = await self.within(n1.create_secure_channel(f"{at}/service/api", timeout=5), 6, "channel")
        end = n1.secure_channels[enc.value]
        parts = [end.decryptor, end.encryptor, end.backwards]
        n1.delete_secure_channel(str(enc))
        self.assertEqual(n1.secure_channels, {})
        self.assertEqual([n1.worker_at(a) for a in parts], [None, None, None])
        self.assertEqual(end.state, "closed")
        # A request through the deleted channel fails at once.
        with self.assertRaises(RouteUnreachable):
            await deadline(n1.request(Route([enc, Address.local("uppercase")]), encode_string("x"), 5), 2, "x")
        self.assertRaises(KeyError, n1.delete_secure_channel, str(enc))

    @async_test
    async def test_plainMessagesCarryNoIdentity(self):
        """
        The same worker reached without a channel sees no identity.
        """
        n1, n2, at = await self.pair()
        probe = Inbox(reply=b"")
        n2.start_worker("probe", probe)
        reply = await self.within(n1.request(f"{at}/service/probe", b"plain", 5), 6, "plain probe")
        self.assertEqual(reply.payload, b"plain")
        self.assertIsNone(reply.local)
        self.assertIsNone(probe.messages[0].local)

    @async_test
    async def test_wireSizesAndCounters(self):
        """
        M1 is 69 bytes, M2 data(96), M3 data(64); M4 and M5 carry counter 0
        and the first application message counter 1, in each direction.
        """
        n1, n2, tap, init, resp = await self.tapped_channel()
        ins, outs = tap.frames["in"], tap.frames["out"]
        self.assertEqual([len(m.payload) for m in ins[:2]], [69, 65])
        self.assertEqual(len(outs[0].payload), 97)
        self.assertEqual(outs[0].payload[:1], b"\x60")
        self.assertEqual(ins[1].payload[:1], b"\x40")
        # M1's custom payload: the BARE address of the initiator's backwards worker.
        self.assertEqual(ins[0].payload[33:], b"\x01\x22\x00\x20" + init.backwards.value.encode())
        m4, m5 = outs[1], ins[2]
        for m in (m4, m5):
            n, pos = r_uvarint(m.payload, 0)
            self.assertEqual(pos + n, len(m.payload))
            self.assertEqual(m.payload[pos : pos + 8], bytes(8))
        self.assertEqual(await self.round_trip(n1, init.encryptor, "one"), "ONE")
        request, reply = ins[3], outs[2]
        for m in (request, reply):
            n, pos = r_uvarint(m.payload, 0)
            self.assertEqual(m.payload[pos : pos + 8], (1).to_bytes(8, "big"))
            self.assertNotIn(b"one", m.payload.lower())


# --- 2 and 3. refused identities -----------------------------------------------------------------------


class RefusedIdentityTests(SecureTestCase):
    @async_test
    async def test_initiatorRefusesFast(self):
        """
        An initiator whose list does not hold the responder's identifier
        fails with SecureChannelError as soon as M4 arrives, long before its
        timeout, and leaves no worker behind.
        """
        n1, n2, at = await self.pair()
        conn = await self.connection(n1, at)
        before = set(n1.worker_addresses())
        watch = log_watch(self, "is not authorized", n2.identity.identifier)
        started = time.monotonic()
        d = n1.create_secure_channel(conn + ["api"], authorized=[other_identifier()], timeout=10)
        with self.assertRaises(SecureChannelError) as cm:
            await deadline(d, 3, "the refusal")
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIn(n2.identity.identifier, str(cm.exception))
        self.assertEqual(n1.secure_channels, {})
        self.assertEqual(set(n1.worker_addresses()), before)
        self.assertEqual(len(watch.events), 1)

    @async_test
    async def test_initiatorAcceptsListed(self):
        n1, n2, at = await self.pair()
        enc = await self.within(
            n1.create_secure_channel(f"{at}/service/api", authorized=[other_identifier(), n2.identity.identifier], timeout=5),
            6,
            "channel",
        )
        self.assertEqual(await self.round_trip(n1, enc, "ok"), "OK")

    @async_test
    async def test_listenerRefuses(self):
        """
        A listener whose list does not hold n1's identifier refuses n1's M5:
        the responder end is closed and logged, nothing reaches n2 through
        the channel.  The initiator is done once it has sent M5 and the
        protocol has no answer to M5, so its create fires: it cannot tell.
        """
        n1, n2, at = await self.pair()
        strict = n2.create_secure_channel_listener("strict", authorized=[other_identifier()])
        probe = Inbox(reply=b"")
        n2.start_worker("probe", probe)
        watch = log_watch(self, "responder", "is not authorized", n1.identity.identifier)
        conn = await self.connection(n1, at)
        d = n1.create_secure_channel(conn + ["strict"], timeout=1)
        # The initiator is done once it has sent M5: it cannot tell.
        enc = await deadline(d, 3, "the initiator's side of the channel")
        self.assertRegex(str(enc), ENCRYPTOR)
        await watch.when(1, 3, "the listener's refusal logged")
        await wait_until(lambda: not strict.channels, 3, "the refused responder closed")
        # Nothing established on n2, no channel worker left there.
        parts = [a for a in n2.worker_addresses() if getattr(n2.worker_at(a), "end", None) is not None]
        self.assertEqual(parts, [])
        with self.assertRaises(RequestTimeout):
            await deadline(n1.request(Route([enc, Address.local("probe")]), b"through", timeout=0.5), 3, "probe")
        self.assertEqual(probe.messages, [])

    @async_test
    async def test_listenerAcceptsListed(self):
        n1, n2, at = await self.pair()
        n2.create_secure_channel_listener("strict", authorized=[n1.identity.identifier])
        enc = await self.within(n1.create_secure_channel(f"{at}/service/strict", timeout=5), 6, "channel")
        self.assertEqual(await self.round_trip(n1, enc, "listed"), "LISTED")
        self.assertEqual(self.responder(n2, "strict").peer_identifier, n1.identity.identifier)

    @async_test
    async def test_ownIdentityRefused(self):
        """
        Two nodes sharing one identity: the initiator refuses the responder
        presenting our own identity, fast.
        """
        shared = LocalIdentity.create()
        n2, l2 = await self.listening_node("n2", identity=shared)
        n1 = self.make_node("n1", identity=shared)
        self.assertEqual(n1.identity.identifier, n2.identity.identifier)
        started = time.monotonic()
        d = n1.create_secure_channel(f"/ip4/127.0.0.1/tcp/{l2.port}/service/api", timeout=10)
        with self.assertRaises(SecureChannelError) as cm:
            await deadline(d, 3, "the refusal")
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIn("own identity", str(cm.exception))
        self.assertEqual(n1.secure_channels, {})

    @async_test
    async def test_ownIdentityAllowedExplicitly(self):
        """
        With TrustPolicy(allow_self=True) on both ends the same channel
        comes up; a responder with the default policy still refuses it.
        """
        shared = LocalIdentity.create()
        n2, l2 = await self.listening_node("n2", identity=shared)
        n1 = self.make_node("n1", identity=shared)
        listener = SecureChannelListener(shared, TrustPolicy(allow_self=True))
        n2.start_worker("api_self", listener)
        conn = await self.connection(n1, f"/ip4/127.0.0.1/tcp/{l2.port}")
        end = ChannelEnd(n1, shared, TrustPolicy(allow_self=True), initiator=True)
        self.addCleanup(end.close)
        await self.within(end.start_initiator(conn + ["api_self"], 5), 6, "channel to ourselves")
        self.assertEqual(end.state, "up")
        self.assertEqual(end.peer_identifier, shared.identifier)
        reply = await self.within(n1.request(Route([end.encryptor, Address.local("uppercase")]), encode_string("me"), 5), 6, "me")
        self.assertEqual(decode_string(reply.payload), "ME")
        self.assertEqual(reply.local, {"identity": shared.identifier})
        (resp,) = listener.channels
        self.assertEqual((resp.state, resp.peer_identifier), ("up", shared.identifier))

        # Only the initiator allows it: n2's default api listener refuses M5.
        watch = log_watch(self, "responder", "own identity")
        end2 = ChannelEnd(n1, shared, TrustPolicy(allow_self=True), initiator=True)
        self.addCleanup(end2.close)
        await self.within(end2.start_initiator(conn + ["api"], 5), 6, "initiator side")
        await watch.when(1, 3, "the api listener's refusal")
        await wait_until(lambda: not n2.secure_listeners["api"].channels, 3, "the refused responder closed")


# --- 4, 5, 6. tampering, replay, reflection -------------------------------------------------------------


class FrameAttackTests(SecureTestCase):
    async def _check_drops(self, sender_node, sender_end, receiver_end, inbox, tap, direction):
        alterations = [
            ("last byte (tag)", lambda p: flip(len(p) - 1)(p)),
            ("first ciphertext byte", flip(9)),
            ("counter byte", flip(8)),
            ("truncated", lambda p: p[:-1]),
            ("not BARE", lambda p: b"\x05\x00"),
            ("empty", lambda p: b""),
            ("too short for a tag", lambda p: bytes([20]) + bytes(20)),
        ]
        route = Route([sender_end.encryptor, Address.local("inbox")])
        for i, (what, action) in enumerate(alterations):
            tap.on_next(direction, action)
            sender_node.send(route, b"bad %d" % i)
            sender_node.send(route, b"good %d" % i)
            await inbox.when(i + 1, 5, f"good message after {what}")
            self.assertEqual(inbox.payloads, [b"good %d" % j for j in range(i + 1)], what)
            self.assertEqual(receiver_end.dropped, i + 1, what)
            self.assertEqual(receiver_end.state, "up", what)
        for m in inbox.messages:
            self.assertEqual(m.local, {"identity": sender_end.own_identity.identifier})

    @async_test
    async def test_tamperedToResponder(self):
        """
        Altered or malformed frames to the responder are dropped, and the
        channel goes on.
        """
        n1, n2, tap, init, resp = await self.tapped_channel()
        inbox = Inbox()
        n2.start_worker("inbox", inbox)
        await self._check_drops(n1, init, resp, inbox, tap, "in")
        self.assertEqual(await self.round_trip(n1, init.encryptor, "still"), "STILL")

    @async_test
    async def test_tamperedToInitiator(self):
        n1, n2, tap, init, resp = await self.tapped_channel()
        inbox = Inbox()
        n1.start_worker("inbox", inbox)
        await self._check_drops(n2, resp, init, inbox, tap, "out")
        self.assertEqual(await self.round_trip(n1, init.encryptor, "still"), "STILL")

    @async_test
    async def test_replay(self):
        """
        A frame delivered again is dropped, so is M5 replayed after the
        handshake; the target receives each message once.
        """
        n1, n2, tap, init, resp = await self.tapped_channel()
        inbox = Inbox()
        n2.start_worker("inbox", inbox)
        route = Route([init.encryptor, Address.local("inbox")])
        n1.send(route, b"a")
        await inbox.when(1)
        captured = tap.frames["in"][-1]
        tap.forward(captured)
        tap.forward(captured)
        tap.forward(tap.frames["in"][2])  # M5 (counter 0)
        await wait_until(lambda: resp.dropped == 3, 5, "three replays dropped")
        n1.send(route, b"b")
        await inbox.when(2)
        self.assertEqual(inbox.payloads, [b"a", b"b"])
        self.assertEqual(resp.state, "up")

    @async_test
    async def test_replayToInitiator(self):
        n1, n2, tap, init, resp = await self.tapped_channel()
        self.assertEqual(await self.round_trip(n1, init.encryptor, "r"), "R")
        reply_frame = tap.frames["out"][-1]
        m4 = tap.frames["out"][1]
        dropped = init.dropped
        tap.forward(reply_frame)
        tap.forward(m4)
        await wait_until(lambda: init.dropped == dropped + 2, 5, "two replays dropped by the initiator")
        self.assertEqual(await self.round_trip(n1, init.encryptor, "s"), "S")

    @async_test
    async def test_reorderedWithinWindowAccepted(self):
        """
        A frame held back while 10 later ones pass is still accepted: the
        window is not a strict counter.
        """
        n1, n2, tap, init, resp = await self.tapped_channel()
        inbox = Inbox()
        n2.start_worker("inbox", inbox)
        route = Route([init.encryptor, Address.local("inbox")])
        tap.on_next("in", lambda p: None)
        n1.send(route, b"late")
        for i in range(10):
            n1.send(route, b"%d" % i)
        await inbox.when(10)
        self.assertEqual(len(tap.held), 1)
        tap.release()
        await inbox.when(11, 5, "the late message")
        self.assertEqual(inbox.payloads, [b"%d" % i for i in range(10)] + [b"late"])
        self.assertEqual(resp.dropped, 0)

    @async_test
    async def test_farBehindDropped(self):
        """
        An authentic frame never delivered before, but more than
        REPLAY_WINDOW counters behind the highest seen, is dropped.
        """
        n1, n2, tap, init, resp = await self.tapped_channel()
        inbox = Inbox()
        n2.start_worker("inbox", inbox)
        route = Route([init.encryptor, Address.local("inbox")])
        tap.on_next("in", lambda p: None)
        n1.send(route, b"old")  # counter 1, held
        count = REPLAY_WINDOW + 10
        for i in range(count):
            n1.send(route, b"%d" % i)
        await inbox.when(count, 10, "messages past the window")
        held = tap.held[0]
        n, _ = decode_encrypted_payload(held.payload)
        self.assertEqual(n, 1)
        tap.release()
        await wait_until(lambda: resp.dropped == 1, 5, "the old frame dropped")
        n1.send(route, b"after")
        await inbox.when(count + 1)
        self.assertNotIn(b"old", inbox.payloads)
        self.assertEqual(inbox.payloads[-1], b"after")
        self.assertEqual(len(inbox.messages), count + 1)

    @async_test
    async def test_reflectedFramesDropped(self):
        """
        The initiator's own frames sent back to it, and the responder's
        back to the responder, do not decrypt there (swapped keys).
        """
        n1, n2, tap, init, resp = await self.tapped_channel()
        inbox1, inbox2 = Inbox(), Inbox()
        n1.start_worker("inbox", inbox1)
        n2.start_worker("inbox", inbox2)
        n1.send(Route([init.encryptor, Address.local("inbox")]), b"to n2")
        await inbox2.when(1)
        n2.send(Route([resp.encryptor, Address.local("inbox")]), b"to n1")
        await inbox1.when(1)
        to_n2 = tap.frames["in"][-1]
        to_n1 = tap.frames["out"][-1]
        # The initiator's frame back to the initiator.
        n2.send(resp.remote_route, to_n2.payload)
        # The responder's frame back to the responder (and its M4).
        n2.deliver(TransportMessage(Route([resp.decryptor]), Route([]), to_n1.payload))
        n2.deliver(TransportMessage(Route([resp.decryptor]), Route([]), tap.frames["out"][1].payload))
        await wait_until(lambda: resp.dropped == 2, 5, "the reflected frames dropped by the responder")
        await wait_until(lambda: init.dropped == 1, 5, "the reflected frame dropped by the initiator")
        self.assertEqual(await self.round_trip(n1, init.encryptor, "after"), "AFTER")
        self.assertEqual(inbox1.payloads, [b"to n1"])
        self.assertEqual(inbox2.payloads, [b"to n2"])


class ReflectionTests(SecureTestCase):
    async def _reflect(self, listener: str):
        """
        A manual initiator on n1 runs the key exchange with n2's
        C{listener}, then answers M4 with the responder's own identity and
        signature (both sides sign the same h), then sends an application
        message to n2's inbox.
        """
        n1, n2, at = await self.pair()
        inbox = Inbox()
        n2.start_worker("inbox", inbox)
        conn = await self.connection(n1, at)
        attacker = ManualInitiator()
        n1.start_worker(None, attacker)
        attacker.send_m1(conn + [listener])
        attacker.send_m3(await attacker.frame(1))
        m4 = attacker.open(await attacker.frame(2))
        request = IdentityChannelMessage.decode(m4.payload)
        self.assertEqual(request.kind, IdentityChannelMessage.REQUEST)
        self.assertEqual(import_identity(request.identity).identifier, n2.identity.identifier)
        peer_backwards = m4.return_route[-1]
        attacker.seal(
            0,
            [peer_backwards],
            [attacker.backwards],
            IdentityChannelMessage.response(request.identity, request.signature).encode(),
        )
        attacker.seal(1, [peer_backwards, Address.local("inbox")], [attacker.address], b"REFLECTED")
        # A plain round trip on the same connection: n2 has handled both.
        reply = await self.within(n1.request(conn + ["echo"], b"sync", 5), 6, "echo after the reflection")
        self.assertEqual(reply.payload, b"sync")
        return n1, n2, inbox

    @async_test
    async def test_reflectedIdentityRefused(self):
        watch = log_watch(self, "responder", "own identity")
        n1, n2, inbox = await self._reflect("api")
        self.assertEqual(inbox.messages, [])
        self.assertEqual(n2.secure_listeners["api"].channels, set())
        self.assertEqual(len(watch.events), 1)

    @async_test
    async def test_reflectionWorksWithoutTheCheck(self):
        """
        The control: with allow_self the reflection succeeds, as in 0.83.
        """
        n1, n2, at = await self.pair()
        listener = SecureChannelListener(n2.identity, TrustPolicy(allow_self=True))
        n2.start_worker("api_open", listener)
        inbox = Inbox()
        n2.start_worker("inbox", inbox)
        conn = await self.connection(n1, at)
        attacker = ManualInitiator()
        n1.start_worker(None, attacker)
        attacker.send_m1(conn + ["api_open"])
        attacker.send_m3(await attacker.frame(1))
        m4 = attacker.open(await attacker.frame(2))
        request = IdentityChannelMessage.decode(m4.payload)
        peer_backwards = m4.return_route[-1]
        attacker.seal(0, [peer_backwards], [attacker.backwards], IdentityChannelMessage.response(request.identity, request.signature).encode())
        attacker.seal(1, [peer_backwards, Address.local("inbox")], [attacker.address], b"REFLECTED")
        await inbox.when(1)
        self.assertEqual(inbox.payloads, [b"REFLECTED"])
        self.assertEqual(inbox.messages[0].local, {"identity": n2.identity.identifier})
        (end,) = listener.channels
        self.assertEqual((end.state, end.peer_identifier), ("up", n2.identity.identifier))


# --- 7. handshake timeouts ----------------------------------------------------------------------------------


class TimeoutTests(SecureTestCase):
    async def _half_open(self, send_m3: bool):
        n1, n2, at = await self.pair()
        listener = SecureChannelListener(n2.identity, timeout=0.5)
        n2.start_worker("api_fast", listener)
        watch = log_watch(self, "responder", "did not complete within 0.5 s")
        conn = await self.connection(n1, at)
        peer = ManualInitiator()
        n1.start_worker(None, peer)
        peer.send_m1(conn + ["api_fast"])
        m2 = await peer.frame(1)
        started = time.monotonic()
        if send_m3:
            peer.send_m3(m2)
            await peer.frame(2)  # M4
        (end,) = listener.channels
        self.assertEqual(end.state, "m5" if send_m3 else "m3")
        parts = [end.decryptor, end.encryptor, end.backwards]
        self.assertEqual(m2.return_route[-1], end.decryptor)
        for a in parts:
            self.assertIs(n2.worker_at(a).end, end)
        await wait_until(lambda: all(n2.worker_at(a) is None for a in parts), 3, "the half-open responder removed")
        self.assertGreater(time.monotonic() - started, 0.3)
        self.assertEqual(listener.channels, set())
        self.assertEqual(end.state, "closed")
        self.assertEqual(len(watch.events), 1)
        # The api listener (10 s) has nothing to do with it, and n2 still works.
        enc = await self.within(n1.create_secure_channel(conn + ["api_fast"], timeout=5), 6, "a full channel afterwards")
        self.assertEqual(await self.round_trip(n1, enc, "fine"), "FINE")

    @async_test
    async def test_responderTimeoutAfterM1(self):
        await self._half_open(send_m3=False)

    @async_test
    async def test_responderTimeoutAfterM3(self):
        await self._half_open(send_m3=True)

    @async_test
    async def test_initiatorFailsAtOnceWhenItsConnectionCloses(self):
        """
        A peer that accepts the connection and closes it on M1 (an
        Orchestrator instance dying, or not ready yet): the handshake fails
        as soon as the connection closes, not at its 30 s time-out, and
        leaves no worker behind.
        """
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory, Protocol

        class CloseOnData(Protocol):
            def dataReceived(self, data):
                self.transport.loseConnection()

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(CloseOnData))
        self.addCleanup(port.stopListening)
        n1 = self.make_node("n1")
        before = set(n1.worker_addresses())
        started = time.monotonic()
        d = n1.create_secure_channel(f"/ip4/127.0.0.1/tcp/{port.getHost().port}/service/api", timeout=30)
        with self.assertRaises(SecureChannelError) as caught:
            await deadline(d, 5, "the handshake's failure")
        self.assertIn("closed during the handshake", str(caught.exception))
        self.assertLess(time.monotonic() - started, 5)
        await wait_until(lambda: set(n1.worker_addresses()) <= before, 3, "the initiator's workers removed")

    @async_test
    async def test_initiatorTimeout(self):
        """
        No listener at the end of the route: RequestTimeout, no worker left.
        """
        n1, n2, at = await self.pair()
        conn = await self.connection(n1, at)
        before = set(n1.worker_addresses())
        d = n1.create_secure_channel(conn + ["nobody"], timeout=0.5)
        with self.assertRaises(RequestTimeout):
            await deadline(d, 3, "the initiator's timeout")
        self.assertEqual(set(n1.worker_addresses()), before)
        self.assertEqual(n1.secure_channels, {})

    @async_test
    async def test_initiatorCancelled(self):
        """
        The caller cancels C{create_secure_channel} while M2 is awaited: the
        Deferred fails with CancelledError at once and nothing of the
        half-made channel stays (workers, the channel, its timer).
        """
        n1, n2, at = await self.pair()
        conn = await self.connection(n1, at)
        before = set(n1.worker_addresses())
        d = n1.create_secure_channel(conn + ["nobody"], timeout=30)
        await wait_until(lambda: len(n1.secure_channels) == 1, 3, "the channel started")
        (end,) = n1.secure_channels.values()
        d.cancel()
        with self.assertRaises(CancelledError):
            await deadline(d, 1, "the cancellation")
        self.assertEqual(set(n1.worker_addresses()), before)
        self.assertEqual(n1.secure_channels, {})
        self.assertEqual(end.state, "closed")
        self.assertFalse(any(c.active() and getattr(c.func, "__self__", None) is end for c in reactor.getDelayedCalls()))

    @async_test
    async def test_deleteListener(self):
        """
        Node.delete_secure_channel_listener: the listener and the channels
        it accepted are gone; an unknown one is a KeyError.
        """
        n1, n2, at = await self.pair()
        n2.create_secure_channel_listener("other")
        await self.within(n1.create_secure_channel(f"{at}/service/other", timeout=5), 6, "channel")
        accepted = list(n2.secure_listeners["other"].channels)
        self.assertEqual(len(accepted), 1)
        n2.delete_secure_channel_listener("other")
        self.assertNotIn("other", n2.secure_listeners)
        self.assertIsNone(n2.worker_at(Address.local("other")))
        self.assertEqual(accepted[0].state, "closed")
        self.assertRaises(KeyError, n2.delete_secure_channel_listener, "other")

    @async_test
    async def test_m1WithoutCustomPayloadRefused(self):
        n1, n2, at = await self.pair()
        conn = await self.connection(n1, at)
        peer = ManualInitiator()
        n1.start_worker(None, peer)
        msg1 = peer.hs.write_message(b"")
        before = set(n2.worker_addresses())
        n1.send(conn + ["api"], CreateResponderChannelMessage(msg1, None).encode(), sender=peer.address)
        n1.send(conn + ["api"], b"\x05garbage", sender=peer.address)
        reply = await self.within(n1.request(conn + ["echo"], b"sync", 5), 6, "echo")
        self.assertEqual(reply.payload, b"sync")
        self.assertEqual(peer.frames, [])
        self.assertEqual(n2.secure_listeners["api"].channels, set())
        self.assertEqual(set(n2.worker_addresses()), before)


# --- 8 and 9. relays and /secure in MultiAddr ----------------------------------------------------------------


class RelayTests(SecureTestCase):
    async def relay_topology(self):
        n2, l2 = await self.listening_node("n2")
        n3 = self.make_node("n3")
        n1 = self.make_node("n1")
        at = f"/ip4/127.0.0.1/tcp/{l2.port}"
        await self.within(n3.create_relay(at, name="n3"), 5, "relay registration")
        forwarded = []
        original = Forwarder.receive

        def recording(forwarder, message):
            forwarded.append(bytes(message.payload))
            return original(forwarder, message)

        self.patch(Forwarder, "receive", recording)
        routed = []
        deliver = n2.deliver

        def recording_deliver(message):
            routed.append(bytes(message.payload))
            return deliver(message)

        n2.deliver = recording_deliver
        self.addCleanup(n2.__dict__.pop, "deliver", None)
        # What passes from one connection to another without being decoded
        # (TcpConnection._relay) is routed too.
        relay = TcpConnection._relay

        def recording_relay(conn, parts, raw, source):
            routed.append(decode_body(*raw).payload)
            return relay(conn, parts, raw, source)

        self.patch(TcpConnection, "_relay", recording_relay)
        return n1, n2, n3, at, forwarded, routed

    @async_test
    async def test_endToEndThroughRelay(self):
        """
        n1's channel to n3 through forward_to_n3 at n2: requests work and
        n2 never handles the plaintext, either way.
        """
        n1, n2, n3, at, forwarded, routed = await self.relay_topology()
        probe = Inbox(reply=b"-REPLY")
        n3.start_worker("probe", probe)
        enc = await self.within(
            n1.create_secure_channel(f"{at}/service/forward_to_n3/service/api", timeout=5), 6, "channel through the relay"
        )
        self.assertEqual(n1.secure_channels[enc.value].peer_identifier, n3.identity.identifier)
        resp = self.responder(n3)
        await wait_until(lambda: resp.state == "up", 5, "n3's responder up")
        self.assertEqual(resp.peer_identifier, n1.identity.identifier)
        self.assertEqual(n2.secure_listeners["api"].channels, set())

        reply = await self.within(n1.request(Route([enc, Address.local("probe")]), MARKER, 5), 6, "probe through the relay")
        self.assertEqual(reply.payload, MARKER + b"-REPLY")
        self.assertEqual(reply.local, {"identity": n3.identity.identifier})
        self.assertEqual(probe.payloads, [MARKER])
        self.assertEqual(probe.messages[0].local, {"identity": n1.identity.identifier})
        self.assertEqual(await self.round_trip(n1, enc, "relayed"), "RELAYED")

        # Only M1 goes through the forwarder: each end then routes by the
        # return route of the key exchange, through n2's connection workers.
        self.assertEqual([len(p) for p in forwarded], [69])
        # Everything n2 routed (M1 to M5, two requests and their replies):
        # never the plaintext, either way.
        # (the forwarder writes M1 straight to n3's connection, so it is
        # routed once, on arrival)
        self.assertGreaterEqual(len(routed), 9)
        for payload in forwarded + routed:
            self.assertNotIn(MARKER, payload)
            self.assertNotIn(b"relayed", payload.lower())

        # The control: the same request without the channel is seen in the clear.
        plain = await self.within(n1.request(f"{at}/service/forward_to_n3/service/probe", MARKER, 5), 6, "plain probe")
        self.assertEqual(plain.payload, MARKER + b"-REPLY")
        self.assertIn(MARKER, forwarded[-1])
        self.assertIn(MARKER + b"-REPLY", routed[-1])
        self.assertIsNone(probe.messages[-1].local)

    @async_test
    async def test_secureInMultiAddr(self):
        """
        /secure/api after host/port makes a channel there; a second request
        reuses it.
        """
        n1, n2, at = await self.pair()
        route = f"{at}/secure/api/service/uppercase"
        reply = await self.within(n1.request(route, encode_string("hi"), 5), 6, "first request")
        self.assertEqual(decode_string(reply.payload), "HI")
        self.assertEqual(reply.local, {"identity": n2.identity.identifier})
        self.assertEqual(len(n1.secure_channels), 1)
        (first,) = n1.secure_channels
        reply = await self.within(n1.request(route, encode_string("again"), 5), 6, "second request")
        self.assertEqual(decode_string(reply.payload), "AGAIN")
        self.assertEqual(list(n1.secure_channels), [first])
        self.assertEqual(len(n2.secure_listeners["api"].channels), 1)
        self.assertEqual(reply.return_route[0], Address.local(first))
        # A route to another listener on the same node makes another channel.
        n2.create_secure_channel_listener("other")
        reply = await self.within(n1.request(f"{at}/secure/other/service/echo", b"e", 5), 6, "other listener")
        self.assertEqual(reply.payload, b"e")
        self.assertEqual(len(n1.secure_channels), 2)

    @async_test
    async def test_secureAfterRelayHopCarriesPortal(self):
        """
        An inlet on n1 with route .../forward_to_n3/secure/api/service/outlet
        tunnels to n3's outlet; n2 sees no plaintext.
        """
        n1, n2, n3, at, forwarded, routed = await self.relay_topology()
        factory, target_port = await self.start_target(EchoTarget)
        await n3.create_outlet("outlet", f"127.0.0.1:{target_port}", authorized=[n1.identity.identifier])
        inlet = await n1.create_inlet("127.0.0.1:0", f"{at}/service/forward_to_n3/secure/api/service/outlet")
        port = int(inlet.socket_address.rsplit(":", 1)[1])
        client = await self.connect_client(port, Collector())
        token = b"GET /" + MARKER + b" HTTP/1.0\r\n\r\n"
        client.transport.write(token)
        await client.received(len(token), 5, "echo through the secure portal")
        self.assertEqual(bytes(client.data), token)
        self.assertEqual(len(n1.secure_channels), 1)
        (end,) = n1.secure_channels.values()
        self.assertEqual(end.peer_identifier, n3.identity.identifier)
        self.assertEqual(self.responder(n3).peer_identifier, n1.identity.identifier)
        self.assertTrue(forwarded)
        for payload in forwarded + routed:
            self.assertNotIn(MARKER, payload)
        # A second client reuses the channel, with 1 MiB each way (full
        # 60 KiB chunks, docs/protocol.md 6.5, still fit in a frame once
        # encrypted).
        client2 = await self.connect_client(port, Collector())
        data = os.urandom(1024 * 1024)
        client2.transport.write(data)
        await client2.received(len(data), 10, "1 MiB echoed through the channel")
        self.assertEqual(hashlib.sha1(bytes(client2.data)).digest(), hashlib.sha1(data).digest())
        self.assertEqual(len(n1.secure_channels), 1)
        self.assertEqual((end.dropped, self.responder(n3).dropped), (0, 0))
        # Per-stream credit works through the channel: three windows each
        # way need Credits to come back through it.
        outlet = n3.outlets["outlet"]
        self.assertTrue(all(p.flow for p in list(inlet.portals) + list(outlet.portals)))
        self.assertEqual({p.chunk for p in list(inlet.portals) + list(outlet.portals)}, {FLOW_CHUNK})
        big = os.urandom(3 * STREAM_WINDOW)
        client2.transport.write(big)
        await client2.received(len(data) + len(big), 30, "three windows echoed through the channel")
        self.assertEqual(hashlib.sha1(bytes(client2.data[len(data) :])).digest(), hashlib.sha1(big).digest())
        self.assertGreater(sum(p.credits_sent for p in outlet.portals), 0)
        self.assertGreater(sum(p.credits_sent for p in inlet.portals), 0)
        self.assertEqual((end.dropped, self.responder(n3).dropped), (0, 0))


# --- 10. access control --------------------------------------------------------------------------------------


class AccessControlTests(SecureTestCase):
    async def refused_client(self, port: int) -> Collector:
        client = await self.connect_client(port, Collector())
        client.transport.write(b"knock")
        await client.when_lost(3, "the refused client closed")
        self.assertEqual(client.count, 0)
        return client

    async def open_outlet_portal(self):
        """
        n1's client through an inlet and a secure channel to n2's outlet
        authorized for n1, its first bytes ("legit-1 ") at the target.
        Returns (n1, n2, at, client, target, the outlet's portal).
        """
        n1, n2, at = await self.pair()
        factory, target_port = await self.start_target(Collector)
        await n2.create_outlet("outlet_ok", f"127.0.0.1:{target_port}", authorized=[n1.identity.identifier])
        inlet = await n1.create_inlet("127.0.0.1:0", f"{at}/secure/api/service/outlet_ok")
        client = await self.connect_client(int(inlet.socket_address.rsplit(":", 1)[1]), Collector())
        client.transport.write(b"legit-1 ")
        (target,) = await factory.accepted(1, 5, "the outlet's connection to the target")
        await target.received(8, 5, "legit-1 at the target")
        (portal,) = n2.outlets["outlet_ok"].portals
        return n1, n2, at, client, target, portal

    async def only_legit_at(self, client, target, why: str):
        """
        The client's next bytes reach the target, and nothing injected did.
        """
        client.transport.write(b"legit-2")
        await wait_until(lambda: b"legit-2" in target.data, 5, "legit-2 at the target")
        self.assertNotIn(b"INJECTED", bytes(target.data), why)
        self.assertEqual(bytes(target.data), b"legit-1 legit-2")

    @async_test
    async def test_outletAuthorized(self):
        n1, n2, at = await self.pair()
        factory, target_port = await self.start_target(EchoTarget)
        target = f"127.0.0.1:{target_port}"
        await n2.create_outlet("outlet_ok", target, authorized=[n1.identity.identifier])
        await n2.create_outlet("outlet_other", target, authorized=[other_identifier()])

        ok = await n1.create_inlet("127.0.0.1:0", f"{at}/secure/api/service/outlet_ok")
        client = await self.connect_client(int(ok.socket_address.rsplit(":", 1)[1]), Collector())
        client.transport.write(b"allowed")
        await client.received(7, 5, "echo through the authorized outlet")
        self.assertEqual(bytes(client.data), b"allowed")
        self.assertEqual(len(factory.protocols), 1)

        plain_watch = log_watch(self, "outlet_ok", "refused", "without a secure channel")
        plain = await n1.create_inlet("127.0.0.1:0", f"{at}/service/outlet_ok", ping_timeout=0.5, ping_interval=0.1)
        await self.refused_client(int(plain.socket_address.rsplit(":", 1)[1]))
        self.assertGreaterEqual(len(plain_watch.events), 1)

        other_watch = log_watch(self, "outlet_other", "refused", n1.identity.identifier)
        other = await n1.create_inlet("127.0.0.1:0", f"{at}/secure/api/service/outlet_other", ping_timeout=0.5, ping_interval=0.1)
        await self.refused_client(int(other.socket_address.rsplit(":", 1)[1]))
        self.assertGreaterEqual(len(other_watch.events), 1)

        self.assertEqual(len(factory.protocols), 1)
        self.assertEqual(n2.outlets["outlet_ok"].accepted, 1)
        self.assertEqual(n2.outlets["outlet_other"].accepted, 0)

    @async_test
    async def test_inletAuthorized(self):
        n1, n2, at = await self.pair()
        factory, target_port = await self.start_target(EchoTarget)
        await n2.create_outlet("outlet", f"127.0.0.1:{target_port}")

        ok = await n1.create_inlet("127.0.0.1:0", f"{at}/secure/api/service/outlet", authorized=[n2.identity.identifier])
        client = await self.connect_client(int(ok.socket_address.rsplit(":", 1)[1]), Collector())
        client.transport.write(b"pong ok")
        await client.received(7, 5, "echo through the authorized inlet")
        self.assertEqual(bytes(client.data), b"pong ok")

        watch = log_watch(self, "refused", "without a secure channel")
        plain = await n1.create_inlet(
            "127.0.0.1:0", f"{at}/service/outlet", ping_timeout=0.5, ping_interval=0.1, authorized=[n2.identity.identifier]
        )
        await self.refused_client(int(plain.socket_address.rsplit(":", 1)[1]))
        self.assertGreaterEqual(len(watch.events), 1)

        watch2 = log_watch(self, "refused", n2.identity.identifier)
        other = await n1.create_inlet(
            "127.0.0.1:0", f"{at}/secure/api/service/outlet", ping_timeout=0.5, ping_interval=0.1, authorized=[other_identifier()]
        )
        await self.refused_client(int(other.socket_address.rsplit(":", 1)[1]))
        self.assertGreaterEqual(len(watch2.events), 1)


    @async_test
    async def test_outletPortalRefusesUnauthenticated(self):
        """
        The outlet's portals are the outlet too: once a portal is open for
        an authorized client, a message to it that did not come through a
        channel from an authorized identity (here: plain TCP from n1) is
        dropped, as the Ping would be.
        """
        n1, n2, at, client, target, portal = await self.open_outlet_portal()
        conn = await self.connection(n1, at)
        n1.send(conn + [portal.address], h_payload(b"INJECTED "))
        # A round trip on the same connection: n2 has handled the injection.
        await self.within(n1.request(conn + ["echo"], b"sync", 5), 6, "sync")
        await self.only_legit_at(client, target, "a plain message reached the authorized outlet's target")

    @async_test
    async def test_outletPortalRefusesAnotherChannel(self):
        """
        A portal open through one secure channel takes data only from that
        channel: the same authorized identity, through a second channel to
        the node, cannot write into it.  (What a channel decrypts for a
        portal reaches it without being decoded; the node still checks
        where it came from.)
        """
        n1, n2, at, client, target, portal = await self.open_outlet_portal()
        n2.create_secure_channel_listener("other")
        other = await self.within(n1.create_secure_channel(f"{at}/service/other", timeout=5), 6, "a second channel")
        self.assertEqual(len(n1.secure_channels), 2)
        refused = n2.refused
        for size in (9, 5000, 40000):  # small, and large enough to be handed on as a view
            n1.send(Route([other, portal.address]), h_payload(b"INJECTED " + b"x" * (size - 9)))
        # A round trip through the second channel: n2 has handled the injections.
        await self.within(n1.request(Route([other, Address.local("echo")]), b"sync", 5), 6, "sync")
        self.assertEqual(n2.refused, refused + 3)
        await self.only_legit_at(client, target, "another channel wrote into the portal")

    @async_test
    async def test_inletPortalRefusesUnauthenticated(self):
        """
        The same for an inlet's portals: bytes from n2 that did not come
        through the channel do not reach the inlet's client.
        """
        n1, n2, at = await self.pair()
        factory, target_port = await self.start_target(EchoTarget)
        await n2.create_outlet("outlet", f"127.0.0.1:{target_port}")
        inlet = await n1.create_inlet("127.0.0.1:0", f"{at}/secure/api/service/outlet", authorized=[n2.identity.identifier])
        client = await self.connect_client(int(inlet.socket_address.rsplit(":", 1)[1]), Collector())
        client.transport.write(b"legit-1 ")
        await client.received(8, 5, "legit-1 echoed")
        (portal,) = inlet.portals
        (to_n1,) = n2.tcp.connections
        n2.send(Route([to_n1.address, portal.address]), h_payload(b"INJECTED "))
        # The echo of legit-2 leaves n2 on the same connection, after the injection.
        client.transport.write(b"legit-2")
        await wait_until(lambda: b"legit-2" in client.data, 5, "legit-2 echoed")
        self.assertNotIn(b"INJECTED", bytes(client.data), "a plain message reached the authorized inlet's client")
        self.assertEqual(bytes(client.data), b"legit-1 legit-2")


class RestartTests(SecureTestCase):
    @async_test
    async def test_inletThroughSecureRecoversAfterRestart(self):
        """
        An inlet whose route holds /secure/api works again once the far
        node is back on the same port (as one without a channel does, see
        tests.test_portal_lifecycle): the dead channel must not be reused.  The port
        is held by the test (L{held_port}) while n2 is down.
        """
        port = held_port(self)
        n2, l2 = await self.listening_node("n2", f"tcp:{port}:interface=127.0.0.1")
        n1 = self.make_node("n1")
        factory, target_port = await self.start_target(EchoTarget)
        target = f"127.0.0.1:{target_port}"
        await n2.create_outlet("outlet", target)
        inlet = await n1.create_inlet(
            "127.0.0.1:0", f"/ip4/127.0.0.1/tcp/{port}/secure/api/service/outlet", ping_timeout=2.0, ping_interval=0.2
        )
        inlet_port = int(inlet.socket_address.rsplit(":", 1)[1])
        client = await self.connect_client(inlet_port, Collector())
        client.transport.write(b"before")
        await client.received(6, 5, "echo before the restart")
        await self.within(self.stop_node(n2), 8, "n2 stopped")
        await wait_until(lambda: not n1.tcp.connections, 5, "n1 noticed n2 is gone")
        n2b, _ = await self.listening_node("n2b", f"tcp:{port}:interface=127.0.0.1")
        await n2b.create_outlet("outlet", target)
        client2 = await self.connect_client(inlet_port, Collector())
        client2.transport.write(b"after")
        await client2.received(5, 4, "echo after the restart through a new channel")
        self.assertEqual(bytes(client2.data), b"after")
        self.assertEqual(len(n2b.secure_listeners["api"].channels), 1)


# --- 11. a raw-socket initiator --------------------------------------------------------------------------------


NOISE_NAME = b"Noise_XX_25519_AESGCM_SHA256"
INITIAL_CHANGE_ID = hashlib.sha256(b"OCKAM_INITIAL_CHANGE").digest()


def r_hkdf(ck: bytes, ikm: bytes):
    temp = hmac.new(ck, ikm, hashlib.sha256).digest()
    out1 = hmac.new(temp, b"\x01", hashlib.sha256).digest()
    out2 = hmac.new(temp, out1 + b"\x02", hashlib.sha256).digest()
    return out1, out2


def r_nonce(n: int) -> bytes:
    return bytes(4) + n.to_bytes(8, "big")


def r_raw(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def h_data(b: bytes) -> bytes:
    return uvarint(len(b)) + b


class RawNoiseInitiator:
    """
    Noise_XX_25519_AESGCM_SHA256, initiator side, from the Noise spec.
    """

    def __init__(self) -> None:
        self.ck = NOISE_NAME.ljust(32, b"\x00")
        self.h = self.ck
        self.mix_hash(b"")  # empty prologue
        self.k = None
        self.n = 0
        self.s = X25519PrivateKey.generate()
        self.e = X25519PrivateKey.generate()

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.k = r_hkdf(self.ck, ikm)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            ciphertext = plaintext
        else:
            ciphertext = AESGCM(self.k).encrypt(r_nonce(self.n), plaintext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.k is None:
            plaintext = ciphertext
        else:
            plaintext = AESGCM(self.k).decrypt(r_nonce(self.n), ciphertext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def message1(self) -> bytes:
        e = r_raw(self.e.public_key())
        self.mix_hash(e)
        return e + self.encrypt_and_hash(b"")

    def read_message2(self, msg: bytes) -> bytes:
        assert len(msg) == 96, len(msg)
        self.re = msg[:32]
        self.mix_hash(self.re)
        self.mix_key(self.e.exchange(X25519PublicKey.from_public_bytes(self.re)))
        self.rs = self.decrypt_and_hash(msg[32:80])
        self.mix_key(self.e.exchange(X25519PublicKey.from_public_bytes(self.rs)))
        return self.decrypt_and_hash(msg[80:])

    def message3(self) -> bytes:
        s = self.encrypt_and_hash(r_raw(self.s.public_key()))
        self.mix_key(self.s.exchange(X25519PublicKey.from_public_bytes(self.re)))
        return s + self.encrypt_and_hash(b"")

    def split(self):
        """
        (send key, receive key) of an Ockam 0.83 initiator: k2, k1.
        """
        k1, k2 = r_hkdf(self.ck, b"")
        return k2, k1


def hand_export(key: Ed25519PrivateKey):
    """
    A new identity's export (spec section 4) and its identifier.
    """
    public = r_raw(key.public_key())
    label = b"OCKAM_RK"
    change = (
        b"\x00"  # CreateKey
        + INITIAL_CHANGE_ID
        + h_data(label)
        + b"\x03"  # Ed25519
        + b"\x01"  # Persistent
        + (32).to_bytes(4, "little")
        + h_data(public)
        + b"\x03"
    )
    change_id = hashlib.sha256(change).digest()
    signed = change_id + change + uvarint(1) + b"\x01" + h_data(key.sign(change_id))  # SelfSign
    return uvarint(1) + signed, "P" + hashlib.sha256(public).hexdigest()


def hand_read_export(data: bytes):
    """
    The public keys of an export's changes, checking every change id.
    """
    count, pos = r_uvarint(data, 0)
    keys = []
    for _ in range(count):
        change_id = data[pos : pos + 32]
        start = pos = pos + 32
        _kind, pos = r_uvarint(data, pos)
        pos += 32  # prev change id
        n, pos = r_uvarint(data, pos)
        assert data[pos : pos + n] == b"OCKAM_RK"
        pos += n
        _stype, pos = r_uvarint(data, pos)
        _persistence, pos = r_uvarint(data, pos)
        pos += 4
        n, pos = r_uvarint(data, pos)
        keys.append(data[pos : pos + n])
        pos += n
        _key_stype, pos = r_uvarint(data, pos)
        assert hashlib.sha256(data[start:pos]).digest() == change_id
        sigs, pos = r_uvarint(data, pos)
        for _ in range(sigs):
            _t, pos = r_uvarint(data, pos)
            n, pos = r_uvarint(data, pos)
            pos += n
    assert pos == len(data), (pos, len(data))
    return keys


def r_message(body: bytes):
    """
    A TransportMessage (no frame length) as (onward, return, payload).
    """
    return r_frame(len(body).to_bytes(2, "big") + body)


def r_sealed(payload: bytes, key: bytes):
    """
    (counter, plaintext) of an encrypted payload.
    """
    n, pos = r_uvarint(payload, 0)
    assert pos + n == len(payload)
    counter = int.from_bytes(payload[pos : pos + 8], "big")
    return counter, AESGCM(key).decrypt(r_nonce(counter), payload[pos + 8 :], b"")


def h_sealed(counter: int, key: bytes, plaintext: bytes) -> bytes:
    body = counter.to_bytes(8, "big") + AESGCM(key).encrypt(r_nonce(counter), plaintext, b"")
    return h_data(body)


class HandWrittenTests(SynchronousTestCase):
    def test_exportFromSeedVector(self):
        v = VECTORS["identity_from_seed"]
        export, identifier = hand_export(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["ed25519_seed"])))
        self.assertEqual(export.hex(), v["export"])
        self.assertEqual(identifier, v["identifier"])
        self.assertEqual(len(hand_read_export(export)), 1)

    def test_m1PayloadVector(self):
        v = VECTORS["noise_handshake_1"]
        msg1 = bytes.fromhex(v["msg1"])
        payload = h_data(msg1) + b"\x01" + h_data(h_address("a" * 32))
        self.assertEqual(payload.hex(), VECTORS["m1_payload_example"]["hex"])
        self.assertEqual(len(payload), 69)

    def test_initialHash(self):
        self.assertEqual(RawNoiseInitiator().h.hex(), VECTORS["noise_handshake_1"]["initial_h_after_empty_prologue"])


class RawInitiatorTests(SecureTestCase):
    @async_test
    async def test_rawInitiator(self):
        """
        A plain Twisted protocol runs the whole 0.83 initiator role against
        a node: M1-M3, M4 verified by hand, M5 with an identity built by
        hand, then an encrypted request to uppercase and its reply.
        """
        n2, l2 = await self.listening_node("n2")
        client = await connect_raw(self, l2.port, RawFrameClient())
        v = VECTORS["identity_from_seed"]
        identity_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["ed25519_seed"]))
        my_export, my_identifier = hand_export(identity_key)
        self.assertEqual(my_identifier, v["identifier"])
        my_dec, my_bwd, my_enc, my_reply = (os.urandom(16).hex() for _ in range(4))

        def send(onward, ret, payload):
            client.transport.write(h_frame(h_message(onward, ret, payload)))

        noise = RawNoiseInitiator()
        m1 = h_data(noise.message1()) + b"\x01" + h_data(h_address(my_bwd))
        self.assertEqual(len(m1), 69)
        send(["0#api"], ["0#" + my_dec], m1)

        frames = await deadline(client.frames_arrived(1), 5, "M2")
        onward, ret, payload = r_frame(frames[0])
        self.assertEqual(onward, ["0#" + my_dec])
        self.assertEqual(len(ret), 1)
        resp_dec = ret[0]
        self.assertRegex(resp_dec, ENCRYPTOR)
        self.assertEqual(len(payload), 97)
        self.assertEqual(payload[0], 96)
        self.assertEqual(noise.read_message2(payload[1:]), b"")
        m3 = noise.message3()
        self.assertEqual(len(m3), 64)
        send([resp_dec], ["0#" + my_dec], h_data(m3))
        h = noise.h
        send_key, recv_key = noise.split()

        frames = await deadline(client.frames_arrived(2), 5, "M4")
        onward, ret, payload = r_frame(frames[1])
        self.assertEqual((onward, ret), (["0#" + my_dec], [resp_dec]))
        counter, plaintext = r_sealed(payload, recv_key)
        self.assertEqual(counter, 0)
        inner_onward, inner_ret, request = r_message(plaintext)
        self.assertEqual(inner_onward, ["0#" + my_bwd])
        self.assertEqual(len(inner_ret), 1)
        resp_bwd = inner_ret[-1]
        self.assertNotEqual(resp_bwd, resp_dec)
        # Request{identity, signature}
        self.assertEqual(request[0], 0)
        n, pos = r_uvarint(request, 1)
        export = request[pos : pos + n]
        n, pos = r_uvarint(request, pos + n)
        signature = request[pos : pos + n]
        self.assertEqual(pos + n, len(request))
        keys = hand_read_export(export)
        self.assertEqual("P" + hashlib.sha256(keys[0]).hexdigest(), n2.identity.identifier)
        Ed25519PublicKey.from_public_bytes(keys[-1]).verify(signature, h)
        with self.assertRaises(InvalidSignature):
            Ed25519PublicKey.from_public_bytes(keys[-1]).verify(signature, bytes(32))

        # M5: Response{identity, signature}, counter 0.
        response = b"\x01" + h_data(my_export) + h_data(identity_key.sign(h))
        send([resp_dec], ["0#" + my_dec], h_sealed(0, send_key, h_message([resp_bwd], ["0#" + my_bwd], response)))
        # The first application message, counter 1.
        inner = h_message([resp_bwd, "0#uppercase"], ["0#" + my_reply], h_string("hello"))
        send([resp_dec], ["0#" + my_enc], h_sealed(1, send_key, inner))

        frames = await deadline(client.frames_arrived(3), 5, "the reply")
        end = self.responder(n2)
        self.assertEqual(end.state, "up")
        self.assertEqual(end.peer_identifier, my_identifier)
        onward, ret, payload = r_frame(frames[2])
        self.assertEqual(onward, ["0#" + my_dec])
        self.assertEqual(ret, [str(end.encryptor)])
        counter, plaintext = r_sealed(payload, recv_key)
        self.assertEqual(counter, 1)
        self.assertNotIn(b"HELLO", payload)
        self.assertEqual(r_message(plaintext), (["0#" + my_bwd, "0#" + my_reply], ["0#uppercase"], h_string("HELLO")))

        # The same frame again is a replay: no second reply; a new counter works.
        send([resp_dec], ["0#" + my_enc], h_sealed(1, send_key, inner))
        inner2 = h_message([resp_bwd, "0#uppercase"], ["0#" + my_reply], h_string("again"))
        send([resp_dec], ["0#" + my_enc], h_sealed(2, send_key, inner2))
        frames = await deadline(client.frames_arrived(4), 5, "the second reply")
        counter, plaintext = r_sealed(r_frame(frames[3])[2], recv_key)
        self.assertEqual(counter, 2)
        self.assertEqual(r_message(plaintext)[2], h_string("AGAIN"))
        self.assertEqual(end.dropped, 1)
