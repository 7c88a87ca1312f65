"""
Secure channels as Ockam 0.83 speaks them (docs/protocol.md, "Secure
channels"): a Noise XX key exchange (M1-M3), an encrypted identity exchange
(M4 from the responder, M5 from the initiator), then every message re-wrapped
and encrypted.

Each end of a channel has three random local addresses:

  - the decryptor, which sends and receives everything on the wire;
  - the encryptor, which users route through (C{/service/<hex>});
  - the backwards address, which receives nothing but is the first hop of
    every inner (encrypted) message.

Safer than 0.83 without changing the wire: a replay window on receive, a
responder handshake timeout, fail fast when our trust policy refuses the
peer, and a peer presenting our own identity is refused unless allowed.

A listener admits handshakes under L{HandshakeLimits}: half-open (responder)
handshakes are capped per peer and in all, with random early drop between
a start threshold and the full limit (OpenSSH's C{MaxStartups}), and first
messages are rate-limited per peer and in all (token buckets), so that a
flood of M1 cannot take more than a bounded share of the reactor.  A
refusal is decided before any state or key is made.
"""

from __future__ import annotations

import collections
import ipaddress
import random as _random
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Protocol, Tuple

from automat import TypeMachineBuilder
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from zope.interface import implementer

from ..machines import indexed, transitions
from ..access import ANYONE, NOBODY, Relayed, RelayedFor, describe_origin
from ..errors import OckamError, RequestTimeout, WireError
from ..flow import CloseNotifier
from ..interfaces import IBodyLink, IConnection, ILinkWorker, IOrigin
from ..logs import short
from ..node import Worker
from ..routing import Address, Route
from ..status import CLOSED, UP
from ..wire import TransportMessage, address_of, payload_of, routes_head, second_hop, uvarint
from .codec import (
    AEAD_TAG_LEN,
    COUNTER_LEN,
    CreateResponderChannelMessage,
    IdentityChannelMessage,
    decode_encrypted_payload,
    decode_key_exchange,
    encode_encrypted_payload,
    encode_key_exchange,
    encrypted_payload_prefix,
)
from .errors import IdentityError, SecureChannelError
from .identity import import_identity
from .noise import HandshakeState

log = Logger(namespace="ockamtw.secure")

#: Counters further than this behind the highest one seen are refused.
REPLAY_WINDOW = 1024

#: The metadata key under which decrypted messages carry the peer's
#: identifier.
IDENTITY = "identity"


class TrustPolicy:
    """
    Which peers a channel end accepts: everyone (C{authorized=None}) or the
    given identifiers; never our own identity unless C{allow_self}.
    """

    def __init__(self, authorized: Optional[Iterable[str]] = None, allow_self: bool = False) -> None:
        self.authorized = None if authorized is None else frozenset(authorized)
        self.allow_self = allow_self

    def check(self, own: str, peer: str) -> None:
        """
        @raise SecureChannelError: when C{peer} is not trusted.
        """
        if peer == own and not self.allow_self:
            raise SecureChannelError(f"the peer presents our own identity {peer}: refused")
        if self.authorized is not None and peer not in self.authorized:
            raise SecureChannelError(f"identity {peer} is not authorized")

    def __repr__(self) -> str:
        return "TrustPolicy(everyone)" if self.authorized is None else f"TrustPolicy({sorted(self.authorized)})"


@implementer(ILinkWorker)
class _Part(Worker):
    """
    One of a channel end's three workers, each with its own access policy:

      - the decryptor takes anything (only what decrypts gets through);
      - the encryptor takes only this node's own messages, and those a
        relay passes on for the channel's peer (a relay it registered
        through this channel): nobody else may speak to the peer as us;
      - the backwards address takes nothing.
    """

    def __init__(self, end: "ChannelEnd", role: str) -> None:
        self.end = end
        self.role = role
        if role == "decryptor":
            self.access = ANYONE
            # What the node hands it undecoded (see receive_payload) goes
            # straight to the channel end.
            self.receive_payload = end._decrypt_and_deliver
        elif role == "encryptor":
            # The listener may widen it (a project node relays between its
            # members' channels).
            self.access = getattr(end.owner, "encryptor_access", RelayedFor)(end)
        else:
            self.access = NOBODY

    @property
    def leads_to(self):
        """
        A route through the encryptor leaves the node through the channel.
        """
        return self.end if self.role == "encryptor" else None

    def receive_payload(self, payload, source) -> bool:
        """
        The payload of a message the node did not decode (see
        L{ockamtw.node.BaseNode.hand}): what the decryptor of an
        established channel decrypts and delivers (the decryptor's own
        attribute, L{ChannelEnd._decrypt_and_deliver}, replaces this
        method); C{False} (the node then decodes the message and delivers
        it) otherwise.
        """
        return False

    def receive(self, message) -> None:
        if self.role == "decryptor":
            self.end._wire(message)
        elif self.role == "encryptor":
            self.end._local(message)
        # The backwards address accepts nothing (NOBODY): never called.


class _ChannelInputs(Protocol):
    """
    What happens to a secure channel end: the inputs of its machine
    (L{ChannelEnd}).
    """

    def initiate(self, route: object, timeout: float) -> None:
        "L{ChannelEnd.start_initiator}: send M1 along C{route}, to a listener."

    def respond(self, msg1: bytes, timeout: float) -> None:
        "L{ChannelEnd.start_responder}: M1 (its Noise message C{msg1}) came to our listener."

    def wire(self, message: object) -> None:
        "A message from the peer arrived at the decryptor."

    def verified(self) -> None:
        "The peer's identity message verified (an initiator has sent M5)."

    def local(self, message: object) -> None:
        "A message of this node arrived at the encryptor, to go to the peer."

    def timed_out(self, timeout: float) -> None:
        "The handshake did not complete within C{timeout} seconds."

    def link_closed(self) -> None:
        "The connection or outer channel the peer's handshake came through closed."

    def failed(self, error: Exception) -> None:
        "The handshake failed with C{error} (a malformed or refused message)."

    def close(self) -> None:
        "L{ChannelEnd.close}."


#: The states of a channel end, by the name L{ChannelEnd.state} holds (its
#: L{ChannelEnd.status} says what they mean: L{ockamtw.status.UP} once
#: L{ESTABLISHED}, L{ockamtw.status.CLOSED} once L{ENDED}).
#: Created, not started yet.
NEW = "new"
#: An initiator that sent M1, waiting for the responder's M2.
WAITING_FOR_M2 = "m2"
#: A responder that answered M1 with M2, waiting for the initiator's M3.
WAITING_FOR_M3 = "m3"
#: An initiator that sent M3, waiting for the responder's identity (M4).
WAITING_FOR_M4 = "m4"
#: A responder that sent its identity (M4), waiting for the initiator's (M5).
WAITING_FOR_M5 = "m5"
#: Both identities verified: messages are encrypted and decrypted.
ESTABLISHED = "up"
#: Ended (closed, failed, timed out, or its link closed): its workers are gone.
ENDED = "closed"

#: A state's status, where it is not the state's name in capitals (a
#: handshake in progress shows the message it waits for: M2 ... M5).
_STATUS = {ESTABLISHED: UP, ENDED: CLOSED}


@implementer(IBodyLink)
class ChannelEnd(CloseNotifier):
    """
    One end of a secure channel, and the origin of the messages it
    decrypts (C{identity} is the peer's identifier once it is up).

    The channel ends with the origin of the peer's handshake messages (the
    TCP connection or outer secure channel they came through).

    A state machine (C{_ChannelInputs}, the table after this class): an
    initiator goes L{NEW}, L{WAITING_FOR_M2}, L{WAITING_FOR_M4},
    L{ESTABLISHED}; a responder L{NEW}, L{WAITING_FOR_M3}, L{WAITING_FOR_M5},
    L{ESTABLISHED}; any of them may end in L{ENDED}.  Its inputs are what arrives (a message from
    the peer, a message to send, the handshake's time-out, the loss of its
    link, L{close}); its outputs what the end does (send M1 to M5, decrypt
    and deliver, encrypt and send, fail, close).  Once up, messages take
    plain methods that check the state (what the machine does when up,
    without its dispatch).

    @ivar encryptor: the L{Address} to route through.
    @ivar peer_identifier: the other end's identifier (C{P<hex>}) once
        established.
    @ivar state: the name of the machine's state: C{"m2"}, C{"m3"}
        (waiting for that key exchange message), C{"m4"}, C{"m5"} (waiting
        for that identity message), C{"up"} or C{"closed"} (C{"new"} before
        it starts).
    """

    def __init__(self, node, identity, trust: TrustPolicy, initiator: bool, owner=None) -> None:
        self.node = node
        self.own_identity = identity
        self.trust = trust
        self.initiator = initiator
        self.owner = owner
        self.state = NEW
        self.peer_identifier: Optional[str] = None
        self.remote_route: Optional[Route] = None
        self.route_text: Optional[str] = None
        self.dropped = 0
        self._hs = HandshakeState(initiator)
        self._h: Optional[bytes] = None
        self._send = None
        self._recv = None
        self._send_n = 0
        self._highest = -1
        self._seen: set = set()
        self._peer_backwards: Optional[Address] = None
        #: (TCP connection, header) for L{write_body}'s ciphertexts, once
        #: known: the first hop of the route to the peer, and the start of
        #: every message on it.
        self._out = None
        self._ready: Optional[Deferred] = None
        self._timer = None
        #: the origin of the peer's handshake, and its close watch
        self._peer_origin = None
        self._peer_origin_key = None
        #: When a message last came through (L{SecureChannelListener} closes
        #: the least recently active ends first when it holds too many).
        self.last_active = 0.0
        #: Why the handshake failed (an exception), once it has.
        self.failure: Optional[Exception] = None
        #: The peer (L{peer_group}) a responder's handshake is counted
        #: against, set by its listener.
        self.peer_group = None
        self._machine = _ChannelMachine(self)
        self._busy = 0
        self._after: list = []
        self.decryptor = node.start_worker(None, _Part(self, "decryptor"))
        self.encryptor = node.start_worker(None, _Part(self, "encryptor"))
        self.backwards = node.start_worker(None, _Part(self, "backwards"))
        self._backwards_wire = self.backwards.encode()

    # --- starting and closing ---------------------------------------------------------

    def start_initiator(self, route: Route, timeout: float) -> Deferred:
        """
        Send M1 along C{route} (ending at a listener); fires with this end
        once the identity exchange is done.
        """
        ready = self._ready = Deferred()
        self._input(self._machine.initiate, route, timeout)
        return ready

    def start_responder(self, m1, timeout: float, request: Optional[CreateResponderChannelMessage] = None) -> None:
        """
        Answer M1 (a message to the listener) with M2; the handshake must
        be done within C{timeout} seconds of M1.  C{request}: M1's payload
        already decoded.

        @raise SecureChannelError: (or L{WireError}) for an M1 it cannot
            answer; the caller closes the end.
        """
        if not m1.return_route:
            raise SecureChannelError("M1 without a return route")
        if request is None:
            request = CreateResponderChannelMessage.decode(m1.payload)
        self._peer_backwards = request.backwards_address()
        self.remote_route = m1.return_route
        if not self._watch(m1.origin):
            self._input(self._machine.link_closed)
        if self.state == ENDED:
            raise SecureChannelError("the connection M1 came through is closed")
        self._input(self._machine.respond, request.payload, timeout)

    def close(self) -> None:
        """
        Remove the channel end's workers (no message tells the peer).
        """
        self._input(self._machine.close)

    # --- what arrives ---------------------------------------------------------------

    def _wire(self, message) -> None:
        """
        A message at the decryptor.
        """
        if self.state == ESTABLISHED:
            self._decrypt_and_deliver(message.payload, message.source)
        else:
            self._input(self._machine.wire, message)

    def _local(self, message) -> None:
        """
        A message at the encryptor.
        """
        if self.state == ESTABLISHED:
            # What the machine does when up (_encrypt_and_send), inline.
            self._send_inner(
                message.onward_route.step().prepend(self._peer_backwards),
                message.return_route,
                message.payload,
                sender=self.encryptor,
            )
        else:
            self._input(self._machine.local, message)

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        self._input(self._machine.timed_out, timeout)

    def _link_closed(self) -> None:
        self._peer_origin_key = None
        self._input(self._machine.link_closed)

    def _input(self, input, *args) -> None:
        """
        Give the machine C{input} (a method of C{self._machine}).  An input
        that comes while the machine is busy (from its own outputs, or code
        they call) waits until it is done, as automat does; the code that
        its outputs leave for later (L{_later}: the callbacks of
        L{start_initiator}'s Deferred) runs once it is done, so that it can
        use this end at once, as any caller can.
        """
        self._busy += 1
        try:
            input(*args)
        finally:
            self._busy -= 1
            if not self._busy:
                after = self._after
                while after:
                    after.pop(0)()

    def _later(self, f, *args) -> None:
        self._after.append(lambda: f(*args))

    # --- the machine's outputs: the handshake ------------------------------------------

    def _send_m1(self, route: Route, timeout: float) -> None:
        msg1 = self._hs.write_message(b"")
        payload = CreateResponderChannelMessage.for_initiator(msg1, self.backwards).encode()
        self._timer = self.node.reactor.callLater(timeout, self._timed_out, timeout)
        self.node.send(route, payload, sender=self.decryptor)
        # Until M2 names the link the peer answers through, the handshake
        # depends on the one M1 left through: if that closes first (a peer
        # that accepted the connection and went away), the handshake fails
        # at once instead of at its time-out.
        link = self.node.link_of(route[0]) if route else None
        if link is not None and not self._watch(link):
            self._input(self._machine.link_closed)

    def _send_m2(self, msg1: bytes, timeout: float) -> None:
        self._hs.read_message(msg1)
        msg2 = self._hs.write_message(b"")
        self._timer = self.node.reactor.callLater(timeout, self._timed_out, timeout)
        self.node.send(self.remote_route, encode_key_exchange(msg2), sender=self.decryptor)

    def _read_m2_send_m3(self, message) -> None:
        try:
            if not message.return_route:
                raise SecureChannelError("M2 without a return route")
            self.remote_route = message.return_route
            if not self._watch(message.origin):
                self._input(self._machine.link_closed)
                return
            try:
                self._hs.read_message(decode_key_exchange(message.payload))
            except (WireError, SecureChannelError):
                # Not a key exchange message: whatever answered is no secure
                # channel listener (e.g. an echo service sent M1 back).
                raise SecureChannelError(
                    f"{self.route_text or 'the route'} did not answer as a secure channel listener"
                ) from None
            msg3 = self._hs.write_message(b"")
            self._split()
            self.node.send(self.remote_route, encode_key_exchange(msg3), sender=self.decryptor)
        except (WireError, SecureChannelError) as e:
            self._bad_handshake_message(e)

    def _read_m3_send_m4(self, message) -> None:
        try:
            self.remote_route = message.return_route
            self._hs.read_message(decode_key_exchange(message.payload))
            self._split()
            self._send_inner(
                Route([self._peer_backwards]),
                Route([self.backwards]),
                IdentityChannelMessage.request(self.own_identity.export(), self.own_identity.sign(self._h)).encode(),
                sender=self.decryptor,
            )
        except (WireError, SecureChannelError) as e:
            self._bad_handshake_message(e)

    def _read_m4_send_m5(self, message) -> None:
        try:
            inner = self._verify_identity(message, IdentityChannelMessage.REQUEST)
            if not inner.return_route:
                raise SecureChannelError("identity request without a return route")
            self._peer_backwards = inner.return_route[-1]
            self._send_inner(
                Route([self._peer_backwards]),
                Route([self.backwards]),
                IdentityChannelMessage.response(self.own_identity.export(), self.own_identity.sign(self._h)).encode(),
                sender=self.decryptor,
            )
        except (WireError, SecureChannelError) as e:
            self._bad_handshake_message(e)
            return
        self._input(self._machine.verified)

    def _read_m5(self, message) -> None:
        try:
            self._verify_identity(message, IdentityChannelMessage.RESPONSE)
        except (WireError, SecureChannelError) as e:
            self._bad_handshake_message(e)
            return
        self._input(self._machine.verified)

    def _bad_handshake_message(self, error: Exception) -> None:
        self.dropped += 1
        self._input(self._machine.failed, error)

    def _established(self) -> None:
        self._cancel_timer()
        self.last_active = self.node.reactor.seconds()
        log.info(
            "secure channel {e} up with {peer} ({role})",
            e=str(self.encryptor),
            peer=self.peer_identifier,
            role="initiator" if self.initiator else "responder",
        )
        up = getattr(self.owner, "_up", None)
        if up is not None:
            up(self)
        ready = self._ready
        if ready is not None and not ready.called:
            self._later(ready.callback, self)

    # --- the machine's outputs: messages ------------------------------------------------

    def _deliver(self, message) -> None:
        self._decrypt_and_deliver(message.payload, message.source)

    def _drop_frame(self, message) -> None:
        self.dropped += 1

    def _send_encrypted(self, message) -> None:
        self._encrypt_and_send(message)

    def _drop_local(self, message) -> None:
        self.node.throttle.log(
            log, "info", ("channel down", id(self)), "secure channel {e} is not up; message dropped", e=str(self.encryptor)
        )

    # --- the machine's outputs: ending ----------------------------------------------------

    def _give_up(self, timeout: float) -> None:
        self._fail(RequestTimeout(f"secure channel handshake did not complete within {timeout:g} s"))

    def _lost_link_in_handshake(self) -> None:
        self._fail(SecureChannelError("the connection to the peer closed during the handshake"))

    def _lost_link(self) -> None:
        log.info("secure channel {e}: its connection closed; channel closed", e=str(self.encryptor))
        self._tear_down()

    def _fail(self, error: Exception) -> None:
        self.failure = error
        if self.initiator:
            log.warn("secure channel {e} (initiator) failed: {error}", e=str(self.encryptor), error=str(error))
        else:
            # Peers cause these, as many as the listener admits handshakes:
            # a few lines per period for each listener (its stats count all).
            self.node.throttle.log(
                log,
                "warn",
                ("secure responder failed", getattr(self.owner, "address", None)),
                "secure channel {e} (responder for {peer}) failed: {error}",
                e=str(self.encryptor),
                error=short(str(error), 200),
                peer=describe_origin(self._peer_origin),
            )
        self._tear_down()
        ready = self._ready
        if ready is not None and not ready.called:
            self._later(ready.errback, error)

    def _tear_down(self) -> None:
        self._cancel_timer()
        if self._peer_origin_key is not None:
            self._peer_origin.cancel_on_close(self._peer_origin_key)
            self._peer_origin_key = None
        for address in (self.decryptor, self.encryptor, self.backwards):
            if self.node.worker_at(address) is not None and self.node.worker_at(address).end is self:
                self.node.stop_worker(address)
        if self.owner is not None:
            self.owner._ended(self)
        self._notify_closed()

    # --- the handshake's messages ------------------------------------------------------

    def _verify_identity(self, message, kind) -> TransportMessage:
        """
        The peer's identity message (M4 or M5, of C{kind}), decrypted and
        verified against the handshake hash and our trust policy.
        """
        inner = TransportMessage.decode(self._decrypt(message.payload))
        exchange = IdentityChannelMessage.decode(inner.payload)
        if exchange.kind != kind:
            raise SecureChannelError("unexpected identity message")
        try:
            peer = import_identity(exchange.identity)
            peer.verify(self._h, exchange.signature)
        except (IdentityError, WireError) as e:
            raise SecureChannelError(f"the peer's identity does not verify: {e}") from None
        self.trust.check(self.own_identity.identifier, peer.identifier)
        self.peer_identifier = peer.identifier
        return inner

    # --- messages, once up ---------------------------------------------------------------

    def _decrypt_and_deliver(self, payload, source) -> bool:
        """
        Decrypt the payload of a message from the peer and deliver what it
        holds (C{source}: the flow source of the message); a malformed,
        tampered or replayed one is dropped and harms nothing.  C{False}
        (nothing done) unless the channel is up: also the decryptor's
        C{receive_payload} (see L{_Part}).
        """
        if self.state != ESTABLISHED:
            return False
        try:
            plaintext = self._decrypt(payload)
            if self._hand_on(plaintext, source):
                return True
            inner = TransportMessage.decode(plaintext)
            onward = inner.onward_route
            if not onward or onward[0] != self.backwards:
                raise SecureChannelError("inner message does not start at our backwards address")
            inner = inner.with_routes(onward.step(), inner.return_route.prepend(self.encryptor))
            inner.source = source
            inner.origin = self
            inner.local = {IDENTITY: self.peer_identifier}
            self.last_active = self.node.reactor.seconds()
            self.node.deliver(inner)
        except (WireError, SecureChannelError) as e:
            self.dropped += 1
            self.node.throttle.log(
                log, "info", ("channel frame", id(self)), "secure channel {e}: frame dropped: {err}",
                e=str(self.encryptor), err=str(e),
            )
        return True

    def _hand_on(self, plaintext: bytes, source) -> bool:
        """
        Hand the payload of a decrypted message straight to the worker it
        is for, without decoding its routes, when that worker needs no more
        (a portal's stream, taking data: C{receive_payload}) and would take
        anything that came through this channel (see
        L{ockamtw.node.BaseNode.open_worker}), as the TCP connections do
        for what they read; C{False} when it does not apply (the caller
        then decodes the message and delivers it).

        @raise WireError: for a malformed message (as decoding would).
        """
        end = len(plaintext)
        second = second_hop(plaintext, 0, end, self._backwards_wire)
        if second is None:
            return False
        node = self.node
        address = address_of(second)
        worker = node.open_worker(address, self, handing_on=True)
        take = getattr(worker, "receive_payload", None)
        if take is None:
            return False
        data = payload_of(plaintext, 0, end)
        self.last_active = node.reactor.seconds()
        return node.hand(address, source, take, data, source) is not False

    def _encrypt_and_send(self, message) -> None:
        self._send_inner(
            message.onward_route.step().prepend(self._peer_backwards),
            message.return_route,
            message.payload,
            sender=self.encryptor,
        )

    # --- crypto ----------------------------------------------------------------------------

    def head_for(self, onward: Route, return_route: Route) -> Optional[bytes]:
        """
        The start of the inner message of every body written with
        L{write_body} (L{IBodyLink}): the peer's C{backwards} address, then
        C{onward}, and C{return_route}, as L{_local} would encrypt them;
        C{None} until the channel is up.
        """
        if self.state != ESTABLISHED:
            return None
        return routes_head(onward.prepend(self._peer_backwards), return_route)

    def body_limit(self) -> Optional[int]:
        """
        (L{IBodyLink}) What the TCP connection this channel's messages
        leave through takes, less what encryption adds around a body: the
        connection's header, the payload's length and counter, the AEAD
        tag.  C{None} when the route to the peer does not start with a TCP
        connection of this node (the header is then not known).
        """
        out = self._out
        if out is None:
            out = self._out = self._way_out()
        link = out[0]
        outer = link.body_limit() if link is not None else None
        if outer is None:
            return None
        # header, length of what follows (at most 3 bytes below a frame),
        # the encrypted payload's own length and counter, the tag
        return outer - len(out[1]) - 3 - (3 + COUNTER_LEN) - AEAD_TAG_LEN

    def write_body(self, head: bytes, data: bytes, source=None, credit: bool = False) -> None:
        """
        Encrypt the message whose inner body is C{head + data} and send it
        to the peer, as L{_local} does for a message at the encryptor (the
        fast path of this node's own portals, which prepare C{head} once).
        The ciphertext is not copied again: it goes to the TCP connection
        as a piece of its own when that is the first hop (its header, too,
        is prepared once).
        """
        if self.state != ESTABLISHED:
            self._drop_local(None)
            return
        n = self._send_n
        self._send_n = n + 1
        ciphertext = self._send.encrypt_at(n, head + data, b"")
        prefix = encrypted_payload_prefix(n, len(ciphertext))
        out = self._out
        if out is None:
            out = self._out = self._way_out()
        link = out[0]
        if link is not None and link.connected:
            link.write_body(out[1] + uvarint(len(prefix) + len(ciphertext)) + prefix, ciphertext, source, credit)
        else:
            self.node.send(self.remote_route, prefix + ciphertext, sender=self.encryptor, source=source)

    def _way_out(self) -> tuple:
        """
        (connection, header) when the route to the peer starts with a TCP
        connection of this node; (C{None}, C{None}) otherwise.
        """
        route = self.remote_route
        link = self.node.link_of(route[0]) if route else None
        if not IConnection.providedBy(link):
            return (None, None)
        return (link, link.head_for(route.step(), Route._trusted((self.encryptor,))))

    def _split(self) -> None:
        self._h = self._hs.h
        self._send, self._recv = self._hs.ockam_split()

    def _send_inner(self, onward: Route, ret: Route, payload: bytes, sender: Address) -> None:
        plaintext = TransportMessage(onward, ret, payload).encode()
        n = self._send_n
        self._send_n += 1
        ciphertext = self._send.encrypt_at(n, plaintext, b"")
        self.node.send(self.remote_route, encode_encrypted_payload(n, ciphertext), sender=sender)

    def _decrypt(self, payload) -> bytes:
        """
        The plaintext of an encrypted payload from the peer (the encoding
        of the inner message).

        @raise WireError: for a malformed payload.
        @raise SecureChannelError: for one that does not decrypt, or a
            counter seen before.
        """
        n, ciphertext = decode_encrypted_payload(payload)
        if n in self._seen or n <= self._highest - REPLAY_WINDOW:
            raise SecureChannelError(f"replayed or too old counter {n}")
        plaintext = self._recv.decrypt_at(n, ciphertext, b"")
        # Only authenticated counters enter the window.
        self._seen.add(n)
        if n > self._highest:
            self._highest = n
            if len(self._seen) > 2 * REPLAY_WINDOW:
                floor = n - REPLAY_WINDOW
                self._seen = {c for c in self._seen if c > floor}
        return plaintext

    # --- its link ----------------------------------------------------------------------------

    def _watch(self, origin) -> bool:
        """
        End with C{origin}, where the peer's handshake came from (a TCP
        connection, or an outer secure channel); C{None}: this node.
        Whether it is still open (when it is not, the caller gives the
        machine L{_ChannelInputs.link_closed}).
        """
        if origin is self._peer_origin:
            return True
        if self._peer_origin_key is not None:
            self._peer_origin.cancel_on_close(self._peer_origin_key)
            self._peer_origin_key = None
        self._peer_origin = origin
        if IOrigin.providedBy(origin):
            if not origin.connected:
                return False
            self._peer_origin_key = origin.on_close(lambda _: self._link_closed())
        return True

    @property
    def link(self):
        """
        The link the peer's messages come through (the origin of its
        handshake): the TCP connection or the outer secure channel
        (C{None} before the handshake, or on this node).
        """
        return self._peer_origin

    @property
    def status(self) -> str:
        """
        L{ockamtw.status.UP} once established, L{ockamtw.status.CLOSED}
        once ended; during the handshake the message it waits for (C{M2}
        ... C{M5}; C{NEW} before it starts).
        """
        state = self.state
        return _STATUS.get(state) or state.upper()

    @property
    def identity(self) -> Optional[str]:
        """
        The peer's identifier once the channel is up (IOrigin).
        """
        return self.peer_identifier if self.state == ESTABLISHED else None

    @property
    def connected(self) -> bool:
        """
        Whether the channel can still carry messages (not closed).
        """
        return self.state != ENDED

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def to_dict(self) -> dict:
        return {
            "encryptor": self.encryptor.value,
            "decryptor": self.decryptor.value,
            "role": "initiator" if self.initiator else "responder",
            "status": self.status,
            "peer": self.peer_identifier,
            "route": self.route_text or (str(self.remote_route) if self.remote_route else None),
            "authorized": None if self.trust.authorized is None else sorted(self.trust.authorized),
        }


_on = transitions("state")


_builder = TypeMachineBuilder(_ChannelInputs, ChannelEnd)
_new = _builder.state(NEW)
_waiting_for_m2 = _builder.state(WAITING_FOR_M2)
_waiting_for_m3 = _builder.state(WAITING_FOR_M3)
_waiting_for_m4 = _builder.state(WAITING_FOR_M4)
_waiting_for_m5 = _builder.state(WAITING_FOR_M5)
_up = _builder.state(ESTABLISHED)
_closed = _builder.state(ENDED)
_handshake = (_waiting_for_m2, _waiting_for_m3, _waiting_for_m4, _waiting_for_m5)
_I = _ChannelInputs

_on(_new, _I.initiate, _waiting_for_m2, "_send_m1")
_on(_new, _I.respond, _waiting_for_m3, "_send_m2")
# The handshake: each message moves it on (a bad one fails it); an
# identity message that verifies brings the channel up.
_on(_waiting_for_m2, _I.wire, _waiting_for_m4, "_read_m2_send_m3")
_on(_waiting_for_m3, _I.wire, _waiting_for_m5, "_read_m3_send_m4")
_on(_waiting_for_m4, _I.wire, _waiting_for_m4, "_read_m4_send_m5")
_on(_waiting_for_m5, _I.wire, _waiting_for_m5, "_read_m5")
_on(_waiting_for_m4, _I.verified, _up, "_established")
_on(_waiting_for_m5, _I.verified, _up, "_established")
for _state in _handshake:
    _on(_state, _I.timed_out, _closed, "_give_up")
for _state in (_new, *_handshake):
    _on(_state, _I.link_closed, _closed, "_lost_link_in_handshake")
for _state in (_new, *_handshake, _up):
    _on(_state, _I.failed, _closed, "_fail")
    _on(_state, _I.close, _closed, "_tear_down")
# Up: messages both ways (ChannelEnd._wire and _local take this path
# without the machine's dispatch).
_on(_up, _I.wire, _up, "_deliver")
_on(_up, _I.local, _up, "_send_encrypted")
_on(_up, _I.link_closed, _closed, "_lost_link")
# Nothing is encrypted before the channel is up, or after; nothing is
# decrypted before it starts, or after it ends.
for _state in (_new, *_handshake, _closed):
    _on(_state, _I.local, _state, "_drop_local")
for _state in (_new, _closed):
    _on(_state, _I.wire, _state, "_drop_frame")
# Closed is the end: what still comes is ignored.
for _input in (_I.close, _I.link_closed, _I.timed_out, _I.failed, _I.verified):
    _on(_closed, _input, _closed)

_ChannelMachine = indexed(_builder.build())
del _state, _input


# --- admission of handshakes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HandshakeLimits:
    """
    How many handshakes a L{SecureChannelListener} takes on, and how fast
    (docs/protocol.md, section 7).  A I{half-open} handshake is a responder
    end between M1 and M5; a I{peer} is what L{peer_group} makes of the
    origin of M1 (a host, an authenticated identity).

    @ivar max_startups: C{(start, rate, full)} as OpenSSH's C{MaxStartups}:
        with C{start} or more half-open handshakes in all, a new M1 is
        refused with probability C{rate}% rising linearly to 100% at
        C{full}, from which on every M1 is refused (L{early_drop_probability}).
    @ivar per_peer: half-open handshakes one peer may hold (OpenSSH's
        C{PerSourceMaxStartups}); below C{start}, so that one peer alone
        never makes the listener drop others' M1.
    @ivar peer_rate: M1 per second one peer may start, on average (a token
        bucket of C{peer_burst}).
    @ivar rate: M1 per second all peers together may start (a token bucket
        of C{burst}): the bound on the reactor time handshakes take.
    @ivar grace: seconds a handshake may take from M1 to M5 (OpenSSH's
        C{LoginGraceTime}); the half-open end is removed after that.
    @ivar max_peers: peers whose rate is remembered (the least recently
        seen are forgotten first).
    @ivar channels_per_peer: established (responder) channels one peer may
        hold, and C{max_channels} all together: past either, the least
        recently active one of that peer (or of all) is closed.  A peer
        cannot close a channel (0.83 has no message for it), so without
        this, channels made at C{peer_rate} would add up without end.

    This node's own M1 (origin C{None}) is not counted against any peer
    and never dropped early; it is subject to C{full} and C{rate} only.

    The defaults come from measurements on a 2-core Xeon: answering an M1
    takes about 0.3 ms (fresh static and ephemeral keys, two
    Diffie-Hellman, three workers), a whole responder handshake about
    0.8 ms, a refusal about 5 us.  C{rate} bounds the handshakes of all
    peers to about 8% of a core, C{peer_rate} one peer's to under 1%;
    C{per_peer} is below C{max_startups}' start.  A handshake takes 4 ms
    on loopback and up to 50 ms under a flood, so the 10 s C{grace} leaves
    room for slow links and relays; a shorter one would not help (a silent
    peer holds C{per_peer} slots however long each lasts) and would cut
    handshakes that initiators, which wait 10 s by default, still wait for.
    """

    max_startups: Tuple[int, int, int] = (10, 30, 100)
    per_peer: int = 5
    peer_rate: float = 10.0
    peer_burst: int = 20
    rate: float = 100.0
    burst: int = 100
    grace: float = 10.0
    max_peers: int = 4096
    channels_per_peer: int = 256
    max_channels: int = 4096

    def __post_init__(self) -> None:
        start, rate, full = self.max_startups
        if not (0 < start <= full and 0 <= rate <= 100):
            raise ValueError(f"max_startups must be start:rate:full with 0 < start <= full, 0 <= rate <= 100, not {self.max_startups}")
        if min(self.per_peer, self.peer_burst, self.burst, self.max_peers, self.channels_per_peer, self.max_channels) < 1:
            raise ValueError("per_peer, peer_burst, burst, max_peers, channels_per_peer and max_channels must be at least 1")
        if self.peer_rate <= 0 or self.rate <= 0 or self.grace <= 0:
            raise ValueError("peer_rate, rate and grace must be positive")

    def to_dict(self) -> dict:
        """
        The limits as a node's status shows them (named as the twistd
        options).
        """
        return {
            "max_startups": ":".join(map(str, self.max_startups)),
            "handshake_per_peer": self.per_peer,
            "handshake_peer_rate": f"{self.peer_rate:g}/{self.peer_burst}",
            "handshake_rate": f"{self.rate:g}/{self.burst}",
            "handshake_grace": self.grace,
            "channels_per_peer": self.channels_per_peer,
            "max_channels": self.max_channels,
        }

    @staticmethod
    def parse_max_startups(text: str) -> Tuple[int, int, int]:
        """
        C{"start:rate:full"} (or C{"full"} alone: a hard limit) as a
        tuple for L{max_startups}.

        @raise ValueError: for anything else.
        """
        parts = str(text).strip().split(":")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"not start:rate:full: {text!r}") from None
        if len(numbers) == 1:
            return (numbers[0], 100, numbers[0])
        if len(numbers) != 3:
            raise ValueError(f"not start:rate:full: {text!r}")
        start, rate, full = numbers
        if not (0 < start <= full and 0 <= rate <= 100):
            raise ValueError(f"max startups {text!r}: need 0 < start <= full and 0 <= rate <= 100")
        return (start, rate, full)

    @staticmethod
    def parse_rate(text: str) -> Tuple[float, int]:
        """
        C{"RATE/BURST"} (or C{"RATE"}: a burst of max(1, RATE)) as
        (rate, burst), for L{rate} and L{burst} or their per-peer twins.

        @raise ValueError: for anything else.
        """
        head, _, tail = str(text).strip().partition("/")
        try:
            rate = float(head)
            burst = int(tail) if tail else max(1, int(rate))
        except ValueError:
            raise ValueError(f"not RATE or RATE/BURST: {text!r}") from None
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate {text!r}: need RATE > 0 and BURST >= 1")
        return rate, burst


def early_drop_probability(half_open: int, start: int, rate: int, full: int) -> float:
    """
    The probability that a new M1 is refused with C{half_open} handshakes
    already half-open (OpenSSH's C{MaxStartups start:rate:full}): 0 below
    C{start}, C{rate}% at C{start}, rising linearly to 1 at C{full}.
    """
    if half_open < start:
        return 0.0
    if half_open >= full:
        return 1.0
    low = rate / 100.0
    return low + (1.0 - low) * (half_open - start) / (full - start)


class TokenBucket:
    """
    C{rate} events per second on average, C{burst} at once.

    @param clock: an L{IReactorTime}.
    """

    __slots__ = ("rate", "burst", "clock", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, clock) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock.seconds()

    def ready(self) -> bool:
        """
        Whether an event may happen now (see L{take}).
        """
        now = self.clock.seconds()
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 1.0

    def take(self) -> None:
        """
        Count an event (after L{ready} said yes).
        """
        self.tokens -= 1.0

    @property
    def full(self) -> bool:
        """
        Whether the bucket is back to its burst (it then holds no history).
        """
        return self.tokens + (self.clock.seconds() - self.stamp) * self.rate >= self.burst


def host_block(socket_address: str) -> str:
    """
    The peer a C{host:port} (or C{[v6]:port}) address counts as: the IPv4
    address, or the /64 network of an IPv6 address (one host is usually
    given a whole /64; OpenSSH's C{PerSourceNetBlockSize} of C{32:64}).
    """
    host = socket_address.rsplit(":", 1)[0] if ":" in socket_address else socket_address
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network((address, 64), strict=False))
    return host


def peer_group(origin):
    """
    Which peer the origin of an M1 counts as for the listener's limits:

      - a secure channel (M1 through an outer channel): its peer's
        identity, all channels of that identity together;
      - a TCP connection: its peer's host (L{host_block}), all
        connections from that host together;
      - a relay's forwarder on this node (L{Relayed}): the party the
        relay is for, once for all its senders;
      - anything else: that origin.

    Every sender behind one relay or one NAT is one peer (the node cannot
    tell them apart); a node that serves many such peers can raise
    L{HandshakeLimits.per_peer} and L{HandshakeLimits.peer_rate}, or give
    its listener another C{peer_of}.
    """
    identity = getattr(origin, "identity", None)
    if identity:
        return ("identity", identity)
    if origin.__class__ is Relayed:
        return ("relayed", None if origin.owner is None else peer_group(origin.owner))
    address = getattr(origin, "socket_address", None)
    if isinstance(address, str):
        return ("host", host_block(address))
    return ("origin", origin)


#: Why a listener refused an M1 (the keys of C{stats()["refused"]}).
REFUSAL_REASONS = (
    # the peer already holds HandshakeLimits.per_peer half-open handshakes
    "per_peer",
    # random early drop between max_startups' start and full
    "early_drop",
    # max_startups' full half-open handshakes in all
    "full",
    # the peer's token bucket is empty
    "peer_rate",
    # the listener's token bucket is empty
    "rate",
    # not an M1: no return route, undecodable, or its connection closed
    "malformed",
)


_NONE = object()
#: The peer of this node's own M1.
_THIS_NODE = ("this node",)


class SecureChannelListener(Worker):
    """
    The worker at a listener address (C{api} by default): each M1 starts a
    responder end, if L{HandshakeLimits} allow.

    Each M1 is admitted or refused before any state or key is made: a peer
    (L{peer_group} of the M1's origin) holding C{per_peer} half-open
    handshakes is refused; so is everyone past C{max_startups}' full limit,
    and past its start with a probability rising to 1 at full (random early
    drop); then the peer's and the listener's token buckets must each hold
    a token.  The initiator is not told (0.83 has no message for it); its
    own timeout ends its wait.  Refusals are counted by reason
    (L{stats}) and logged through the node's throttle.

    A half-open handshake ends when it is done, after C{grace} seconds, or
    when the connection (or outer channel) its M1 came through closes.

    @param timeout: the handshake grace in seconds (overrides
        C{limits.grace}; kept for callers of older versions).
    @param limits: a L{HandshakeLimits} (the defaults when C{None}).
    @param peer_of: C{f(origin)} giving the peer an M1's origin counts as
        (default L{peer_group}).
    @param random: a function returning floats in [0, 1) for random early
        drop (tests inject a seeded one).
    """

    access = ANYONE

    def __init__(
        self,
        identity,
        trust: Optional[TrustPolicy] = None,
        timeout: Optional[float] = None,
        limits: Optional[HandshakeLimits] = None,
        peer_of: Callable[[object], object] = peer_group,
        random: Optional[Callable[[], float]] = None,
    ) -> None:
        self.identity = identity
        self.trust = trust or TrustPolicy()
        self._limits = limits or HandshakeLimits()
        self._timeout = timeout
        self.peer_of = peer_of
        self.random = random or _random.Random().random
        #: every responder end of this listener, half-open or up
        self.channels: set = set()
        #: half-open end -> the peer it counts against
        self._half_open: Dict[ChannelEnd, object] = {}
        #: peer -> number of its half-open ends
        self._per_peer: Dict[object, int] = {}
        self._peer_buckets: "collections.OrderedDict[object, TokenBucket]" = collections.OrderedDict()
        self._bucket: Optional[TokenBucket] = None
        self._last_origin = self._last_peer = None
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.accepted = 0
        self.established = 0
        self.timed_out = 0
        self.failed = 0
        self.evicted = 0
        #: peer -> its established ends
        self._up_by_peer: Dict[object, set] = {}
        self._up_count = 0

    @property
    def limits(self) -> HandshakeLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: HandshakeLimits) -> None:
        """
        New limits apply to the next M1 (the rate buckets start full).
        """
        self._limits = limits
        self._peer_buckets.clear()
        self._bucket = None

    @property
    def timeout(self) -> float:
        """
        The handshake grace in seconds.
        """
        return self._timeout if self._timeout is not None else self._limits.grace

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self._timeout = value

    def started(self, node, address) -> None:
        Worker.started(self, node, address)
        self._bucket = None

    # --- admission ---------------------------------------------------------------------------

    def _peer(self, origin):
        if origin is self._last_origin:
            return self._last_peer
        peer = self.peer_of(origin)
        self._last_origin, self._last_peer = origin, peer
        return peer

    def _admit(self, peer) -> Optional[str]:
        """
        Why an M1 from C{peer} is refused, or C{None} (its tokens taken).
        """
        limits = self._limits
        local = peer is _THIS_NODE
        if not local and self._per_peer.get(peer, 0) >= limits.per_peer:
            return "per_peer"
        start, rate, full = limits.max_startups
        half_open = len(self._half_open)
        if half_open >= full:
            return "full"
        if half_open >= start and not local and self.random() < early_drop_probability(half_open, start, rate, full):
            return "early_drop"
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(limits.rate, limits.burst, self.node.reactor)
        peer_bucket = None
        if not local:
            buckets = self._peer_buckets
            peer_bucket = buckets.get(peer)
            if peer_bucket is None:
                peer_bucket = TokenBucket(limits.peer_rate, limits.peer_burst, self.node.reactor)
                if len(buckets) >= limits.max_peers:
                    self._forget_peers()
                buckets[peer] = peer_bucket
            else:
                buckets.move_to_end(peer)
            if not peer_bucket.ready():
                return "peer_rate"
        if not bucket.ready():
            return "rate"
        bucket.take()
        if peer_bucket is not None:
            peer_bucket.take()
        return None

    def _forget_peers(self) -> None:
        # Buckets back at their burst carry no history; past those, the
        # least recently seen peers are forgotten (they get a new burst),
        # down to 3/4 of the limit, so that a flood from ever new addresses
        # costs one scan per max_peers/4 of them, not one each.
        buckets = self._peer_buckets
        for peer in [p for p, b in buckets.items() if b.full]:
            del buckets[peer]
        keep = self._limits.max_peers * 3 // 4
        while len(buckets) > keep:
            buckets.popitem(last=False)

    def _refuse(self, reason: str, origin, detail: str = "") -> None:
        self.refused[reason] += 1
        # Through the node's throttle, the text made only when it is logged.
        held = self.node.throttle.admit(("secure handshake refused", self.address, reason))
        if held < 0:
            return
        text = "secure channel listener {a}: M1 from {origin} refused ({reason}{detail})"
        if held:
            text += " ({suppressed} similar events suppressed)"
        (log.info if reason == "malformed" else log.warn)(
            text,
            a=self.address.value,
            origin=describe_origin(origin),
            reason=reason,
            detail=f": {short(detail)}" if detail else "",
            suppressed=held,
            node=self.node.name,
        )

    def receive(self, message) -> None:
        origin = message.origin
        if not message.return_route:
            self._refuse("malformed", origin, "no return route")
            return
        if not getattr(origin, "connected", True):
            self._refuse("malformed", origin, "its connection is closed")
            return
        peer = _THIS_NODE if origin is None else self._peer(origin)
        reason = self._admit(peer)
        if reason is not None:
            self._refuse(reason, origin)
            return
        try:
            request = CreateResponderChannelMessage.decode(message.payload)
        except WireError as e:
            self._refuse("malformed", origin, str(e))
            return
        end = ChannelEnd(self.node, self.identity, self.trust, initiator=False, owner=self)
        end.peer_group = peer
        self.channels.add(end)
        self._half_open[end] = peer
        if peer is not _THIS_NODE:
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        try:
            end.start_responder(message, self.timeout, request)
        except (WireError, SecureChannelError, OckamError) as e:
            self._done(end)
            self._refuse("malformed", origin, str(e))
            end.close()
            return
        self.accepted += 1

    # --- half-open ends -------------------------------------------------------------------------

    def _done(self, end) -> bool:
        """
        Forget C{end} as half-open; whether it was.
        """
        peer = self._half_open.pop(end, _NONE)
        if peer is _NONE:
            return False
        if peer is not _THIS_NODE:
            n = self._per_peer[peer] - 1
            if n:
                self._per_peer[peer] = n
            else:
                del self._per_peer[peer]
        return True

    def _up(self, end) -> None:
        if not self._done(end):
            return
        self.established += 1
        peer = getattr(end, "peer_group", _THIS_NODE)
        group = self._up_by_peer.setdefault(peer, set())
        group.add(end)
        self._up_count += 1
        limits = self._limits
        if peer is not _THIS_NODE and len(group) > limits.channels_per_peer:
            self._evict(group - {end}, "its peer holds too many")
        if self._up_count > limits.max_channels:
            self._evict([e for g in self._up_by_peer.values() for e in g if e is not end], "the listener holds too many")

    def _evict(self, ends, why: str) -> None:
        oldest = min(ends, key=lambda e: e.last_active, default=None)
        if oldest is None:
            return
        self.evicted += 1
        self.node.throttle.log(
            log,
            "info",
            ("secure channel evicted", self.address),
            "secure channel listener {a}: closed the least recently used channel {e} ({why})",
            a=self.address.value,
            e=str(oldest.encryptor),
            why=why,
            node=self.node.name,
        )
        oldest.close()

    def _ended(self, end) -> None:
        self.channels.discard(end)
        group = self._up_by_peer.get(getattr(end, "peer_group", _THIS_NODE))
        if group is not None and end in group:
            group.discard(end)
            self._up_count -= 1
            if not group:
                del self._up_by_peer[getattr(end, "peer_group", _THIS_NODE)]
        if self._done(end):
            if isinstance(end.failure, RequestTimeout):
                self.timed_out += 1
            else:
                self.failed += 1

    def stats(self) -> dict:
        """
        What the listener holds and what it refused, for a node's status:
        C{half_open} (handshakes between M1 and M5), C{peers} (peers
        holding any), C{channels} (ends up), C{accepted} (M1 answered),
        C{established}, C{timed_out} and C{failed} (handshakes that ended
        so), C{refused} (reason -> M1 refused, see L{REFUSAL_REASONS}).
        """
        half_open = len(self._half_open)
        return {
            "half_open": half_open,
            "peers": len(self._per_peer),
            "channels": len(self.channels) - half_open,
            "accepted": self.accepted,
            "established": self.established,
            "timed_out": self.timed_out,
            "failed": self.failed,
            "evicted": self.evicted,
            "refused": dict(self.refused),
        }

    def stopped(self) -> None:
        for end in list(self.channels):
            end.close()
