"""
The Orchestrator on the command line: C{ockam orchestrator
start|stop|status|logs} (a background C{twistd ockam-orchestrator}
process, as nodes are), C{ockam orchestrator token create}, and the
client side of the HTTP API every Orchestrator command uses.

The local Orchestrator lives in C{$OCKAM_HOME/orchestrator/}: its data
(unless C{--data} names another directory), C{pid}, C{orchestrator.log},
and C{run.json} (C{{"data": DIR}}: where its data is).  A pid file is
believed only for a live process whose command line is C{...
ockam-orchestrator ... --data DIR} for that directory; signals go through a
pidfd where there is one (L{ockamtw.cli.nodes._Process}).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import List, Optional

from twisted.internet import task

from ..control import state as st
from ..orchestrator.client import OrchestratorClient, OrchestratorError, http_client
from ..status import DOWN, UP
from . import home as h
from .nodes import CLIError, _Process, _reap, interruptible, os_error

PIDFILE = "pid"
LOGFILE = "orchestrator.log"
RUN_JSON = "run.json"

#: How long C{orchestrator start} waits for the HTTP API to answer.
START_TIMEOUT = 30.0


def is_orchestrator_process(pid: int, data: str) -> bool:
    """
    Whether process C{pid} is an Orchestrator whose data directory is
    C{data}: its command line holds C{ockam-orchestrator} and then C{--data
    DATA} (or C{--data=DATA}).
    """
    args = st.command_line(pid)
    if not args or "ockam-orchestrator" not in args:
        return False
    target = os.path.realpath(data)
    start = args.index("ockam-orchestrator")
    for i, arg in enumerate(args[start:], start):
        if arg == "--data" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--data="):
            value = arg[len("--data="):]
        else:
            continue
        if os.path.realpath(value) == target:
            return True
    return False


class LocalOrchestrator:
    """
    The Orchestrator process of one C{OCKAM_HOME}.
    """

    def __init__(self, home: str) -> None:
        self.home = home
        self.dir = h.orchestrator_dir(home)
        self.pidfile = os.path.join(self.dir, PIDFILE)
        self.log = os.path.join(self.dir, LOGFILE)

    def data(self) -> str:
        """
        Its data directory: the one it was last started with, else
        C{$OCKAM_HOME/orchestrator}.
        """
        try:
            with open(os.path.join(self.dir, RUN_JSON)) as f:
                data = json.load(f).get("data")
            if isinstance(data, str) and data:
                return data
        except (OSError, ValueError, AttributeError):
            pass
        return self.dir

    def pid(self) -> Optional[int]:
        pid = st.read_pid(self.dir)
        if pid is None or not st.pid_alive(pid):
            return None
        return pid if is_orchestrator_process(pid, self.data()) else None

    def url(self, data: Optional[str] = None) -> Optional[str]:
        try:
            with open(os.path.join(data or self.data(), "http.json")) as f:
                url = json.load(f).get("url")
        except (OSError, ValueError, AttributeError):
            return None
        return url if isinstance(url, str) else None

    def token(self, data: Optional[str] = None) -> Optional[str]:
        try:
            with open(os.path.join(data or self.data(), "admin.token")) as f:
                token = f.read().strip()
        except OSError:
            return None
        return token or None

    def argv(self, data: str, options: List[str]) -> List[str]:
        return [
            sys.executable, "-m", "ockamtw.orchestrator", "-n", "--pidfile", self.pidfile, "--umask", "0077",
            "--logfile", self.log, "ockam-orchestrator", "--data", data,
        ] + options

    def spawn(self, data: str, options: List[str]) -> subprocess.Popen:
        try:
            st.private_dir(self.dir)
            st.private_dir(data)
            for stale in (self.pidfile, os.path.join(data, "http.json")):
                try:
                    os.unlink(stale)
                except FileNotFoundError:
                    pass
            h.write_private(os.path.join(self.dir, RUN_JSON), json.dumps({"data": data}) + "\n")
            # twistd appends to the log and keeps its mode: make it private.
            os.close(os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            os.chmod(self.log, 0o600)
        except OSError as e:
            raise CLIError(f"cannot start the orchestrator: {os_error(e)}") from None
        return subprocess.Popen(
            self.argv(data, options),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.dir,
            start_new_session=True,
            close_fds=True,
        )

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """
        SIGTERM the Orchestrator and wait for it to exit (SIGKILL after
        C{timeout}); its pid, or C{None} if it was not running.
        """
        data = self.data()
        pid = self.pid()
        if pid is None:
            return None
        with _Process(pid, check=lambda p: is_orchestrator_process(p, data)) as proc, interruptible():
            if not is_orchestrator_process(pid, data) or not proc.signal(signal.SIGTERM):
                return None
            if not proc.wait(timeout, self.dir):
                proc.signal(signal.SIGKILL)
                if not proc.wait(5.0, self.dir):
                    raise CLIError(f"the orchestrator (pid {pid}) did not exit, even after SIGKILL")
        _reap(pid)
        if st.read_pid(self.dir) == pid:
            try:
                os.unlink(self.pidfile)
            except OSError:
                pass
        return pid


def _start_options(a) -> List[str]:
    options = []
    for flag, value in (
        ("--http", a.http), ("--db", a.db), ("--project-ports", a.project_ports),
        ("--advertise-host", a.advertise_host), ("--listen-host", a.listen_host),
        ("--credential-ttl", a.credential_ttl), ("--secrets-key-file", a.secrets_key_file),
        ("--refresh", a.refresh), ("--lease-ttl", a.lease_ttl), ("--tick", a.tick),
    ):
        if value is not None:
            options += [flag, str(value)]
    return options


def _reason_from(stderr: bytes, log_path: str, offset: int, code) -> str:
    """
    Why the Orchestrator process did not start: its last
    C{ockam-orchestrator: REASON} line (standard error, then the log).
    """
    lines = stderr.decode("utf-8", "replace").splitlines()
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            lines += f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        pass
    for line in reversed(lines):
        for marker in ("ockam-orchestrator: ", "ockamtw-orchestrator: "):
            if marker in line:
                return line.split(marker, 1)[1].strip()
    for line in reversed(lines):
        if line.strip():
            return f"the orchestrator did not start: {line.strip()}"
    return f"the orchestrator did not start (status {code})"


# --- commands --------------------------------------------------------------------------------


def client(c, url: Optional[str] = None, token: Optional[str] = None) -> OrchestratorClient:
    """
    An L{OrchestratorClient} for this home's Orchestrator (or C{url} and
    C{token}); its connection pool is closed when the command ends.
    """
    if url is None:
        conf = h.read_orchestrator(c.nodes.home) or local_conf(c.nodes.home)
        if conf is None:
            raise CLIError(
                "no orchestrator known in this home: start one (ockam orchestrator start) "
                "or enroll with one (ockam enroll --orchestrator URL --token TOKEN)"
            )
        url, token = conf["url"], conf["token"]
    http, pool = http_client(c.reactor)
    c._clients.append(_Pool(pool))
    return _CLIClient(http, url, token, clock=c.reactor)


def local_conf(home: str):
    """
    C{{"url", "token"}} read from the data of an Orchestrator started here
    without C{ockam orchestrator start} (C{twistd -n ockam-orchestrator}
    with its default C{--data}, C{$OCKAM_HOME/orchestrator}), or C{None}.
    """
    local = LocalOrchestrator(home)
    url, token = local.url(), local.token()
    if url is None or token is None:
        return None
    return {"url": url, "token": token}


class _Pool:
    def __init__(self, pool) -> None:
        self.pool = pool

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


class _CLIClient(OrchestratorClient):
    """
    A refused token is said with what to do about it.
    """

    #: Whether the token is the one given with C{--token} (not this home's).
    given = False

    async def call(self, *args, **kw):
        try:
            return await OrchestratorClient.call(self, *args, **kw)
        except OrchestratorError as e:
            if e.status == 401 and self.given:
                raise CLIError(
                    f"the orchestrator at {self.base_url} refused the token given with --token ({e.message})"
                ) from None
            if e.status == 401:
                raise CLIError(
                    f"the orchestrator at {self.base_url} refused this home's token ({e.message}); "
                    "enroll again with: ockam enroll --orchestrator URL --token TOKEN"
                ) from None
            raise


async def orchestrator_start(c) -> None:
    a = c.args
    home = c.nodes.home
    local = LocalOrchestrator(home)
    pid = local.pid()
    if pid is not None:
        raise CLIError(f"the orchestrator is already running (pid {pid}, {local.url() or 'no URL yet'})")
    data = os.path.abspath(a.data) if a.data else local.dir
    offset = _size(local.log)
    started = time.time()
    proc = local.spawn(data, _start_options(a))
    from .nodes import PipeTail, end_process

    stderr = PipeTail(proc.stderr)
    probe = None
    deadline = time.monotonic() + START_TIMEOUT
    url = None
    try:
        while True:
            stderr.read()
            code = proc.poll()
            if code is not None:
                stderr.read()
                raise CLIError(_reason_from(stderr.data, local.log, offset, code))
            url = local.url(data)
            if url is not None and st.read_pid(local.dir) == proc.pid:
                if probe is None or probe.base_url != url.rstrip("/"):
                    probe = client(c, url, None)
                try:
                    await probe.call("GET", "v0/health", auth=False, timeout=2.0)
                except OrchestratorError:
                    pass
                else:
                    break
            if time.monotonic() > deadline:
                end_process(proc)
                raise CLIError(f"the orchestrator did not answer within {START_TIMEOUT:g} s (see: {local.log})")
            await task.deferLater(c.reactor, 0.05, lambda: None)
    except BaseException:
        end_process(proc)
        raise
    finally:
        stderr.close()
    token = local.token(data)
    text = f"Orchestrator started (pid {proc.pid})\n  URL: {url}\n  Data: {data}\n  Log: {local.log}"
    if token is None:
        # Another instance on the same database made the administrator's
        # token (in its data directory): this home keeps the token it has
        # (every instance takes every token of the database), or has none.
        conf = h.read_orchestrator(home)
        token = conf["token"] if conf is not None else None
        if token is None:
            text += ("\n  Token: none here (another instance on this database made the administrator's token); "
                     f"give this home one: ockam enroll --orchestrator {url} --token TOKEN")
    if token is not None:
        h.write_orchestrator(home, url, token)
    warnings = _warnings_from(local.log, offset)
    for warning in warnings:
        text += f"\n  Warning: {warning}"
    info = {"status": UP, "pid": proc.pid, "url": url, "data": data, "log": local.log,
            "started": started, "token": token is not None, "warnings": warnings}
    c.out.emit(info, text)


#: A warning of the Orchestrator in its log (twisted.logger's text format).
_WARNING = re.compile(r"^\S+ \[ockamtw\.orchestrator(?:\.\w+)*#warn\] (.*)$")


def _warnings_from(log_path: str, offset: int) -> List[str]:
    """
    The warnings the Orchestrator logged while it started (its log from
    C{offset}): a person starting it in the background sees them too
    (such as C{--project-ports} among the ephemeral ports).
    """
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return [m.group(1).strip() for m in map(_WARNING.match, lines) if m]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


async def orchestrator_stop(c) -> None:
    local = LocalOrchestrator(c.nodes.home)
    pid = local.stop()
    if pid is None:
        raise CLIError("the orchestrator is not running (start it with: ockam orchestrator start)")
    c.out.emit({"status": DOWN, "pid": pid}, "Orchestrator stopped")


async def orchestrator_status(c) -> None:
    """
    The local Orchestrator: whether it runs, its URL, its projects, and
    the instances that share its database (one, on SQLite): whether each
    is alive, which projects it serves, and for each the age of its lease
    (held for, last renewed, time left).
    """
    local = LocalOrchestrator(c.nodes.home)
    pid = local.pid()
    data = local.data()
    info = {"status": UP if pid else DOWN, "pid": pid, "url": local.url(data) if pid else None,
            "data": data, "log": local.log, "instance": None, "projects": [], "instances": []}
    problem = None
    if pid and info["url"]:
        token = local.token(data)
        conf = h.read_orchestrator(c.nodes.home)
        if conf is not None and conf["url"] == info["url"]:
            token = conf["token"] or token
        api = client(c, info["url"], token)
        try:
            if token is None:
                raise CLIError(f"no token for it in this home (ockam enroll --orchestrator {info['url']} --token TOKEN)")
            info["instance"] = (await api.health()).get("instance")
            info["projects"] = await api.projects()
            info["instances"] = await api.instances()
        except (OrchestratorError, CLIError) as e:
            problem = str(e)
    lines = [f"Orchestrator: {info['status']}" + (f" (pid {pid})" if pid else "")]
    if pid:
        lines.append(f"  URL: {info['url'] or '-'}")
    lines += [f"  Data: {data}", f"  Log: {local.log}"]
    if pid:
        if problem is not None:
            lines.append(f"  Projects and instances: unknown: {problem}")
        else:
            lines.append("  Projects:")
            lines += [f"    {p['name']} {p['id']} {p['access_route']}" for p in info["projects"]] or ["    -"]
            lines.append("  Instances:")
            lines += instance_lines(info["instances"], info.get("instance"))
    c.out.emit(info, "\n".join(lines))


def _s(seconds) -> str:
    return "?" if seconds is None else f"{seconds:.1f} s"


def instance_lines(instances, this_id: Optional[str]) -> List[str]:
    """
    C{ockam orchestrator status}'s lines of the instances (those of
    C{GET /v0/instances}): one per instance (C{this_id} is marked), and
    one per project it serves with its lease's age.
    """
    lines = []
    for i in instances:
        state = "alive" if i["alive"] else "gone"
        this = " (this one)" if this_id is not None and i["id"] == this_id else ""
        lines.append(f"    {i['id']}{this} {i.get('http_url') or '-'} {state}, seen {_s(i.get('seen'))} ago, "
                     f"serves {i['projects']}")
        for lease in i.get("leases", []):
            lines.append(f"      {lease['name']} {lease['project_id']} held {_s(lease['held'])}, "
                         f"renewed {_s(lease['age'])} ago, {_s(lease['left'])} left")
    return lines


async def orchestrator_logs(c) -> None:
    local = LocalOrchestrator(c.nodes.home)
    c.out.emit({"log": local.log}, local.log)


async def orchestrator_token_create(c) -> None:
    a = c.args
    result = await client(c).token_create(a.label, a.expires_in)
    c.out.emit(result, result["token"])
