"""
What one message costs each node of a path: ``python -m benchmarks.cost
[--path ockam_relay] [--variant latency|http] [--count N]``.

It starts the target servers and one ockamtw path (as the suite does), and
reads each node process's CPU time (user and system, from ``/proc``) and
its context switches (voluntary: the times it slept in ``epoll_wait`` and
was woken) before and after a load:

- ``latency``: N sequential 64-byte round trips (one message each way at a
  time through every node);
- ``http``: N seconds of wrk (32 keep-alive connections; requests counted
  by wrk), so messages travel many at a time;
- ``setup``: N sequential new connections (connect, 64 bytes each way,
  close), as the suite's new-connection scenario makes them; the figures
  are then per connection, not per message.

Each round trip or request is two portal messages through each node (one
each way), so the figures are per message: microseconds of user and of
system CPU, and wakeups.  CPU time and switch counts do not depend on how
busy the rest of the machine is as much as wall-clock figures do, which is
why the before/after comparisons in ``docs/performance.md`` use them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from .paths import OckamInletOutlet, OckamPortalNode, OckamRelay, OckamSecureRelay, Portforward, Sshd, SshR
from .procs import descendants

PATHS = {c.name: c for c in (OckamPortalNode, OckamInletOutlet, OckamRelay, OckamSecureRelay, Portforward)}
#: The peer with the relay's shape: sshd listens, the ssh client dialled out.
PATHS[SshR.name] = lambda pm: SshR(pm, Sshd(pm))


def processes(path) -> dict:
    """
    The processes that carry a path's traffic, by role: an ockamtw path's
    nodes, Twisted's portforward, or for C{ssh -R} the ssh client and
    sshd's session processes (not its listener, which only forks them).
    """
    out = {role: proc.pid for role, proc in path.nodes}
    sshd = getattr(getattr(path, "sshd", None), "proc", None)
    if sshd is not None:
        for i, pid in enumerate(descendants(sshd.pid)):
            out[f"sshd-{i}"] = pid
    return out


def counters(pid: int) -> dict:
    """
    User and system CPU seconds and voluntary/involuntary context switches
    of a process so far.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out = {"user": int(fields[11]) / ticks, "sys": int(fields[12]) / ticks}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                out["wakeups"] = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                out["preempted"] = int(line.split()[1])
    return out


def machine_idle() -> tuple:
    """
    Idle and total jiffies of the whole machine so far (``/proc/stat``).
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)


def per_message(before: dict, after: dict, messages: int) -> dict:
    return {
        "user_us": round(1e6 * (after["user"] - before["user"]) / messages, 1),
        "sys_us": round(1e6 * (after["sys"] - before["sys"]) / messages, 1),
        "wakeups": round((after["wakeups"] - before["wakeups"]) / messages, 3),
        "preempted": round((after["preempted"] - before["preempted"]) / messages, 3),
    }


#: How much load each variant applies when C{--count} is not given: round
#: trips, connections, or seconds.
DEFAULT_COUNT = {"latency": 20000, "setup": 1000, "http": 5, "up": 5, "down": 5}


def main(argv=None) -> int:
    from .suite import Settings, Suite

    p = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--path", default="ockam_relay", choices=sorted(PATHS))
    p.add_argument("--variant", default="latency", choices=["latency", "http", "up", "down", "setup"])
    p.add_argument("--count", type=int, default=None,
                   help="round trips (latency, default 20000), connections (setup, default 1000) "
                        "or seconds (http, up, down; default 5)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    if args.count is None:
        args.count = DEFAULT_COUNT[args.variant]
    ns = argparse.Namespace(quick=True, repeat=1, builtin_bulk=False, builtin_http=False, peers=False, paths="",
                            only=[], out=None, no_docs=True, keep=args.keep, argv=[])
    suite = Suite(ns)
    suite.s = Settings(quick=False)
    report = {"path": args.path, "variant": args.variant}
    try:
        targets = suite.start_targets()
        path = PATHS[args.path](suite.pm)
        suite.ports[path.name] = path.start({"echo": targets["echo"], "http": targets["http"],
                                             "bulk": targets["bulk"]})

        def measured(load):
            # The load, with each node's counters and the machine's idle
            # time read before and after it.
            before = {role: counters(pid) for role, pid in processes(path).items()}
            idle0 = machine_idle()
            t0 = time.monotonic()
            out = load()
            wall = time.monotonic() - t0
            idle1 = machine_idle()
            after = {role: counters(pid) for role, pid in processes(path).items()}
            return out, wall, before, after, idle0, idle1

        echo = str(suite.ports[path.name]["echo"])
        if args.variant == "latency":
            suite.probe("latency", "--port", echo, "--count", "500", timeout=60)  # warm up
            out, wall, before, after, idle0, idle1 = measured(lambda: suite.probe(
                "latency", "--port", echo, "--count", str(args.count), timeout=args.count / 100 + 60))
            messages = 2 * args.count
            report["load"] = {"round_trips": args.count, "p50_us": out.get("p50_us"), "p99_us": out.get("p99_us")}
        elif args.variant == "setup":
            suite.probe("setup", "--port", echo, "--count", "50", timeout=60)  # warm up
            out, wall, before, after, idle0, idle1 = measured(lambda: suite.probe(
                "setup", "--port", echo, "--count", str(args.count), timeout=args.count / 50 + 60))
            # per connection
            messages = args.count
            report["load"] = {"connections": args.count, "p50_us": out.get("p50_us"), "p90_us": out.get("p90_us"),
                              "p99_us": out.get("p99_us"), "failures": out.get("failures")}
        elif args.variant in ("up", "down"):
            suite.s.tp_seconds = args.count
            out, wall, before, after, idle0, idle1 = measured(lambda: suite.throughput_once(path, args.variant))
            # per 48 KiB portal message (the chunk size), as many as the bytes moved
            messages = max(1, int(out["gbit_s"] * 1e9 / 8 * args.count / 49152))
            report["load"] = {"gbit_s": out["gbit_s"]}
        else:
            suite.s.http_seconds = 1.0
            suite.http_once(path)  # warm up
            suite.s.http_seconds = float(args.count)
            out, wall, before, after, idle0, idle1 = measured(lambda: suite.http_once(path))
            requests = int(out["requests_per_second"] * args.count)
            messages = 2 * requests
            report["load"] = {"requests_per_second": out["requests_per_second"], "requests": requests,
                              "p50_us": out.get("p50_us"), "p99_us": out.get("p99_us")}
        report["wall_s"] = round(wall, 2)
        report["machine_busy_percent"] = round(100 * (1 - (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])), 1)
        report["nodes"] = {role: per_message(before[role], after[role], messages) for role in before if role in after}
        total = {k: round(sum(n[k] for n in report["nodes"].values()), 3)
                 for k in ("user_us", "sys_us", "wakeups", "preempted")}
        report["nodes"]["all"] = total
    finally:
        suite.pm.stop_all()
        if not args.keep:
            shutil.rmtree(suite.workdir, ignore_errors=True)
    print(json.dumps(report))
    print(f"\n{args.path}, {args.variant}: {report['load']}; the machine was "
          f"{report['machine_busy_percent']}% busy (both cores)")
    unit = "conn" if args.variant == "setup" else "msg"
    print(f"{'node':>10}  {'user us/' + unit:>12}  {'sys us/' + unit:>11}  {'wakeups/' + unit:>12}  {'preempted/' + unit:>14}")
    for role, v in report["nodes"].items():
        print(f"{role:>10}  {v['user_us']:>12}  {v['sys_us']:>11}  {v['wakeups']:>12}  {v['preempted']:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
