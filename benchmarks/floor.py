"""
What the relay's shape costs any CPython program on this machine:
``python -m benchmarks.floor [--rounds 5] [--count 5000]``.

The ``ockam_relay`` path carries a 64-byte round trip through three Python
processes (inlet, relay, outlet), each woken once each way; ``ssh -R``
carries it through two C processes.  This measures, interleaved round by
round in one run, the added round trip (p50 over ``direct``, with the
suite's latency probe) of:

- ``ssh_R`` and ``ockam_relay``, as the suite starts them;
- ``twisted_chain3``: three C{twisted.protocols.portforward} processes in
  a chain (the relay's shape, Twisted's own smallest forwarder at each
  hop: no framing, no routing, no flow control);
- ``twisted_direct_chain3``: three forwarders on Twisted's reactor that
  hand each read straight to the other socket's C{send} (what a Twisted
  program pays per wakeup at the least: the reactor's round, the
  transport's read and one protocol call);
- ``python_chain3``: three minimal forwarders in a chain, each a loop of
  C{select.epoll}, C{recv} and C{send} on raw sockets (the least a CPython
  process can do per wakeup);
- ``python_chain2``: two of them (the shape of ``ssh -R`` in Python).

If ``python_chain3`` alone adds more than twice what ``ssh -R`` adds, no
relay written as three CPython processes meets "the relay adds at most
twice what ``ssh -R`` adds" on this machine; if
``twisted_direct_chain3`` does, no such relay on Twisted's reactor does.

Kinds ``forward`` and ``twisted-forward`` are one forwarder process: ``python -m benchmarks.floor
forward --target PORT`` listens on a loopback port (printed as ``PORTS
{"echo": N}``) and forwards each connection it accepts to 127.0.0.1:PORT.
"""

from __future__ import annotations

import argparse
import errno
import json
import select
import socket
import statistics
import sys


def forward(target: int) -> None:
    """
    A forwarder in the fewest Python steps per wakeup: one C{epoll.poll},
    one C{recv} and one C{send} per message.  Bytes the kernel does not
    take at once wait in a per-socket buffer until it is writable again.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    peer = {}  # fd -> (socket, its peer's socket)
    pending = {}  # fd -> bytes waiting to be written to that fd
    sys.stdout.write("PORTS " + json.dumps({"echo": listener.getsockname()[1]}) + "\n")
    sys.stdout.flush()

    def close(fd):
        # Both sockets of the pair that fd belongs to.
        for s in peer.get(fd, ()):
            f = s.fileno()
            peer.pop(f, None)
            pending.pop(f, None)
            try:
                ep.unregister(f)
            except (OSError, ValueError):
                pass
            s.close()

    while True:
        for fd, ev in ep.poll():
            if fd == listener.fileno():
                try:
                    a, _ = listener.accept()
                except BlockingIOError:
                    continue
                b = socket.create_connection(("127.0.0.1", target))
                for s in (a, b):
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    ep.register(s.fileno(), select.EPOLLIN)
                peer[a.fileno()] = (a, b)
                peer[b.fileno()] = (b, a)
                continue
            if fd not in peer:
                continue
            me, other = peer[fd]
            if ev & select.EPOLLOUT:
                data = pending.pop(fd, b"")
                try:
                    n = me.send(data) if data else 0
                except BlockingIOError:
                    n = 0
                except OSError:
                    close(fd)
                    continue
                if n < len(data):
                    pending[fd] = data[n:]
                else:
                    ep.modify(fd, select.EPOLLIN)
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                try:
                    data = me.recv(65536)
                except OSError as e:
                    if e.errno == errno.EAGAIN:
                        continue
                    data = b""
                if not data:
                    close(fd)
                    continue
                ofd = other.fileno()
                if ofd in pending:
                    pending[ofd] += data
                    continue
                try:
                    n = other.send(data)
                except BlockingIOError:
                    n = 0
                except OSError:
                    close(fd)
                    continue
                if n < len(data):
                    pending[ofd] = data[n:]
                    ep.modify(ofd, select.EPOLLIN | select.EPOLLOUT)


def twisted_forward(target: int) -> None:
    """
    A forwarder on Twisted's reactor that sends each read straight to the
    other socket (it assumes the kernel takes it: 64-byte round trips).
    """
    from twisted.internet import endpoints, protocol, reactor

    class Side(protocol.Protocol):
        peer = None

        def connectionMade(self):
            self.transport.setTcpNoDelay(True)

        def dataReceived(self, data):
            self.peer.transport.socket.send(data)

        def connectionLost(self, reason):
            if self.peer is not None:
                self.peer.transport.loseConnection()

    class Inside(Side):
        def connectionMade(self):
            Side.connectionMade(self)
            self.transport.pauseProducing()
            out = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", target)
            endpoints.connectProtocol(out, Side()).addCallback(self.joined)

        def joined(self, other):
            self.peer, other.peer = other, self
            self.transport.resumeProducing()

    d = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Inside))

    def announce(port):
        sys.stdout.write("PORTS " + json.dumps({"echo": port.getHost().port}) + "\n")
        sys.stdout.flush()

    d.addCallback(announce)
    reactor.run()


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] in (["forward"], ["twisted-forward"]):
        p = argparse.ArgumentParser(prog="python -m benchmarks.floor " + argv[0])
        p.add_argument("--target", type=int, required=True)
        p.add_argument("--tag", default="")
        args = p.parse_args(argv[1:])
        (forward if argv[0] == "forward" else twisted_forward)(args.target)
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=5000, help="round trips per path per round")
    args = p.parse_args(argv)
    return measure(args.rounds, args.count)


def measure(rounds: int, count: int) -> int:
    from .cost import PATHS
    from .suite import Settings, Suite

    ns = argparse.Namespace(quick=True, repeat=1, builtin_bulk=False, builtin_http=False, peers=False,
                            paths="", only=[], out=None, no_docs=True, keep=False, argv=[])
    suite = Suite(ns)
    suite.s = Settings(quick=False)
    pm = suite.pm
    results = {}
    try:
        targets = suite.start_targets()
        echo = targets["echo"]
        ports = {"direct": echo}

        def chain(name, n, argv_for):
            port = echo
            for i in range(n):
                proc = pm.start(argv_for(port), f"{name}-{i}")
                port = json.loads(proc.wait_for(r"PORTS (\{.*\})").group(1))["echo"]
            ports[name] = port

        fwd = lambda port: [sys.executable, "-m", "benchmarks.floor", "forward", "--target", str(port),
                            "--tag", pm.tag]
        tfwd = lambda port: [sys.executable, "-m", "benchmarks.floor", "twisted-forward", "--target", str(port),
                             "--tag", pm.tag]
        pf = lambda port: [sys.executable, "-m", "benchmarks.servers", "portforward", "--tag", pm.tag,
                           "--target", f"echo={port}"]
        chain("python_chain2", 2, fwd)
        chain("python_chain3", 3, fwd)
        chain("twisted_direct_chain3", 3, tfwd)
        chain("twisted_chain3", 3, pf)
        for name in ("ssh_R", "ockam_relay"):
            path = PATHS[name](pm)
            ports[name] = path.start(dict(targets))["echo"]
        order = list(ports)
        for name in order:  # warm up
            suite.probe("latency", "--port", str(ports[name]), "--count", "500", timeout=60)
        for r in range(rounds):
            for name in order:
                out = suite.probe("latency", "--port", str(ports[name]), "--count", str(count),
                                  timeout=count / 100 + 60)
                results.setdefault(name, []).append(out["p50_us"])
            print(f"round {r + 1}: " + ", ".join(f"{n} {results[n][-1]:.0f}" for n in order), flush=True)
    finally:
        pm.stop_all()
    direct = results["direct"]
    added = {n: [v - d for v, d in zip(results[n], direct)] for n in results}
    ssh = added["ssh_R"]
    print(json.dumps({"p50_us": results, "added_us": added}))
    print(f"\n{'path':>22}  {'RTT p50 µs':>11}  {'added µs':>9}  {'added / ssh -R (per round)':>28}")
    for n in results:
        ratios = " ".join(f"{a / s:.2f}" for a, s in zip(added[n], ssh))
        print(f"{n:>22}  {statistics.median(results[n]):>11.0f}  {statistics.median(added[n]):>9.0f}  {ratios:>28}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
