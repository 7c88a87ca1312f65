"""
Security properties a well-behaved peer never notices (issue #10, item 14).

Each test here is an attack from outside, through public surfaces only: a
second in-process node running a hand-driven (malicious) channel end, a
worker on a relay node that sees, replays and forges the encrypted frames it
routes, raw loopback sockets, and a node restarted from its state directory
(C{makeService} with C{--state}) and driven through its control API (HTTP on
its UNIX socket).  They assert on what is delivered, refused, or written to
a socket, never on a channel's or portal's attributes, so that they stay
valid while the access-control code moves.

  - L{ForgedIdentityTests}: a peer that completes the Noise handshake but
    presents an identity it cannot prove (a signature over the handshake
    hash that is wrong, by another key, over another hash, or by a rotated
    away key; a change history whose rotation is not signed by the previous
    key; no identity message at all) is refused by a responder and by an
    initiator; so is an identity message of the wrong kind, and an M4 with
    no return route.  A genuine peer is the control.
  - L{ReplayWindowTests}: frames forged by a relay with future counters (they
    do not decrypt) do not make the next genuine messages look like replays;
    replays of recent frames are still refused after the window has been
    pruned; an inner message that does not start at our backwards address is
    refused.
  - L{RestoredAccessControlTests}: outlets, inlets and a secure channel
    listener created with C{authorized} lists through the control API still
    refuse an unauthorized peer (and still serve the authorized one) after
    the node is stopped and started again from its state directory.
  - L{InletBeforePongTests}: a peer the inlet's C{authorized} list refuses
    must not be able to write to the inlet's client before a Pong is
    accepted.
  - L{RemoteDialTests}: a remote peer must not make the node dial an
    address of its choice, also not through the C{hop} service.

The last two found real bugs (an inlet's client written to by a refused
peer before the Pong; C{hop} dialing for a remote peer), fixed by the
node-wide access control (L{ockamtw.access}).

Nothing sleeps: every wait is an event bounded by a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from io import BytesIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ockamtw import Address, Route, Worker, decode_string, encode_string
from ockamtw.access import ANYONE
from ockamtw.errors import RequestTimeout, WireError
from ockamtw.secure.codec import (
    Change,
    ChangeKind,
    ChangeSignature,
    CreateResponderChannelMessage,
    IdentityChannelMessage,
    KeyChangeData,
    Persistence,
    SecretType,
    SignatureType,
    SignedChange,
    decode_encrypted_payload,
    decode_key_exchange,
    encode_change_history,
    encode_encrypted_payload,
    encode_key_exchange,
)
from ockamtw.secure.errors import SecureChannelError
from ockamtw.secure.identity import LocalIdentity
from ockamtw.secure.noise import HandshakeState
from ockamtw.wire import TransportMessage

from .helpers import RawFrameClient, async_test, connect_raw, deadline, h_frame, h_message, uvarint, wait_until
from .portal_harness import Collector, EchoTarget, PortalTestCase, h_payload, r_uvarint
from .secure_harness import Inbox

LOOPBACK = "tcp:0:interface=127.0.0.1"
#: The replay window of docs/protocol.md ("Where ockamtw differs", 9).
WINDOW = 1024


# --- workers ---------------------------------------------------------------------------


class HandInitiator(Inbox):
    """
    A malicious initiator: the key exchange with a listener is honest (Noise
    XX with a fresh static key), then everything it encrypts is chosen by
    the test.  Its frames arrive in C{messages}.
    """

    def started(self, node, address) -> None:
        Inbox.started(self, node, address)
        self.backwards = node.start_worker(None, Inbox())
        self.hs = HandshakeState(True)

    async def key_exchange(self, route):
        """
        M1 to C{route}, M2, M3; returns the decrypted M4 (a
        L{TransportMessage}) and its L{IdentityChannelMessage}.
        """
        msg1 = self.hs.write_message(b"")
        self.node.send(route, CreateResponderChannelMessage.for_initiator(msg1, self.backwards).encode(), sender=self.address)
        (m2,) = await self.when(1, 5, "M2")
        self.remote = m2.return_route
        self.hs.read_message(decode_key_exchange(m2.payload))
        msg3 = self.hs.write_message(b"")
        self.h = self.hs.h
        self.send_cs, self.recv_cs = self.hs.ockam_split()
        self.node.send(self.remote, encode_key_exchange(msg3), sender=self.address)
        m4 = (await self.when(2, 5, "M4"))[1]
        n, ciphertext = decode_encrypted_payload(m4.payload)
        inner = TransportMessage.decode(self.recv_cs.decrypt_at(n, ciphertext, b""))
        self.peer_backwards = inner.return_route[-1]
        return inner, IdentityChannelMessage.decode(inner.payload)

    def seal(self, counter: int, onward, payload: bytes) -> None:
        plaintext = TransportMessage(Route(onward), Route([self.backwards]), payload).encode()
        ciphertext = self.send_cs.encrypt_at(counter, plaintext, b"")
        self.node.send(self.remote, encode_encrypted_payload(counter, ciphertext), sender=self.address)


class ForgingResponder(Worker):
    """
    A malicious listener: it answers M1 and M3 honestly, then presents in M4
    the identity C{export} with the signature C{sign(h)} (or, with
    C{instead}, sends in its place a message to the address C{instead} on
    the initiator's node).  What the initiator sends after M3 is kept in
    C{after}.
    """

    access = ANYONE

    def __init__(
        self, export: bytes, sign, kind: int = IdentityChannelMessage.REQUEST, return_route: bool = True, instead=None
    ) -> None:
        self.instead = instead
        self.export = export
        self.sign = sign
        self.kind = kind
        self.return_route = return_route
        self.hs = None
        self.after = []

    def started(self, node, address) -> None:
        Worker.started(self, node, address)
        self.backwards = node.start_worker(None, Inbox())

    def receive(self, message) -> None:
        if self.hs is None:
            request = CreateResponderChannelMessage.decode(message.payload)
            self.peer_backwards = request.backwards_address()
            self.hs = HandshakeState(False)
            self.hs.read_message(request.payload)
            self.node.send(message.return_route, encode_key_exchange(self.hs.write_message(b"")), sender=self.address)
        elif not self.hs.is_complete():
            self.hs.read_message(decode_key_exchange(message.payload))
            send_cs, _ = self.hs.ockam_split()
            identity = IdentityChannelMessage(self.kind, self.export, self.sign(self.hs.h)).encode()
            ret = Route([self.backwards] if self.return_route else [])
            if self.instead is None:
                inner = TransportMessage(Route([self.peer_backwards]), ret, identity).encode()
            else:
                inner = TransportMessage(Route([self.peer_backwards, self.instead]), ret, b"no proof").encode()
            payload = encode_encrypted_payload(0, send_cs.encrypt_at(0, inner, b""))
            self.node.send(message.return_route, payload, sender=self.address)
        else:
            self.after.append(message)


class RelayTap(Worker):
    """
    A hop on a relay node, inserted in a channel's route (C{.../service/tap/
    service/forward_to_n3/service/api}): both ends then route every frame
    through it.  It forwards everything, records the frames by direction
    (the initiator's arrive on the connection M1 came on), and can send
    frames of its own along either direction.
    """

    access = ANYONE

    def __init__(self) -> None:
        self.from_initiator = None
        self.frames = {"to responder": [], "to initiator": []}

    def receive(self, message) -> None:
        if self.from_initiator is None:
            self.from_initiator = message.return_route[0]
        direction = "to responder" if message.return_route[0] == self.from_initiator else "to initiator"
        self.frames[direction].append(message)
        self.forward(message)

    def forward(self, message, payload=None) -> None:
        self.node.send(
            message.onward_route.step(),
            message.payload if payload is None else payload,
            return_route=message.return_route.prepend(self.address),
        )

    def encrypted(self, direction: str) -> list:
        """
        The encrypted frames that went C{direction}: not the key exchange
        (M1 and M3 to the responder, M2 to the initiator), not the plain
        C{b"sync"} echoes of L{SecurityTestCase.sync}.
        """
        skip = 2 if direction == "to responder" else 1
        return [m for m in self.frames[direction][skip:] if m.payload != b"sync"]

    def last_counter(self, direction: str) -> int:
        return counter_of(self.encrypted(direction)[-1].payload)

    def frame_with_counter(self, direction: str, counter: int):
        (frame,) = [m for m in self.encrypted(direction) if counter_of(m.payload) == counter]
        return frame


def counter_of(payload: bytes) -> int:
    """
    The counter of an encrypted payload, read by hand: data(counter_be8 ++
    ciphertext).
    """
    n, pos = r_uvarint(payload, 0)
    assert pos + n == len(payload) and n >= 24, (pos, n, len(payload))
    return int.from_bytes(payload[pos : pos + 8], "big")


def forged_frame(counter: int, size: int = 40) -> bytes:
    """
    An encrypted payload with C{counter} and random bytes that cannot
    authenticate.
    """
    body = counter.to_bytes(8, "big") + os.urandom(size)
    return uvarint(len(body)) + body


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def rotation_to(identity: LocalIdentity, new_key: Ed25519PrivateKey, prev_signer=None) -> bytes:
    """
    C{identity}'s export followed by a RotateKey to C{new_key}, self-signed,
    with a PrevSign by C{prev_signer} (a private key; none when C{None})
    instead of by C{identity}'s key.
    """
    data = KeyChangeData(
        identity.changes[-1].change_id,
        "OCKAM_RK",
        SecretType.ED25519,
        Persistence.PERSISTENT,
        32,
        raw_public(new_key),
        SecretType.ED25519,
    )
    change = Change(ChangeKind.ROTATE_KEY, data)
    cid = hashlib.sha256(change.encode()).digest()
    sigs = [ChangeSignature(SignatureType.SELF_SIGN, new_key.sign(cid))]
    if prev_signer is not None:
        sigs.append(ChangeSignature(SignatureType.PREV_SIGN, prev_signer.sign(cid)))
    return encode_change_history(tuple(identity.changes) + (SignedChange(cid, change, tuple(sigs)),))


# --- the test case base --------------------------------------------------------------------


class SecurityTestCase(PortalTestCase):
    timeout = 60

    async def pair(self):
        """
        n2 listening on loopback, n1 connected to it.  Returns (n1, n2,
        n1's connection to n2 as a route).
        """
        n2, l2 = await self.listening_node("n2")
        n1 = self.make_node("n1")
        conn = await self.within(n1.resolve(f"/ip4/127.0.0.1/tcp/{l2.port}"), 5, "connection to n2")
        return n1, n2, conn

    async def sync(self, node, route) -> None:
        """
        A plain echo along C{route} (ending before C{echo}): everything
        sent earlier on the same links has been handled once it is back.
        """
        reply = await self.within(node.request(route + ["echo"], b"sync", 5), 6, "echo (sync)")
        self.assertEqual(reply.payload, b"sync")


# --- 1. identities that do not prove themselves ----------------------------------------


class ForgedIdentityTests(SecurityTestCase):
    """
    The handshake proves who the peer is only if the signature over the
    handshake hash h is checked, by the current key of a change history
    that verifies.  Each attacker here completes an honest Noise exchange,
    so only those checks stand between it and the identity it claims.
    """

    async def _responder_case(self, n1, conn, listener: str, what: str, export: bytes, sign, kind=None):
        """
        A L{HandInitiator} on n1 answers M4 with C{export} signed by
        C{sign(h)}, then sends C{what} to n2's inbox through the channel;
        returns once n2 has handled both.
        """
        attacker = HandInitiator()
        n1.start_worker(None, attacker)
        _, request = await attacker.key_exchange(conn + [listener])
        self.assertEqual(request.kind, IdentityChannelMessage.REQUEST)
        kind = IdentityChannelMessage.RESPONSE if kind is None else kind
        attacker.seal(0, [attacker.peer_backwards], IdentityChannelMessage(kind, export, sign(attacker.h)).encode())
        attacker.seal(1, [attacker.peer_backwards, Address.local("inbox")], what.encode())
        await self.sync(n1, conn)
        return attacker

    @async_test
    async def test_responderRefusesUnprovenIdentity(self):
        """
        A listener that accepts only alice refuses initiators that present
        alice's identity without proving it: nothing they send through the
        channel is delivered.  Alice's real proof is accepted (the control).
        """
        n1, n2, conn = await self.pair()
        inbox = Inbox()
        n2.start_worker("inbox", inbox)
        alice = LocalIdentity.create()
        mallory = Ed25519PrivateKey.generate()
        n2.create_secure_channel_listener("strict", authorized=[alice.identifier])
        rotated = alice.rotate()
        cases = [
            ("signed by another key", alice.export(), lambda h: mallory.sign(h)),
            ("signature over another h", alice.export(), lambda h: alice.sign(hashlib.sha256(h).digest())),
            ("one bit flipped", alice.export(), lambda h: bytes([alice.sign(h)[0] ^ 1]) + alice.sign(h)[1:]),
            ("zero signature", alice.export(), lambda h: bytes(64)),
            ("truncated signature", alice.export(), lambda h: alice.sign(h)[:63]),
            ("empty signature", alice.export(), lambda h: b""),
            ("rotated identity signed by its old key", rotated.export(), lambda h: alice.sign(h)),
            ("rotation not signed by the old key", rotation_to(alice, mallory), lambda h: mallory.sign(h)),
            ("rotation prev-signed by the new key", rotation_to(alice, mallory, prev_signer=mallory), lambda h: mallory.sign(h)),
            (
                "rotation prev-signed by a third key",
                rotation_to(alice, mallory, prev_signer=Ed25519PrivateKey.generate()),
                lambda h: mallory.sign(h),
            ),
        ]
        for what, export, sign in cases:
            await self._responder_case(n1, conn, "strict", what, export, sign)
            self.assertEqual(inbox.payloads, [], f"{what}: the forged identity was accepted")
        # No identity message at all: application messages from counter 0.
        attacker = HandInitiator()
        n1.start_worker(None, attacker)
        await attacker.key_exchange(conn + ["strict"])
        attacker.seal(0, [attacker.peer_backwards, Address.local("inbox")], b"no proof, counter 0")
        attacker.seal(1, [attacker.peer_backwards, Address.local("inbox")], b"no proof, counter 1")
        await self.sync(n1, conn)
        self.assertEqual(inbox.payloads, [], "application messages were delivered before any identity proof")
        # An identity message of the wrong kind (a Request as M5), even with
        # alice's real proof, is refused too.
        await self._responder_case(
            n1, conn, "strict", "a Request as M5", alice.export(), alice.sign, kind=IdentityChannelMessage.REQUEST
        )
        self.assertEqual(inbox.payloads, [], "an identity Request was accepted as M5")
        # The controls: alice's proof, and alice's rotated identity signed
        # by its current key, are accepted.
        await self._responder_case(n1, conn, "strict", "genuine", alice.export(), alice.sign)
        await self._responder_case(n1, conn, "strict", "genuine rotated", rotated.export(), rotated.sign)
        self.assertEqual(inbox.payloads, [b"genuine", b"genuine rotated"])

    @async_test
    async def test_initiatorRefusesUnprovenIdentity(self):
        """
        An initiator that accepts only alice refuses a responder that
        presents alice's identity without proving it: create fails with
        SecureChannelError (WireError for an M4 that is no identity message
        at all).  Alice's real proof is accepted (the control).
        """
        n1, n2, conn = await self.pair()
        alice = LocalIdentity.create()
        mallory = Ed25519PrivateKey.generate()
        rotated = alice.rotate()
        cases = [
            ("signed by another key", alice.export(), lambda h: mallory.sign(h)),
            ("signature over another h", alice.export(), lambda h: alice.sign(hashlib.sha256(h).digest())),
            ("zero signature", alice.export(), lambda h: bytes(64)),
            ("rotated identity signed by its old key", rotated.export(), lambda h: alice.sign(h)),
            ("rotation not signed by the old key", rotation_to(alice, mallory), lambda h: mallory.sign(h)),
            ("rotation prev-signed by the new key", rotation_to(alice, mallory, prev_signer=mallory), lambda h: mallory.sign(h)),
        ]
        for i, (what, export, sign) in enumerate(cases):
            n2.start_worker(f"fake{i}", ForgingResponder(export, sign))
            d = n1.create_secure_channel(conn + [f"fake{i}"], authorized=[alice.identifier], timeout=5)
            try:
                encryptor = await deadline(d, 6, what)
            except SecureChannelError:
                continue
            self.fail(f"{what}: the initiator accepted the forged identity (channel {encryptor})")
        n2.start_worker("fake_kind", ForgingResponder(alice.export(), alice.sign, kind=IdentityChannelMessage.RESPONSE))
        with self.assertRaises(SecureChannelError, msg="an identity Response was accepted as M4"):
            await deadline(n1.create_secure_channel(conn + ["fake_kind"], authorized=[alice.identifier], timeout=5), 6, "kind")
        # No identity at all: an application message instead of M4.
        inbox = Inbox()
        n1.start_worker("inbox", inbox)
        n2.start_worker("fake_noproof", ForgingResponder(alice.export(), alice.sign, instead=Address.local("inbox")))
        with self.assertRaises((SecureChannelError, WireError), msg="an application message was accepted as M4"):
            await deadline(n1.create_secure_channel(conn + ["fake_noproof"], authorized=[alice.identifier], timeout=5), 6, "no proof")
        self.assertEqual(inbox.payloads, [], "a message was delivered before any identity proof")
        # M4 without a return route (nowhere to send M5): refused at once,
        # not left to time out.
        n2.start_worker("fake_noreturn", ForgingResponder(alice.export(), alice.sign, return_route=False))
        with self.assertRaises(SecureChannelError, msg="M4 without a return route was not refused"):
            await deadline(n1.create_secure_channel(conn + ["fake_noreturn"], authorized=[alice.identifier], timeout=5), 6, "no return route")
        # The controls: the same fake listener with alice's real proof, and
        # with her rotated identity signed by its current key.
        for name, who in (("genuine", alice), ("genuine_rotated", rotated)):
            fake = ForgingResponder(who.export(), who.sign)
            n2.start_worker(name, fake)
            encryptor = await self.within(
                n1.create_secure_channel(conn + [name], authorized=[alice.identifier], timeout=5), 6, name
            )
            self.assertIsInstance(encryptor, Address)
            await wait_until(lambda: fake.after, 5, f"{name}: M5 at the fake listener")


# --- 2. the replay window ----------------------------------------------------------------------


class ReplayWindowTests(SecurityTestCase):
    async def relayed_channel(self):
        """
        n1's channel to n3's api through n2, a relay node: the route is
        n2's RelayTap then forward_to_n3.  Returns (n1, n3, tap, encryptor,
        the route to n3 through the tap without the channel).
        """
        n2, l2 = await self.listening_node("n2")
        n3 = self.make_node("n3")
        n1 = self.make_node("n1")
        at = f"/ip4/127.0.0.1/tcp/{l2.port}"
        await self.within(n3.create_relay(at, name="n3"), 5, "relay registration")
        tap = RelayTap()
        n2.start_worker("tap", tap)
        via = await self.within(n1.resolve(f"{at}/service/tap/service/forward_to_n3"), 5, "route to n3")
        encryptor = await self.within(n1.create_secure_channel(via + ["api"], timeout=5), 6, "channel")
        return n1, n3, tap, encryptor, via

    @async_test
    async def test_forgedFutureCountersFromRelay(self):
        """
        The relay injects frames with the next counters (and far ones) that
        do not decrypt, towards each end; the genuine messages with those
        counters are still delivered, each once.
        """
        n1, n3, tap, encryptor, via = await self.relayed_channel()
        inbox = Inbox()
        n3.start_worker("inbox", inbox)
        to_inbox = Route([encryptor, Address.local("inbox")])
        n1.send(to_inbox, b"m0")
        await inbox.when(1)

        # Towards the responder.
        frame = tap.encrypted("to responder")[-1]
        nxt = tap.last_counter("to responder") + 1
        for counter in (nxt, nxt + 1, nxt + 2, nxt + 10 * WINDOW, 1 << 63, (1 << 64) - 2):
            tap.forward(frame, forged_frame(counter))
        for i in (1, 2, 3):
            n1.send(to_inbox, b"m%d" % i)
        await self.sync(n1, via)
        self.assertEqual(inbox.payloads, [b"m0", b"m1", b"m2", b"m3"])
        self.assertEqual(tap.last_counter("to responder"), nxt + 2)  # the tap saw them: they were sent

        # Towards the initiator: replies to requests through the channel.
        self.assertEqual(decode_string((await self.within(
            n1.request(Route([encryptor, Address.local("uppercase")]), encode_string("r0"), 5), 6, "r0"
        )).payload), "R0")
        frame = tap.encrypted("to initiator")[-1]
        nxt = tap.last_counter("to initiator") + 1
        for counter in (nxt, nxt + 1, nxt + 2, nxt + 10 * WINDOW, 1 << 63, (1 << 64) - 2):
            tap.forward(frame, forged_frame(counter))
        for i in (1, 2, 3):
            reply = await self.within(
                n1.request(Route([encryptor, Address.local("uppercase")]), encode_string("r%d" % i), 3),
                4,
                f"reply {i} after the forged frames",
            )
            self.assertEqual(decode_string(reply.payload), "R%d" % i)
        self.assertEqual(tap.last_counter("to initiator"), nxt + 2)

    @async_test
    async def test_recentReplaysRefusedAfterPruning(self):
        """
        After 2 x 1024 messages (the window has been pruned), replays of the
        most recent frame, of one in the middle of the window and of the
        oldest one still inside it are dropped, as is one just outside it;
        the channel goes on.
        """
        n1, n3, tap, encryptor, via = await self.relayed_channel()
        inbox = Inbox()
        n3.start_worker("inbox", inbox)
        to_inbox = Route([encryptor, Address.local("inbox")])
        total = 2 * WINDOW
        for i in range(total):
            n1.send(to_inbox, b"%d" % i)
        await inbox.when(total, 20, "messages through the channel")
        highest = tap.last_counter("to responder")
        self.assertEqual(highest, total)  # M5 has counter 0, messages 1..total
        for counter in (highest, highest - 1, highest - WINDOW // 2, highest - WINDOW + 1, highest - WINDOW):
            tap.forward(tap.frame_with_counter("to responder", counter))
        n1.send(to_inbox, b"after")
        await self.sync(n1, via)
        self.assertEqual(len(inbox.payloads), total + 1, "a replayed frame was delivered again")
        self.assertEqual(inbox.payloads, [b"%d" % i for i in range(total)] + [b"after"])

    @async_test
    async def test_innerMessageMustStartAtBackwardsAddress(self):
        """
        Through an established channel, an inner message whose onward route
        does not start at the receiver's backwards address is dropped.
        """
        n1, n2, conn = await self.pair()
        inbox = Inbox()
        n2.start_worker("inbox", inbox)
        peer = LocalIdentity.create()
        attacker = HandInitiator()
        n1.start_worker(None, attacker)
        await attacker.key_exchange(conn + ["api"])
        attacker.seal(0, [attacker.peer_backwards], IdentityChannelMessage.response(peer.export(), peer.sign(attacker.h)).encode())
        attacker.seal(1, [attacker.peer_backwards, Address.local("inbox")], b"first")
        attacker.seal(2, [Address.local("echo"), Address.local("inbox")], b"not backwards")
        attacker.seal(3, [Address.local("inbox"), Address.local("inbox")], b"inbox first")
        attacker.seal(4, [attacker.peer_backwards, Address.local("inbox")], b"last")
        await self.sync(n1, conn)
        self.assertEqual(inbox.payloads, [b"first", b"last"])


# --- 3. access control restored by a restart ---------------------------------------------------


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    def __init__(self, path: str) -> None:
        self.path = path

    def endpointForURI(self, uri):
        return endpoints.UNIXClientEndpoint(reactor, self.path, timeout=5)


class RestoredAccessControlTests(SecurityTestCase):
    """
    A node run as `ockam node start` runs it (C{makeService} from its state
    directory), changed through its control API, stopped and started again.
    """

    timeout = 90

    def state_dir(self) -> str:
        home = tempfile.mkdtemp(prefix="ocksec", dir="/tmp")  # a short control socket path
        self.addCleanup(shutil.rmtree, home, True)
        directory = os.path.join(home, "nodes", "n3")
        os.makedirs(directory)
        state = {"name": "n3", "listen": "127.0.0.1:0", "outlets": [], "inlets": [], "relays": []}
        with open(os.path.join(directory, "state.json"), "w") as f:
            json.dump(state, f)
        return directory

    def start_from_state(self, directory: str):
        from ockamtw.tap import Options, makeService

        options = Options()
        options.parseOptions(["--state", directory])
        # The node installs its own SIGTERM handler: give trial's back.
        self.addCleanup(signal.signal, signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        node = makeService(options, reactor)
        node.privilegedStartService()
        node.startService()
        self._stops = getattr(self, "_stops", {})
        self.addCleanup(lambda: Deferred.fromCoroutine(self._stop_node_at_cleanup(node)))
        return node

    async def control(self, directory: str, method: str, path: str, body=None):
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(reactor, _UnixSocket(os.path.join(directory, "control.sock")), pool=pool)
        producer = FileBodyProducer(BytesIO(json.dumps(body).encode())) if body is not None else None
        response = await self.within(
            agent.request(method.encode(), b"http://node/" + path.encode(), Headers({b"content-type": [b"application/json"]}), producer),
            10,
            f"{method} {path}",
        )
        result = json.loads(await self.within(readBody(response), 10, f"{method} {path} body"))
        self.assertEqual(response.code, 200, result)
        return result

    async def _refused_at_outlet(self, node, at: str, target_factory) -> None:
        """
        A client of an inlet on C{node} to n3's private outlet through a
        channel: closed when no Pong comes, and n3's target sees nothing.
        """
        before = len(target_factory.protocols)
        inlet = await node.create_inlet("127.0.0.1:0", f"{at}/secure/api/service/private", ping_timeout=0.5, ping_interval=0.1)
        client = await self.connect_client(int(inlet.socket_address.rsplit(":", 1)[1]), Collector())
        client.transport.write(b"knock")
        await wait_until(
            lambda: client.lost.called or client.data or len(target_factory.protocols) > before, 5, "the refused client closed"
        )
        self.assertEqual(bytes(client.data), b"", "the outlet served an unauthorized peer")
        self.assertEqual(len(target_factory.protocols), before, "the outlet connected for an unauthorized peer")

    async def _served(self, port: int, token: bytes) -> None:
        client = await self.connect_client(port, Collector())
        client.transport.write(token)
        await client.received(len(token), 10, f"echo of {token!r}")
        self.assertEqual(bytes(client.data), token)

    async def _refused_at_inlet(self, port: int, mallory_targets) -> None:
        """
        A client of n3's inlet whose route ends at mallory's outlet: the
        inlet refuses mallory's Pong and keeps pinging (mallory's outlet
        opens a second target connection), and no byte goes either way.
        """
        before = len(mallory_targets.protocols)
        client = await self.connect_client(port, Collector())
        client.transport.write(b"knock")

        def settled():
            new = mallory_targets.protocols[before:]
            return len(new) >= 2 or any(p.count for p in new) or client.data

        await wait_until(settled, 10, "a second Ping, or bytes through the refused inlet")
        new = mallory_targets.protocols[before:]
        self.assertEqual([p.count for p in new], [0] * len(new), "the client's bytes reached mallory")
        self.assertEqual(bytes(client.data), b"", "mallory's bytes reached the client")

    @async_test
    async def test_authorizedListsSurviveRestart(self):
        directory = self.state_dir()
        n3 = self.start_from_state(directory)
        alice, la = await self.listening_node("alice")
        mallory, lm = await self.listening_node("mallory")
        at_alice = f"/ip4/127.0.0.1/tcp/{la.port}"
        at_mallory = f"/ip4/127.0.0.1/tcp/{lm.port}"
        a_id = alice.identity.identifier
        private_targets, private_port = await self.start_target(EchoTarget)
        alice_targets, alice_port = await self.start_target(EchoTarget)
        mallory_targets, mallory_port = await self.start_target(Collector)
        await alice.create_outlet("outlet", f"127.0.0.1:{alice_port}")
        await mallory.create_outlet("outlet", f"127.0.0.1:{mallory_port}")

        await self.control(directory, "POST", "outlets", {"address": "private", "to": f"127.0.0.1:{private_port}", "authorized": [a_id]})
        ok = await self.control(
            directory, "POST", "inlets", {"listen": "127.0.0.1:0", "to": f"{at_alice}/secure/api/service/outlet", "authorized": [a_id]}
        )
        bad = await self.control(
            directory, "POST", "inlets", {"listen": "127.0.0.1:0", "to": f"{at_mallory}/secure/api/service/outlet", "authorized": [a_id]}
        )
        await self.control(directory, "POST", "secure-channel-listeners", {"address": "strict", "authorized": [a_id]})
        ok_port, bad_port = (int(i["listen"].rsplit(":", 1)[1]) for i in (ok, bad))
        at_n3 = f"/ip4/127.0.0.1/tcp/{(await self.control(directory, 'GET', 'node'))['listener'].rsplit(':', 1)[1]}"
        identifier = (await self.control(directory, "GET", "identity"))["identifier"]

        await self.within(self.stop_node(n3), 10, "n3 stopped")
        n3 = self.start_from_state(directory)
        self.assertEqual((await self.control(directory, "GET", "identity"))["identifier"], identifier)

        # The outlet: alice is served, mallory is refused.
        inlet = await alice.create_inlet("127.0.0.1:0", f"{at_n3}/secure/api/service/private")
        await self._served(int(inlet.socket_address.rsplit(":", 1)[1]), b"alice to the private outlet")
        await self._refused_at_outlet(mallory, at_n3, private_targets)
        # The inlets: alice's Pong is accepted, mallory's refused.
        await self._served(ok_port, b"through alice")
        await self._refused_at_inlet(bad_port, mallory_targets)
        # The listener: alice's channel works, mallory's is refused.
        encryptor = await self.within(alice.create_secure_channel(f"{at_n3}/service/strict", timeout=5), 6, "alice's channel")
        reply = await self.within(alice.request(Route([encryptor, Address.local("uppercase")]), encode_string("a"), 5), 6, "a")
        self.assertEqual(decode_string(reply.payload), "A")
        encryptor = await self.within(mallory.create_secure_channel(f"{at_n3}/service/strict", timeout=5), 6, "mallory's side")
        with self.assertRaises(RequestTimeout, msg="the restored listener let mallory in"):
            await deadline(mallory.request(Route([encryptor, Address.local("uppercase")]), encode_string("m"), 1), 3, "m")
        listeners = await self.control(directory, "GET", "secure-channel-listeners")
        self.assertEqual([(l["authorized"], l["channels"]) for l in listeners if l["address"] == "strict"], [([a_id], 1)])


# --- 4. an inlet's client before the Pong -------------------------------------------------------


class EvilOutlet(Worker):
    """
    Answers every Ping with a Payload instead of a Pong, then sends
    C{b"sync"} to C{probe} on the pinging node through the same channel.
    """

    access = ANYONE

    def __init__(self) -> None:
        self.pings = []
        self._waiting = []

    def receive(self, message) -> None:
        self.pings.append(message)
        self.send(message.return_route, h_payload(b"INJECTED"))
        self.node.send(Route([message.return_route[0], Address.local("probe")]), b"sync", sender=self.address)
        for d in self._waiting:
            if not d.called:
                d.callback(message)
        self._waiting = []

    def first_ping(self) -> Deferred:
        if self.pings:
            return succeed(self.pings[0])
        d: Deferred = Deferred()
        self._waiting.append(d)
        return deadline(d, 5, "a Ping at the evil outlet")


class InletBeforePongTests(SecurityTestCase):
    @async_test
    async def test_refusedPeerCannotWriteToClientBeforePong(self):
        """
        n1's inlet accepts only alice's outlet, but its route leads to
        mallory (say mallory took over the relay alias): mallory's Pong
        would be refused, so she answers the Ping with Payload messages.
        They must not reach the client, any more than they could after a
        Pong.  Then alice, authorized, answers with Pong and Payload: only
        her bytes reach the client.
        """
        n1, l1 = await self.listening_node("n1")
        mallory, lm = await self.listening_node("mallory")
        alice = self.make_node("alice")
        probe = Inbox()
        n1.start_worker("probe", probe)
        evil = EvilOutlet()
        mallory.start_worker("outlet", evil)
        inlet = await n1.create_inlet(
            "127.0.0.1:0",
            f"/ip4/127.0.0.1/tcp/{lm.port}/secure/api/service/outlet",
            authorized=[alice.identity.identifier],
            ping_interval=10,
        )
        client = await self.connect_client(int(inlet.socket_address.rsplit(":", 1)[1]), Collector())
        ping = await evil.first_ping()
        await probe.when(1, 5, "mallory's sync through the channel")  # n1 has handled the injection
        # Alice answers the same portal through her own channel to n1.
        portal = ping.return_route[-1]
        encryptor = await self.within(alice.create_secure_channel(f"/ip4/127.0.0.1/tcp/{l1.port}/service/api", timeout=5), 6, "alice's channel")
        alice.send(Route([encryptor, portal]), b"\x01")  # Pong
        alice.send(Route([encryptor, portal]), h_payload(b"from alice"))
        await wait_until(lambda: b"from alice" in client.data, 5, "alice's bytes at the client")
        self.assertEqual(bytes(client.data), b"from alice", "a refused peer wrote to the inlet's client")



# --- 5. a remote peer makes the node dial ---------------------------------------------------------


class RemoteDialTests(SecurityTestCase):
    @async_test
    async def test_hopDoesNotDialForARemotePeer(self):
        """
        docs/protocol.md ("Where ockamtw differs", 2): a message that
        arrives from the network with a TCP first hop is dropped, "so a
        remote peer cannot make a node dial arbitrary addresses".  Routed
        through the node's own C{hop} service first, it must be dropped
        too: a raw peer sends C{[hop, 1#127.0.0.1:P, echo]} (and the same
        straight to C{1#127.0.0.1:P}, the documented case) and nothing
        connects to port P.
        """
        victims, victim_port = await self.start_target(Collector)
        node, listener = await self.listening_node("n")
        client = await connect_raw(self, listener.port, RawFrameClient())
        tcp_hop = f"1#127.0.0.1:{victim_port}"
        client.transport.write(h_frame(h_message([tcp_hop, "0#echo"], ["0#peer"], b"direct")))
        client.transport.write(h_frame(h_message(["0#hop", tcp_hop, "0#echo"], ["0#peer"], b"through hop")))
        client.transport.write(h_frame(h_message(["0#echo"], ["0#peer"], b"sync")))
        await deadline(client.frames_arrived(1), 5, "the echo after the two messages")
        # The node has handled both; a second round trip on a new
        # connection gives a dial it started time to reach the victim.
        second = await connect_raw(self, listener.port, RawFrameClient())
        second.transport.write(h_frame(h_message(["0#echo"], ["0#peer"], b"sync")))
        await deadline(second.frames_arrived(1), 5, "the echo on a second connection")
        self.assertEqual(victims.protocols, [], "a remote peer made the node connect to an address of its choice")

