"""
Target servers and the Twisted portforward peer, each run as its own
process: ``python -m benchmarks.servers KIND --tag TAG``.  Every server
binds port 0 on 127.0.0.1 and prints one line ``PORTS {json}`` once it
listens.

Kinds:

- ``targets``: asyncio servers behind the paths: ``echo`` (bytes back),
  ``http`` (a fixed keep-alive HTTP/1.1 response per request) and ``stall``
  (a slow reader: it reads nothing for ``--stall`` seconds after accepting,
  then reads and discards everything).
- ``bulk``: the built-in bulk target used when iperf3 is not installed
  (threads and blocking sockets; see L{benchmarks.probes.bulk}).
- ``portforward``: C{twisted.protocols.portforward.ProxyFactory} listening
  on one port per ``--target NAME=PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading

from .procs import raise_nofile

HTTP_BODY = b"hello, world\n"
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(HTTP_BODY)).encode()
    + b"\r\n\r\n"
    + HTTP_BODY
)


def announce(ports: dict) -> None:
    sys.stdout.write("PORTS " + json.dumps(ports) + "\n")
    sys.stdout.flush()


# --- asyncio targets ------------------------------------------------------------


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.transport.write(data)


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        buf = self.buffer + data
        n = buf.count(b"\r\n\r\n")
        if n:
            self.transport.write(HTTP_RESPONSE * n)
            buf = buf[buf.rfind(b"\r\n\r\n") + 4 :]
        self.buffer = buf


class Stall(asyncio.Protocol):
    delay = 3.0

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()
        asyncio.get_running_loop().call_later(self.delay, self._resume)

    def _resume(self):
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data):
        pass


async def run_targets(stall: float) -> None:
    loop = asyncio.get_running_loop()
    Stall.delay = stall
    servers = {
        "echo": await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096),
        "http": await loop.create_server(Http, "127.0.0.1", 0, backlog=4096),
        "stall": await loop.create_server(Stall, "127.0.0.1", 0, backlog=4096),
    }
    announce({name: s.sockets[0].getsockname()[1] for name, s in servers.items()})
    await asyncio.Event().wait()


# --- the built-in bulk target ------------------------------------------------------


def _bulk_client(conn: socket.socket) -> None:
    """
    A request is one byte ('U' upload, 'D' download) and 8 bytes of length:
    for U, read that many bytes then answer b'K'; for D, send that many.
    """
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return
            head += chunk
        mode, n = head[:1], int.from_bytes(head[1:9], "big")
        if mode == b"U":
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            left = n
            while left > 0:
                got = conn.recv_into(view, min(len(buf), left))
                if not got:
                    return
                left -= got
            conn.sendall(b"K")
        elif mode == b"D":
            block = b"\0" * (1 << 20)
            left = n
            while left > 0:
                k = min(len(block), left)
                conn.sendall(block[:k] if k < len(block) else block)
                left -= k
            conn.recv(1)  # the client's close
    except OSError:
        pass
    finally:
        conn.close()


def run_bulk() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    announce({"bulk": srv.getsockname()[1]})
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_bulk_client, args=(conn,), daemon=True).start()


# --- twisted.protocols.portforward -------------------------------------------------------


def run_portforward(targets: dict) -> None:
    from twisted.internet import reactor
    from twisted.protocols import portforward

    class QuietFactory(portforward.ProxyFactory):
        noisy = False

    ports = {}
    for name, port in targets.items():
        p = reactor.listenTCP(0, QuietFactory("127.0.0.1", port), interface="127.0.0.1", backlog=4096)
        ports[name] = p.getHost().port
    announce(ports)
    reactor.run()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers")
    parser.add_argument("kind", choices=["targets", "bulk", "portforward"])
    parser.add_argument("--tag", default="", help="the run's tag (for pgrep)")
    parser.add_argument("--stall", type=float, default=3.0)
    parser.add_argument("--target", action="append", default=[], help="NAME=PORT (portforward)")
    args = parser.parse_args(argv)
    raise_nofile()
    if args.kind == "targets":
        asyncio.run(run_targets(args.stall))
    elif args.kind == "bulk":
        run_bulk()
    else:
        run_portforward({t.split("=")[0]: int(t.split("=")[1]) for t in args.target})


if __name__ == "__main__":
    main()
