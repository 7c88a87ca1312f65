"""
The paths a benchmark client can take to a target server: direct, the
ockamtw portal topologies (one OS process per node), and the peers
(socat, haproxy, ``ssh -L``, ``ssh -R``, Twisted's portforward).

A path is started once for a set of named targets (``{"echo": port,
...}``) and gives back the port a client connects to for each.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from .procs import STATS_ENV, Proc, ProcessManager, child_env, free_port, version_of, wait_port, which

LOOPBACK_LISTEN = "tcp:0:interface=127.0.0.1"


class Path:
    name = "?"
    kind = "peer"  # "baseline", "ockamtw" or "peer"
    description = ""

    def __init__(self, pm: ProcessManager) -> None:
        self.pm = pm
        self.procs: List[Tuple[str, Proc]] = []  # (role, process)
        self.ports: Dict[str, int] = {}

    def missing(self) -> Optional[str]:
        """
        Why this path cannot run here (a tool is not installed), or None.
        """
        return None

    def version(self) -> Optional[str]:
        return None

    def start(self, targets: Dict[str, int]) -> Dict[str, int]:
        raise NotImplementedError

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            self.pm.stop(proc)
        self.procs = []

    @property
    def nodes(self) -> List[Tuple[str, Proc]]:
        return list(self.procs)


class Direct(Path):
    name = "direct"
    kind = "baseline"
    description = "client to target, no hop"

    def start(self, targets):
        self.ports = dict(targets)
        return self.ports


# --- ockamtw ----------------------------------------------------------------------------


def node_argv(name: str, *extra: str, stats_hook: bool = False) -> List[str]:
    # With stats_hook the same twistd run goes through benchmarks.procs.node_main,
    # which answers SIGUSR2 with heap and object counts (procs.node_stats).
    head = ["-c", "from benchmarks.procs import node_main; node_main()"] if stats_hook else ["-m", "ockamtw"]
    # With $OCKAMTW_BENCH_CPROFILE set to a directory, twistd runs the node
    # under cProfile and leaves NAME.prof there (pstats) when it stops.
    where = os.environ.get(CPROFILE_ENV)
    if where:
        os.makedirs(where, exist_ok=True)
    profile = [f"--profile={os.path.join(where, name)}.prof", "--profiler=cprofile", "--savestats"] if where else []
    return [sys.executable, *head, "-n", "--pidfile=", *profile, "ockam", "--name", name, *extra]


CPROFILE_ENV = "OCKAMTW_BENCH_CPROFILE"


class OckamPath(Path):
    kind = "ockamtw"
    #: start the nodes with the benchmark-only stats hook (the memory scenario)
    stats_hook = False

    def node(self, role: str, *extra: str, listen: bool = True) -> Proc:
        name = f"{self.pm.tag}-{self.name}-{role}"
        argv = node_argv(name, *(("--listen", LOOPBACK_LISTEN) if listen else ()), *extra,
                         stats_hook=self.stats_hook)
        env = child_env()
        env["OCKAM_HOME"] = os.path.join(self.pm.workdir, "ockam_home")
        stats_dir = None
        if self.stats_hook:
            stats_dir = os.path.join(self.pm.workdir, f"stats-{self.name}-{role}")
            os.makedirs(stats_dir, exist_ok=True)
            env[STATS_ENV] = stats_dir
        proc = self.pm.start(argv, f"{self.name}-{role}", env=env)
        proc.node_name = name
        proc.stats_dir = stats_dir
        self.procs.append((role, proc))
        return proc

    @staticmethod
    def listening_port(proc: Proc) -> int:
        m = proc.wait_for(rf"node {re.escape(proc.node_name)} listening on 127\.0\.0\.1:(\d+)")
        return int(m.group(1))

    @staticmethod
    def inlet_port(proc: Proc, route: str) -> int:
        m = proc.wait_for(rf"inlet listening on 127\.0\.0\.1:(\d+), to {re.escape(route)}(?:\s|$)")
        return int(m.group(1))

    def version(self):
        try:
            import twisted

            import ockamtw

            return f"ockamtw {getattr(ockamtw, '__version__', '0.1.0')} on Twisted {twisted.__version__}"
        except Exception:
            return None


def _outlets(targets) -> List[str]:
    out = []
    for name, port in targets.items():
        out += ["--outlet", f"o_{name}=127.0.0.1:{port}"]
    return out


class OckamPortalNode(OckamPath):
    name = "ockam_portal_1node"
    description = "inlet and outlet in one node process (route /service/o_X)"

    def start(self, targets):
        extra = _outlets(targets)
        for name in targets:
            extra += ["--inlet", f"127.0.0.1:0=/service/o_{name}"]
        proc = self.node("node", *extra)
        self.listening_port(proc)
        self.ports = {name: self.inlet_port(proc, f"/service/o_{name}") for name in targets}
        return self.ports


class OckamInletOutlet(OckamPath):
    name = "ockam_inlet_outlet"
    description = "inlet node -> outlet node (2 processes, 1 TCP link)"

    def start(self, targets):
        outlet = self.node("outlet", *_outlets(targets))
        port = self.listening_port(outlet)
        routes = {name: f"/ip4/127.0.0.1/tcp/{port}/service/o_{name}" for name in targets}
        extra = []
        for name, route in routes.items():
            extra += ["--inlet", f"127.0.0.1:0={route}"]
        inlet = self.node("inlet", *extra)
        self.ports = {name: self.inlet_port(inlet, route) for name, route in routes.items()}
        return self.ports


class OckamRelay(OckamPath):
    name = "ockam_relay"
    description = "inlet node -> relay node -> outlet node that dialled out (3 processes)"

    def start(self, targets):
        relay = self.node("relay")
        rport = self.listening_port(relay)
        self.relay_port = rport
        alias_name = f"{self.name}-o"
        self.node("outlet", *_outlets(targets), "--relay", f"{alias_name}@/ip4/127.0.0.1/tcp/{rport}",
                  listen=False)
        relay.wait_for(rf"relay forward_to_{re.escape(alias_name)} registered")
        self.alias = f"forward_to_{alias_name}"
        routes = {name: self.inlet_route(rport, name) for name in targets}
        extra = []
        for name, route in routes.items():
            extra += ["--inlet", f"127.0.0.1:0={route}"]
        inlet = self.node("inlet", *extra)
        self.ports = {name: self.inlet_port(inlet, route) for name, route in routes.items()}
        self.inlet_ready(inlet)
        # Order the roles as the data flows.
        roles = dict(self.procs)
        self.procs = [("inlet", roles["inlet"]), ("relay", roles["relay"]), ("outlet", roles["outlet"])]
        return self.ports

    def inlet_route(self, rport: int, target: str) -> str:
        return f"/ip4/127.0.0.1/tcp/{rport}/service/{self.alias}/service/o_{target}"

    def inlet_ready(self, inlet: Proc) -> None:
        pass

    def stop(self):
        # Outlet and inlet first, so the relay does not log their reconnects.
        for role in ("inlet", "outlet", "relay"):
            for r, proc in list(self.procs):
                if r == role:
                    self.pm.stop(proc)
        self.procs = []


class OckamSecureRelay(OckamRelay):
    """
    The relay topology with the portal inside a secure channel: the inlet's
    route is C{.../service/forward_to_X/secure/api/service/o_T}, so the
    inlet node creates a channel (Noise XX, then AES-GCM per message) to
    the outlet node's listener at C{api} through the relay and sends every
    portal message through it; the relay forwards only ciphertext.  The
    inlets of one node share the one channel.
    """

    name = "ockam_secure_relay"
    description = ("inlet node -> relay node -> outlet node that dialled out, the portal inside a secure "
                   "channel from the inlet node to the outlet node's listener (route .../secure/api/...; "
                   "3 processes, the relay sees ciphertext)")

    def inlet_route(self, rport, target):
        return f"/ip4/127.0.0.1/tcp/{rport}/service/{self.alias}/secure/api/service/o_{target}"

    def inlet_ready(self, inlet):
        # The inlets resolve their route at start: wait for the channel, so
        # its handshake is not counted in the first measurement.
        inlet.wait_for(r"secure channel \S+ up with \S+ \(initiator\)")


class OckamProject(OckamPath):
    """
    The seed's last section: a self-hosted Orchestrator (its own process,
    which serves the project node and its authority), this run's
    C{OCKAM_HOME} enrolled with it (C{ockam enroll --orchestrator URL
    --token TOKEN}, the project C{default}), and two nodes started with
    that project (C{twistd ockam --state DIR}, as C{ockam node create
    --project} makes them): the outlet node with a relay at
    C{/project/default}, the inlet node with inlets to
    C{/project/default/service/forward_to_X/service/o_T}.  Every byte
    passes the inlet node's and the outlet node's secure channels to the
    project node, which decrypts and encrypts it again (the relay of this
    path is a secure channel end, not a plain forwarder).
    """

    name = "ockam_project"
    description = ("inlet node -> project node -> outlet node whose relay is at /project/default (the seed's "
                   "Orchestrator section: 3 processes, the Orchestrator serving the project node and its "
                   "authority; each node's link to the project is a secure channel)")

    def cli(self, env: dict, *args: str) -> str:
        proc = self.pm.start([sys.executable, "-m", "ockamtw.cli", *args], f"{self.name}-cli", env=env,
                             capture_stdout=True)
        try:
            out, _ = proc.popen.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"ockam {' '.join(args)}: no answer within 60 s")
        finally:
            self.pm.stop(proc)
        if proc.popen.returncode:
            raise RuntimeError(f"ockam {' '.join(args)}: exit status {proc.popen.returncode}: {proc.tail(3)}")
        return out.decode("utf-8", "replace")

    def project_node(self, role: str, state: dict) -> Proc:
        import json

        directory = os.path.join(self.home, "nodes", role)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        state = dict({"name": role, "listen": "127.0.0.1:0", "identity": "default", "project": self.project,
                      "outlets": [], "inlets": [], "relays": [], "connections": [], "secure_listeners": []}, **state)
        with open(os.path.join(directory, "state.json"), "w") as f:
            json.dump(state, f)
        env = child_env()
        env["OCKAM_HOME"] = self.home
        proc = self.pm.start([sys.executable, "-m", "ockamtw", "-n", "--pidfile=", "ockam", "--state", directory],
                             f"{self.name}-{role}", env=env)
        self.procs.append((role, proc))
        return proc

    def start(self, targets):
        import json

        self.home = os.path.join(self.pm.workdir, "ockam_home_project")
        data = os.path.join(self.home, "orchestrator")
        orchestrator = self.pm.start(
            [sys.executable, "-m", "ockamtw.orchestrator", "--data", data, "--http", LOOPBACK_LISTEN,
             "--project-ports", "0"],
            f"{self.name}-orchestrator",
        )
        self.procs.append(("relay", orchestrator))
        url = orchestrator.wait_for(r"serving (http://127\.0\.0\.1:\d+)", timeout=30).group(1)
        with open(os.path.join(data, "admin.token")) as f:
            token = f.read().strip()
        env = child_env()
        env["OCKAM_HOME"] = self.home
        self.cli(env, "enroll", "--orchestrator", url, "--token", token)
        self.project = json.loads(self.cli(env, "project", "information", "--output", "json"))
        alias_name = f"{self.name}-o"
        self.alias = f"forward_to_{alias_name}"
        outlets = [{"address": f"o_{name}", "to": f"127.0.0.1:{port}", "authorized": None}
                   for name, port in targets.items()]
        self.project_node("outlet", {"outlets": outlets, "relays": [{"name": alias_name, "at": "/project/default"}]})
        orchestrator.wait_for(rf"relay {re.escape(self.alias)} registered", timeout=30)
        routes = {name: f"/project/default/service/{self.alias}/service/o_{name}" for name in targets}
        inlet = self.project_node("inlet", {"inlets": [{"listen": "127.0.0.1:0", "to": route, "authorized": None}
                                                       for route in routes.values()]})
        self.ports = {name: self.inlet_port(inlet, route) for name, route in routes.items()}
        roles = dict(self.procs)
        self.procs = [("inlet", roles["inlet"]), ("relay", roles["relay"]), ("outlet", roles["outlet"])]
        return self.ports

    def stop(self):
        for role in ("inlet", "outlet", "relay"):
            for r, proc in list(self.procs):
                if r == role:
                    self.pm.stop(proc)
        self.procs = []


# --- peers ---------------------------------------------------------------------------------


class Socat(Path):
    name = "socat"
    description = "socat TCP-LISTEN,fork -> TCP (a process per connection)"

    def missing(self):
        return None if which("socat") else "socat is not installed (apt-get install socat)"

    def version(self):
        out = version_of(["socat", "-V"])
        try:
            text = subprocess.run(["socat", "-V"], capture_output=True, text=True, timeout=5).stdout
            m = re.search(r"socat version (\S+)", text)
            return f"socat {m.group(1)}" if m else out
        except Exception:
            return out

    def start(self, targets):
        for name, port in targets.items():
            p = free_port()
            proc = self.pm.start(
                ["socat", "-lp", f"{self.pm.tag}-socat", f"TCP4-LISTEN:{p},bind=127.0.0.1,reuseaddr,fork,backlog=4096",
                 f"TCP4:127.0.0.1:{port}"],
                f"socat-{name}",
            )
            self.procs.append((name, proc))
            wait_port(p, proc=proc)
            self.ports[name] = p
        return self.ports


class Haproxy(Path):
    name = "haproxy"
    description = "haproxy mode tcp (default threads)"

    def missing(self):
        return None if which("haproxy") else "haproxy is not installed (apt-get install haproxy)"

    def version(self):
        return version_of([which("haproxy") or "haproxy", "-v"])

    def start(self, targets):
        # haproxy needs about 2 descriptors per connection and refuses to
        # start if it cannot raise its limit that far.
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        maxconn = 20000 if hard == resource.RLIM_INFINITY else max(256, min(20000, (hard - 100) // 2 - 20))
        lines = ["global", f"  maxconn {maxconn}", "defaults", "  mode tcp", "  timeout connect 5s",
                 "  timeout client 120s", "  timeout server 120s"]
        for name, port in targets.items():
            p = free_port()
            self.ports[name] = p
            lines += [f"listen l_{name}", f"  bind 127.0.0.1:{p}", f"  server s_{name} 127.0.0.1:{port}"]
        cfg = os.path.join(self.pm.workdir, f"{self.pm.tag}-haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        proc = self.pm.start([which("haproxy"), "-db", "-f", cfg], "haproxy")
        self.procs.append(("haproxy", proc))
        for p in self.ports.values():
            wait_port(p, proc=proc)
        return self.ports


class Portforward(Path):
    name = "twisted_portforward"
    description = "twisted.protocols.portforward.ProxyFactory (one process)"

    def version(self):
        import twisted

        return f"Twisted {twisted.__version__}"

    def start(self, targets):
        argv = [sys.executable, "-m", "benchmarks.servers", "portforward", "--tag", self.pm.tag]
        for name, port in targets.items():
            argv += ["--target", f"{name}={port}"]
        proc = self.pm.start(argv, "portforward")
        self.procs.append(("portforward", proc))
        import json

        m = proc.wait_for(r"PORTS (\{.*\})")
        self.ports = json.loads(m.group(1))
        return self.ports


class Sshd:
    """
    A throwaway sshd on a loopback port with its own keys and config,
    shared by the ``ssh -L`` and ``ssh -R`` paths.
    """

    def __init__(self, pm: ProcessManager) -> None:
        self.pm = pm
        self.proc: Optional[Proc] = None
        self.port: Optional[int] = None
        self.dir = os.path.join(pm.workdir, f"{pm.tag}-ssh")

    @staticmethod
    def missing() -> Optional[str]:
        for tool in ("sshd", "ssh", "ssh-keygen"):
            if not which(tool):
                return f"{tool} is not installed (apt-get install openssh-server openssh-client)"
        return None

    def start(self) -> None:
        if self.proc is not None:
            return
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o700)
        for key in ("host_key", "client_key"):
            path = os.path.join(self.dir, key)
            if not os.path.exists(path):
                subprocess.run([which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", path], check=True,
                               capture_output=True, timeout=30)
        with open(os.path.join(self.dir, "client_key.pub")) as f, open(os.path.join(self.dir, "authorized_keys"), "w") as g:
            g.write(f.read())
        os.chmod(os.path.join(self.dir, "authorized_keys"), 0o600)
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.port = free_port()
        cfg = os.path.join(self.dir, "sshd_config")
        with open(cfg, "w") as f:
            f.write("\n".join([
                f"Port {self.port}", "ListenAddress 127.0.0.1",
                f"HostKey {self.dir}/host_key", f"AuthorizedKeysFile {self.dir}/authorized_keys",
                "PidFile none", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "AllowTcpForwarding yes",
                "GatewayPorts no", "MaxStartups 1000", "MaxSessions 100", "LogLevel ERROR", "UseDNS no",
                "PrintMotd no", "ClientAliveInterval 0", "",
            ]))
        self.proc = self.pm.start([which("sshd"), "-D", "-e", "-f", cfg], "sshd")
        wait_port(self.port, proc=self.proc)

    #: The fastest OpenSSH cipher on CPUs with AES instructions (OpenSSH's own
    #: default, chacha20-poly1305, moved about 40% less here); "default" leaves
    #: the choice to OpenSSH.  Set by --ssh-cipher.
    cipher = "aes128-gcm@openssh.com"

    def client_argv(self, forwards: List[str]) -> List[str]:
        argv = [which("ssh"), "-F", "/dev/null", "-N", "-T", "-i", os.path.join(self.dir, "client_key"),
                "-p", str(self.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
                "-o", "ServerAliveInterval=0"]
        if self.cipher and self.cipher != "default":
            argv += ["-c", self.cipher]
        for fwd in forwards:
            argv += fwd.split(" ", 1)
        return argv + [f"{getpass.getuser()}@127.0.0.1"]

    def stop(self) -> None:
        if self.proc is not None:
            self.pm.stop(self.proc)
            self.proc = None


class _Ssh(Path):
    flag = "-L"

    def __init__(self, pm, sshd: Sshd) -> None:
        Path.__init__(self, pm)
        self.sshd = sshd

    def missing(self):
        return Sshd.missing()

    def version(self):
        v = version_of([which("ssh") or "ssh", "-V"])
        return f"{v}; cipher {self.sshd.cipher}" if v else None

    def start(self, targets):
        self.sshd.start()
        forwards = []
        for name, port in targets.items():
            p = free_port()
            self.ports[name] = p
            forwards.append(f"{self.flag} 127.0.0.1:{p}:127.0.0.1:{port}")
        proc = self.pm.start(self.sshd.client_argv(forwards), f"ssh{self.flag}")
        self.procs.append(("ssh", proc))
        for p in self.ports.values():
            wait_port(p, timeout=15, proc=proc)
        return self.ports


class SshL(_Ssh):
    name = "ssh_L"
    flag = "-L"
    description = "ssh -L through a throwaway local sshd"


class SshR(_Ssh):
    name = "ssh_R"
    flag = "-R"
    description = "ssh -R: sshd listens, the client dialled out (the relay shape)"


def all_paths(pm: ProcessManager, quick: bool, peers: bool) -> List[Path]:
    paths: List[Path] = [Direct(pm), OckamPortalNode(pm), OckamInletOutlet(pm), OckamRelay(pm), OckamSecureRelay(pm),
                         OckamProject(pm), Portforward(pm)]
    if peers:
        sshd = Sshd(pm)
        paths += [Socat(pm), Haproxy(pm), SshL(pm, sshd), SshR(pm, sshd)]
    return paths
