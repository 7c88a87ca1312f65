"""
The Medic (shared/spec/ockam-project-api.md section 9): a node's secure
channels to its projects are checked every few seconds, and one that has
gone silent is closed, so that whatever used it heals.

A channel to a project can die without its TCP connection closing (the
project node restarted behind a proxy, a half-dead NAT mapping): messages
then vanish and nothing says so.  Every L{MEDIC_INTERVAL} seconds the Medic
sends a ping (L{codec.MedicPing}: the channel's fixed 24-byte key and a
random number) through each watched channel to the project's C{echo}, with
C{ockam.ping.collector} as the return address; a pong clears the channel's
outstanding pings.  At a tick where L{MEDIC_MAX_OUTSTANDING} pings are
outstanding (about 9 to 12 s of silence by default), the channel is closed.

So is the TCP connection under it, when nothing at all came in on it
since the first unanswered ping (a dead path, or a new channel over it
would fail too).  Closing them is the whole replacement: a relay at the project sees its link
close, resolves C{/project/NAME} again (a new channel, the credential
presented again) and re-registers the same name, retrying with backoff
until it works; an inlet to a C{/project/...} route resolves again for its
next connection, nested C{/secure/...} routes included.  Nested channels
opened through a project (C{.../forward_to_X/secure/api/...}) are watched
too (L{ockamtw.project.membership.Membership.secure_hop}): when the far
member rebuilt its own channel to the project, the nested channel's far end
is gone and only pings through it can tell.  (Ockam 0.83 kept a session
per relay and left plain inlets on the dead channel.)

Who may send to the collector: the watched channels only (a pong arrives
through the channel its ping left by); anything else is refused by the
node.
"""

from __future__ import annotations

import os
import random
from typing import Callable, Dict, Optional, Set

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import WireError
from ..interfaces import IAccessPolicy, IConnection
from ..node import Worker
from ..routing import Address, Route
from ..status import CLOSED
from . import codec

log = Logger(namespace="ockamtw.project.medic")


class _Session:
    __slots__ = ("end", "key", "outstanding", "name", "link_in")

    def __init__(self, end, key: bytes, name: str) -> None:
        self.end = end
        self.key = key
        self.outstanding: Set[int] = set()
        self.name = name
        #: what the channel's TCP connection had received when the first
        #: of the outstanding pings left
        self.link_in: Optional[int] = None


@implementer(IAccessPolicy)
class _WatchedChannels:
    """
    Messages that came through a channel the Medic watches.
    """

    def __init__(self, medic: "Medic") -> None:
        self._medic = medic

    def allows(self, message) -> bool:
        return message.origin is not None and id(message.origin) in self._medic._by_end

    def __str__(self) -> str:
        return "the channels the Medic watches"


class _Collector(Worker):
    def __init__(self, medic: "Medic") -> None:
        self.medic = medic
        self.access = _WatchedChannels(medic)

    def receive(self, message) -> None:
        self.medic._pong(message)


class Medic:
    """
    Watches channels to projects (L{watch}); see the module's docstring.

    @param interval: seconds between pings (injectable for tests).
    @param max_outstanding: outstanding pings at a tick that close the
        channel.
    @param on_down: called with (project name, channel end) when the Medic
        closes a channel.
    """

    def __init__(
        self,
        node,
        interval: float = codec.MEDIC_INTERVAL,
        max_outstanding: int = codec.MEDIC_MAX_OUTSTANDING,
        on_down: Optional[Callable] = None,
    ) -> None:
        self.node = node
        self.interval = interval
        self.max_outstanding = max_outstanding
        self.on_down = on_down
        self.closed = 0
        self._sessions: Dict[bytes, _Session] = {}
        self._by_end: Dict[int, _Session] = {}
        self._loop: Optional[LoopingCall] = None
        self._collector: Optional[Address] = None
        self._random = random.SystemRandom()

    def watch(self, end, name: str = "") -> None:
        """
        Ping through channel C{end} (to project C{name}) until it closes.
        """
        if id(end) in self._by_end or end.status == CLOSED:
            return
        if self._collector is None:
            self._collector = self.node.start_worker(codec.PING_COLLECTOR, _Collector(self))
        session = _Session(end, os.urandom(codec.MEDIC_KEY_LEN), name)
        self._sessions[session.key] = session
        self._by_end[id(end)] = session
        end.on_close(lambda _: self._forget(session))
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.node.reactor
            self._loop.start(self.interval, now=False)

    def watching(self) -> int:
        return len(self._sessions)

    def _forget(self, session: _Session) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
            self._by_end.pop(id(session.end), None)
        if not self._sessions:
            self.stop()

    def stop(self) -> None:
        """
        Stop pinging (the channels stay); the collector goes too.
        """
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()
        if self._collector is not None:
            address, self._collector = self._collector, None
            self.node.stop_worker(address)

    def _tick(self) -> None:
        for session in list(self._sessions.values()):
            if len(session.outstanding) >= self.max_outstanding:
                self._down(session)
                continue
            if not session.outstanding:
                link = session.end.link
                session.link_in = link.messages_in if IConnection.providedBy(link) else None
            ping = self._random.getrandbits(64)
            session.outstanding.add(ping)
            payload = codec.MedicPing(session.key, ping).encode()
            self.node.send(Route([session.end.encryptor, codec.ECHO]), payload, sender=self._collector)

    def _down(self, session: _Session) -> None:
        log.warn(
            "channel to project {project} silent for {n} pings; closing it so that its users reconnect",
            project=session.name,
            n=len(session.outstanding),
        )
        self.closed += 1
        end = session.end
        self._forget(session)
        link = end.link
        end.close()
        # If nothing at all came in on the TCP connection under it either,
        # the connection is dead too (a new channel over it would time
        # out): abort it, so that the next one is dialled afresh.
        if IConnection.providedBy(link) and link.messages_in == session.link_in and link.connected:
            log.info("the connection under it is silent too; closing it")
            link.abort()
        if self.on_down is not None:
            self.on_down(session.name, end)

    def _pong(self, message) -> None:
        try:
            pong = codec.MedicPing.decode(message.payload)
        except WireError:
            return
        session = self._sessions.get(pong.key)
        if session is None or session.end is not message.origin:
            return
        if pong.ping in session.outstanding:
            session.outstanding.clear()
