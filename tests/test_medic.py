"""
The Medic (ockamtw.project.medic): pings through watched channels, a
channel gone silent is closed (and what used it heals), pongs from
anywhere else count for nothing.  On loopback with short intervals; the
silence is made by a hop on the far node that stops passing frames
without closing anything (a half-dead path).
"""

from __future__ import annotations

from ockamtw import Address, Route
from ockamtw.access import ANYONE
from ockamtw.node import Worker
from ockamtw.project import codec
from ockamtw.project.medic import Medic

from tests.helpers import wait_until
from tests.portal_harness import LOOPBACK, PortalTestCase
from tests.helpers import async_test


class Silencer(Worker):
    """
    A hop (C{.../service/silencer/service/api}) that passes frames both
    ways until L{silent} is set, then drops them.
    """

    access = ANYONE

    def __init__(self) -> None:
        self.silent = False
        self.dropped = 0

    def receive(self, message) -> None:
        if self.silent:
            self.dropped += 1
            return
        self.node.forward(message, message.onward_route.step(), message.return_route.prepend(self.address))


class MedicTests(PortalTestCase):
    timeout = 30

    async def channel(self):
        """
        n1's channel to n2's api through n2's silencer; a Medic on n1
        pinging every 50 ms.
        """
        n2, l2 = await self.listening_node("n2")
        n1 = self.make_node("n1")
        silencer = Silencer()
        n2.start_worker("silencer", silencer)
        route = f"/ip4/127.0.0.1/tcp/{l2.port}/service/silencer/service/api"
        enc = await self.within(n1.create_secure_channel(route, timeout=5), 6, "the channel")
        downs = []
        medic = Medic(n1, interval=0.05, on_down=lambda name, end: downs.append((name, end)))
        end = n1.secure_channels[enc.value]
        medic.watch(end, "p")
        return n1, n2, silencer, medic, end, downs

    @async_test
    async def test_answered_pings_keep_the_channel(self):
        n1, n2, silencer, medic, end, downs = await self.channel()
        echoes = n2.worker_at(Address.local("echo"))
        seen = []
        original = echoes.receive

        def counting(message):
            seen.append(codec.MedicPing.decode(message.payload))
            original(message)

        echoes.receive = counting
        await wait_until(lambda: len(seen) >= 8, 5, "eight pings answered")
        self.assertEqual(end.state, "up")
        self.assertEqual((medic.closed, downs), (0, []))
        self.assertEqual(medic.watching(), 1)
        # Every ping carries the session's key; each is answered before the
        # next tick, so no more than one is ever outstanding.
        self.assertEqual(len({p.key for p in seen}), 1)
        self.assertLessEqual(len(medic._sessions[seen[0].key].outstanding), 1)

    @async_test
    async def test_silence_closes_the_channel(self):
        n1, n2, silencer, medic, end, downs = await self.channel()
        workers = set(n1.worker_addresses())
        self.assertIn(Address.local(codec.PING_COLLECTOR), workers)
        silencer.silent = True
        await wait_until(lambda: end.state == "closed", 5, "the silent channel closed")
        self.assertEqual(downs, [("p", end)])
        self.assertEqual(medic.closed, 1)
        self.assertGreaterEqual(silencer.dropped, 3, "three pings went unanswered first")
        # Nothing left to watch: no collector, no timer.
        self.assertEqual(medic.watching(), 0)
        self.assertIsNone(medic._loop)
        self.assertIsNone(n1.worker_at(Address.local(codec.PING_COLLECTOR)))
        self.assertEqual(n1.secure_channels, {})

    @async_test
    async def test_pong_from_elsewhere_counts_for_nothing(self):
        """
        A pong with the right key that does not come back through the
        watched channel (here: from a second channel, to the collector) is
        refused by the node; the silent channel still closes.
        """
        n1, n2, silencer, medic, end, downs = await self.channel()
        key = next(iter(medic._sessions))
        silencer.silent = True
        # A second channel from n2 to n1 (n1 listens too): n2 sends forged
        # pongs through it to n1's collector, on every tick.
        l1 = await n1.tcp.listen(LOOPBACK)
        enc = await self.within(
            n2.create_secure_channel(f"/ip4/127.0.0.1/tcp/{l1.port}/service/api", timeout=5), 6, "n2 -> n1"
        )
        forged = 0

        def forge():
            nonlocal forged
            for ping in list(medic._sessions[key].outstanding) if key in medic._sessions else []:
                n2.send(Route([enc, Address.local(codec.PING_COLLECTOR)]), codec.MedicPing(key, ping).encode())
                forged += 1

        from twisted.internet import reactor
        from twisted.internet.task import LoopingCall

        loop = LoopingCall(forge)
        loop.clock = reactor
        loop.start(0.02)
        self.addCleanup(lambda: loop.running and loop.stop())
        await wait_until(lambda: end.state == "closed", 5, "the silent channel closed despite forged pongs")
        self.assertGreater(forged, 0)
        self.assertEqual(medic.closed, 1)
