"""
The Orchestrator on PostgreSQL, several instances (issue #14): a PostgreSQL
server of the run's own (in its work directory, on a UNIX socket there:
``tests/pgserver.py``), Orchestrator instances as processes
(``python -m ockamtw.orchestrator``, one key file, one ``--project-ports``
range below the ephemeral ports, held by this process while it runs: see
L{held_range}), and two scenarios:

- ``orchestrator_failover``: two instances; the seed's nodes made with
  ``ockam node create --project`` (relay ``n3`` at the project, an outlet on
  ``n3`` to the echo target, an inlet on ``n1``); then, each run, the
  instance serving the project is killed with SIGKILL and a probe process
  (``probes.reconnect``) opens a new connection through the inlet every
  50 ms until one echoes: the failover time is from the kill to that echo.
  Also the time until the other instance serves the project (polled over
  HTTP), and whether ``project.json`` is unchanged.  The killed instance is
  started again (it serves nothing) and the next run kills the other one.
- ``orchestrator_spread``: three instances with the default lease; N
  projects made through them in turn (each served where it was made); the
  projects each serves, what an idle instance costs (CPU over a window,
  RSS), ``GET /v0/projects`` with N projects; then the busiest instance is
  killed and the time until every project is served again, and how the
  survivors share them, are measured.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

from ockamtw.orchestrator.service import ephemeral_ports
from ockamtw.project.projectinfo import ProjectInfo

from .procs import REPO_ROOT, child_env, cpu_seconds, rss_bytes


def held_range(count: int, host: str = "127.0.0.1") -> Tuple[int, int, List[socket.socket]]:
    """
    C{count} consecutive free TCP ports below the ephemeral ones (those the
    system gives outgoing connections, so that none takes a project's port
    while no instance serves it), held by sockets bound to them with
    SO_REUSEADDR and not listening (no other program is given them; the
    instances, whose listeners set SO_REUSEADDR, may listen on them):
    C{(first, last, sockets)}; close the sockets at the end.
    """
    ephemeral = ephemeral_ports() or (32768, 60999)
    for _ in range(200):
        base = random.randrange(10000, ephemeral[0] - count)
        held: List[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
        except OSError:
            for s in held:
                s.close()
            continue
        return base, base + count - 1, held
    raise RuntimeError(f"no {count} consecutive free ports below {ephemeral[0]}")


def _pgserver():
    sys.path.insert(0, REPO_ROOT)
    try:
        from tests import pgserver
    finally:
        sys.path.remove(REPO_ROOT)
    return pgserver


class Instance:
    def __init__(self, name: str, proc, instance_id: str, url: str, data: str) -> None:
        self.name = name
        self.proc = proc
        self.id = instance_id
        self.url = url
        self.data = data


class OrchestratorBench:
    def __init__(self, suite) -> None:
        self.suite = suite
        self.pm = suite.pm
        self.quick = suite.s.quick
        self.root = os.path.join(suite.workdir, "orchestrator")
        os.makedirs(self.root, exist_ok=True)
        self.home = os.path.join(self.root, "home")
        os.makedirs(self.home, exist_ok=True)
        self.key = os.path.join(self.root, "secrets.key")
        self.pg = None
        self.token: Optional[str] = None
        self.instances: List[Instance] = []
        self.ports: Tuple[int, int] = (0, 0)
        #: (lease, tick) of the failover runs, if not the mode's
        self.failover_lease: Optional[Tuple[float, float]] = None
        self._starts = 0
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # --- processes ----------------------------------------------------------------

    def start_pg(self) -> None:
        self.pg = _pgserver().Server(os.path.join(self.root, "pg"))

    def stop_pg(self) -> None:
        if self.pg is not None:
            self.pg.close()
            self.pg = None

    def start_instance(self, name: str, db: str, lease: float, tick: float) -> Instance:
        self._starts += 1
        data = os.path.join(self.root, name)
        ports = f"{self.ports[0]}-{self.ports[1]}"
        argv = [sys.executable, "-m", "ockamtw.orchestrator", "--data", data, "--db", db,
                "--secrets-key-file", self.key, "--http", "tcp:0:interface=127.0.0.1", "--project-ports", ports,
                "--lease-ttl", str(lease), "--tick", str(tick), "--refresh", str(max(tick, 1.0))]
        proc = self.pm.start(argv, f"orchestrator-{name}-{self._starts}")
        m = proc.wait_for(r"orchestrator (\S+) serving (http://[0-9.:]+)", timeout=60)
        instance = Instance(name, proc, m.group(1), m.group(2), data)
        self.instances.append(instance)
        token = os.path.join(data, "admin.token")
        if self.token is None and os.path.exists(token):
            with open(token) as f:
                self.token = f.read().strip()
        return instance

    def kill(self, instance: Instance) -> None:
        os.kill(instance.proc.pid, signal.SIGKILL)

    def reap(self, instance: Instance) -> None:
        self.pm.stop(instance.proc)
        if instance in self.instances:
            self.instances.remove(instance)

    def stop_instances(self) -> None:
        for instance in list(reversed(self.instances)):
            self.reap(instance)

    def api(self, url: str, method: str, path: str, body=None, timeout: float = 30.0):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url + path, data=data, method=method,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with self._http.open(request, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            # Say what the instance answered and logged, so that a failure
            # seen once (a 500 under load) can be read from the report.
            body = e.read()[:300].decode("utf-8", "replace")
            logged = ""
            for instance in self.instances:
                if instance.url == url:
                    lines = instance.proc.text().splitlines()
                    failed = [i for i, line in enumerate(lines) if "request failed" in line or "Traceback" in line]
                    logged = "\n".join(lines[failed[-1]:failed[-1] + 30]) if failed else "\n".join(lines[-10:])
            raise RuntimeError(f"{method} {path} on {url}: HTTP {e.code}: {body.strip()}"
                               + (f"\n{logged}" if logged else "")) from None

    def ockam(self, *args: str, timeout: float = 60.0) -> str:
        env = child_env()
        env["OCKAM_HOME"] = self.home
        for key in ("OCKAMTW_ORCHESTRATOR_URL", "OCKAMTW_ORCHESTRATOR_TOKEN"):
            env.pop(key, None)
        r = subprocess.run([sys.executable, "-m", "ockamtw.cli", *args], env=env, cwd=self.home,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"ockam {' '.join(args)}: status {r.returncode}: {(r.stderr or r.stdout)[-300:]}")
        return r.stdout

    def serving(self, instances: List[Instance], project_id: str, seconds: float = 30.0) -> Instance:
        """
        The instance among C{instances} that serves C{project_id} (waiting
        for one to).
        """
        deadline = time.monotonic() + seconds
        while True:
            shown = self.api(instances[0].url, "GET", f"/v0/projects/{project_id}")
            for instance in instances:
                if instance.id == shown["served_by"]:
                    return instance
            if time.monotonic() > deadline:
                raise RuntimeError(f"no instance serves the project after {seconds:g} s")
            time.sleep(0.05)

    @staticmethod
    def echo_once(port: int, timeout: float = 5.0) -> bool:
        payload = os.urandom(64)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                s.settimeout(timeout)
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = s.recv(len(payload) - len(got))
                    if not chunk:
                        return False
                    got += chunk
                return got == payload
        except OSError:
            return False

    # --- failover -------------------------------------------------------------------

    def failover(self, echo_port: int) -> dict:
        runs_wanted = getattr(self.suite.args, "repeat", None) or (1 if self.quick else 5)
        lease, tick = self.failover_lease or ((2.0, 0.5) if self.quick else (5.0, 1.0))
        db = self.pg.create_database()
        a = self.start_instance("fa", db, lease, tick)
        b = self.start_instance("fb", db, lease, tick)
        self.ockam("enroll", "--orchestrator", a.url, "--token", self.token)
        text = self.ockam("project", "information", "--output", "json")
        project_id = json.loads(text)["id"]
        with open(os.path.join(self.home, "project.json"), "w") as f:
            f.write(text)
        self.ockam("node", "create", "n1", "--project", "project.json")
        self.ockam("node", "create", "n3", "--project", "project.json")
        self.ockam("relay", "create", "n3", "--at", "/project/default", "--to", "/node/n3")
        self.ockam("tcp-outlet", "create", "--at", "/node/n3", "--from", "/service/outlet", "--to",
                   f"127.0.0.1:{echo_port}")
        out = self.ockam("tcp-inlet", "create", "--at", "/node/n1", "--from", "127.0.0.1:0", "--to",
                         "/project/default/service/forward_to_n3/service/outlet", "--output", "json")
        inlet = int(json.loads(out)["listen"].rsplit(":", 1)[1])
        if not self.echo_once(inlet, 10):
            raise RuntimeError("no echo through the inlet before the first kill")
        runs = []
        live = {a.name: a, b.name: b}
        for n in range(runs_wanted):
            victim = self.serving(list(live.values()), project_id)
            [other] = [i for i in live.values() if i is not victim]
            probe = self.suite.start_probe("reconnect", "--port", str(inlet), "--timeout", "90")
            try:
                self.suite.read_json_line(probe, 30)
                self.kill(victim)
                killed = time.monotonic()
                probe.popen.stdin.write(b"go\n")
                probe.popen.stdin.flush()
                served = None
                while time.monotonic() - killed < 60:
                    try:
                        shown = self.api(other.url, "GET", f"/v0/projects/{project_id}", timeout=5)
                        if shown["served_by"] == other.id:
                            served = time.monotonic() - killed
                            break
                    except OSError:
                        pass
                    time.sleep(0.02)
                result = self.suite.read_json_line(probe, 120)
            finally:
                self.pm.stop(probe)
            info = self.api(other.url, "GET", f"/v0/projects/{project_id}/information")
            same = ProjectInfo.from_json(json.dumps(info)).to_json() == text
            self.reap(victim)
            run = {"served_again_s": None if served is None else round(served, 3),
                   "first_connection_s": result.get("first_ok_s"), "attempts": result.get("attempts"),
                   "failed_attempts": result.get("failed"), "project_json_unchanged": same}
            runs.append(run)
            if run["first_connection_s"] is None or run["first_connection_s"] > lease + tick + 10:
                self.suite.notice(f"failover {n + 1}: no new connection through the inlet within "
                                  f"{lease + tick + 10:g} s ({run}); logs in {self.suite.workdir} (with --keep)")
            self.suite.log(f"failover {n + 1}: served again after {run['served_again_s']} s, first new connection "
                           f"through the inlet after {run['first_connection_s']} s")
            del live[victim.name]
            if n + 1 < runs_wanted:  # the next run kills the other one: this one takes the project over
                again = self.start_instance(victim.name, db, lease, tick)
                live[again.name] = again
        try:
            self.ockam("node", "delete", "--all")
        finally:
            self.stop_instances()
        firsts = [r["first_connection_s"] for r in runs if r["first_connection_s"] is not None]
        served = [r["served_again_s"] for r in runs if r["served_again_s"] is not None]
        return {
            "description": "two instances on one PostgreSQL database; the seed's nodes with --project (relay n3 at "
                           "the project, inlet on n1 to an outlet on n3); the instance serving the project is "
                           "killed with SIGKILL: seconds from the kill to the first new connection through the inlet "
                           "that echoes (a new attempt every 50 ms), and until the other instance serves the project",
            "settings": {"lease_ttl_s": lease, "tick_s": tick, "runs": runs_wanted},
            "results": {
                "first_connection_s": _stats(firsts),
                "served_again_s": _stats(served),
                "all_recovered": len(firsts) == len(runs),
                "project_json_unchanged": all(r["project_json_unchanged"] for r in runs),
                "runs": runs,
            },
        }

    # --- three instances, many projects ---------------------------------------------

    def spread(self, count: int) -> dict:
        lease, tick = (3.0, 0.5) if self.quick else (15.0, 2.0)
        idle_window = 1.0 if self.quick else 6.0
        db = self.pg.create_database()
        self.token = None
        x = self.start_instance("sx", db, lease, tick)
        y = self.start_instance("sy", db, lease, tick)
        z = self.start_instance("sz", db, lease, tick)
        trio = [x, y, z]
        space = self.api(x.url, "POST", "/v0/spaces", {"name": "bench"})["id"]
        latencies: List[float] = []

        def make(instance: Instance, names: List[str]) -> None:
            for name in names:
                t0 = time.perf_counter()
                self.api(instance.url, "POST", f"/v0/spaces/{space}/projects", {"name": name}, timeout=60)
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda k: make(trio[k], [f"p{i}" for i in range(k, count, 3)]), range(3)))
        made = time.perf_counter() - started
        view = {i["id"]: i for i in self.api(x.url, "GET", "/v0/instances")}
        served = {inst.name: view[inst.id]["projects"] for inst in trio}
        # Idle: what the lease loop and the member refresh cost with these projects.
        before = {inst.name: cpu_seconds(inst.proc.pid) for inst in trio}
        time.sleep(idle_window)
        idle_cpu = {inst.name: round(100 * (cpu_seconds(inst.proc.pid) - before[inst.name]) / idle_window, 2)
                    for inst in trio}
        rss = {inst.name: round(rss_bytes(inst.proc.pid) / 2 ** 20, 1) for inst in trio}
        listing = []
        for _ in range(5):
            t0 = time.perf_counter()
            projects = self.api(y.url, "GET", "/v0/projects")
            listing.append((time.perf_counter() - t0) * 1000)
        if len(projects) != count:
            raise RuntimeError(f"{len(projects)} projects listed, {count} made")
        # The busiest instance dies.
        victim = max(trio, key=lambda inst: served[inst.name])
        survivors = [inst for inst in trio if inst is not victim]
        self.kill(victim)
        killed = time.monotonic()
        back = None
        shares = {}
        while time.monotonic() - killed < lease + 10 * tick + 60:
            view = {i["id"]: i for i in self.api(survivors[0].url, "GET", "/v0/instances")}
            shares = {inst.name: view[inst.id]["projects"] for inst in survivors}
            if sum(shares.values()) == count:
                back = time.monotonic() - killed
                break
            time.sleep(0.1)
        self.reap(victim)
        self.stop_instances()
        self.suite.log(f"spread: {count} projects in {made:.1f} s, served {served}; the busiest killed: all served "
                       f"again after {back} s, shared {shares}")
        return {
            "description": f"three instances on one PostgreSQL database, {count} projects made through them in turn "
                           "(each served where made); idle CPU and RSS of each; GET /v0/projects; then the busiest "
                           "instance killed with SIGKILL: seconds until every project is served again, and the "
                           "survivors' shares",
            "settings": {"projects": count, "lease_ttl_s": lease, "tick_s": tick, "idle_window_s": idle_window},
            "results": {
                "create_seconds": round(made, 2),
                "projects_per_second": round(count / made, 1),
                "create_ms": _stats([v * 1000 for v in latencies], nd=1),
                "served_per_instance": served,
                "idle_cpu_percent": idle_cpu,
                "rss_mib": rss,
                "list_projects_ms": _stats(listing, nd=1),
                "killed": victim.name,
                "killed_served": served[victim.name],
                "all_served_again_s": None if back is None else round(back, 2),
                "survivor_shares": shares,
            },
        }

    # --- the scenario ---------------------------------------------------------------

    def run(self, echo_port: int) -> Dict[str, dict]:
        out: Dict[str, dict] = {}
        self.start_pg()
        count = 30 if self.quick else 300
        first, last, held = held_range(2 * count + 2)
        self.ports = (first, last)
        try:
            out["orchestrator_failover"] = self.failover(echo_port)
            out["orchestrator_spread"] = self.spread(count)
        finally:
            for s in held:
                s.close()
            try:
                self.ockam("node", "delete", "--all", timeout=30)
            except Exception:
                pass
            self.stop_instances()
            self.stop_pg()
        return out


def _stats(values: List[float], nd: int = 3) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(values), nd), "min": round(min(values), nd),
            "max": round(max(values), nd), "n": len(values)}
