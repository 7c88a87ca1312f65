"""
The Python cost of one message through a relay node, in process:
``python -m benchmarks.micro [--count N] [--batch K] [--via forwarder|link]``.

A relay node on a memory reactor with two accepted connections on
in-memory transports: the outlet side registers ``forward_to_x`` (Ockam's
registration message), then frames sent on the inlet side to
``[forward_to_x, o_T]`` are read in batches of K frames per read, routed
through the forwarder and written to the outlet side.  With ``--via
link`` the frames go to ``[C, o_T]``, where C is the relay's address of
the outlet side's connection: the route a portal's messages take once the
outlet's Pong has told the inlet where the stream lives (every message
after the first).  It times the
node's own work per message (decode, route, access check, forward,
encode, write into the transport) with nothing else in the way: no
sockets, no system calls, no other process, so a change to the data
path's Python shows here with little noise.  Figures are the best of
five rounds, in microseconds per message.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

from .probes import bare_string, frame


def setup():
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from ockamtw import Node
    from ockamtw.transport.tcp import MODE_ACCEPTED, _FrameFactory

    reactor = MemoryReactorClock()
    node = Node(reactor, name="relay")
    node.tcp.guard.limits.first_frame_timeout = None
    conns = []
    for port in (5001, 5002):
        proto = _FrameFactory(node.tcp, MODE_ACCEPTED).buildProtocol(None)
        t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        proto.makeConnection(t)
        conns.append((proto, t))
    (p_in, t_in), (p_out, t_out) = conns
    m = "33333333333333333333333333333333"
    p_out.dataReceived(frame(["forwarding_service"], [m], bare_string("forward_to_x")))
    if not t_out.value():
        raise RuntimeError("the relay did not answer the registration")
    t_out.clear()
    return node, p_in, t_in, p_out, t_out


def run(count: int, batch: int, via: str = "forwarder") -> dict:
    node, p_in, t_in, p_out, t_out = setup()
    ret = "0123456789abcdef0123456789abcdef.fc1"
    first = "forward_to_x" if via == "forwarder" else p_out.connection.address.value
    one = frame([first, "o_T.fc1"], [ret], b"\x03" + bare_string("x" * 64))
    chunk = one * batch
    reads = count // batch
    best = None
    for _ in range(5):
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(reads):
            p_in.dataReceived(chunk)
            t_out.clear()
        dt = time.perf_counter() - t0
        best = dt if best is None or dt < best else best
    check = len(t_out.value())
    p_in.dataReceived(one)
    if len(t_out.value()) <= check:
        raise RuntimeError("the relay forwarded nothing")
    return {"count": reads * batch, "batch": batch, "us_per_message": round(1e6 * best / (reads * batch), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=50000)
    p.add_argument("--batch", type=int, action="append", help="frames per read (repeatable; default 1 and 16)")
    p.add_argument("--via", choices=["forwarder", "link"], default="forwarder",
                   help="route through the forwarder (a stream's first message) or the connection (the rest)")
    args = p.parse_args(argv)
    for batch in args.batch or [1, 16]:
        out = run(args.count, batch, args.via)
        print(f"relay hop via the {args.via}, {batch:>3} frame(s) per read: {out['us_per_message']:6.2f} us per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
