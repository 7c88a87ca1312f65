"""
The harness of the secure channel tests (L{tests.test_secure_channel},
L{tests.test_handshake_limits}, L{tests.test_security_regressions}):
L{Inbox}, a worker that records (and may answer) what it receives; L{Tap},
a hop inserted in a channel's route that sees, alters, holds and re-sends
its encrypted frames; and L{SecureTestCase}, a L{PortalTestCase} with two
nodes on loopback and channels between them.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed

from ockamtw import Address, Route, Worker, decode_string, encode_string
from ockamtw.access import ANYONE
from ockamtw.secure.channel import ChannelEnd

from .helpers import deadline, wait_until
from .portal_harness import PortalTestCase


class Inbox(Worker):
    """
    Records every message; C{reply} (bytes) makes it answer each one with
    its payload followed by C{reply}.
    """

    access = ANYONE

    def __init__(self, reply=None) -> None:
        self.messages = []
        self._reply = reply
        self._waiting = []

    @property
    def payloads(self):
        return [m.payload for m in self.messages]

    def receive(self, message) -> None:
        self.messages.append(message)
        if self._reply is not None:
            self.reply(message, message.payload + self._reply)
        still = []
        for n, d in self._waiting:
            if d.called:
                continue
            if len(self.messages) >= n:
                d.callback(list(self.messages))
            else:
                still.append((n, d))
        self._waiting = still

    def when(self, n: int, seconds: float = 5, what: str = "messages") -> Deferred:
        if len(self.messages) >= n:
            return succeed(list(self.messages))
        d: Deferred = Deferred()
        self._waiting.append((n, d))
        return deadline(d, seconds, f"{n} {what} (have {len(self.messages)})")


class Tap(Worker):
    """
    A hop on the responder's node inserted in a channel's route
    (C{.../service/tap/service/api}): both ends then route through it.
    Frames towards the responder arrive with onward C{[tap, decryptor]}
    ("in"), frames towards the initiator with C{[tap, connection,
    decryptor]} ("out").  It records every frame, and applies one-shot
    actions: a function of the payload giving the payload to forward, or
    C{None} to hold the frame (see L{release}).
    """

    access = ANYONE

    def __init__(self) -> None:
        self.frames = {"in": [], "out": []}
        self.held = []
        self._actions = []

    @staticmethod
    def direction(message) -> str:
        return "in" if len(message.onward_route) == 2 else "out"

    def on_next(self, direction: str, action) -> None:
        self._actions.append((direction, action))

    def receive(self, message) -> None:
        d = self.direction(message)
        self.frames[d].append(message)
        payload = message.payload
        for i, (direction, action) in enumerate(self._actions):
            if direction == d:
                del self._actions[i]
                payload = action(payload)
                break
        if payload is None:
            self.held.append(message)
            return
        self.forward(message, payload)

    def forward(self, message, payload=None) -> None:
        if payload is not None:
            message = message.with_routes(message.onward_route, message.return_route)
            message.payload = payload
        self.node.forward(message, message.onward_route.step(), message.return_route.prepend(self.address))

    def release(self) -> None:
        held, self.held = self.held, []
        for message in held:
            self.forward(message)


class SecureTestCase(PortalTestCase):
    timeout = 30

    async def pair(self):
        """
        n2 listening on loopback, n1 not.  Returns (n1, n2, "/ip4/.../tcp/P").
        """
        n2, l2 = await self.listening_node("n2")
        n1 = self.make_node("n1")
        return n1, n2, f"/ip4/127.0.0.1/tcp/{l2.port}"

    async def connection(self, n1, at: str) -> Route:
        """
        n1's connection to C{at}, as a one-address route.
        """
        return await self.within(n1.resolve(at), 5, f"connection to {at}")

    def responder(self, node, listener: str = "api") -> ChannelEnd:
        ends = list(node.secure_listeners[listener].channels) if listener in node.secure_listeners else None
        self.assertEqual(len(ends), 1, ends)
        return ends[0]

    async def tapped_channel(self):
        """
        A channel from n1 to n2's api listener through a L{Tap} on n2.
        Returns (n1, n2, tap, initiator end, responder end), both up.
        """
        n1, n2, at = await self.pair()
        tap = Tap()
        n2.start_worker("tap", tap)
        enc = await self.within(
            n1.create_secure_channel(f"{at}/service/tap/service/api", timeout=5), 6, "the tapped channel"
        )
        init = n1.secure_channels[enc.value]
        resp = self.responder(n2)
        await wait_until(lambda: resp.state == "up", 5, "responder up")
        return n1, n2, tap, init, resp

    async def round_trip(self, n1, encryptor: Address, text: str) -> str:
        reply = await self.within(
            n1.request(Route([encryptor, Address.local("uppercase")]), encode_string(text), timeout=5),
            6,
            f"uppercase of {text!r} through the channel",
        )
        return decode_string(reply.payload)
