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
"""

from __future__ import annotations

from typing import Iterable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from zope.interface import implementer

from ..access import ANYONE, NOBODY, RelayedFor
from ..errors import OckamError, RequestTimeout, WireError
from ..flow import CloseNotifier
from ..interfaces import IOrigin
from ..node import Worker
from ..routing import Address, Route
from ..wire import TransportMessage
from .codec import (
    CreateResponderChannelMessage,
    IdentityChannelMessage,
    decode_encrypted_payload,
    decode_key_exchange,
    encode_encrypted_payload,
    encode_key_exchange,
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
        elif role == "encryptor":
            self.access = RelayedFor(end)
        else:
            self.access = NOBODY

    @property
    def leads_to(self):
        """
        A route through the encryptor leaves the node through the channel.
        """
        return self.end if self.role == "encryptor" else None

    def receive(self, message) -> None:
        if self.role == "decryptor":
            self.end._wire(message)
        elif self.role == "encryptor":
            self.end._local(message)
        # The backwards address accepts nothing (NOBODY): never called.


@implementer(IOrigin)
class ChannelEnd(CloseNotifier):
    """
    One end of a secure channel, and the origin of the messages it
    decrypts (C{identity} is the peer's identifier once it is up).

    The channel ends with the origin of the peer's handshake messages (the
    TCP connection or outer secure channel they came through).

    @ivar encryptor: the L{Address} to route through.
    @ivar peer_identifier: the other end's identifier (C{P<hex>}) once
        established.
    @ivar status: C{"m2"}, C{"m3"} (waiting for that key exchange
        message), C{"m4"}, C{"m5"} (waiting for that identity message),
        C{"up"} or C{"closed"}.
    """

    def __init__(self, node, identity, trust: TrustPolicy, initiator: bool, owner=None) -> None:
        self.node = node
        self.own_identity = identity
        self.trust = trust
        self.initiator = initiator
        self.owner = owner
        self.status = "handshake"
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
        self._ready: Optional[Deferred] = None
        self._timer = None
        self._link = None
        self._link_key = None
        self._peer_origin = None
        self.decryptor = node.start_worker(None, _Part(self, "decryptor"))
        self.encryptor = node.start_worker(None, _Part(self, "encryptor"))
        self.backwards = node.start_worker(None, _Part(self, "backwards"))

    # --- starting ------------------------------------------------------------

    def start_initiator(self, route: Route, timeout: float) -> Deferred:
        """
        Send M1 along C{route} (ending at a listener); fires with this end
        once the identity exchange is done.
        """
        self._ready = Deferred()
        msg1 = self._hs.write_message(b"")
        payload = CreateResponderChannelMessage.for_initiator(msg1, self.backwards).encode()
        self._status("m2")
        self._timer = self.node.reactor.callLater(timeout, self._timed_out, timeout)
        self.node.send(route, payload, sender=self.decryptor)
        return self._ready

    def start_responder(self, m1, timeout: float) -> None:
        """
        Answer M1 (a message to the listener) with M2.
        """
        if not m1.return_route:
            raise SecureChannelError("M1 without a return route")
        request = CreateResponderChannelMessage.decode(m1.payload)
        self._peer_backwards = request.backwards_address()
        self.remote_route = m1.return_route
        self._watch(m1.origin)
        if self.status == "closed":
            raise SecureChannelError("the connection M1 came through is closed")
        self._hs.read_message(request.payload)
        msg2 = self._hs.write_message(b"")
        self._status("m3")
        self._timer = self.node.reactor.callLater(timeout, self._timed_out, timeout)
        self.node.send(self.remote_route, encode_key_exchange(msg2), sender=self.decryptor)

    # --- the wire side -----------------------------------------------------------

    def _wire(self, message) -> None:
        try:
            if self.status == "up":
                self._transport_in(message)
            elif self.status == "m2":
                self._on_m2(message)
            elif self.status == "m3":
                self._on_m3(message)
            elif self.status in ("m4", "m5"):
                self._on_identity(message)
            else:
                self.dropped += 1
        except (WireError, SecureChannelError) as e:
            self.dropped += 1
            if self.status in ("up",):
                self.node.throttle.log(
                    log, "info", ("channel frame", id(self)), "secure channel {e}: frame dropped: {err}",
                    e=str(self.encryptor), err=str(e),
                )
            else:
                self._fail(e)

    def _on_m2(self, message) -> None:
        if not message.return_route:
            raise SecureChannelError("M2 without a return route")
        self.remote_route = message.return_route
        self._watch(message.origin)
        if self.status == "closed":
            return
        self._hs.read_message(decode_key_exchange(message.payload))
        msg3 = self._hs.write_message(b"")
        self._split()
        self._status("m4")
        self.node.send(self.remote_route, encode_key_exchange(msg3), sender=self.decryptor)

    def _on_m3(self, message) -> None:
        self.remote_route = message.return_route
        self._hs.read_message(decode_key_exchange(message.payload))
        self._split()
        self._status("m5")
        self._send_inner(
            Route([self._peer_backwards]),
            Route([self.backwards]),
            IdentityChannelMessage.request(self.own_identity.export(), self.own_identity.sign(self._h)).encode(),
            sender=self.decryptor,
        )

    def _on_identity(self, message) -> None:
        inner = self._decrypt(message)
        exchange = IdentityChannelMessage.decode(inner.payload)
        expected = IdentityChannelMessage.REQUEST if self.initiator else IdentityChannelMessage.RESPONSE
        if exchange.kind != expected:
            raise SecureChannelError("unexpected identity message")
        try:
            peer = import_identity(exchange.identity)
            peer.verify(self._h, exchange.signature)
        except (IdentityError, WireError) as e:
            raise SecureChannelError(f"the peer's identity does not verify: {e}") from None
        self.trust.check(self.own_identity.identifier, peer.identifier)
        self.peer_identifier = peer.identifier
        if self.initiator:
            if not inner.return_route:
                raise SecureChannelError("identity request without a return route")
            self._peer_backwards = inner.return_route[-1]
            self._send_inner(
                Route([self._peer_backwards]),
                Route([self.backwards]),
                IdentityChannelMessage.response(self.own_identity.export(), self.own_identity.sign(self._h)).encode(),
                sender=self.decryptor,
            )
        self._established()

    def _transport_in(self, message) -> None:
        inner = self._decrypt(message)
        onward = inner.onward_route
        if not onward or onward[0] != self.backwards:
            raise SecureChannelError("inner message does not start at our backwards address")
        inner = inner.with_routes(onward.step(), inner.return_route.prepend(self.encryptor))
        inner.source = message.source
        inner.origin = self
        inner.local = {IDENTITY: self.peer_identifier}
        self.node.deliver(inner)

    # --- the local side ---------------------------------------------------------------

    def _local(self, message) -> None:
        if self.status != "up":
            self.node.throttle.log(
                log, "info", ("channel down", id(self)), "secure channel {e} is not up; message dropped", e=str(self.encryptor)
            )
            return
        self._send_inner(
            message.onward_route.step().prepend(self._peer_backwards),
            message.return_route,
            message.payload,
            sender=self.encryptor,
        )

    # --- crypto ----------------------------------------------------------------------------

    def _split(self) -> None:
        self._h = self._hs.h
        self._send, self._recv = self._hs.ockam_split()

    def _send_inner(self, onward: Route, ret: Route, payload: bytes, sender: Address) -> None:
        plaintext = TransportMessage(onward, ret, payload).encode()
        n = self._send_n
        self._send_n += 1
        ciphertext = self._send.encrypt_at(n, plaintext, b"")
        self.node.send(self.remote_route, encode_encrypted_payload(n, ciphertext), sender=sender)

    def _decrypt(self, message) -> TransportMessage:
        n, ciphertext = decode_encrypted_payload(message.payload)
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
        return TransportMessage.decode(plaintext)

    # --- ending ------------------------------------------------------------------------------------

    def _status(self, status: str) -> None:
        self.status = status

    def _watch(self, origin) -> None:
        """
        End with C{origin}, where the peer's handshake came from (a TCP
        connection, or an outer secure channel); C{None}: this node.
        """
        if origin is self._peer_origin:
            return
        if self._link_key is not None:
            self._link.cancel_on_close(self._link_key)
            self._link_key = None
        self._peer_origin = origin
        self._link = origin
        if origin is not None and hasattr(origin, "on_close"):
            if not getattr(origin, "connected", True):
                self._link_closed()
                return
            self._link_key = origin.on_close(lambda _: self._link_closed())

    @property
    def identity(self) -> Optional[str]:
        """
        The peer's identifier once the channel is up (IOrigin).
        """
        return self.peer_identifier if self.status == "up" else None

    def _established(self) -> None:
        self._status("up")
        self._cancel_timer()
        log.info(
            "secure channel {e} up with {peer} ({role})",
            e=str(self.encryptor),
            peer=self.peer_identifier,
            role="initiator" if self.initiator else "responder",
        )
        if self._ready is not None and not self._ready.called:
            self._ready.callback(self)

    def _link_closed(self) -> None:
        self._link_key = None
        if self.status == "closed":
            return
        if self.status != "up":
            self._fail(SecureChannelError("the connection to the peer closed during the handshake"))
            return
        log.info("secure channel {e}: its connection closed; channel closed", e=str(self.encryptor))
        self.close()

    @property
    def connected(self) -> bool:
        """
        Whether the channel can still carry messages (not closed).
        """
        return self.status != "closed"

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        self._fail(RequestTimeout(f"secure channel handshake did not complete within {timeout:g} s"))

    def _fail(self, error: Exception) -> None:
        if self.status == "closed":
            return
        log.warn(
            "secure channel {e} ({role}) failed: {error}",
            e=str(self.encryptor),
            role="initiator" if self.initiator else "responder",
            error=str(error),
        )
        self.close()
        if self._ready is not None and not self._ready.called:
            self._ready.errback(error)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def close(self) -> None:
        """
        Remove the channel end's workers (no message tells the peer).
        """
        if self.status == "closed":
            return
        self._status("closed")
        self._cancel_timer()
        if self._link_key is not None:
            self._link.cancel_on_close(self._link_key)
            self._link_key = None
        for address in (self.decryptor, self.encryptor, self.backwards):
            if self.node.worker_at(address) is not None and self.node.worker_at(address).end is self:
                self.node.stop_worker(address)
        if self.owner is not None:
            self.owner._ended(self)
        self._notify_closed()

    def to_dict(self) -> dict:
        return {
            "encryptor": self.encryptor.value,
            "decryptor": self.decryptor.value,
            "role": "initiator" if self.initiator else "responder",
            "status": self.status,
            "peer": self.peer_identifier,
            "route": self.route_text or (str(self.remote_route) if self.remote_route else None),
        }


class SecureChannelListener(Worker):
    """
    The worker at a listener address (C{api} by default): each M1 starts a
    responder end.
    """

    def __init__(self, identity, trust: Optional[TrustPolicy] = None, timeout: float = 10.0) -> None:
        self.identity = identity
        self.trust = trust or TrustPolicy()
        self.timeout = timeout
        self.channels: set = set()

    access = ANYONE

    def receive(self, message) -> None:
        if not message.return_route:
            log.info("secure channel listener {a}: M1 without a return route dropped", a=self.address.value)
            return
        end = ChannelEnd(self.node, self.identity, self.trust, initiator=False, owner=self)
        self.channels.add(end)
        try:
            end.start_responder(message, self.timeout)
        except (WireError, SecureChannelError, OckamError) as e:
            log.info("secure channel listener {a}: M1 refused: {e}", a=self.address.value, e=str(e))
            end.close()

    def _ended(self, end) -> None:
        self.channels.discard(end)

    def stopped(self) -> None:
        for end in list(self.channels):
            end.close()
