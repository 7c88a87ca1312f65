"""
Where the time goes in the node processes during a bulk transfer (or a
64-byte ping-pong, or a stream of new connections):
``python -m benchmarks.profile [--path ockam_relay] [--seconds 8] [--variant up|down|p4|latency|setup|http]``.

It starts the target servers and one ockamtw path (as the suite does),
runs iperf3 (or the built-in bulk tool) through it, and meanwhile samples
every node process with py-spy (``pip install py-spy``; as root, or with
ptrace allowed).  It prints, per node: CPU use, the share of samples spent
waiting in the reactor's poll (idle), and the functions with the most
samples of their own and in total.  Raw py-spy output stays in the run's
work directory with ``--keep``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import sys
import time

from .paths import OckamInletOutlet, OckamPortalNode, OckamRelay, OckamSecureRelay
from .procs import cpu_seconds

PATHS = {c.name: c for c in (OckamPortalNode, OckamInletOutlet, OckamRelay, OckamSecureRelay)}


def find_py_spy():
    for cand in (os.environ.get("PY_SPY"), shutil.which("py-spy"),
                 os.path.join(os.path.dirname(sys.executable), "py-spy")):
        if cand and os.path.exists(cand):
            return cand
    return None


_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def summarize(raw_path: str, top: int = 15) -> dict:
    """
    Self and total shares per function of the reactor thread's samples,
    from py-spy's raw (collapsed-stack) output recorded with --idle.

    In these stacks the leaf is the innermost Python frame: samples whose
    leaf is C{EPollReactor.doPoll} are the reactor waiting in epoll (idle);
    C{Connection.doRead} and C{untilConcludes} (under C{doWrite}) are mostly
    the recv and send system calls themselves.
    """
    self_c, total_c = collections.Counter(), collections.Counter()
    samples = idle = 0
    with open(raw_path) as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            if "Thread._bootstrap" in stack or "ReactorBase.run" not in stack:
                continue  # a thread-pool thread, or a garbled sample
            frames = [_short(x) for x in stack.split(";") if x]
            samples += n
            leaf = frames[-1]
            if leaf.startswith("EPollReactor.doPoll ") or leaf.startswith("poll "):
                idle += n
                continue
            self_c[leaf] += n
            for fr in set(frames):
                total_c[fr] += n
    busy = max(1, samples - idle)
    skip = ("_run_module_as_main", "_run_code", "<module>", "run (", "runApp", "ApplicationRunner",
            "UnixApplicationRunner", "runReactorWithLogging", "ReactorBase.", "EPollReactor.doPoll",
            "callWithLogger", "callWithContext", "ThreadedContextTracker", "ContextTracker", "_doReadOrWrite")
    return {
        "reactor_samples": samples,
        "idle_fraction": round(idle / max(1, samples), 3),
        "self_top": [(k, round(100 * v / busy, 1)) for k, v in self_c.most_common(top)],
        "total_top": [(k, round(100 * v / busy, 1)) for k, v in total_c.most_common(top + len(skip))
                      if not k.startswith(skip)][:top],
    }


def main(argv=None) -> int:
    from .suite import Settings, Suite

    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--path", default="ockam_relay", choices=sorted(PATHS))
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--variant", default="up", choices=["up", "down", "p4", "latency", "setup", "http"],
                   help="iperf3 direction (up, down, p4), or 64-byte ping-pong (latency), or new connections "
                        "(setup), or HTTP requests on 32 keep-alive connections (http)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    spy = find_py_spy()
    if spy is None:
        print("py-spy is not installed: pip install py-spy (or set PY_SPY)", file=sys.stderr)
        return 2
    ns = argparse.Namespace(quick=True, repeat=1, builtin_bulk=False, builtin_http=False, peers=False, paths="",
                            only=[], out=None, no_docs=True, keep=args.keep, argv=[])
    suite = Suite(ns)
    suite.s = Settings(quick=False)
    suite.s.tp_seconds = args.seconds + 2
    suite.s.http_seconds = args.seconds + 2
    report = {}
    try:
        targets = suite.start_targets()
        path = PATHS[args.path](suite.pm)
        suite.ports[path.name] = path.start({"bulk": targets["bulk"], "echo": targets["echo"],
                                                     "http": targets["http"]})
        import threading

        result = {}

        def transfer():
            try:
                echo = str(suite.ports[path.name]["echo"])
                if args.variant == "latency":
                    result["out"] = suite.probe("latency", "--port", echo, "--count", str(2500 * (args.seconds + 2)),
                                                timeout=args.seconds + 60)
                elif args.variant == "setup":
                    result["out"] = suite.probe("setup", "--port", echo, "--count", str(400 * (args.seconds + 2)),
                                                timeout=args.seconds + 60)
                elif args.variant == "http":
                    result["out"] = suite.http_once(path)
                else:
                    result["out"] = suite.throughput_once(path, args.variant)
            except Exception as e:
                result["out"] = {"error": str(e)}

        t = threading.Thread(target=transfer)
        cpu0 = {role: cpu_seconds(proc.pid) for role, proc in path.nodes}
        t0 = time.monotonic()
        t.start()
        time.sleep(1.0)  # past the start of the transfer
        spies = []
        for role, proc in path.nodes:
            raw = os.path.join(suite.workdir, f"pyspy-{role}.txt")
            sp = suite.pm.start([spy, "record", "--idle", "--format", "raw", "--rate", str(args.rate),
                                 "--duration", str(args.seconds), "--nonblocking", "--output", raw,
                                 "--pid", str(proc.pid)], f"py-spy-{role}")
            spies.append((role, sp, raw))
        for role, sp, raw in spies:
            sp.popen.wait(args.seconds + 30)
        t.join(args.seconds + 60)
        wall = time.monotonic() - t0
        report["transfer"] = result.get("out")
        for role, sp, raw in spies:
            proc = dict(path.nodes)[role]
            entry = {"cpu_percent_of_one_core": round(100 * (cpu_seconds(proc.pid) - cpu0[role]) / wall, 1)}
            if os.path.exists(raw):
                entry.update(summarize(raw))
            else:
                entry["error"] = f"py-spy wrote nothing: {sp.tail(5)}"
            report[role] = entry
    finally:
        suite.pm.stop_all()
        if not args.keep:
            shutil.rmtree(suite.workdir, ignore_errors=True)
    print(json.dumps(report, indent=1))
    for role, entry in report.items():
        if role == "transfer" or "self_top" not in entry:
            continue
        print(f"\n== {role}: {entry['cpu_percent_of_one_core']}% of a core; reactor thread idle in epoll in "
              f"{100 * entry['idle_fraction']:.0f}% of samples; the other samples by function:")
        print("   self%  function")
        for name, pct in entry["self_top"][:12]:
            print(f"   {pct:5.1f}  {name}")
        print("   total% function")
        for name, pct in entry["total_top"][:12]:
            print(f"   {pct:5.1f}  {name}")
    print(f"\ntransfer: {report.get('transfer')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
