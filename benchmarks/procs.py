"""
Processes of a benchmark run: spawning with a log file, waiting for a log
line, free loopback ports, RSS and file descriptors from /proc, and killing
everything a run started (descendants included) at the end.

Every process a run starts carries the run's tag in its command line (a
node name, a config path, an argument), so that ``pgrep -f TAG`` finds any
left behind.
"""

from __future__ import annotations

import atexit
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)


def free_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port the OS says is free right now (bind port 0, read it, close).
    Only for peers that cannot bind port 0 and report it; use it at once.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1", proc=None) -> None:
    """
    Wait until something accepts TCP connections at host:port.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.label} exited with {proc.poll()} before listening on {port}: {proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listening on {host}:{port} after {timeout:g} s")
        time.sleep(0.02)


def raise_nofile() -> None:
    """
    Raise the soft limit on open files to the hard limit (for thousands of
    concurrent connections); used in this process and every child.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


def rss_bytes(pid: int) -> Optional[int]:
    """
    VmRSS of a process, in bytes (None once it is gone).
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fd_count(pid: int) -> Optional[int]:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_seconds(pid: int) -> Optional[float]:
    """
    User + system CPU time of a process so far.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds_tree(pids) -> float:
    """
    CPU time (user + system) of these processes, the children they have
    reaped, and their live descendants: what a path costs, socat's forked
    children and sshd's session processes included.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    seen, total = set(), 0
    todo = list(pids)
    for pid in pids:
        todo += descendants(pid)
    for pid in todo:
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / ticks


def _children_map() -> Dict[int, List[int]]:
    out: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(pid: int) -> List[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def child_env() -> dict:
    """
    The environment of Python children: this checkout first on the path,
    unbuffered output.
    """
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """
    A started process: its output goes to a log file that L{wait_for}
    searches.
    """

    def __init__(self, popen: subprocess.Popen, label: str, log_path: Optional[str]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.label = label
        self.log_path = log_path

    def poll(self):
        return self.popen.poll()

    def text(self) -> str:
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def wait_for(self, regex: str, timeout: float = 15.0) -> "re.Match":
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self.text())
            if m is not None:
                return m
            if self.poll() is not None:
                raise RuntimeError(f"{self.label} exited ({self.poll()}) before {regex!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: no {regex!r} within {timeout:g} s:\n{self.tail()}")
            time.sleep(0.02)

    @property
    def rss(self) -> Optional[int]:
        return rss_bytes(self.pid)

    @property
    def fds(self) -> Optional[int]:
        return fd_count(self.pid)


class ProcessManager:
    """
    Starts the processes of a run and ends all of them (and whatever they
    started) in L{stop_all}, which also runs at exit and on SIGTERM/SIGINT.
    """

    def __init__(self, tag: str, workdir: str) -> None:
        self.tag = tag
        self.workdir = workdir
        self.procs: List[Proc] = []
        self._known: set = set()
        self._stopped = False
        os.makedirs(workdir, exist_ok=True)
        atexit.register(self.stop_all)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (e.g. in-process tests)
                pass

    def _on_signal(self, signum, frame):
        self.stop_all()
        raise SystemExit(128 + signum)

    def start(self, argv: List[str], label: str, env: Optional[dict] = None, stdin=None,
              capture_stdout: bool = False, cwd: Optional[str] = None) -> Proc:
        """
        Start argv; stdout and stderr go to WORKDIR/LABEL.log (or stdout to a
        pipe with capture_stdout).
        """
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)
        log_path = os.path.join(self.workdir, f"{safe}.log")
        log = open(log_path, "ab")
        try:
            popen = subprocess.Popen(
                argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_stdout else log,
                stderr=log,
                env=env if env is not None else child_env(),
                cwd=cwd or self.workdir,
                preexec_fn=raise_nofile,
                close_fds=True,
            )
        finally:
            log.close()
        proc = Proc(popen, label, log_path)
        self.procs.append(proc)
        self._known.add(popen.pid)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        """
        SIGTERM the process and its descendants, SIGKILL what is left after
        timeout, and reap.
        """
        pids = [proc.pid] + descendants(proc.pid)
        self._known.update(pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        # Newest first: clients before the servers they talk to.
        for proc in list(reversed(self.procs)):
            try:
                self.stop(proc)
            except Exception as e:  # pragma: no cover - best effort
                print(f"benchmarks: could not stop {proc.label}: {e}", file=sys.stderr)

    def leftovers(self) -> List[str]:
        """
        Processes of this run still alive: by tag in the command line, and
        by pid among those this run started or saw as descendants.
        """
        found = []
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z":
                continue
            if self.tag in cmd or pid in self._known:
                found.append(f"{pid} {cmd}")
        return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def which(name: str) -> Optional[str]:
    path = shutil.which(name)
    if path is None and os.path.exists(f"/usr/sbin/{name}"):
        path = f"/usr/sbin/{name}"
    return path


def version_of(argv: List[str]) -> Optional[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0].strip() if text else None


# --- node introspection (benchmark-only; the memory scenario) -------------------------------
#
# The memory scenario starts its ockamtw nodes through node_main() instead of
# ``python -m ockamtw``: the same twistd run, plus a SIGUSR2 handler that
# answers a request file with the node's heap and object counts.  Nothing in
# ockamtw knows about it; the other scenarios start nodes the ordinary way.

STATS_ENV = "OCKAMTW_BENCH_STATS"            # a directory: request.json in, reply.json out
TRACEMALLOC_ENV = "OCKAMTW_BENCH_TRACEMALLOC"  # "1": tracemalloc.start() at startup (slow; for digging)


def node_main() -> None:
    """
    Run an ockamtw node (``twistd ockam ...`` from sys.argv) with the
    SIGUSR2 stats hook installed when C{$OCKAMTW_BENCH_STATS} names a
    directory.
    """
    if os.environ.get(TRACEMALLOC_ENV) == "1":
        import tracemalloc

        tracemalloc.start(int(os.environ.get("OCKAMTW_BENCH_TRACEMALLOC_FRAMES", "1")))
    where = os.environ.get(STATS_ENV)
    if where:
        from twisted.internet import reactor

        def on_signal(signum, frame):
            reactor.callFromThread(_answer_stats, where)

        def install():
            signal.signal(signal.SIGUSR2, on_signal)
            with open(os.path.join(where, "ready"), "w") as f:
                f.write(str(os.getpid()))

        reactor.callWhenRunning(install)
    if os.environ.get(LEAK_ENV) == "1":
        _simulate_leak()
    from ockamtw.tap import run

    run()


LEAK_ENV = "OCKAMTW_BENCH_LEAK_WORKERS"  # "1": keep every stopped worker (checks that the leak check fails)
_leaked: list = []


def _simulate_leak() -> None:
    """
    A deliberate leak, to see the memory scenario's check fail: every
    worker the node stops (a portal per closed connection) is kept.
    """
    from ockamtw.node import BaseNode  # type: ignore

    stop = BaseNode.stop_worker

    def stop_worker(self, address):
        _leaked.append(self.worker_at(address))
        return stop(self, address)

    BaseNode.stop_worker = stop_worker


_marks: dict = {}


def _find_node():
    import gc

    from ockamtw.node import BaseNode  # type: ignore

    for o in gc.get_objects():
        if isinstance(o, BaseNode):
            return o
    return None


def _glibc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _mallinfo2() -> Optional[dict]:
    import ctypes

    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    # arena: bytes the main heap got from the OS (sbrk); uordblks: in use;
    # fordblks: free but kept; hblkhd: in mmapped chunks.
    return {"heap_kib": m.arena // 1024, "in_use_kib": m.uordblks // 1024, "free_kib": m.fordblks // 1024,
            "mmap_kib": m.hblkhd // 1024, "top_releasable_kib": m.keepcost // 1024}


def _pymalloc_stats() -> dict:
    """
    pymalloc's arenas (1 MiB each on 64-bit CPython 3.10+): how many are
    held and how many bytes of them are in live objects, from
    sys._debugmallocstats (which writes to the C stderr).
    """
    import tempfile

    out = {}
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    for key, name in (("# arenas allocated current", "arenas"),
                      ("# bytes in allocated blocks", "allocated_bytes"),
                      ("# bytes in available blocks", "available_bytes"),
                      ("# arenas highwater mark", "arenas_highwater")):
        m = re.search(re.escape(key) + r"\s*=\s*([\d,]+)", text)
        if m:
            out[name] = int(m.group(1).replace(",", ""))
    return out


def _node_counts(node) -> dict:
    out: dict = {}
    if node is None:
        return out
    out["workers"] = len(getattr(node, "_workers", {}))
    out["queue"] = len(getattr(node, "_queue", ()))
    out["pending"] = len(getattr(node, "_pending", ()))
    inlets = getattr(node, "inlets", {}) or {}
    outlets = getattr(node, "outlets", {}) or {}
    out["inlet_portals"] = sum(len(getattr(i, "portals", ())) for i in inlets.values())
    out["outlet_portals"] = sum(len(getattr(o, "portals", ())) for o in outlets.values())
    tcp = getattr(node, "tcp", None)
    if tcp is not None:
        out["tcp_connections"] = len(getattr(tcp, "_connections", {}))
        out["tcp_listeners"] = len(getattr(tcp, "_listeners", []))
        out["tcp_kept"] = len(getattr(tcp, "kept", {}))
    out["relays"] = len(getattr(node, "relays", {}) or {})
    return out


def _answer_stats(where: str) -> None:
    """
    Read WHERE/request.json ({"id": N, "types": bool, "trim": bool,
    "mark": name, "diff": name}) and write WHERE/reply.json.
    """
    import collections
    import gc
    import json

    from twisted.internet import reactor

    try:
        with open(os.path.join(where, "request.json")) as f:
            req = json.load(f)
    except (OSError, ValueError):
        req = {}
    reply: dict = {"id": req.get("id")}
    try:
        if req.get("drop_caches"):
            # ockamtw.wire keeps decoded addresses (at most 4096, cleared when
            # full): bounded, but per-connection addresses fill it, so it
            # would look like a leak of up to ~1 MiB.  Emptied, and reported.
            import ockamtw.wire as wire

            interned = getattr(wire, "_INTERNED", None)
            if isinstance(interned, dict):
                reply["address_cache"] = len(interned)
                interned.clear()
        gc.collect()
        reply["rss"] = rss_bytes(os.getpid())
        reply["allocated_blocks"] = sys.getallocatedblocks()
        objs = gc.get_objects()
        reply["gc_objects"] = len(objs)
        if req.get("types"):
            c = collections.Counter(type(o).__qualname__ for o in objs)
            reply["types"] = dict(c.most_common(40))
            if req.get("mark_types"):
                _marks["types:" + req["mark_types"]] = c
            if req.get("diff_types") and "types:" + req["diff_types"] in _marks:
                old = _marks["types:" + req["diff_types"]]
                d = {k: c[k] - old.get(k, 0) for k in set(c) | set(old) if c[k] != old.get(k, 0)}
                reply["types_diff"] = dict(sorted(d.items(), key=lambda kv: -abs(kv[1]))[:40])
        del objs
        reply["node"] = _node_counts(_find_node())
        calls = reactor.getDelayedCalls()
        reply["delayed_calls"] = len(calls)
        reply["delayed_call_funcs"] = dict(collections.Counter(
            getattr(dc.func, "__qualname__", repr(dc.func)) for dc in calls).most_common(10))
        reply["reactor_readers"] = len(reactor.getReaders())
        reply["reactor_writers"] = len(reactor.getWriters())
        reply["pymalloc"] = _pymalloc_stats()
        reply["malloc"] = _mallinfo2()
        # The live heap: bytes in pymalloc blocks in use (objects up to 512
        # bytes) plus glibc malloc's in-use and mmapped chunks (bigger objects,
        # buffers, C libraries).  What the allocators hold free is not in it.
        py = reply["pymalloc"].get("allocated_bytes")
        if py is not None and reply["malloc"] is not None:
            reply["heap"] = py + (reply["malloc"]["in_use_kib"] + reply["malloc"]["mmap_kib"]) * 1024
        import tracemalloc

        if tracemalloc.is_tracing():
            cur, peak = tracemalloc.get_traced_memory()
            reply["traced"] = cur
            reply["traced_peak"] = peak
            if req.get("mark") or req.get("diff"):
                snap = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__)])
                if req.get("diff") and req["diff"] in _marks:
                    stats = snap.compare_to(_marks[req["diff"]], "lineno")
                    reply["traced_diff_total"] = sum(s.size_diff for s in stats)
                    reply["traced_diff"] = [
                        {"where": str(s.traceback), "size_diff": s.size_diff, "count_diff": s.count_diff}
                        for s in stats[:25]]
                if req.get("mark"):
                    _marks[req["mark"]] = snap
        if req.get("trim"):
            libc = _glibc()
            before = rss_bytes(os.getpid())
            released = libc.malloc_trim(0) if libc is not None else None
            reply["trim"] = {"rss_before": before, "rss_after": rss_bytes(os.getpid()), "released": released,
                             "malloc_after": _mallinfo2()}
    except Exception as e:  # pragma: no cover - best effort
        reply["error"] = repr(e)
    tmp = os.path.join(where, "reply.json.tmp")
    with open(tmp, "w") as f:
        json.dump(reply, f)
    os.replace(tmp, os.path.join(where, "reply.json"))


_stats_ids = iter(range(1, 1 << 62))


def node_stats(proc: "Proc", timeout: float = 10.0, **request) -> Optional[dict]:
    """
    Ask a node started with the stats hook (C{proc.stats_dir}) for its
    stats; None when it has no hook or does not answer in time.
    """
    import json

    where = getattr(proc, "stats_dir", None)
    if not where or proc.poll() is not None or not os.path.exists(os.path.join(where, "ready")):
        return None
    rid = next(_stats_ids)
    request["id"] = rid
    tmp = os.path.join(where, "request.json.tmp")
    with open(tmp, "w") as f:
        json.dump(request, f)
    os.replace(tmp, os.path.join(where, "request.json"))
    os.kill(proc.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(where, "reply.json")) as f:
                reply = json.load(f)
            if reply.get("id") == rid:
                return reply
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return None
