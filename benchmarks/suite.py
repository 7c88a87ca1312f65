"""
The benchmark suite: ``python -m benchmarks`` (full, under 10 minutes) or
``python -m benchmarks --quick`` (the CI smoke mode, under a minute).

It starts the target servers, every available path (direct, the ockamtw
topologies, the peers), runs the scenarios round-robin over the paths,
then the memory and relay scenarios on fresh ockamtw node processes, and
writes ``benchmarks/results/latest.json`` and ``latest.md`` (and, in a
full run, the generated part of ``docs/performance.md``).  Every process
it starts is ended at the end (and at exit, and on SIGTERM/SIGINT), and the
run checks that none is left.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from typing import Dict, List, Optional

from ockamtw.flow import STREAM_WINDOW

from . import report
from .orchestrator import OrchestratorBench
from .paths import OckamRelay, Path, Sshd, _Ssh, all_paths
from .procs import (REPO_ROOT, Proc, ProcessManager, cpu_seconds, cpu_seconds_tree, fd_count, free_port, node_stats,
                    raise_nofile, rss_bytes, version_of, wait_port, which)

#: The issue's target for a portal through a secure channel, inlet -> relay -> outlet.
SECURE_TARGET_GBIT_S = 2.0
#: The throughput published for Ockam's Rust portal, with its secure channel (not measured here).
RUST_PORTAL_GBIT_S = 1.5

RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
DOCS_PAGE = os.path.join(REPO_ROOT, "docs", "performance.md")


class Settings:
    def __init__(self, quick: bool, repeat: Optional[int] = None) -> None:
        self.quick = quick
        self.repeat = repeat or (1 if quick else 3)
        self.tp_seconds = 1 if quick else 2           # iperf3 -t
        self.tp_bytes_quick = 64 << 20               # quick mode: iperf3 -n / built-in bytes per stream
        self.bulk_bytes = 64 << 20 if quick else 512 << 20
        self.latency_count = 300 if quick else 2000
        self.latency_warmup = 50 if quick else 200
        self.setup_count = 30 if quick else 100
        self.http_seconds = 1.0 if quick else 2.0
        self.routed_count = 300 if quick else 2000
        self.routed_seconds = 0.5 if quick else 2.0
        self.conn_counts = [200] if quick else [1000, 5000]
        self.forwarder_counts = [10, 100] if quick else [10, 1000]
        self.orchestrator_projects = 5 if quick else 100
        self.orchestrator_relays = 50 if quick else 1000
        self.orchestrator_hold = 1.0 if quick else 10.0    # seconds the relays are held (re-registering)
        self.hol_seconds = 1.5 if quick else 2.0
        self.stall_seconds = 2.5 if quick else 3.5
        self.budget = 55.0 if quick else 570.0       # seconds; scenarios left then are skipped


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def agg(values: List[Optional[float]], nd: int = 3) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(vals), nd), "min": round(min(vals), nd), "max": round(max(vals), nd)}


def _not_above(state: Optional[dict], baseline: Optional[dict]) -> bool:
    """
    Whether no count of C{state} (a node's workers, portals, links,
    readers, delayed calls, ...) is above the same count in C{baseline}.
    """
    if state is None or baseline is None:
        return state == baseline
    return set(state) == set(baseline) and all(state[k] <= baseline[k] for k in baseline)


class Suite:
    def __init__(self, args) -> None:
        self.args = args
        self.s = Settings(args.quick, args.repeat)
        self.tag = f"ockbench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.workdir = os.path.join(tempfile.gettempdir(), self.tag)
        if not args.keep:
            # Registered before the process manager's own exit hook, so it runs after it.
            atexit.register(shutil.rmtree, self.workdir, True)
        self.pm = ProcessManager(self.tag, self.workdir)
        self.t0 = time.monotonic()
        self.notices: List[str] = []
        self.errors: List[str] = []
        self.results: dict = {}
        self.paths: List[Path] = []
        self.active: List[Path] = []
        self.ports: Dict[str, Dict[str, int]] = {}
        self.path_info: Dict[str, dict] = {}
        self.iperf3 = which("iperf3") if not args.builtin_bulk else None
        self.wrk = which("wrk") if not args.builtin_http else None

    # --- helpers ------------------------------------------------------------------

    def log(self, text: str) -> None:
        el = time.monotonic() - self.t0
        print(f"[{el:6.1f}s] {text}", file=sys.stderr, flush=True)

    def notice(self, text: str) -> None:
        self.notices.append(text)
        self.log("notice: " + text)

    def time_left(self) -> float:
        return self.s.budget - (time.monotonic() - self.t0)

    def run_cmd(self, argv: List[str], label: str, timeout: float) -> str:
        """
        Run a client process to its end (killed after timeout); its stdout.
        """
        proc = self.pm.start(argv, label, capture_stdout=True)
        try:
            out, _ = proc.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.pm.stop(proc)
            raise RuntimeError(f"{label}: no result within {timeout:g} s")
        self.pm.stop(proc)
        text = out.decode("utf-8", "replace")
        if proc.popen.returncode not in (0, None):
            raise RuntimeError(f"{label}: exit status {proc.popen.returncode}: {text[-300:]} {proc.tail(5)}")
        return text

    def probe(self, kind: str, *args: str, timeout: float = 60) -> dict:
        text = self.run_cmd([sys.executable, "-m", "benchmarks.probes", kind, "--tag", self.tag, *args],
                            f"probe-{kind}", timeout)
        lines = [l for l in text.splitlines() if l.strip().startswith("{")]
        if not lines:
            raise RuntimeError(f"probe {kind} printed no result: {text[-300:]}")
        return json.loads(lines[-1])

    def start_probe(self, kind: str, *args: str) -> Proc:
        proc = self.pm.start([sys.executable, "-m", "benchmarks.probes", kind, "--tag", self.tag, *args],
                             f"probe-{kind}", capture_stdout=True, stdin=subprocess.PIPE)
        return proc

    @staticmethod
    def read_json_line(proc: Proc, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        buf = b""
        fd = proc.popen.stdout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{proc.label}: no progress line within {timeout:g} s: {proc.tail(5)}")
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"{proc.label} ended: {buf[-300:]!r} {proc.tail(5)}")
                buf += chunk
                if b"\n" in buf:
                    line, _, rest = buf.partition(b"\n")
                    return json.loads(line)

    def node_snapshot(self, path: Path, heap: bool = False) -> Dict[str, dict]:
        """
        RSS and descriptors of each node; with heap (nodes started with the
        stats hook, see procs.node_main) also its live heap, after a garbage
        collection with the bounded address cache emptied, and its
        per-connection state (workers, portals, links, reactor readers,
        delayed calls).
        """
        out = {}
        for role, p in path.nodes:
            snap = {"rss": rss_bytes(p.pid), "fds": fd_count(p.pid)}
            st = node_stats(p, drop_caches=True) if heap else None
            if st:
                state = dict(st.get("node") or {})
                state.update(readers=st.get("reactor_readers"), writers=st.get("reactor_writers"),
                             delayed_calls=st.get("delayed_calls"))
                snap.update(heap=st.get("heap"), blocks=st.get("allocated_blocks"),
                            arenas=(st.get("pymalloc") or {}).get("arenas"),
                            address_cache=st.get("address_cache"), state=state,
                            rss=st.get("rss") or snap["rss"])
            out[role] = snap
        return out

    # --- setup ---------------------------------------------------------------------

    def machine_facts(self) -> dict:
        cpu = None
        try:
            with open("/proc/cpuinfo") as f:
                m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
                cpu = m.group(1).strip() if m else None
        except OSError:
            pass
        mem = None
        try:
            with open("/proc/meminfo") as f:
                m = re.search(r"^MemTotal:\s*(\d+)", f.read(), re.M)
                mem = round(int(m.group(1)) / 1048576, 1) if m else None
        except OSError:
            pass
        distro = None
        try:
            with open("/etc/os-release") as f:
                m = re.search(r'^PRETTY_NAME="?([^"\n]+)', f.read(), re.M)
                distro = m.group(1) if m else None
        except OSError:
            pass
        return {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "memory_gib": mem,
            "kernel": platform.release(),
            "os": distro,
            "python": platform.python_version(),
            "hostname_hash": format(abs(hash(socket.gethostname())) % (1 << 32), "08x"),
        }

    def commit(self) -> dict:
        def git(*a):
            try:
                return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
            except Exception:
                return None

        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head or None, "dirty": bool(dirty), "branch": git("rev-parse", "--abbrev-ref", "HEAD") or None}

    def versions(self) -> dict:
        import twisted

        v = {"python": sys.version.split()[0], "twisted": twisted.__version__}
        try:
            import ockamtw

            v["ockamtw"] = getattr(ockamtw, "__version__", None) or _dist_version("ockamtw")
        except Exception:
            pass
        if self.iperf3:
            v["iperf3"] = version_of([self.iperf3, "--version"])
        if self.wrk:
            v["wrk"] = version_of([self.wrk, "-v"])
        for p in self.paths:
            if p.kind == "peer" and not p.missing():
                v[p.name] = p.version()
        return v

    def start_targets(self) -> Dict[str, int]:
        proc = self.pm.start([sys.executable, "-m", "benchmarks.servers", "targets", "--tag", self.tag,
                              "--stall", str(self.s.stall_seconds)], "targets")
        m = proc.wait_for(r"PORTS (\{.*\})")
        targets = json.loads(m.group(1))
        self.targets_proc = proc
        if self.iperf3:
            port = free_port()
            ip = self.pm.start([self.iperf3, "-s", "-B", "127.0.0.1", "-p", str(port),
                                "-I", os.path.join(self.workdir, f"{self.tag}-iperf3.pid")], "iperf3-server")
            wait_port(port, proc=ip)
            targets["bulk"] = port
            self.bulk_tool = "iperf3"
        else:
            self.notice("iperf3 is not installed: throughput uses the built-in bulk sender/receiver "
                        "(apt-get install iperf3 for iperf3)")
            bp = self.pm.start([sys.executable, "-m", "benchmarks.servers", "bulk", "--tag", self.tag], "bulk-server")
            m = bp.wait_for(r"PORTS (\{.*\})")
            targets.update(json.loads(m.group(1)))
            self.bulk_tool = "builtin"
        if not self.wrk:
            self.notice("wrk is not installed: HTTP load uses the built-in keep-alive client (apt-get install wrk)")
        return targets

    def start_paths(self, targets: Dict[str, int]) -> None:
        self.paths = all_paths(self.pm, self.s.quick, peers=self.args.peers)
        wanted = set(self.args.paths.split(",")) if self.args.paths else None
        self.path_info = {}
        for p in self.paths:
            info = {"kind": p.kind, "description": p.description}
            self.path_info[p.name] = info
            if wanted is not None and p.name not in wanted and p.name != "direct":
                info["skipped"] = "not selected (--paths)"
                continue
            why = p.missing()
            if why:
                info["skipped"] = why
                self.notice(f"{p.name} skipped: {why}")
                continue
            try:
                self.ports[p.name] = p.start(targets)
                self.active.append(p)
                info["available"] = True
                self.log(f"path {p.name} up: {self.ports[p.name]}")
            except Exception as e:
                info["skipped"] = f"failed to start: {e}"
                self.error(f"{p.name}: failed to start: {e}", p)
                try:
                    p.stop()
                except Exception:
                    pass
        if not self.args.peers:
            self.notice("peers not run (socat, haproxy, ssh -L/-R): quick mode runs only direct, ockamtw and "
                        "Twisted's portforward; pass --peers to include them")

    def error(self, text: str, path: Optional[Path] = None) -> None:
        # A peer that fails is reported; only failures of our own paths make the run fail.
        if getattr(path, "kind", "ockamtw") != "peer":
            self.errors.append(text)
        self.notices.append("error: " + text)
        self.log("ERROR: " + text)

    # --- scenarios over all paths ------------------------------------------------------------

    def scenario_latency(self) -> None:
        res = {}
        for r in range(self.s.repeat):
            for p in self.active:
                try:
                    out = self.probe("latency", "--port", str(self.ports[p.name]["echo"]),
                                     "--count", str(self.s.latency_count), "--warmup", str(self.s.latency_warmup))
                except Exception as e:
                    out = {"error": str(e)}
                    self.error(f"latency {p.name}: {e}", p)
                res.setdefault(p.name, {"runs": []})["runs"].append(out)
        direct = None
        for name, v in res.items():
            runs = [x for x in v["runs"] if "error" not in x]
            v["p50_us"] = agg([x["p50_us"] for x in runs], 1)
            v["p99_us"] = agg([x["p99_us"] for x in runs], 1)
        direct = (res.get("direct") or {}).get("p50_us", {}).get("median")
        for name, v in res.items():
            m = v["p50_us"]["median"]
            v["added_p50_us"] = round(m - direct, 1) if m is not None and direct is not None else None
        self.results["latency_64b"] = {
            "description": "64-byte request/response over one connection to an echo target "
                           "(blocking-socket client in its own process); added = path p50 - direct p50",
            "unit": "us", "count_per_run": self.s.latency_count, "results": res}

    def scenario_setup(self) -> None:
        res = {}
        for r in range(self.s.repeat):
            for p in self.active:
                try:
                    out = self.probe("setup", "--port", str(self.ports[p.name]["echo"]),
                                     "--count", str(self.s.setup_count), timeout=120)
                except Exception as e:
                    out = {"error": str(e)}
                    self.error(f"setup {p.name}: {e}", p)
                res.setdefault(p.name, {"runs": []})["runs"].append(out)
        for name, v in res.items():
            runs = [x for x in v["runs"] if "error" not in x]
            v["p50_ms"] = agg([x["p50_us"] / 1000 for x in runs], 3)
            v["p99_ms"] = agg([x["p99_us"] / 1000 for x in runs], 3)
            v["failures"] = sum(x.get("failures", 0) for x in runs)
        self.results["connection_setup"] = {
            "description": "new connection ready: connect + 64-byte request + first reply, sequential",
            "unit": "ms", "count_per_run": self.s.setup_count, "results": res}

    @staticmethod
    def path_pids(p: Path) -> List[int]:
        pids = [proc.pid for _, proc in p.procs]
        if isinstance(p, _Ssh) and p.sshd.proc is not None:
            pids.append(p.sshd.proc.pid)  # its session processes do the server side's work
        return pids

    def throughput_once(self, p: Path, variant: str) -> dict:
        port = self.ports[p.name]["bulk"]
        if self.bulk_tool == "iperf3":
            argv = [self.iperf3, "-c", "127.0.0.1", "-p", str(port), "-J", "--connect-timeout", "5000"]
            if self.s.quick:
                argv += ["-n", str(self.s.tp_bytes_quick)]
            else:
                argv += ["-t", str(self.s.tp_seconds)]
            if variant == "down":
                argv.append("-R")
            if variant == "p4":
                argv += ["-P", "4"]
            last = None
            for attempt in range(2):
                try:
                    text = self.run_cmd(argv, f"iperf3-{p.name}-{variant}", timeout=self.s.tp_seconds + 30)
                    data = json.loads(text[text.index("{"):])
                except (RuntimeError, ValueError) as e:
                    last = str(e)
                    if "exit status" in last:
                        try:
                            data = json.loads(last[last.index("{"):])
                        except ValueError:
                            data = {"error": last}
                    else:
                        data = {"error": last}
                if "error" not in data:
                    end = data.get("end", {})
                    bps = end.get("sum_received", {}).get("bits_per_second")
                    if bps:
                        return {"gbit_s": round(bps / 1e9, 3), "tool": "iperf3",
                                "retransmits": end.get("sum_sent", {}).get("retransmits")}
                    last = "no sum_received in iperf3 output"
                else:
                    last = str(data["error"])
                time.sleep(1.0)  # the server may still be finishing the failed test
            raise RuntimeError(f"iperf3: {last}")
        args = ["--port", str(port), "--mode", "D" if variant == "down" else "U",
                "--bytes", str(self.s.bulk_bytes // (4 if variant == "p4" else 1)),
                "--parallel", "4" if variant == "p4" else "1"]
        out = self.probe("bulk", *args, timeout=120)
        if "error" in out:
            raise RuntimeError(out["error"])
        return {"gbit_s": round(out["bits_per_second"] / 1e9, 3), "tool": "builtin"}

    def scenario_throughput(self) -> None:
        variants = [("up", "client to server, 1 stream"), ("down", "server to client (-R), 1 stream"),
                    ("p4", "client to server, 4 parallel streams")]
        for variant, desc in variants:
            res = {}
            for r in range(self.s.repeat):
                for p in self.active:
                    if self.time_left() < 60 and not self.s.quick:
                        self.notice(f"throughput {variant} {p.name} run {r + 1} skipped: time budget")
                        continue
                    before = {role: cpu_seconds(proc.pid) for role, proc in p.nodes}
                    tree = self.path_pids(p)
                    tree0 = cpu_seconds_tree(tree)
                    t0 = time.monotonic()
                    try:
                        out = self.throughput_once(p, variant)
                    except Exception as e:
                        out = {"error": str(e)}
                        self.error(f"throughput {variant} {p.name}: {e}", p)
                    wall = time.monotonic() - t0
                    if tree and "error" not in out:
                        # CPU of the path's own processes (not the iperf3 ends), % of one core.
                        out["path_cpu_percent"] = round(100 * (cpu_seconds_tree(tree) - tree0) / wall, 1)
                    if p.kind == "ockamtw" and "error" not in out:
                        out["cpu_percent"] = {
                            role: round(100 * (cpu_seconds(proc.pid) - before[role]) / wall, 1)
                            for role, proc in p.nodes if before[role] is not None
                        }
                    res.setdefault(p.name, {"runs": []})["runs"].append(out)
            for name, v in res.items():
                v["gbit_s"] = agg([x.get("gbit_s") for x in v["runs"]], 3)
                v["path_cpu_percent"] = agg([x.get("path_cpu_percent") for x in v["runs"]], 1)
            self.results[f"throughput_{variant}"] = {
                "description": f"bulk throughput, {desc} ({self.bulk_tool})", "unit": "Gbit/s",
                "tool": self.bulk_tool, "results": res}

    def http_once(self, p: Path) -> dict:
        port = self.ports[p.name]["http"]
        if self.wrk:
            secs = max(1, int(round(self.s.http_seconds)))
            text = self.run_cmd([self.wrk, "-t1", "-c32", f"-d{secs}s", "--latency", "--timeout", "5s",
                                 f"http://127.0.0.1:{port}/"], f"wrk-{p.name}", timeout=secs + 20)
            m = re.search(r"Requests/sec:\s+([\d.]+)", text)
            if not m:
                raise RuntimeError(f"wrk printed no Requests/sec: {text[-300:]}")
            out = {"requests_per_second": float(m.group(1)), "tool": "wrk"}
            for q in ("50", "99"):
                mm = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
                if mm:
                    mult = {"us": 1, "ms": 1000, "s": 1e6}[mm.group(2)]
                    out[f"p{q}_us"] = round(float(mm.group(1)) * mult, 1)
            errs = re.search(r"Socket errors: (.*)", text)
            non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
            if errs:
                out["socket_errors"] = errs.group(1).strip()
            if non2xx:
                out["non_2xx"] = int(non2xx.group(1))
            return out
        return self.probe("http", "--port", str(port), "--duration", str(self.s.http_seconds), timeout=60)

    def scenario_http(self) -> None:
        res = {}
        for r in range(self.s.repeat):
            for p in self.active:
                if self.time_left() < 45 and not self.s.quick:
                    self.notice(f"http {p.name} run {r + 1} skipped: time budget")
                    continue
                try:
                    out = self.http_once(p)
                except Exception as e:
                    out = {"error": str(e)}
                    self.error(f"http {p.name}: {e}", p)
                res.setdefault(p.name, {"runs": []})["runs"].append(out)
        for name, v in res.items():
            runs = [x for x in v["runs"] if "error" not in x]
            v["requests_per_second"] = agg([x.get("requests_per_second") for x in runs], 1)
            v["p99_us"] = agg([x.get("p99_us") for x in runs], 1)
        self.results["http"] = {
            "description": "HTTP/1.1 keep-alive GET through the path, 32 connections, 1 client thread "
                           f"({'wrk' if self.wrk else 'built-in client'})",
            "unit": "requests/s", "results": res}

    # --- routed messages ----------------------------------------------------------------------

    def scenario_routed(self) -> None:
        relay = next((p for p in self.active if p.name == "ockam_relay"), None) or next(
            (p for p in self.active if isinstance(p, OckamRelay)), None)
        if relay is None:
            self.error("routed round trip: the ockam_relay path is not running")
            return
        res = {}
        cases = [("0_relay_hops", "echo", "client -> node R's echo (1 TCP link)"),
                 ("1_relay_hop", f"{relay.alias},echo",
                  "client -> relay node R -> forwarder -> outlet node O's echo (2 TCP links)")]
        for r in range(self.s.repeat):
            for key, route, desc in cases:
                try:
                    out = self.probe("routed", "--port", str(relay.relay_port), "--route", route,
                                     "--count", str(self.s.routed_count), "--duration", str(self.s.routed_seconds),
                                     "--inflight", "32")
                except Exception as e:
                    out = {"error": str(e)}
                    self.error(f"routed {key}: {e}")
                res.setdefault(key, {"description": desc, "runs": []})["runs"].append(out)
        for key, v in res.items():
            runs = [x for x in v["runs"] if "error" not in x]
            v["p50_us"] = agg([x["latency"]["p50_us"] for x in runs], 1)
            v["p99_us"] = agg([x["latency"]["p99_us"] for x in runs], 1)
            v["messages_per_second"] = agg([x.get("messages_per_second") for x in runs], 1)
        self.results["routed_rtt"] = {
            "description": "routed-message round trip (64-byte payload, raw Ockam frames from a client process); "
                           "latency sequential, messages/s with 32 in flight",
            "results": res}

    # --- head-of-line ----------------------------------------------------------------------------

    def scenario_hol(self) -> None:
        names = ["ockam_relay", "ockam_inlet_outlet", "ssh_R"]
        res = {}
        for p in self.active:
            if p.name not in names:
                continue
            ports = self.ports[p.name]
            base = self.node_snapshot(p)
            started = time.monotonic()
            proc = self.start_probe("hol", "--echo-port", str(ports["echo"]), "--stall-port", str(ports["stall"]),
                                    "--duration", str(self.s.hol_seconds))
            peak = {role: v["rss"] for role, v in base.items()}
            try:
                while proc.poll() is None and time.monotonic() - started < self.s.hol_seconds + 20:
                    for role, node in p.nodes:
                        r = rss_bytes(node.pid)
                        if r is not None and (peak.get(role) is None or r > peak[role]):
                            peak[role] = r
                    time.sleep(0.05)
                out = self.read_json_line(proc, 5)
            except Exception as e:
                out = {"error": str(e)}
                self.error(f"head-of-line {p.name}: {e}", p)
            finally:
                self.pm.stop(proc)
            if "error" not in out:
                out["rss_growth_kib"] = {
                    role: round((peak[role] - base[role]["rss"]) / 1024, 1)
                    for role in peak if peak[role] is not None and base[role]["rss"] is not None
                }
            res[p.name] = out
            # The slow reader drains after its stall: wait for it so the next path starts clean.
            wait = self.s.stall_seconds + 0.5 - (time.monotonic() - started)
            if wait > 0:
                time.sleep(wait)
        self.results["head_of_line"] = {
            "description": "a stream to a target that reads nothing for "
                           f"{self.s.stall_seconds:g} s is flooded for {self.s.hol_seconds:g} s while a "
                           "neighbour stream on the same path pings an echo target every 20 ms; stalled = "
                           "neighbour pings over 1 s (or timed out); a second neighbour echoes 16 MiB before "
                           "and during the flood (throughput loss = before / during); RSS growth per node "
                           "during the flood",
            "results": res}

    # --- fresh nodes: forwarders and concurrent connections ---------------------------------------------

    def scenario_memory(self, targets: Dict[str, int]) -> None:
        topo = OckamRelay(self.pm)
        topo.name = "ockam_relay_fresh"
        topo.stats_hook = True  # the nodes answer heap and state readings (procs.node_main)
        try:
            ports = topo.start({"echo": targets["echo"]})
        except Exception as e:
            self.error(f"fresh relay topology: {e}")
            topo.stop()
            return
        try:
            # Warm up: the first connections and messages load code and fill caches.
            self.probe("setup", "--port", str(ports["echo"]), "--count", "50", "--warmup", "0")
            self.probe("routed", "--port", str(topo.relay_port), "--route", f"{topo.alias},echo",
                       "--count", "200", "--duration", "0")
            if self.time_left() > 30 or self.s.quick:
                self.forwarders(topo, ports)
            else:
                self.notice("relay forwarders scenario skipped: time budget")
            self.concurrent(topo, ports)
        finally:
            topo.stop()

    def forwarders(self, topo: OckamRelay, ports) -> None:
        res = {}
        holders = []
        registered = 1  # the outlet node's own relay
        relay_proc = dict(topo.nodes)["relay"]
        base_rss = rss_bytes(relay_proc.pid)
        try:
            for n in self.s.forwarder_counts:
                add = n - registered
                if add > 0:
                    h = self.start_probe("register", "--port", str(topo.relay_port), "--count", str(add),
                                         "--prefix", f"bench{registered}_")
                    holders.append(h)
                    got = self.read_json_line(h, 60)
                    if got.get("registered") != add:
                        raise RuntimeError(f"registered {got.get('registered')} of {add}")
                    registered = n
                time.sleep(0.3)
                entry = {"forwarders": registered, "relay_rss_kib": round(rss_bytes(relay_proc.pid) / 1024, 1)}
                runs = []
                for r in range(self.s.repeat):
                    out = self.probe("routed", "--port", str(topo.relay_port), "--route", f"{topo.alias},echo",
                                     "--count", str(self.s.routed_count), "--duration", str(self.s.routed_seconds),
                                     "--inflight", "32")
                    lat = self.probe("latency", "--port", str(ports["echo"]), "--count",
                                     str(self.s.latency_count), "--warmup", str(self.s.latency_warmup))
                    runs.append({"routed": out, "portal_64b": lat})
                entry["runs"] = runs
                entry["routed_p50_us"] = agg([x["routed"]["latency"]["p50_us"] for x in runs], 1)
                entry["routed_p99_us"] = agg([x["routed"]["latency"]["p99_us"] for x in runs], 1)
                entry["messages_per_second"] = agg([x["routed"].get("messages_per_second") for x in runs], 1)
                entry["portal_p50_us"] = agg([x["portal_64b"]["p50_us"] for x in runs], 1)
                entry["portal_p99_us"] = agg([x["portal_64b"]["p99_us"] for x in runs], 1)
                res[str(n)] = entry
                self.log(f"forwarders {n}: routed p50 {entry['routed_p50_us']['median']} us")
            if len(res) >= 2 and base_rss:
                top = res[str(self.s.forwarder_counts[-1])]
                low = res[str(self.s.forwarder_counts[0])]
                grew = (top["relay_rss_kib"] - low["relay_rss_kib"]) * 1024
                nf = self.s.forwarder_counts[-1] - self.s.forwarder_counts[0]
                top["relay_bytes_per_forwarder"] = round(grew / nf, 1)
        except Exception as e:
            self.error(f"relay forwarders: {e}")
            traceback.print_exc()
        finally:
            for h in holders:
                try:
                    h.popen.stdin.write(b"close\n")
                    h.popen.stdin.flush()
                except Exception:
                    pass
                self.pm.stop(h)
        self.results["relay_forwarders"] = {
            "description": "routed round trip through relay R to O's echo (and a 64-byte portal round trip "
                           "through R) while R holds N forwarders (registered over one extra connection)",
            "results": res}

    def hold_round(self, topo: OckamRelay, ports, n: int) -> tuple:
        """
        Open n connections through the topology, snapshot the nodes while
        they are held, close them, and wait until the nodes' descriptors
        and per-connection state are back to where they were.  Returns
        (base, held, after, probe output).
        """
        base = self.node_snapshot(topo, heap=True)
        proc = self.start_probe("conns", "--port", str(ports["echo"]), "--count", str(n))
        try:
            info = self.read_json_line(proc, 120)
            time.sleep(0.5)
            held = self.node_snapshot(topo, heap=True)
            proc.popen.stdin.write(b"close\n")
            proc.popen.stdin.flush()
            info.update(self.read_json_line(proc, 60))
        finally:
            self.pm.stop(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = self.node_snapshot(topo)
            if all(now[r]["fds"] is not None and now[r]["fds"] <= base[r]["fds"] + 2 for r in now):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        after = self.node_snapshot(topo, heap=True)
        while time.monotonic() < deadline and any(after[r].get("state") != base[r].get("state") for r in after):
            time.sleep(0.5)
            after = self.node_snapshot(topo, heap=True)
        return base, held, after, info

    #: Rounds of each count in the concurrent-connections scenario.
    conn_rounds = 3
    #: The leak criterion: live heap kept per connection per round, the
    #: smallest increase over the rounds after the first.  A connection's
    #: state is ~3 KiB of heap on the inlet and outlet nodes; one leaked
    #: object per connection is 50 bytes or more.  At least leak_floor_bytes
    #: a round: CPython's free lists and caches move by some KiB.
    leak_bytes_per_conn = 48
    leak_floor_bytes = 64 * 1024

    def leak_limit(self, n: int) -> float:
        """
        The most live heap per connection a round may add (bytes).
        """
        return round(max(self.leak_bytes_per_conn, self.leak_floor_bytes / n), 1)

    def concurrent(self, topo: OckamRelay, ports) -> None:
        """
        For each N: hold N connections and close them, conn_rounds times.

        RSS cannot tell a leak from the allocators' retention: CPython's
        pymalloc frees a 1 MiB arena only when every object in it is gone,
        and glibc keeps freed chunks, so RSS after closing stays above the
        baseline and plateaus.  The nodes' live heap (bytes in objects, read
        by the stats hook after a garbage collection) and their
        per-connection state (workers, portals, links, reactor readers,
        delayed calls) are what a leak changes: the check is that the state
        is back to baseline after every round and the live heap does not grow
        from round to round.  The first round may keep a bounded amount
        (dicts and sets keep the capacity they grew to) that later rounds
        reuse; ockamtw.wire's address cache (bounded, cleared when full) is
        emptied before each reading.
        """
        rounds = self.conn_rounds
        res = {}
        for n in self.s.conn_counts:
            if self.time_left() < 20 and not self.s.quick:
                self.notice(f"concurrent {n} skipped: time budget")
                continue
            time.sleep(0.5)
            entry = {"connections": n, "rounds": rounds}
            try:
                runs = [self.hold_round(topo, ports, n) for _ in range(rounds)]
                base, held, after, info = runs[0]
                entry.update(info)
                entry["later_rounds"] = [{k: r[3].get(k) for k in ("holding", "failures", "open_seconds",
                                                                   "ready_p50_us", "ready_p99_us")}
                                         for r in runs[1:]]
                entry["nodes"] = {}
                for role in base:
                    b, d = base[role]["rss"], held[role]["rss"]
                    growth = d - b
                    closed = [r[2][role]["rss"] for r in runs]
                    v = {
                        "rss_base_kib": round(b / 1024, 1),
                        "kib_per_connection": round(growth / 1024 / n, 2),
                        "rss_held_kib": [round(r[1][role]["rss"] / 1024, 1) for r in runs],
                        "rss_closed_kib": [round(x / 1024, 1) for x in closed],
                        # Above the baseline after the first close (the allocators keep it) ...
                        "retained_after_close_kib": round((closed[0] - b) / 1024, 1),
                        # ... and what later rounds add to it: about 0 when it is reused.
                        "rss_later_growth_kib": round((closed[-1] - closed[0]) / 1024, 1),
                        "fds_base": base[role]["fds"], "fds_held": held[role]["fds"],
                        "fds_closed": [r[2][role]["fds"] for r in runs],
                    }
                    hb = base[role].get("heap")
                    if hb is not None and all(r[1][role].get("heap") is not None and r[2][role].get("heap")
                                              is not None for r in runs):
                        hc = [r[2][role]["heap"] for r in runs]
                        v.update({
                            "heap_base_kib": round(hb / 1024, 1),
                            "heap_held_kib": [round(r[1][role]["heap"] / 1024, 1) for r in runs],
                            "heap_closed_kib": [round(x / 1024, 1) for x in hc],
                            "heap_bytes_per_connection": round((held[role]["heap"] - hb) / n),
                            "heap_retained_after_close_kib": round((hc[0] - hb) / 1024, 1),
                            # What each later round added to the live heap after closing ...
                            "heap_round_increments_kib": [round((y - x) / 1024, 1) for x, y in zip(hc, hc[1:])],
                            # ... and the leak measure: the smallest of them, per connection.  A leak adds
                            # about as much every round; a dict or set that grows its capacity once more
                            # (they never shrink) adds to one round only.
                            "heap_growth_bytes_per_conn_round": round(min((y - x) for x, y in zip(hc, hc[1:]))
                                                                      / n, 1) if rounds > 1 else None,
                            "arenas": [base[role].get("arenas")] + [r[2][role].get("arenas") for r in runs],
                            "address_cache": [r[2][role].get("address_cache") for r in runs],
                        })
                    v["state_base"] = base[role].get("state")
                    v["state_held"] = held[role].get("state")
                    v["state_closed"] = [r[2][role].get("state") for r in runs]
                    v["state_round_base"] = [r[0][role].get("state") for r in runs]
                    # Back to baseline: after closing, no count above what the round started
                    # with (a leak only adds; one fewer timer pending, a progress check armed
                    # by an earlier phase that has lapsed since, is not one).
                    v["state_back_to_baseline"] = (None if base[role].get("state") is None else
                                                   all(_not_above(r[2][role].get("state"), r[0][role].get("state"))
                                                       for r in runs))
                    entry["nodes"][role] = v
                nodes = entry["nodes"].values()
                entry["all_succeeded"] = all(r[3].get("holding") == n and r[3].get("failures") == 0 for r in runs)
                entry["fds_back_to_baseline"] = all(max(v["fds_closed"]) <= v["fds_base"] + 2 for v in nodes)
                entry["state_back_to_baseline"] = all(v["state_back_to_baseline"] for v in nodes) \
                    if all(v["state_back_to_baseline"] is not None for v in nodes) else None
                growth = [v.get("heap_growth_bytes_per_conn_round") for v in nodes]
                entry["heap_growth_bytes_per_conn_round"] = None if None in growth else max(growth)
                entry["no_leak"] = (None if entry["heap_growth_bytes_per_conn_round"] is None
                                    or entry["state_back_to_baseline"] is None else
                                    entry["heap_growth_bytes_per_conn_round"] <= self.leak_limit(n)
                                    and entry["state_back_to_baseline"] and entry["fds_back_to_baseline"])
                per_conn = {r: v["kib_per_connection"] for r, v in entry["nodes"].items()}
                kept = {r: v.get("heap_growth_bytes_per_conn_round") for r, v in entry["nodes"].items()}
                self.log(f"concurrent {n}: held {entry.get('holding')}, per conn KiB {per_conn}, "
                         f"heap kept B/conn/round {kept}")
            except Exception as e:
                entry["error"] = str(e)
                self.error(f"concurrent {n}: {e}")
                traceback.print_exc()
            res[str(n)] = entry
        self.results["concurrent_connections"] = {
            "description": f"N portal connections through inlet -> relay -> outlet held at once (each did one "
                           f"64-byte echo), then closed; {rounds} rounds; per node: RSS, live heap (objects "
                           f"in use, after a collection) and per-connection state at baseline, held, closed",
            "leak_criterion": (f"no leak: after every round the nodes' workers, portals, links, reactor readers and "
                               f"delayed calls are back to baseline (none above it), descriptors too, and every round after the "
                               f"first adds to the live heap after closing at most "
                               f"{self.leak_bytes_per_conn} bytes per connection, or "
                               f"{self.leak_floor_bytes // 1024} KiB in all if more (a leak adds about the "
                               f"same every round); RSS kept after closing (allocator retention, reused by "
                               f"later rounds) is reported but not judged"),
            "results": res}

    # --- one orchestrator, many projects and relays -------------------------------------------------

    def scenario_orchestrator_scale(self) -> None:
        """
        A fresh Orchestrator process; a client process (an ockamtw node,
        L{benchmarks.orchestrator_probe}) makes it serve N projects, reaches
        each as a member (credential, secure channel, presentation) and
        registers M relays spread over them, then holds them while they
        re-register every 5 s.  Between the phases: the Orchestrator's RSS
        and CPU time.
        """
        n, m = self.s.orchestrator_projects, self.s.orchestrator_relays
        data = os.path.join(self.workdir, "orchestrator-scale")
        orch = self.pm.start([sys.executable, "-m", "ockamtw.orchestrator", "--data", data, "--http",
                              "tcp:0:interface=127.0.0.1", "--project-ports", "0"], "orchestrator-scale")
        probe = None
        out: dict = {"projects": n, "relays": m}
        try:
            url = orch.wait_for(r"serving (http://127\.0\.0\.1:\d+)", timeout=30).group(1)
            time.sleep(0.3)
            rss = {"started": rss_bytes(orch.pid)}
            cpu0 = cpu_seconds(orch.pid)
            probe = self.start_probe("orchestrator_scale", "--url", url, "--data", data, "--projects", str(n),
                                     "--relays", str(m))

            def step(phase: str, timeout: float) -> dict:
                got = self.read_json_line(probe, timeout)
                if got.get("phase") != phase:
                    raise RuntimeError(f"the orchestrator probe said {got!r}, expected phase {phase!r}")
                time.sleep(0.5)
                rss[phase] = rss_bytes(orch.pid)
                return got

            def go() -> None:
                probe.popen.stdin.write(b"go\n")
                probe.popen.stdin.flush()

            projects = step("projects", 600)
            go()
            channels = step("channels", 600)
            go()
            c0 = cpu_seconds(orch.pid)
            relays = step("relays", 600)
            c1, t1 = cpu_seconds(orch.pid), time.monotonic()
            time.sleep(self.s.orchestrator_hold)
            c2, t2 = cpu_seconds(orch.pid), time.monotonic()
            rss["held"] = rss_bytes(orch.pid)
            go()
            done = self.read_json_line(probe, 120)

            def kib(a, b, per):
                return round((rss[b] - rss[a]) / 1024 / per, 2) if rss.get(a) and rss.get(b) and per else None

            out.update({
                "projects_per_second": projects.get("per_second"),
                "projects_seconds": projects.get("seconds"),
                "channels_per_second": channels.get("per_second"),
                "registrations_per_second": relays.get("per_second"),
                "registration_seconds": relays.get("seconds"),
                "registration_cpu_seconds": round(c1 - c0, 3) if c0 is not None and c1 is not None else None,
                # The Orchestrator's CPU per registration (the client, one process, may be what
                # limits registrations/s): the rate one core could take.
                "registrations_per_cpu_second": round(m / (c1 - c0), 1) if c0 is not None and c1 is not None
                and c1 > c0 else None,
                "held_cpu_percent": round(100 * (c2 - c1) / (t2 - t1), 1) if c1 is not None and c2 is not None else None,
                "held_seconds": self.s.orchestrator_hold,
                "relays_up": done.get("relays_up"),
                "rss_mib": {k: round(v / 1048576, 1) for k, v in rss.items() if v is not None},
                "kib_per_project": kib("started", "projects", n),
                "kib_per_member_channel": kib("projects", "channels", n),
                "kib_per_relay": kib("channels", "relays", m),
                "kib_per_relay_held": kib("channels", "held", m),
                "cpu_seconds_total": round(cpu_seconds(orch.pid) - cpu0, 2) if cpu0 is not None else None,
            })
            if done.get("relays_up") != m:
                self.error(f"orchestrator_scale: {done.get('relays_up')} of {m} relays up after holding them")
            self.log(f"orchestrator_scale: {n} projects, {m} relays: {out['registrations_per_second']} registrations/s, "
                     f"{out['kib_per_relay']} KiB per relay, {out['kib_per_project']} KiB per project")
        except Exception as e:
            out["error"] = str(e)
            self.error(f"orchestrator_scale: {e}")
            traceback.print_exc()
        finally:
            if probe is not None:
                self.pm.stop(probe)
            self.pm.stop(orch)
        self.results["orchestrator_scale"] = {
            "description": f"One Orchestrator process serving {n} projects (a project node and an authority "
                           f"each), reached by one member node (a credential, a secure channel and a "
                           f"presentation per project), with {m} relays registered at once, spread over the "
                           f"projects, then held for {self.s.orchestrator_hold:g} s (each re-registers every "
                           "5 s); RSS of the Orchestrator after each phase; per relay = (after the relays - "
                           "after the channels) / relays",
            "results": {"orchestrator": out}}

    # --- ratios --------------------------------------------------------------------------------------

    def ratios(self) -> List[dict]:
        R = self.results
        out = []

        def get(scn, path, *keys):
            v = R.get(scn, {}).get("results", {}).get(path)
            for k in keys:
                if v is None:
                    return None
                v = v.get(k) if isinstance(v, dict) else None
            return v

        def ratio(a, b):
            return round(a / b, 3) if a is not None and b else None

        def shown(v, unit=""):
            # A missing figure (a peer not run, a scenario skipped) in a detail.
            return "not measured" if v is None else f"{v}{unit}"

        def add(name, value, target, met, detail, op, key=None):
            # target None: a ratio for information, with no goal (met is None).
            entry = {"name": name, "value": value, "target": target, "op": op,
                     "met": (None if value is None or met is None else bool(met(value))), "detail": detail}
            if key:
                entry["key"] = key
            out.append(entry)

        for variant in ("up", "down", "p4"):
            scn = f"throughput_{variant}"
            rel = get(scn, "ockam_relay", "gbit_s", "median")
            ssh = get(scn, "ssh_R", "gbit_s", "median")
            io = get(scn, "ockam_inlet_outlet", "gbit_s", "median")
            soc = get(scn, "socat", "gbit_s", "median")
            suffix = "" if variant == "up" else f" ({variant})"
            add(f"relay throughput / ssh -R{suffix}", ratio(rel, ssh), 1.0, lambda v: v >= 1.0,
                f"{shown(rel, ' Gbit/s')} vs ssh -R {shown(ssh, ' Gbit/s')}", ">=")
            add(f"inlet->outlet throughput / socat{suffix}", ratio(io, soc), 0.8, lambda v: v >= 0.8,
                f"{shown(io, ' Gbit/s')} vs socat {shown(soc, ' Gbit/s')}", ">=")
        sec = self.secure_summary()
        if sec:
            for variant in ("up", "down", "p4"):
                t = sec["target_2_gbit_s"][variant]
                suffix = "" if variant == "up" else f" ({variant})"
                add(f"secure portal inlet -> relay -> outlet throughput, Gbit/s{suffix}", t["gbit_s"],
                    SECURE_TARGET_GBIT_S, lambda v: v >= SECURE_TARGET_GBIT_S,
                    "portal inside a secure channel through the relay (ockam_secure_relay)", ">=",
                    key=f"secure_target_2_gbit_s_{variant}")
            for variant in ("up", "down", "p4"):
                c = sec["secure_relay_vs_relay"][f"throughput_{variant}"]
                suffix = "" if variant == "up" else f" ({variant})"
                add(f"secure_relay_vs_relay: throughput{suffix}", c["ratio"], None, None,
                    f"{shown(c['secure'], ' Gbit/s')} vs {shown(c['relay'], ' Gbit/s')} (secure channel vs the same "
                    "relay path without)", "",
                    key=f"secure_relay_vs_relay_throughput_{variant}")
            rust = sec["vs_ockam_rust_portal"]
            add("secure portal / Ockam's Rust portal (published ~1.5 Gbit/s with its secure channel)",
                rust["ratio"], None, None,
                f"{shown(rust['ours_gbit_s'], ' Gbit/s')} vs {rust['published_gbit_s']} Gbit/s (a published figure, not measured "
                "here: other machine, other conditions)", "", key="secure_vs_ockam_rust_portal")
        proj = self.project_summary()
        if proj:
            for key, label in (("throughput_up", "throughput"), ("throughput_down", "throughput (down)"),
                               ("throughput_p4", "throughput (p4)"), ("http_requests_per_second", "HTTP requests/s"),
                               ("latency_p50_us", "64-byte RTT p50"), ("setup_p50_ms", "new connection p50")):
                c = proj["project_vs_relay"][key]
                add(f"project_vs_relay: {label}", c["ratio"], None, None,
                    f"{shown(c['project'])} vs {shown(c['relay'])} (the seed's portal through a project vs through "
                    "a relay node, same run)", "", key=f"project_vs_relay_{key}")
        orch = R.get("orchestrator_scale", {}).get("results", {}).get("orchestrator")
        if orch and "error" not in orch:
            add(f"orchestrator with {orch['projects']} projects and {orch['relays']} relays: registrations/s",
                orch.get("registrations_per_second"), None, None,
                f"all at once from one member node; the Orchestrator's CPU per registration allows "
                f"{shown(orch.get('registrations_per_cpu_second'))}/s on one core", "", key="orchestrator_registrations")
            add(f"orchestrator with {orch['projects']} projects and {orch['relays']} relays: KiB per relay",
                orch.get("kib_per_relay"), None, None,
                f"RSS growth per relay; per project {shown(orch.get('kib_per_project'), ' KiB')}, per member "
                f"channel {shown(orch.get('kib_per_member_channel'), ' KiB')}", "", key="orchestrator_kib_per_relay")
        rl = get("latency_64b", "ockam_relay", "added_p50_us")
        pf = get("latency_64b", "twisted_portforward", "added_p50_us")
        add("added 64-byte RTT: relay / portforward", ratio(rl, pf), 2.0, lambda v: v <= 2.0,
            f"relay {shown(None if rl is None else f'+{rl}', ' us')} vs portforward "
            f"{shown(None if pf is None else f'+{pf}', ' us')} (p50 over direct)", "<=")
        sp = get("connection_setup", "ockam_relay", "p99_ms", "median")
        ss = get("connection_setup", "ssh_R", "p99_ms", "median")
        add("new connection through the relay, p99 (ms)", sp, 2.0, lambda v: v < 2.0,
            f"ssh -R p99 {shown(ss, ' ms')}", "<")
        conc = R.get("concurrent_connections", {}).get("results", {})
        for n, entry in conc.items():
            nodes = entry.get("nodes") or {}
            worst = max((v["kib_per_connection"] for v in nodes.values()), default=None)
            ok = entry.get("all_succeeded")
            add(f"{n} concurrent connections via one relay: worst KiB/conn/node", worst, 16.0,
                lambda v, ok=ok: v < 16.0 and ok,
                f"all succeeded: {ok}; per node: " + ", ".join(f"{r} {v['kib_per_connection']}"
                                                               for r, v in nodes.items()), "<")
            fds = entry.get("fds_back_to_baseline")
            state = entry.get("state_back_to_baseline")
            leak = entry.get("heap_growth_bytes_per_conn_round")
            limit = self.leak_limit(int(n))
            rounds = entry.get("rounds", 3)
            add(f"{n} connections closed ({rounds} rounds): live heap kept per connection per round, bytes "
                "(worst node)", leak, limit,
                lambda v, fds=fds, state=state: v <= limit and bool(fds) and bool(state),
                f"a leak grows the live heap every round (~3 KiB per leaked connection); state (workers, portals, "
                f"links, readers, delayed calls) back to baseline: {state}; descriptors: {fds}; per node: " +
                ", ".join(f"{r} {v.get('heap_growth_bytes_per_conn_round')}" for r, v in nodes.items()) +
                ". Not judged: RSS kept after closing (pymalloc arenas and glibc free lists the allocators "
                "keep and reuse), KiB after round 1 / added by later rounds: " +
                ", ".join(f"{r} {v['retained_after_close_kib']} / {v['rss_later_growth_kib']}"
                          for r, v in nodes.items()), "<=", key=f"concurrent_{n}_no_leak")
        fw = R.get("relay_forwarders", {}).get("results", {})
        if len(fw) >= 2:
            ks = sorted(fw, key=int)
            lo, hi = fw[ks[0]], fw[ks[-1]]
            a, b = hi["routed_p50_us"]["median"], lo["routed_p50_us"]["median"]
            add(f"relay with {ks[-1]} forwarders / {ks[0]}: routed p50", ratio(a, b), 1.25, lambda v: v <= 1.25,
                f"{shown(a, ' us')} vs {shown(b, ' us')}", "<=")
        hol = R.get("head_of_line", {}).get("results", {})
        for name in ("ockam_relay", "ockam_inlet_outlet", "ssh_R"):
            h = hol.get(name)
            if not h or "error" in h:
                continue
            add(f"head-of-line ({name}): neighbour pings stalled", h.get("neighbour_stalled"), 0,
                lambda v: v == 0, f"during flood p50 "
                f"{shown((h.get('neighbour_during') or {}).get('p50_us'), ' us')}, "
                f"stalled stream accepted {shown(h.get('stalled_stream_bytes_accepted'), ' bytes')}", "==")
            loss = h.get("neighbour_bulk_loss")
            add(f"head-of-line ({name}): neighbour echo throughput before / during", loss, 2,
                lambda v: v is not None and v <= 2,
                f"{shown(h.get('neighbour_bulk_before_mbps'), ' MB/s')} vs "
                f"{shown(h.get('neighbour_bulk_during_mbps'), ' MB/s')}", "<=")
            growth = h.get("rss_growth_kib") or {}
            worst = max(growth.values(), default=None)
            if name.startswith("ockam"):
                # Two streams move here (the stalled one, the bulk neighbour);
                # a node writing to a socket may hold one credit window per
                # stream (docs/protocol.md 6.1); allow 2 MiB more for the rest.
                bound = 2 * STREAM_WINDOW // 1024 + 2048
                add(f"stalled + bulk neighbour ({name}): worst RSS growth per node (KiB)", worst, bound,
                    lambda v, b=bound: v <= b, ", ".join(f"{r} {v}" for r, v in growth.items()), "<=")
        return out

    def project_summary(self) -> Optional[dict]:
        """
        The project path (the seed's Orchestrator section) beside the plain
        relay path: each figure of both and their ratio (project / relay),
        within this run.  None when the project path did not run.
        """
        R = self.results
        proj, rel = "ockam_project", "ockam_relay"

        def get(scn, path, *keys):
            v = R.get(scn, {}).get("results", {}).get(path)
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            return v

        if not any(proj in R.get(scn, {}).get("results", {}) for scn in R):
            return None

        def pair(scn, *keys):
            a, b = get(scn, proj, *keys), get(scn, rel, *keys)
            return {"project": a, "relay": b, "ratio": round(a / b, 3) if a is not None and b else None}

        cmp = {f"throughput_{v}": pair(f"throughput_{v}", "gbit_s", "median") for v in ("up", "down", "p4")}
        cmp["path_cpu_percent_up"] = pair("throughput_up", "path_cpu_percent", "median")
        cmp["latency_p50_us"] = pair("latency_64b", "p50_us", "median")
        cmp["latency_p99_us"] = pair("latency_64b", "p99_us", "median")
        cmp["setup_p50_ms"] = pair("connection_setup", "p50_ms", "median")
        cmp["setup_p99_ms"] = pair("connection_setup", "p99_ms", "median")
        cmp["http_requests_per_second"] = pair("http", "requests_per_second", "median")
        return {
            "path": proj,
            "compared_with": rel,
            "description": "the seed's portal through a self-hosted Orchestrator's project (inlet node -> project "
                           "node -> outlet node, each node's link to the project a secure channel, the project "
                           "node decrypting and encrypting every message) beside the same portal through a relay "
                           "node (ockam_relay); ratio = project / relay, within this run",
            "project_vs_relay": cmp,
        }

    def secure_summary(self) -> Optional[dict]:
        """
        The secure relay path beside the plain relay path: each figure of
        both and their ratio (secure / plain), the issue's 2 Gbit/s target
        for a portal through a secure channel, and the ratio to the
        throughput published for Ockam's Rust portal with its channel.
        None when the secure path did not run.
        """
        R = self.results
        sec, rel = "ockam_secure_relay", "ockam_relay"

        def get(scn, path, *keys):
            v = R.get(scn, {}).get("results", {}).get(path)
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            return v

        if not any(sec in R.get(scn, {}).get("results", {}) for scn in R):
            return None

        def pair(scn, *keys, nd=3):
            a, b = get(scn, sec, *keys), get(scn, rel, *keys)
            return {"secure": a, "relay": b, "ratio": round(a / b, nd) if a is not None and b else None}

        cmp = {f"throughput_{v}": pair(f"throughput_{v}", "gbit_s", "median") for v in ("up", "down", "p4")}
        cmp["path_cpu_percent_up"] = pair("throughput_up", "path_cpu_percent", "median")
        cmp["latency_p50_us"] = pair("latency_64b", "p50_us", "median")
        cmp["latency_p99_us"] = pair("latency_64b", "p99_us", "median")
        cmp["latency_added_p50_us"] = pair("latency_64b", "added_p50_us")
        cmp["setup_p50_ms"] = pair("connection_setup", "p50_ms", "median")
        cmp["setup_p99_ms"] = pair("connection_setup", "p99_ms", "median")
        cmp["http_requests_per_second"] = pair("http", "requests_per_second", "median")
        up = cmp["throughput_up"]["secure"]
        target = {}
        for v in ("up", "down", "p4"):
            g = cmp[f"throughput_{v}"]["secure"]
            target[v] = {"gbit_s": g, "met": None if g is None else g >= SECURE_TARGET_GBIT_S}
        target.update({"goal_gbit_s": SECURE_TARGET_GBIT_S, "headline": "up",
                       "description": "a portal through a secure channel, inlet -> relay -> outlet, "
                                      f"at least {SECURE_TARGET_GBIT_S:g} Gbit/s"})
        return {
            "path": sec,
            "compared_with": rel,
            "description": "the ockam_relay topology with the portal inside a secure channel from the inlet node "
                           "to the outlet node (route .../service/forward_to_X/secure/api/service/o_T); "
                           "ratio = secure / plain relay, within this run",
            "secure_relay_vs_relay": cmp,
            "target_2_gbit_s": target,
            "vs_ockam_rust_portal": {
                "published_gbit_s": RUST_PORTAL_GBIT_S, "ours_gbit_s": up,
                "ratio": round(up / RUST_PORTAL_GBIT_S, 3) if up is not None else None,
                "note": "Ockam's Rust portal was published at about 1.5 Gbit/s with its secure channel; "
                        "a published figure from another machine, not measured in this run"},
        }

    # --- the run --------------------------------------------------------------------------------------

    def run(self) -> int:
        started = datetime.datetime.now(datetime.timezone.utc)
        raise_nofile()
        status = 0
        try:
            targets = self.start_targets()
            self.log(f"targets: {targets}")
            if not self.args.only or set(self.args.only) - {"orchestrator"}:
                self.start_paths(targets)
            steps = [("latency", self.scenario_latency), ("setup", self.scenario_setup),
                     ("throughput", self.scenario_throughput), ("http", self.scenario_http),
                     ("routed", self.scenario_routed), ("head_of_line", self.scenario_hol)]
            for name, f in steps:
                if self.args.only and name not in self.args.only:
                    continue
                if self.time_left() < 20 and not self.s.quick:
                    self.notice(f"{name} skipped: time budget")
                    continue
                self.log(f"scenario {name}")
                try:
                    f()
                except Exception as e:
                    self.error(f"{name}: {e}")
                    traceback.print_exc()
            for p in reversed(self.active):
                p.stop()
            for p in self.paths:
                if isinstance(p, _Ssh):
                    p.sshd.stop()
            if not self.args.only or "memory" in self.args.only:
                self.log("scenario memory (fresh relay topology)")
                try:
                    self.scenario_memory(targets)
                except Exception as e:
                    self.error(f"memory: {e}")
                    traceback.print_exc()
            if not self.args.only or "orchestrator" in self.args.only:
                if self.time_left() < 120 and not self.s.quick and not self.args.only:
                    self.notice("orchestrator scenarios skipped: time budget")
                else:
                    self.log("scenario orchestrator (PostgreSQL, several instances)")
                    try:
                        self.results.update(OrchestratorBench(self).run(targets["echo"]))
                    except Exception as e:
                        self.error(f"orchestrator: {e}")
                        traceback.print_exc()
            if not self.args.only or "orchestrator_scale" in self.args.only:
                if self.time_left() < 30 and not self.s.quick:
                    self.notice("orchestrator_scale skipped: time budget")
                else:
                    self.log("scenario orchestrator_scale (a fresh Orchestrator, many projects and relays)")
                    try:
                        self.scenario_orchestrator_scale()
                    except Exception as e:
                        self.error(f"orchestrator_scale: {e}")
                        traceback.print_exc()
        finally:
            self.pm.stop_all()
        time.sleep(0.2)
        leftovers = self.pm.leftovers()
        if leftovers:
            self.error(f"processes left behind: {leftovers}")
        finished = datetime.datetime.now(datetime.timezone.utc)
        self.paths_versions = self.versions()
        doc = {
            "suite": "ockamtw benchmarks",
            "schema": 1,
            "mode": "quick" if self.s.quick else "full",
            "command": " ".join(["python -m benchmarks"] + list(self.args.argv)),
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - self.t0, 1),
            "machine": self.machine_facts(),
            "versions": self.paths_versions,
            "commit": self.commit(),
            "settings": {k: v for k, v in vars(self.s).items()},
            "paths": self.path_info,
            "scenarios": self.results,
            "secure_channel": self.secure_summary(),
            "project": self.project_summary(),
            "ratios": self.ratios(),
            "notices": self.notices,
            "errors": self.errors,
            "leftover_processes": leftovers,
        }
        out_dir = self.args.out or RESULTS_DIR
        os.makedirs(out_dir, exist_ok=True)
        stem = "quick" if self.s.quick else "latest"
        json_path = os.path.join(out_dir, f"{stem}.json")
        md_path = os.path.join(out_dir, f"{stem}.md")
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        md = report.render(doc)
        with open(md_path, "w") as f:
            f.write(md)
        if not self.s.quick and not self.args.no_docs and not self.args.only and not self.args.paths:
            report.update_docs(DOCS_PAGE, md)
        self.log(f"wrote {json_path} and {md_path} in {doc['elapsed_s']} s")
        print(md)
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.errors:
            status = 1
        return status


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the CI smoke mode: small counts, under a minute")
    p.add_argument("--peers", dest="peers", action="store_true", default=None,
                   help="run the peers (socat, haproxy, ssh -L/-R) too (default in a full run)")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="do not run the peers")
    p.add_argument("--paths", default="", help="comma-separated path names to run (direct always runs)")
    p.add_argument("--only", action="append", default=[],
                   choices=["latency", "setup", "throughput", "http", "routed", "head_of_line", "memory",
                            "orchestrator", "orchestrator_scale"],
                   help="run only these scenarios (repeatable)")
    p.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 3, quick 1)")
    p.add_argument("--builtin-bulk", action="store_true", help="use the built-in bulk tool even if iperf3 is there")
    p.add_argument("--builtin-http", action="store_true", help="use the built-in HTTP client even if wrk is there")
    p.add_argument("--ssh-cipher", default=Sshd.cipher,
                   help=f"cipher of the ssh paths (default {Sshd.cipher}; 'default' for OpenSSH's choice)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    p.add_argument("--keep", action="store_true", help="keep the run's work directory (logs) under /tmp")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.peers is None:
        args.peers = not args.quick
    Sshd.cipher = args.ssh_cipher
    suite = Suite(args)
    return suite.run()
