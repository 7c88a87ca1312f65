"""
The client side of each measurement, run as its own process so that it
shares no interpreter (and no GIL) with the nodes or the orchestrator:
``python -m benchmarks.probes KIND ... --tag TAG``.  Each prints one JSON
object on its last stdout line (``conns``, ``register`` and
``orchestrator_scale`` also print progress lines and wait for commands on
stdin).

The routed-message probes speak Ockam's TCP framing by hand (2-byte
big-endian length, then a TransportMessage in BARE) and use no ockamtw
code, so they measure the nodes, not a client node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import sys
import threading
import time
from typing import List, Optional

from .procs import raise_nofile

# --- statistics ------------------------------------------------------------------


def percentile(values: List[float], q: float) -> float:
    """
    The q-th percentile (0..100), nearest-rank on sorted values.
    """
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]


def summary_us(samples_ns: List[int]) -> dict:
    us = [x / 1000.0 for x in samples_ns]
    return {
        "count": len(us),
        "p50_us": round(percentile(us, 50), 1),
        "p90_us": round(percentile(us, 90), 1),
        "p99_us": round(percentile(us, 99), 1),
        "min_us": round(min(us), 1) if us else None,
        "max_us": round(max(us), 1) if us else None,
        "mean_us": round(sum(us) / len(us), 1) if us else None,
    }


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


# --- 64-byte request/response ------------------------------------------------------------


def latency(args) -> dict:
    """
    One connection; COUNT round trips of SIZE bytes against an echo target.
    """
    payload = os.urandom(args.size)
    s = _connect(args.port)
    try:
        for _ in range(args.warmup):
            s.sendall(payload)
            _recv_exact(s, len(payload))
        samples = []
        clock = time.perf_counter_ns
        for _ in range(args.count):
            t0 = clock()
            s.sendall(payload)
            got = _recv_exact(s, len(payload))
            samples.append(clock() - t0)
            if got != payload:
                raise AssertionError("echo returned other bytes")
    finally:
        s.close()
    return summary_us(samples)


def setup(args) -> dict:
    """
    COUNT sequential new connections: connect, send SIZE bytes, read the
    echo (connection ready = first reply), close.
    """
    payload = os.urandom(args.size)
    samples, failures = [], 0
    clock = time.perf_counter_ns
    for i in range(args.warmup + args.count):
        t0 = clock()
        try:
            s = socket.create_connection(("127.0.0.1", args.port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(payload)
            _recv_exact(s, len(payload))
        except OSError:
            failures += 1
            continue
        t1 = clock()
        s.close()
        if i >= args.warmup:
            samples.append(t1 - t0)
    out = summary_us(samples)
    out["failures"] = failures
    return out


# --- bulk, when iperf3 is not installed ----------------------------------------------------


def bulk(args) -> dict:
    """
    PARALLEL streams each moving BYTES to (U) or from (D) the bulk target.
    """
    n = args.bytes
    results = [None] * args.parallel
    errors = []
    start_barrier = threading.Barrier(args.parallel + 1)

    def one(i):
        try:
            s = _connect(args.port, timeout=30)
            s.sendall(args.mode.encode() + n.to_bytes(8, "big"))
            start_barrier.wait()
            if args.mode == "U":
                block = b"\0" * (1 << 20)
                left = n
                while left > 0:
                    k = min(len(block), left)
                    s.sendall(block if k == len(block) else block[:k])
                    left -= k
                _recv_exact(s, 1)
            else:
                buf = bytearray(1 << 20)
                view = memoryview(buf)
                left = n
                while left > 0:
                    got = s.recv_into(view, min(len(buf), left))
                    if not got:
                        raise ConnectionError("closed early")
                    left -= got
            results[i] = time.perf_counter()
            s.close()
        except Exception as e:  # reported, not raised
            errors.append(repr(e))
            try:
                start_barrier.abort()
            except Exception:
                pass

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(args.parallel)]
    for t in threads:
        t.start()
    try:
        start_barrier.wait(timeout=30)
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join(120)
    if errors or any(r is None for r in results):
        return {"error": "; ".join(errors) or "a stream did not finish"}
    elapsed = max(results) - t0
    total = n * args.parallel
    return {"bits_per_second": total * 8 / elapsed, "bytes": total, "seconds": elapsed, "tool": "builtin"}


# --- many concurrent connections ------------------------------------------------------------


def conns(args) -> dict:
    """
    Open COUNT connections (at most CONCURRENCY connecting at once), each
    doing one 64-byte echo; print a progress line ``{"holding": ...}``; on
    the stdin line ``close``, close them all and print the final JSON.
    """

    async def main():
        sem = asyncio.Semaphore(args.concurrency)
        payload = b"x" * 64
        opened = []
        failures = []
        latencies = []

        async def one():
            async with sem:
                t0 = time.perf_counter_ns()
                try:
                    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", args.port), 20)
                    w.write(payload)
                    got = await asyncio.wait_for(r.readexactly(64), 20)
                    if got != payload:
                        raise AssertionError("bad echo")
                    latencies.append(time.perf_counter_ns() - t0)
                    opened.append((r, w))
                except Exception as e:
                    failures.append(type(e).__name__)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(args.count)))
        open_s = time.perf_counter() - t0
        stats = summary_us(latencies) if latencies else {}
        emit({"holding": len(opened), "failures": len(failures), "failure_kinds": sorted(set(failures)),
              "open_seconds": round(open_s, 3), "ready_p50_us": stats.get("p50_us"),
              "ready_p99_us": stats.get("p99_us")})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        # Every connection still works after being held.
        alive = 0
        for r, w in opened[:: max(1, len(opened) // 50)]:
            try:
                w.write(payload)
                await asyncio.wait_for(r.readexactly(64), 5)
                alive += 1
            except Exception:
                pass
        for r, w in opened:
            w.close()
        for r, w in opened:
            try:
                await asyncio.wait_for(w.wait_closed(), 5)
            except Exception:
                pass
        return {"closed": len(opened), "checked_alive": alive,
                "checked": len(opened[:: max(1, len(opened) // 50)])}

    return asyncio.run(main())


# --- routed messages: hand-written Ockam frames -----------------------------------------------


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _address(value: str, t: int = 0) -> bytes:
    raw = value.encode()
    return bytes((t,)) + _uvarint(len(raw)) + raw


def _route(*values: str) -> bytes:
    return _uvarint(len(values)) + b"".join(_address(v) for v in values)


def frame(onward, return_route, payload: bytes) -> bytes:
    body = b"\x01" + _route(*onward) + _route(*return_route) + _uvarint(len(payload)) + payload
    return len(body).to_bytes(2, "big") + body


def bare_string(s: str) -> bytes:
    raw = s.encode()
    return _uvarint(len(raw)) + raw


class FrameReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def frames(self, block: bool = True):
        """
        Whole frames available now (after one recv when block).
        """
        if block or select.select([self.sock], [], [], 0)[0]:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out = []
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 2:
            n = int.from_bytes(buf[pos : pos + 2], "big")
            if len(buf) - pos - 2 < n:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + n]))
            pos += 2 + n
        del buf[:pos]
        return out


def routed(args) -> dict:
    """
    Round trips of a 64-byte payload along ONWARD (comma-separated worker
    addresses after the TCP hop, e.g. ``echo`` or ``forward_to_o,echo``):
    COUNT sequential ones (latency), then INFLIGHT outstanding for DURATION
    seconds (messages/s).
    """
    onward = args.route.split(",")
    payload = os.urandom(args.size)
    msg = frame(onward, ["bench_client"], payload)
    s = _connect(args.port)
    reader = FrameReader(s)

    def one_reply():
        while True:
            got = reader.frames()
            if got:
                if len(got) > 1:
                    raise AssertionError("more replies than requests")
                if not got[0].endswith(payload):
                    raise AssertionError("reply payload differs")
                return

    clock = time.perf_counter_ns
    for _ in range(args.warmup):
        s.sendall(msg)
        one_reply()
    samples = []
    for _ in range(args.count):
        t0 = clock()
        s.sendall(msg)
        one_reply()
        samples.append(clock() - t0)
    out = {"latency": summary_us(samples)}

    # Throughput with INFLIGHT outstanding messages.
    if args.inflight > 0 and args.duration > 0:
        s.sendall(msg * args.inflight)
        outstanding = args.inflight
        done = 0
        t0 = time.perf_counter()
        end = t0 + args.duration
        while True:
            got = reader.frames()
            n = len(got)
            done += n
            outstanding -= n
            if time.perf_counter() < end:
                s.sendall(msg * n)
                outstanding += n
            elif outstanding == 0:
                break
        elapsed = time.perf_counter() - t0
        out["inflight"] = args.inflight
        out["messages_per_second"] = round(done / elapsed, 1)
        out["messages"] = done
    s.close()
    return out


#: Relay names one probe connection registers (the relay node's default
#: limit per peer is 64).
REGISTER_PER_CONNECTION = 50


def register(args) -> dict:
    """
    Register COUNT relays (``static_forwarding_service``, names
    PREFIX0..) over raw connections to the relay node, at most
    ``PER_CONNECTION`` names each (a relay node limits the names one peer
    holds); print ``{"registered": N}`` and hold them (the forwarders live
    as long as these connections) until a line on stdin.
    """
    per = REGISTER_PER_CONNECTION
    socks = []
    for start in range(0, args.count, per):
        s = _connect(args.port)
        socks.append((s, FrameReader(s), min(per, args.count - start)))
        batch = bytearray()
        for i in range(start, start + min(per, args.count - start)):
            batch += frame(["static_forwarding_service"], [f"bench_reg_{i}"], bare_string(f"{args.prefix}{i}"))
        s.sendall(batch)
    got = 0
    t0 = time.perf_counter()
    for s, reader, n in socks:
        s.settimeout(30)
        mine = 0
        while mine < n:
            mine += len(reader.frames())
        got += mine
    emit({"registered": got, "seconds": round(time.perf_counter() - t0, 3)})
    sys.stdin.readline()
    for s, _, _ in socks:
        s.close()
    return {"closed": True}


# --- failover: the first connection that works again ---------------------------------------------


def reconnect(args) -> dict:
    """
    Print ``{"ready": true}`` and wait for a line on stdin (the moment the
    orchestrator instance is killed); then open a new connection to PORT
    every EVERY seconds, each sending SIZE bytes and waiting (up to
    ATTEMPT_TIMEOUT) for their echo, until one gets it: the seconds from
    the line to that echo (``first_ok_s``), the attempts made and how many
    failed.  Overlapping attempts, so that a slow failing one does not
    delay the measurement.
    """
    payload = os.urandom(args.size)
    emit({"ready": True})
    sys.stdin.readline()

    async def main():
        t0 = time.perf_counter()
        done = asyncio.get_running_loop().create_future()
        counts = {"attempts": 0, "failed": 0}

        async def attempt():
            counts["attempts"] += 1
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", args.port), args.attempt_timeout)
                try:
                    w.write(payload)
                    got = await asyncio.wait_for(r.readexactly(len(payload)), args.attempt_timeout)
                finally:
                    w.close()
                if got == payload and not done.done():
                    done.set_result(time.perf_counter() - t0)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                counts["failed"] += 1

        tasks = []
        while not done.done():
            if time.perf_counter() - t0 > args.timeout:
                for t in tasks:
                    t.cancel()
                return {"first_ok_s": None, **counts}
            tasks.append(asyncio.ensure_future(attempt()))
            try:
                await asyncio.wait_for(asyncio.shield(done), args.every)
            except asyncio.TimeoutError:
                pass
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"first_ok_s": round(done.result(), 3), **counts}

    return asyncio.run(main())


# --- head-of-line: a stalled stream next to a live one --------------------------------------------


def _echo_bulk(port: int, total: int, timeout: float) -> Optional[float]:
    """
    Echo C{total} bytes through a new connection (one thread sends, this
    one reads); MB/s, or None when it did not finish within C{timeout}.
    """
    s = _connect(port)
    s.settimeout(timeout)
    block = b"b" * 65536
    failed = []

    def send():
        try:
            left = total
            while left > 0:
                s.sendall(block[: min(left, len(block))])
                left -= min(left, len(block))
        except OSError as e:
            failed.append(e)

    t0 = time.perf_counter()
    th = threading.Thread(target=send, daemon=True)
    th.start()
    got = 0
    try:
        while got < total:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    except OSError:
        pass
    elapsed = time.perf_counter() - t0
    s.close()
    th.join(1)
    if got < total or failed:
        return None
    return round(total / elapsed / 1e6, 1)


def hol(args) -> dict:
    """
    A neighbour connection pings (64 bytes, echo) every 20 ms while another
    connection through the same path floods a target that reads nothing
    for a while.  Reports the neighbour's round trips before and during the
    flood (pings spaced alike), how many took over a second (stalled), the
    echo throughput of another neighbour connection before and during the
    flood, and how many bytes the stalled stream accepted.
    """
    payload = b"n" * 64
    nb = _connect(args.echo_port)
    nb.settimeout(args.stall_timeout)

    def ping():
        t0 = time.perf_counter_ns()
        nb.sendall(payload)
        _recv_exact(nb, 64)
        return time.perf_counter_ns() - t0

    before = []
    for _ in range(25):
        before.append(ping())
        time.sleep(0.02)
    bulk_before = _echo_bulk(args.echo_port, args.bulk_bytes, args.stall_timeout)
    flood = _connect(args.stall_port)
    flood.setblocking(False)
    pushed = 0
    block = b"\0" * 65536
    stop = threading.Event()

    def pump():
        nonlocal pushed
        end = time.monotonic() + args.duration
        while time.monotonic() < end and not stop.is_set():
            try:
                pushed += flood.send(block)
            except BlockingIOError:
                time.sleep(0.002)
            except OSError:
                break

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    time.sleep(0.2)  # let the flood fill the buffers
    bulk_during = _echo_bulk(args.echo_port, args.bulk_bytes, args.stall_timeout)
    during, stalled, errors = [], 0, 0
    end = time.monotonic() + args.duration - 0.3
    while time.monotonic() < end:
        try:
            rtt = ping()
            during.append(rtt)
            if rtt > 1e9:
                stalled += 1
        except socket.timeout:
            stalled += 1
            errors += 1
            break  # the neighbour's stream is stuck; more pings would queue behind it
        time.sleep(0.02)
    stop.set()
    t.join(5)
    flood.close()
    nb.close()
    return {
        "neighbour_before": summary_us(before),
        "neighbour_during": summary_us(during) if during else None,
        "neighbour_pings_during": len(during),
        "neighbour_stalled": stalled,
        "neighbour_timeouts": errors,
        "stalled_stream_bytes_accepted": pushed,
        "neighbour_bulk_bytes": args.bulk_bytes,
        "neighbour_bulk_before_mbps": bulk_before,
        "neighbour_bulk_during_mbps": bulk_during,
        # Throughput lost by a neighbour while the stalled stream holds the
        # path (before / during; None when the neighbour did not finish).
        "neighbour_bulk_loss": (round(bulk_before / bulk_during, 2) if bulk_before and bulk_during else None),
    }


# --- HTTP, when wrk is not installed ---------------------------------------------------------------


def http(args) -> dict:
    """
    CONNS keep-alive connections, each sending one GET at a time for
    DURATION seconds (wrk's model); requests/s and latency percentiles.
    """
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def main():
        lat = []
        count = 0
        errors = 0
        end = time.perf_counter() + args.duration

        async def worker():
            nonlocal count, errors
            try:
                r, w = await asyncio.open_connection("127.0.0.1", args.port)
            except OSError:
                errors += 1
                return
            try:
                while time.perf_counter() < end:
                    t0 = time.perf_counter_ns()
                    w.write(request)
                    head = await r.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    await r.readexactly(length)
                    lat.append(time.perf_counter_ns() - t0)
                    count += 1
            except Exception:
                errors += 1
            finally:
                w.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.conns)))
        elapsed = time.perf_counter() - t0
        s = summary_us(lat)
        return {"requests_per_second": round(count / elapsed, 1), "p50_us": s["p50_us"],
                "p99_us": s["p99_us"], "errors": errors, "tool": "builtin"}

    return asyncio.run(main())


def orchestrator_scale(args) -> dict:
    """
    The Orchestrator scenario's client (an ockamtw node; see
    L{benchmarks.orchestrator_probe}).
    """
    from .orchestrator_probe import run

    return run(args)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probes")
    sub = p.add_subparsers(dest="kind", required=True)

    def add(name, f):
        sp = sub.add_parser(name)
        sp.add_argument("--tag", default="")
        sp.set_defaults(func=f)
        return sp

    sp = add("latency", latency)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--count", type=int, default=2000)
    sp.add_argument("--warmup", type=int, default=200)
    sp.add_argument("--size", type=int, default=64)
    sp = add("setup", setup)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--count", type=int, default=100)
    sp.add_argument("--warmup", type=int, default=5)
    sp.add_argument("--size", type=int, default=64)
    sp = add("bulk", bulk)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--mode", choices=["U", "D"], default="U")
    sp.add_argument("--bytes", type=int, default=256 << 20)
    sp.add_argument("--parallel", type=int, default=1)
    sp = add("conns", conns)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--count", type=int, default=1000)
    sp.add_argument("--concurrency", type=int, default=256)
    sp = add("routed", routed)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--route", default="echo")
    sp.add_argument("--count", type=int, default=2000)
    sp.add_argument("--warmup", type=int, default=200)
    sp.add_argument("--size", type=int, default=64)
    sp.add_argument("--inflight", type=int, default=32)
    sp.add_argument("--duration", type=float, default=2.0)
    sp = add("register", register)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--count", type=int, default=1000)
    sp.add_argument("--prefix", default="bench")
    sp = add("reconnect", reconnect)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--every", type=float, default=0.05)
    sp.add_argument("--attempt-timeout", type=float, default=3.0)
    sp.add_argument("--timeout", type=float, default=60.0)
    sp.add_argument("--size", type=int, default=64)
    sp = add("hol", hol)
    sp.add_argument("--echo-port", type=int, required=True)
    sp.add_argument("--stall-port", type=int, required=True)
    sp.add_argument("--duration", type=float, default=2.0)
    sp.add_argument("--stall-timeout", type=float, default=2.0)
    sp.add_argument("--bulk-bytes", type=int, default=16 << 20)
    sp = add("http", http)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--conns", type=int, default=32)
    sp.add_argument("--duration", type=float, default=2.0)
    sp = add("orchestrator_scale", orchestrator_scale)
    sp.add_argument("--url", required=True)
    sp.add_argument("--data", required=True, help="the Orchestrator's data directory (its admin.token)")
    sp.add_argument("--projects", type=int, default=100)
    sp.add_argument("--relays", type=int, default=1000)
    sp.add_argument("--concurrency", type=int, default=10)
    sp.add_argument("--refresh", type=float, default=5.0)
    args = p.parse_args(argv)
    raise_nofile()
    emit(args.func(args))


if __name__ == "__main__":
    main()
