"""
The C{ockam} command line: background nodes, TCP connections, messages,
relays (forwarders), TCP inlets and outlets, as in Ockam's own CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import List, Optional

from twisted.internet import defer, task
from twisted.python.failure import Failure

from .. import __version__
from ..control import state as st
from ..errors import OckamError
from ..routing import MultiAddr
from ..status import BROKEN, DOWN, UNRESPONSIVE, title
from ..endpoints import split_hostport
from .nodes import CLIError, Nodes, end_process, PipeTail, interruptible, node_name, os_error
from .text import HOSTPORT_FORMS, hostport, table

# --- output -----------------------------------------------------------------------


def node_block(info: dict) -> str:
    listener = info.get("listener") or "-"
    lines = [
        "Node:",
        f"  Name: {info['name']}",
        f"  Status: {info['status']}",
        f"  PID: {info.get('pid') or '-'}",
        "  Route To Node:",
        f"    Short: /node/{info['name']}",
    ]
    hp = split_hostport(listener) if listener != "-" else None
    if hp:
        host, port = hp
        proto = "ip6" if ":" in host else "ip4"
        lines.append(f"    Verbose: /{proto}/{host}/tcp/{port}")
    lines.append(f"  Listener: {listener}")
    if info.get("identity"):
        lines.append(f"  Identity: {info['identity']}")
    if info.get("project"):
        lines.append(f"  Project: {info['project']}")
    if info.get("authority"):
        lines.append(f"  Authority of project: {info['authority']['project_identifier']}")
    services = info.get("services")
    if services is not None:
        lines.append("  Services:")
        lines += [f"    {s}" for s in services] or ["    -"]
    lines.append("  Inlets:")
    lines += [f"    {i['listen']} => {i['route']} ({i['status']})" for i in info.get("inlets", [])] or ["    -"]
    lines.append("  Outlets:")
    lines += [f"    /service/{o['address']} => {o['target']}" for o in info.get("outlets", [])] or ["    -"]
    lines.append("  Relays:")
    lines += [
        f"    /service/{r['alias']} at {r['at']} ({r['status']})" for r in info.get("relays", [])
    ] or ["    -"]
    return "\n".join(lines)


class Out:
    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"

    def emit(self, data, text: Optional[str]) -> None:
        """
        Print C{data} as JSON (C{--output json}), else C{text} (nothing for
        C{None}: a command that prints nothing on success, as in Ockam).
        """
        if self.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        elif text is not None:
            print(text)


# --- routes typed by users ----------------------------------------------------------------


def read_route(text: str, stdin=None, what: str = "--to") -> str:
    """
    The route text with a C{-} replaced by standard input (so that one
    command's output can be piped into the next), checked as a MultiAddr.
    """
    at = _dash_at(text)
    if at is not None:
        stdin = stdin or sys.stdin
        if stdin.isatty():
            raise CLIError(f"{what} has '-' but nothing is piped into standard input")
        with interruptible():
            piped = stdin.read().strip()
        if not piped:
            raise CLIError(f"{what} has '-' but standard input is empty")
        if at == 0:
            text = piped + text[1:]
        else:  # /project/default/- : the piped route replaces the segment
            text = text[: at - 1] + (piped if piped.startswith("/") else "/" + piped) + text[at + 1 :]
    if text.startswith("/"):
        try:
            MultiAddr.parse(text)
        except OckamError as e:
            raise CLIError(str(e)) from None
    return text


def _dash_at(text: str) -> Optional[int]:
    """
    Where the C{-} standing for standard input is in a route: the whole
    text, its start (C{-/service/uppercase}), or a segment where a
    protocol would be (C{/project/default/-/service/uppercase}).
    """
    if text == "-" or text.startswith("-/"):
        return 0
    if not text.startswith("/"):
        return None
    parts = text.split("/")[1:]
    offset = 1
    for i, part in enumerate(parts):
        if part == "-" and i % 2 == 0:
            return offset
        offset += len(part) + 1
    return None


def multiaddr_of(hostport_text: str) -> str:
    """
    C{/ip4/H/tcp/P} (or C{/ip6/...}, C{/dnsaddr/...}) for C{H:P}.
    """
    import ipaddress

    host, port = split_hostport(hostport_text)
    try:
        kind = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
    except ValueError:
        kind = "dnsaddr"
    return f"/{kind}/{host}/tcp/{port}"


# --- commands --------------------------------------------------------------------------------


class Commands:
    def __init__(self, reactor, args, nodes: Nodes) -> None:
        self.reactor = reactor
        self.args = args
        self.nodes = nodes
        self.out = Out(getattr(args, "output", "plain") or "plain")
        self._clients = []

    def client(self, name: str):
        from .client import ControlClient

        name = self.nodes.require(name)
        c = ControlClient(self.reactor, name, self.nodes.socket(name), lambda: self._unreachable(name))
        self._clients.append(c)
        return c

    def _unreachable(self, name: str) -> str:
        """
        Why node C{name}'s control socket cannot be reached.
        """
        pid = self.nodes.pid(name)
        if pid is None:
            return f"node {name} is not running (start it with: ockam node start {name})"
        sock = self.nodes.socket(name)
        again = f"ockam node stop {name} && ockam node start {name}"
        if not os.path.exists(sock):
            return f"node {name} (pid {pid}) has lost its control socket {sock} (restart it: {again})"
        return f"node {name} (pid {pid}) does not accept connections on {sock} (restart it: {again})"

    def _check_route_node(self, route: str) -> None:
        """
        A route starting at C{/node/NAME} needs that node, running: say so
        here, in the words every command uses, rather than through the
        node that would resolve it.
        """
        if not route.startswith("/node/"):
            return
        try:
            hops = MultiAddr.parse(route).hops
        except OckamError:
            return
        name = self.nodes.require(hops[0].name)
        if self.nodes.pid(name) is None:
            raise CLIError(f"node {name} is not running (start it with: ockam node start {name})")

    async def close(self) -> None:
        for c in self._clients:
            await c.close()

    async def _wait_ready(self, name: str, proc, log_offset: int, timeout: float = 20.0) -> dict:
        """
        Wait until the node process C{proc} answers on its control socket
        (and is the one answering); its info.  If it exits first, or does
        not answer within C{timeout} (then it is stopped), a L{CLIError}
        says why.
        """
        from .client import ControlClient

        deadline = time.monotonic() + timeout
        c = ControlClient(self.reactor, name, self.nodes.socket(name))
        self._clients.append(c)
        stderr = PipeTail(proc.stderr)
        try:
            while True:
                stderr.read()
                code = proc.poll()
                if code is not None:
                    stderr.read()
                    raise CLIError(self.nodes.startup_error(name, log_offset, stderr.data, code))
                if os.path.exists(self.nodes.socket(name)):
                    try:
                        info = await c.call("GET", "node", timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                    except CLIError:
                        pass
                    else:
                        if info.get("pid") == proc.pid:
                            return info
                if time.monotonic() > deadline:
                    end_process(proc)
                    raise CLIError(f"node {name} did not answer within {timeout:g} s (see: ockam node logs {name})")
                await task.deferLater(self.reactor, 0.05, lambda: None)
        finally:
            stderr.close()

    # node ---------------------------------------------------------------------

    async def node_create(self):
        a = self.args
        listen = hostport(a.tcp_listener_address, "--tcp-listener-address")
        extra = {}
        if getattr(a, "project", None) is not None:
            from ..project.projectinfo import ProjectInfo
            from . import home as h

            info = ProjectInfo.load(a.project)
            info.require_complete()
            extra["project"] = info.to_dict()
            if not os.path.exists(h.project_path(self.nodes.home, info.name)) and st.valid_node_name(info.name):
                h.save_project(self.nodes.home, info)  # /project/NAME in this home too (as 0.83's lookup)
        await self.create_node(a.name, listen, extra=extra, identity=a.identity, foreground=a.foreground)

    async def create_node(self, name, listen: str, extra: Optional[dict] = None, identity: Optional[str] = None,
                          foreground: bool = False, enrolled: bool = True) -> None:
        """
        Create node C{name} (random when C{None}) listening at C{listen},
        with C{extra} in its state, start it and print it.  In a home
        that enrolled (C{ockam enroll}), with C{enrolled}, the node uses the
        enrolled identity unless C{identity} names another, and belongs to
        the home's default project unless C{extra} names one.
        """
        from . import home as h

        name = node_name(name) if name is not None else os.urandom(4).hex()
        if self.nodes.exists(name):
            raise CLIError(f"node {name!r} already exists")
        problem = st.socket_path_problem(self.nodes.dir(name))
        if problem:
            raise CLIError(problem)
        state = st.empty_state(name, listen)
        state.update(extra or {})
        home = self.nodes.home
        enrolled_identity = h.enrolled_identity(home) if enrolled else None
        if enrolled_identity is not None:
            identity = identity or enrolled_identity
            if "project" not in state:
                default = h.default_project(home)
                if default is not None:
                    state["project"] = h.load_project(home, default).to_dict()
        if identity:
            if not os.path.exists(st.identity_path(home, identity)):
                raise CLIError(f"no identity named {identity!r} (create it with: ockam identity create {identity})")
            state["identity"] = identity
        d = self.nodes.make_dir(name)  # exclusive: of two racing creates, one gets it
        try:
            with self.nodes.lock(name):
                try:
                    st.write_state(d, state)
                except OSError as e:
                    raise CLIError(f"cannot create node {name}: {os_error(e, os.path.join(d, st.STATE))}") from None
                if foreground:
                    # Become the node (its command line names DIR, as a
                    # background node's does); it logs to standard output.
                    sys.stdout.flush()
                    sys.stderr.flush()
                    argv = self.nodes.node_argv(name, log=False)
                    os.execv(argv[0], argv)
                offset = self.nodes.log_size(name)
                proc = self.nodes.spawn(name)
                try:
                    info = await self._wait_ready(name, proc, offset)
                except BaseException:
                    end_process(proc)
                    raise
        except BaseException:
            try:
                self.nodes.delete(name)  # the directory is this command's own
            except CLIError:
                pass  # the first error is the one to tell
            raise
        self.out.emit(info, node_block(info))

    async def _node_info(self, name: str) -> dict:
        """
        What C{node show} prints: the running node's own answer; else what
        its state on disk says (C{DOWN}, or C{UNRESPONSIVE} when its process
        runs but does not answer).

        @raise st.StateError: for a stopped node whose state is broken.
        """
        pid = self.nodes.pid(name)
        if pid is not None:
            try:
                return await self.client(name).call("GET", "node", timeout=NODE_ANSWER_TIMEOUT)
            except CLIError:
                pass
        state = self.nodes.state(name)
        return {
            "name": name,
            "status": DOWN if pid is None else UNRESPONSIVE,
            "pid": pid,
            "route": f"/node/{name}",
            "listener": state.get("listen"),
            "services": [],
            "forwarders": [],
            "identity": _identity_on_disk(self.nodes, name, state),
            "project": (state.get("project") or {}).get("name"),
            "authority": _authority_on_disk(state),
            "inlets": [{"listen": i["listen"], "route": i["to"], "status": title(DOWN)} for i in state.get("inlets", [])],
            "outlets": [{"address": o["address"], "target": o["to"]} for o in state.get("outlets", [])],
            "relays": [
                {"name": r["name"], "alias": f"forward_to_{r['name']}", "at": r["at"], "status": title(DOWN)}
                for r in state.get("relays", [])
            ],
            # Known only to a running node (see NodeController.limits).
            "limits": {},
            "refused": {},
            "closed": {},
            "connections": {},
            "handshakes": {},
            "dropped": None,
        }

    async def node_list(self):
        infos, problems = [], []
        for n in self.nodes.names():
            try:
                infos.append(await self._node_info(n))
            except st.StateError as e:
                problems.append(str(e))
                infos.append(_broken_info(n, e, self.nodes.pid(n)))
        rows = [[i["name"], i["status"], str(i.get("pid") or "-"), i.get("listener") or "-"] for i in infos]
        self.out.emit(infos, table(["Node", "Status", "PID", "Listener"], rows))
        for problem in problems:
            print(f"ockam: {problem}", file=sys.stderr)

    async def node_show(self):
        name = self.nodes.pick(self.args.name)
        info = await self._node_info(name)
        self.out.emit(info, node_block(info))

    async def node_stop(self):
        name = self.nodes.require(self.args.name)
        with self.nodes.lock(name):
            stopped = self.nodes.stop(name)
            self.nodes.clear_stale(name)
        if not stopped:
            raise CLIError(f"node {name} is not running")
        self.out.emit({"name": name, "status": DOWN}, f"Node {name} stopped")

    async def node_start(self):
        name = self.nodes.require(self.args.name)
        with self.nodes.lock(name):
            pid = self.nodes.pid(name)
            if pid is not None:
                raise CLIError(f"node {name} is already running (pid {pid})")
            self.nodes.state(name)  # a broken state.json: say so here, start nothing
            problem = st.socket_path_problem(self.nodes.dir(name))
            if problem:
                raise CLIError(problem)
            self.nodes.clear_stale(name, starting=True)
            offset = self.nodes.log_size(name)
            proc = self.nodes.spawn(name)
            info = await self._wait_ready(name, proc, offset)
        self.out.emit(info, node_block(info))

    async def node_logs(self):
        name = self.nodes.pick(self.args.name)
        path = self.nodes.log_path(name)
        self.out.emit({"name": name, "log": path}, path)

    async def node_delete(self):
        a = self.args
        if a.all:
            names = self.nodes.names()
        else:
            names = [self.nodes.require(a.name)]
        deleted = []
        for name in names:
            try:
                with self.nodes.lock(name):
                    self.nodes.delete(name)
            except CLIError:
                if a.all and not self.nodes.exists(name):
                    continue  # deleted by another command meanwhile
                raise
            deleted.append(name)
        self.out.emit({"deleted": deleted}, "\n".join(f"Node {n} deleted" for n in deleted) or "No node to delete")

    # tcp-connection ------------------------------------------------------------

    async def tcp_create(self):
        name = self.nodes.pick(self.args.from_)
        to = self.args.to
        if to.startswith("/node/"):
            self._check_route_node(to)
            hops = MultiAddr.parse(to).hops
            if len(hops) != 1:
                raise CLIError(f"--to: expected {HOSTPORT_FORMS} or /node/NAME, got {to!r}")
            to = st.listener_of(self.nodes.home, hops[0].name)
            if not to:
                raise CLIError(f"node {hops[0].name} has no listener address")
        else:
            to = hostport(to, "--to")
        conn = await self.client(name).call("POST", "tcp", {"to": to}, timeout=CONNECT_CALL_TIMEOUT)
        self.out.emit(conn, f"/service/{conn['worker_address'].split('#', 1)[1]}")

    async def tcp_list(self):
        name = self.nodes.pick(self.args.node)
        items = [c for c in await self.client(name).call("GET", "tcp") if c["mode"] != "Listening"]
        rows = [
            [c["transport_id"], c["transport_type"], c["mode"], c["socket_address"], c["worker_address"]]
            for c in items
        ]
        headers = ["Transport ID", "Transport Type", "Mode", "Socket address", "Worker address"]
        self.out.emit(items, table(headers, rows))

    async def tcp_show(self):
        name = self.nodes.pick(self.args.node)
        c = await self.client(name).call("GET", ("tcp", self.args.id))
        text = "\n".join(
            [
                f"TCP connection: {c['transport_id']}",
                f"  Mode: {c['mode']}",
                f"  Socket address: {c['socket_address']}",
                f"  Worker address: {c['worker_address']}",
            ]
        )
        self.out.emit(c, text)

    async def tcp_delete(self):
        name = self.nodes.pick(self.args.node)
        c = await self.client(name).call("DELETE", ("tcp", self.args.id))
        self.out.emit(c, f"TCP connection {c['transport_id']} deleted")

    # message -------------------------------------------------------------------------

    async def message_send(self):
        a = self.args
        to = read_route(a.to)
        if a.from_ is not None:
            if a.identity is not None or a.project_path is not None:
                a.parser.error("--identity and --project-path are for a message sent without --from")
            name = self.nodes.require(a.from_)
            self._check_route_node(to)
            reply = await self.client(name).call(
                "POST", "message", {"to": to, "message": a.message, "timeout": a.timeout},
                timeout=a.timeout + CALL_MARGIN,
            )
        else:
            reply = await self._send_embedded(to, a.message, a.timeout)
        text = reply["reply"] if reply["reply"] is not None else reply["hex"]
        self.out.emit(reply, text)

    async def _send_embedded(self, to: str, message: str, timeout: float) -> dict:
        """
        Send from a short-lived node in this process, with this home's
        enrolled identity (or C{--identity}) and the projects it knows (or
        C{--project-path}), so that C{/project/NAME} routes work.
        """
        from ..control.server import reply_dict
        from ..wire import encode_string
        from . import home as h
        from . import projects as p

        a = self.args
        home = self.nodes.home
        name = a.identity or h.enrolled_identity(home)
        identity = p.load_identity(self, name) if name else None
        if a.project_path is not None:
            projects = [p.project_named(self, path=a.project_path)]
        else:
            projects = []
            if to.startswith("/project/"):
                projects = [p.project_named(self, to.split("/")[2])]
        node = await p.embedded_node(self, identity, projects)
        reply = await node.request(to, encode_string(message), timeout=timeout)
        return reply_dict(reply)

    # relays ----------------------------------------------------------------------------

    async def relay_create(self):
        a = self.args
        name = self.nodes.pick(a.to)
        at = self._relay_at(a.at)
        self._check_route_node(at)
        relay = await self.client(name).call(
            "POST", "relays", {"name": a.name, "at": at, "timeout": a.timeout}, timeout=a.timeout + CALL_MARGIN
        )
        self.out.emit(relay, f"/service/{relay['alias']}")

    def _relay_at(self, text: str) -> str:
        """
        Where a relay goes: a route (C{/node/n2}, C{/ip4/...}), a node's
        name (C{n2}), or a node's listener as printed (C{127.0.0.1:7000}).
        """
        text = read_route(text, what="--at")
        if text.startswith("/") or "#" in text or "=>" in text:
            return text
        if st.valid_node_name(text) and self.nodes.exists(text):
            return f"/node/{text}"
        try:
            hp = split_hostport(text)
        except OckamError as e:
            raise CLIError(f"--at: {e}") from None
        if hp is not None:
            return multiaddr_of(text)
        if st.valid_node_name(text):
            self.nodes.require(text)
        return text

    async def relay_list(self):
        name = self.nodes.pick(self.args.to)
        relays = await self.client(name).call("GET", "relays")
        rows = [[r["name"], f"/service/{r['alias']}", r["at"], r["status"]] for r in relays]
        self.out.emit(relays, table(["Relay", "Address", "At", "Status"], rows))

    async def relay_show(self):
        name = self.nodes.pick(self.args.to)
        r = await self.client(name).call("GET", ("relays", self.args.name))
        text = "\n".join(
            [
                f"Relay: {r['name']}",
                f"  Address: /service/{r['alias']}",
                f"  At: {r['at']}",
                f"  Status: {r['status']}",
                f"  Route: {r['route'] or '-'}",
            ]
            + ([f"  Last error: {r['last_error']}"] if r.get("last_error") else [])
        )
        self.out.emit(r, text)

    async def relay_delete(self):
        name = self.nodes.pick(self.args.to)
        r = await self.client(name).call("DELETE", ("relays", self.args.name))
        self.out.emit(r, f"Relay {r['name']} deleted")

    # outlets ----------------------------------------------------------------------------

    async def outlet_create(self):
        a = self.args
        name = self.nodes.pick(a.at)
        body = {"address": a.from_, "to": hostport(a.to, "--to")}
        if a.authorized:
            body["authorized"] = a.authorized
        o = await self.client(name).call("POST", "outlets", body)
        self.out.emit(o, f"/service/{o['address']}")

    async def outlet_list(self):
        name = self.nodes.pick(self.args.at)
        outlets = await self.client(name).call("GET", "outlets")
        rows = [[f"/service/{o['address']}", o["target"], str(o["connections"])] for o in outlets]
        self.out.emit(outlets, table(["Address", "To", "Connections"], rows))

    async def outlet_show(self):
        name = self.nodes.pick(self.args.at)
        o = await self.client(name).call("GET", ("outlets", self.args.address))
        self.out.emit(o, f"Outlet: /service/{o['address']}\n  To: {o['target']}\n  Connections: {o['connections']}")

    async def outlet_delete(self):
        name = self.nodes.pick(self.args.at)
        o = await self.client(name).call("DELETE", ("outlets", self.args.address))
        self.out.emit(o, f"Outlet /service/{o['address']} deleted")

    # identities ---------------------------------------------------------------------------

    async def identity_create(self):
        from ..secure.identity import LocalIdentity

        from ..secure.errors import IdentityError

        name = _identity_name(self.args.name)
        path = st.identity_path(self.nodes.home, name)
        if os.path.exists(path):
            raise CLIError(f"identity {name!r} already exists")
        try:
            st.secure_identities_dir(self.nodes.home)
        except OSError as e:
            raise CLIError(f"cannot create identity {name}: {os_error(e)}") from None
        identity = LocalIdentity.create()
        try:
            identity.save(path)
        except IdentityError as e:
            raise CLIError(f"cannot create identity {name}: {e}") from None
        info = {"name": name, "identifier": identity.identifier}
        self.out.emit(info, identity.identifier)

    def _named_identities(self):
        d = st.identities_dir(self.nodes.home)
        try:
            names = sorted(f[: -len(".json")] for f in os.listdir(d) if f.endswith(".json"))
        except FileNotFoundError:
            names = []
        return names

    def _load_identity(self, name):
        from ..secure.errors import IdentityError
        from ..secure.identity import LocalIdentity

        path = st.identity_path(self.nodes.home, _identity_name(name))
        if not os.path.exists(path):
            raise CLIError(f"no identity named {name!r} (see: ockam identity list)")
        try:
            return LocalIdentity.load(path)
        except IdentityError as e:
            raise CLIError(f"identity {name!r}: {e}") from None

    async def identity_show(self):
        a = self.args
        if a.node:
            name = self.nodes.require(a.node)
            info = await self.client(name).call("GET", "identity")
        else:
            identity = self._load_identity(a.name or "default")
            info = {"identifier": identity.identifier, "export": identity.export().hex()}
        self.out.emit(info, info["export"] if a.full else info["identifier"])

    async def identity_delete(self):
        """
        Delete a named identity; refused while a node uses it.
        """
        name = _identity_name(self.args.name)
        identity = self._load_identity(name)
        users = []
        for n in self.nodes.names():
            try:
                uses = self.nodes.state(n).get("identity")
            except st.StateError as e:
                raise CLIError(f"cannot tell whether node {n} uses identity {name!r}: {e.problem}") from None
            if uses == name:
                users.append(n)
        if users:
            nodes = ", ".join(users)
            raise CLIError(f"identity {name!r} is used by node {nodes} (delete the node first: ockam node delete {users[0]})")
        path = st.identity_path(self.nodes.home, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise CLIError(f"no identity named {name!r} (see: ockam identity list)") from None
        except OSError as e:
            raise CLIError(f"cannot delete identity {name}: {os_error(e, path)}") from None
        info = {"name": name, "identifier": identity.identifier}
        self.out.emit(info, f"Identity {name} deleted")

    async def identity_list(self):
        rows, infos = [], []
        for name in self._named_identities():
            identity = self._load_identity(name)
            infos.append({"name": name, "identifier": identity.identifier})
            rows.append([name, identity.identifier])
        self.out.emit(infos, table(["Identity", "Identifier"], rows))

    # secure channels -----------------------------------------------------------------------

    async def sc_create(self):
        a = self.args
        name = self.nodes.pick(a.from_)
        to = read_route(a.to)
        self._check_route_node(to)
        body = {"to": to, "timeout": a.timeout}
        if a.authorized:
            body["authorized"] = a.authorized
        sc = await self.client(name).call("POST", "secure-channels", body, timeout=a.timeout + CALL_MARGIN)
        self.out.emit(sc, f"/service/{sc['encryptor']}")

    async def sc_list(self):
        name = self.nodes.pick(self.args.at)
        channels = await self.client(name).call("GET", "secure-channels")
        rows = [[f"/service/{c['encryptor']}", c["role"], c["status"], c["peer"] or "-", c["route"] or "-"] for c in channels]
        self.out.emit(channels, table(["Channel", "Role", "Status", "Peer", "Route"], rows))

    async def sc_show(self):
        name = self.nodes.pick(self.args.at)
        c = await self.client(name).call("GET", ("secure-channels", self.args.channel))
        text = "\n".join(
            [
                f"Secure channel: /service/{c['encryptor']}",
                f"  Role: {c['role']}",
                f"  Status: {c['status']}",
                f"  Peer: {c['peer'] or '-'}",
                f"  Route: {c['route'] or '-'}",
                f"  Decryptor: /service/{c['decryptor']}",
            ]
        )
        self.out.emit(c, text)

    async def sc_delete(self):
        name = self.nodes.pick(self.args.at)
        c = await self.client(name).call("DELETE", ("secure-channels", self.args.channel))
        self.out.emit(c, f"Secure channel /service/{c['encryptor']} deleted")

    async def scl_create(self):
        a = self.args
        name = self.nodes.pick(a.at)
        body = {"address": a.address}
        if a.authorized:
            body["authorized"] = a.authorized
        l = await self.client(name).call("POST", "secure-channel-listeners", body)
        self.out.emit(l, f"/service/{l['address']}")

    async def scl_list(self):
        name = self.nodes.pick(self.args.at)
        listeners = await self.client(name).call("GET", "secure-channel-listeners")
        rows = [[f"/service/{l['address']}", ", ".join(l["authorized"]) if l["authorized"] else "everyone", str(l["channels"])] for l in listeners]
        self.out.emit(listeners, table(["Listener", "Authorized", "Channels"], rows))

    async def scl_delete(self):
        name = self.nodes.pick(self.args.at)
        l = await self.client(name).call("DELETE", ("secure-channel-listeners", self.args.address))
        self.out.emit(l, f"Secure channel listener /service/{l['address']} deleted")

    # inlets -------------------------------------------------------------------------------

    async def inlet_create(self):
        a = self.args
        name = self.nodes.pick(a.at)
        listen = hostport(a.from_, "--from")
        to = read_route(a.to)
        body = {"listen": listen, "to": to}
        if a.authorized:
            body["authorized"] = a.authorized
        i = await self.client(name).call("POST", "inlets", body)
        self.out.emit(i, i["listen"])

    async def inlet_list(self):
        name = self.nodes.pick(self.args.at)
        inlets = await self.client(name).call("GET", "inlets")
        rows = [[i["listen"], i["route"], i["status"], str(i["connections"])] for i in inlets]
        self.out.emit(inlets, table(["Listen", "To", "Status", "Connections"], rows))

    async def inlet_show(self):
        name = self.nodes.pick(self.args.at)
        i = await self.client(name).call("GET", ("inlets", _inlet_key(self.args.listen)))
        text = f"Inlet: {i['listen']}\n  To: {i['route']}\n  Status: {i['status']}\n  Connections: {i['connections']}"
        self.out.emit(i, text)

    async def inlet_delete(self):
        name = self.nodes.pick(self.args.at)
        i = await self.client(name).call("DELETE", ("inlets", _inlet_key(self.args.listen)))
        self.out.emit(i, f"Inlet {i['listen']} deleted")


# --- the parser -----------------------------------------------------------------------------------


def identifier_arg(text: str) -> str:
    """
    An identity's identifier as an option's value (C{--authorized}).
    """
    from ..project.codec import is_identifier

    if not is_identifier(text):
        raise argparse.ArgumentTypeError(f"not an identifier (P + 64 lowercase hex): {text!r}")
    return text


class _Parser(argparse.ArgumentParser):
    """
    A usage mistake is one line, as every other error: what is wrong and
    where the command's help is (not the whole usage, which wraps over
    several lines for most commands).  Exit status 2.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """
    The command line.  The global options (C{--output}) are taken before
    the command, after it, or after the action: C{ockam --output json node
    list}, C{ockam node --output json list}, C{ockam node list --output json}.
    """
    # Below the top level, --output has no default, so that one given
    # earlier on the line is not reset by the parser of a later word.
    common = _Parser(add_help=False)
    common.add_argument("--output", choices=["plain", "json"], default=argparse.SUPPRESS, help="output format (default: plain)")

    p = _Parser(prog="ockam", description="Ockam nodes, relays and portals (ockamtw).")
    p.add_argument("--output", choices=["plain", "json"], default="plain", help="output format (default: plain)")
    p.add_argument("--version", action="version", version=f"ockam {__version__} (ockamtw)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def group(name, help_, aliases=()):
        g = sub.add_parser(name, help=help_, description=help_, aliases=list(aliases), parents=[common])
        return g.add_subparsers(dest="action", metavar="ACTION", required=True)

    def cmd(parent, name, func, help_):
        c = (parent or sub).add_parser(name, help=help_, description=help_, parents=[common])
        c.set_defaults(func=func, parser=c)
        return c

    node = group("node", "manage background nodes")
    c = cmd(node, "create", Commands.node_create, "create and start a node")
    c.add_argument("name", nargs="?", help="node name (random by default)")
    c.add_argument("--tcp-listener-address", default="127.0.0.1:0", metavar="ADDRESS",
                   help=f"where the node listens: {HOSTPORT_FORMS} (default: a free port on 127.0.0.1)")
    c.add_argument("--foreground", action="store_true", help="run in this process instead of in the background")
    c.add_argument("--identity", metavar="NAME", help="use the named identity (see: ockam identity create; "
                   "in an enrolled home: the enrolled one)")
    c.add_argument("--project", "--project-path", dest="project", metavar="PROJECT_JSON",
                   help="belong to the project this project.json describes (in an enrolled home: its default project)")
    cmd(node, "list", Commands.node_list, "list nodes")
    c = cmd(node, "show", Commands.node_show, "show a node's status")
    c.add_argument("name", nargs="?", metavar="NODE")
    for action, func, help_ in (
        ("stop", Commands.node_stop, "stop a node (its state is kept)"),
        ("start", Commands.node_start, "start a stopped node with its state"),
        ("logs", Commands.node_logs, "print the path of a node's log file"),
    ):
        c = cmd(node, action, func, help_)
        c.add_argument("name", nargs="?" if action == "logs" else None, metavar="NODE")
    c = cmd(node, "delete", Commands.node_delete, "stop a node and delete its state")
    c.add_argument("name", nargs="?", metavar="NODE")
    c.add_argument("--all", action="store_true", help="delete every node")

    tcp = group("tcp-connection", "TCP connections of a node")
    c = cmd(tcp, "create", Commands.tcp_create, "connect a node to another")
    c.add_argument("--from", dest="from_", metavar="NODE")
    c.add_argument("--to", required=True, metavar="ADDRESS", help=f"{HOSTPORT_FORMS} or /node/NAME")
    c = cmd(tcp, "list", Commands.tcp_list, "list a node's TCP connections")
    c.add_argument("--node", "--from", dest="node", metavar="NODE")
    for action, func, help_ in (("show", Commands.tcp_show, "show"), ("delete", Commands.tcp_delete, "close")):
        c = cmd(tcp, action, func, f"{help_} a TCP connection")
        c.add_argument("id", metavar="ID", help="transport id, worker address (/service/HEX, 0#HEX or HEX) or socket address")
        c.add_argument("--node", "--from", dest="node", metavar="NODE")

    msg = group("message", "send messages")
    c = cmd(msg, "send", Commands.message_send, "send a message and print the reply")
    c.add_argument("message", metavar="MSG")
    c.add_argument("--from", dest="from_", metavar="NODE", help="the node that sends (default: a temporary node)")
    c.add_argument("--to", required=True, metavar="ROUTE", help="MultiAddr route; '-' reads standard input")
    c.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS")
    c.add_argument("--identity", metavar="NAME", help="without --from: send as this identity (default: the enrolled one)")
    c.add_argument("--project-path", metavar="PROJECT_JSON",
                   help="without --from: the project of /project/NAME (default: the one this home knows)")

    for name in ("relay", "forwarder"):
        r = group(name, "relays (formerly forwarders)" if name == "relay" else "relays, under their old name")
        c = cmd(r, "create", Commands.relay_create, "register a relay at another node")
        c.add_argument("name", nargs="?", default="default", metavar="NAME")
        c.add_argument("--at", required=True, metavar="ROUTE", help="the relay node: /node/n2, n2, a route or HOST:PORT")
        c.add_argument("--to", metavar="NODE", help="the node the relay forwards to")
        c.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS")
        c = cmd(r, "list", Commands.relay_list, "list a node's relays")
        c.add_argument("--to", metavar="NODE")
        for action, func in (("show", Commands.relay_show), ("delete", Commands.relay_delete)):
            c = cmd(r, action, func, f"{action} a relay")
            c.add_argument("name", metavar="NAME", help="its name (n3) or address (/service/forward_to_n3)")
            c.add_argument("--to", metavar="NODE")

    o = group("tcp-outlet", "TCP outlets")
    c = cmd(o, "create", Commands.outlet_create, "create a TCP outlet")
    c.add_argument("--at", metavar="NODE")
    c.add_argument("--from", dest="from_", default="/service/outlet", metavar="ADDRESS")
    c.add_argument("--to", required=True, metavar="HOST:PORT", help=HOSTPORT_FORMS)
    c.add_argument("--authorized", action="append", type=identifier_arg, metavar="IDENTIFIER",
                   help="accept only this identity through a secure channel (repeatable)")
    c = cmd(o, "list", Commands.outlet_list, "list TCP outlets")
    c.add_argument("--at", metavar="NODE")
    for action, func in (("show", Commands.outlet_show), ("delete", Commands.outlet_delete)):
        c = cmd(o, action, func, f"{action} a TCP outlet")
        c.add_argument("address", metavar="ADDRESS", help="/service/NAME or NAME")
        c.add_argument("--at", metavar="NODE")

    i = group("tcp-inlet", "TCP inlets")
    c = cmd(i, "create", Commands.inlet_create, "create a TCP inlet")
    c.add_argument("--at", metavar="NODE")
    c.add_argument("--from", dest="from_", required=True, metavar="HOST:PORT", help=HOSTPORT_FORMS)
    c.add_argument("--to", required=True, metavar="ROUTE", help="MultiAddr route to the outlet; '-' reads standard input")
    c.add_argument("--authorized", action="append", type=identifier_arg, metavar="IDENTIFIER",
                   help="accept only an outlet with this identity, through a secure channel (repeatable)")
    c = cmd(i, "list", Commands.inlet_list, "list TCP inlets")
    c.add_argument("--at", metavar="NODE")
    for action, func in (("show", Commands.inlet_show), ("delete", Commands.inlet_delete)):
        c = cmd(i, action, func, f"{action} a TCP inlet")
        c.add_argument("listen", metavar="HOST:PORT")
        c.add_argument("--at", metavar="NODE")

    ident = group("identity", "identities")
    c = cmd(ident, "create", Commands.identity_create, "create a named identity")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: default")
    c = cmd(ident, "show", Commands.identity_show, "print an identity's identifier (or its export with --full)")
    c.add_argument("name", nargs="?", metavar="NAME")
    c.add_argument("--node", metavar="NODE", help="the identity of this node")
    c.add_argument("--full", action="store_true", help="print the export (hex)")
    cmd(ident, "list", Commands.identity_list, "list named identities")
    c = cmd(ident, "delete", Commands.identity_delete, "delete a named identity (not while a node uses it)")
    c.add_argument("name", metavar="NAME")

    sc = group("secure-channel", "secure channels")
    c = cmd(sc, "create", Commands.sc_create, "create a secure channel from a node to a listener")
    c.add_argument("--from", dest="from_", metavar="NODE")
    c.add_argument("--to", required=True, metavar="ROUTE", help="route to the listener, e.g. /node/n2/service/api")
    c.add_argument("--authorized", action="append", type=identifier_arg, metavar="IDENTIFIER", help="accept only this peer (repeatable)")
    c.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS")
    c = cmd(sc, "list", Commands.sc_list, "list a node's established secure channels")
    c.add_argument("--at", metavar="NODE")
    for action, func, help_ in (("show", Commands.sc_show, "show"), ("delete", Commands.sc_delete, "close")):
        c = cmd(sc, action, func, f"{help_} a secure channel")
        c.add_argument("channel", metavar="CHANNEL", help="/service/<encryptor> or its hex")
        c.add_argument("--at", metavar="NODE")

    scl = group("secure-channel-listener", "secure channel listeners")
    c = cmd(scl, "create", Commands.scl_create, "start a secure channel listener (api: restrict the node's own)")
    c.add_argument("address", metavar="ADDRESS", help="/service/NAME or NAME")
    c.add_argument("--at", metavar="NODE")
    c.add_argument("--authorized", action="append", type=identifier_arg, metavar="IDENTIFIER", help="accept only this peer (repeatable)")
    c = cmd(scl, "list", Commands.scl_list, "list a node's secure channel listeners")
    c.add_argument("--at", metavar="NODE")
    c = cmd(scl, "delete", Commands.scl_delete, "stop a secure channel listener and close its channels")
    c.add_argument("address", metavar="ADDRESS", help="/service/NAME or NAME")
    c.add_argument("--at", metavar="NODE")
    _orchestrator_parsers(group, cmd, common)
    return p


def _orchestrator_parsers(group, cmd, common) -> None:
    """
    The Orchestrator's commands: orchestrator, enroll, space, project,
    policy, credential, authority.
    """
    from . import orchestrator as o
    from . import projects as pr

    orch = group("orchestrator", "the local Orchestrator (a background process, as nodes are)")
    c = cmd(orch, "start", o.orchestrator_start, "start the Orchestrator in the background and wait until it serves")
    c.add_argument("--data", metavar="DIR", help="its data directory (default: $OCKAM_HOME/orchestrator)")
    c.add_argument("--http", metavar="ENDPOINT", help="where its HTTP API listens (default: 127.0.0.1:6252)")
    c.add_argument("--db", metavar="PATH_OR_URL", help="a SQLite file (default: DATA/orchestrator.sqlite3) or a postgresql:// URL")
    c.add_argument("--project-ports", metavar="A-B", help="ports of project nodes and authorities (default: 4000-4099; 0: any)")
    c.add_argument("--advertise-host", metavar="HOST", help="the host project routes name (default: the listen host)")
    c.add_argument("--listen-host", metavar="HOST", help="where project nodes and authorities listen (default: 127.0.0.1)")
    c.add_argument("--credential-ttl", metavar="SECONDS", help="lifetime of members' credentials (default: 30 days)")
    c.add_argument("--secrets-key-file", metavar="PATH", help="the key sealing project keys (default: DATA/secrets.key)")
    c.add_argument("--refresh", metavar="SECONDS", help="seconds between reloads of members (default: 2)")
    c.add_argument("--lease-ttl", metavar="SECONDS",
                   help="a project's lease: after a crash another instance serves it within this and a tick (default: 15)")
    c.add_argument("--tick", metavar="SECONDS", help="seconds between lease renewals and claims (default: 2)")
    cmd(orch, "stop", o.orchestrator_stop, "stop the Orchestrator (SIGTERM, and wait)")
    cmd(orch, "status", o.orchestrator_status,
        "whether the Orchestrator runs, its URL, its projects, and the instances sharing its database")
    cmd(orch, "logs", o.orchestrator_logs, "print the path of the Orchestrator's log file")
    tok = orch.add_parser("token", help="bearer tokens of the Orchestrator's HTTP API", parents=[common])
    toks = tok.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    c = cmd(toks, "create", o.orchestrator_token_create, "make a token for another machine (ockam enroll --token)")
    c.add_argument("--label", metavar="LABEL")
    c.add_argument("--expires-in", type=_seconds, metavar="SECONDS")

    c = cmd(None, "enroll", pr.enroll, "enroll this home's identity with an Orchestrator")
    c.add_argument("--orchestrator", metavar="URL", help="a remote Orchestrator's URL (with --token)")
    c.add_argument("--token", metavar="TOKEN", help="a token of that Orchestrator (ockam orchestrator token create)")
    c.add_argument("--identity", metavar="NAME", help="the identity to enroll (default: default, made if missing)")

    sp = group("space", "spaces of the Orchestrator")
    c = cmd(sp, "create", pr.space_create, "create a space")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: random")
    c.add_argument("admins", nargs="*", metavar="ADMIN", help="after --: its users")
    cmd(sp, "list", pr.space_list, "list spaces")
    for action, func in (("show", pr.space_show), ("delete", pr.space_delete)):
        c = cmd(sp, action, func, f"{action} a space")
        c.add_argument("name", metavar="NAME")

    pj = group("project", "projects of the Orchestrator, their members and credentials")
    c = cmd(pj, "create", pr.project_create, "create a project in a space")
    c.add_argument("space", metavar="SPACE")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: random")
    c.add_argument("services", nargs="*", metavar="SERVICE", help=argparse.SUPPRESS)
    cmd(pj, "list", pr.project_list, "list projects")
    c = cmd(pj, "show", pr.project_show, "show a project")
    c.add_argument("name", metavar="NAME")
    c = cmd(pj, "information", pr.project_information, "a project's project.json (with --output json)")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: default")
    c = cmd(pj, "delete", pr.project_delete, "delete a project")
    c.add_argument("space", metavar="SPACE")
    c.add_argument("name", metavar="NAME")
    c = cmd(pj, "enroll", pr.project_enroll, "an enroller adds a member (--member) or makes a one-time code")
    c.add_argument("--member", "-m", metavar="IDENTIFIER", help="add this identity as a member")
    c.add_argument("--to", "-t", default="/project/default", metavar="ROUTE", help="the project (default: /project/default)")
    c.add_argument("--attribute", "-a", action="append", metavar="KEY=VALUE", help="an attribute (repeatable)")
    c.add_argument("--expires-in", type=_whole_seconds, metavar="SECONDS", help="the code's lifetime (default: 600)")
    c.add_argument("--usage-count", type=_count, metavar="N", help="how many times the code may be used (default: 1)")
    c.add_argument("--relay", metavar="NAME", help="the relay the member may take (attribute ockam-relay)")
    c.add_argument("--identity", metavar="NAME", help="the enroller's identity (default: the enrolled one)")
    c.add_argument("--project-path", metavar="PROJECT_JSON", help="the project (instead of --to)")
    c = cmd(pj, "authenticate", pr.project_authenticate, "redeem a one-time code and print this identity's credential")
    c.add_argument("--token", metavar="CODE", help="a one-time code (64 hex)")
    c.add_argument("--project-path", metavar="PROJECT_JSON", help="the project (default: the home's)")
    c.add_argument("--identity", metavar="NAME", help="the member's identity (default: the enrolled one)")
    c = cmd(pj, "revoke", pr.project_revoke, "revoke a member (it cannot use the project any more)")
    c.add_argument("--member", "-m", required=True, metavar="IDENTIFIER")
    c.add_argument("--to", "-t", default="/project/default", metavar="ROUTE", help="the project (default: /project/default)")
    c.add_argument("--project-path", metavar="PROJECT_JSON", help="the project (instead of --to)")

    po = group("policy", "ABAC policies of a node's inlets and outlets")
    for action, func, help_ in (
        ("set", pr.policy_set, "set the policy of a resource (tcp-inlet, tcp-outlet)"),
        ("show", pr.policy_show, "print the policy of a resource"),
        ("get", pr.policy_show, "print the policy of a resource (as show)"),
        ("delete", pr.policy_delete, "delete the policy of a resource (it then denies)"),
    ):
        c = cmd(po, action, func, help_)
        c.add_argument("--at", metavar="NODE")
        c.add_argument("--resource", "-r", required=True, metavar="RESOURCE")
        c.add_argument("--action", "-a", default="handle_message", metavar="ACTION")
        if action == "set":
            c.add_argument("--expression", "-e", required=True, metavar="EXPRESSION")
    c = cmd(po, "list", pr.policy_list, "list a node's policies")
    c.add_argument("--at", metavar="NODE")
    c.add_argument("--resource", "-r", metavar="RESOURCE")

    cr = group("credential", "credentials")
    c = cmd(cr, "issue", pr.credential_issue, "issue a credential as one of this home's identities")
    c.add_argument("--as", dest="as_", metavar="IDENTITY", help="the issuer (default: the enrolled identity, or default)")
    c.add_argument("--for", dest="for_", required=True, metavar="IDENTIFIER", help="the subject")
    c.add_argument("--attribute", "-a", action="append", metavar="KEY=VALUE")
    c.add_argument("--encoding", choices=["plain", "hex"], default="plain")
    for action, func, help_ in (("verify", pr.credential_verify, "verify a credential"),
                                ("store", pr.credential_store, "keep a credential in this home")):
        c = cmd(cr, action, func, help_)
        if action == "store":
            c.add_argument("name", nargs="?", metavar="NAME", help="default: random")
        c.add_argument("--issuer", required=True, metavar="IDENTITY",
                       help="identifier (of an identity or project authority of this home) or exported identity (hex)")
        c.add_argument("--credential", metavar="HEX")
        c.add_argument("--credential-path", metavar="FILE")
    c = cmd(cr, "show", pr.credential_show, "show a stored credential")
    c.add_argument("name", metavar="NAME")
    cmd(cr, "list", pr.credential_list, "list stored credentials")

    au = group("authority", "standalone project authorities")
    c = cmd(au, "create", pr.authority_create, "create a node running a project authority")
    c.add_argument("name", nargs="?", default="authority", metavar="NAME")
    c.add_argument("--project-identifier", required=True, metavar="PROJECT_ID")
    c.add_argument("--tcp-listener-address", "-t", default="127.0.0.1:4000", metavar="ADDRESS")
    c.add_argument("--no-direct-authentication", action="store_true")
    c.add_argument("--no-token-enrollment", action="store_true")
    c.add_argument("--trusted-identities", metavar="JSON_OBJECT")
    c.add_argument("--reload-from-trusted-identities-file", metavar="PATH")
    c.add_argument("--identity", metavar="NAME", help="the authority's identity (default: its own)")
    c.add_argument("--foreground", "-f", action="store_true")


def _whole_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _check_usage(args) -> None:
    """
    Usage mistakes argparse cannot see (exit status 2, with the usage).
    """
    if getattr(args, "func", None) is Commands.node_delete and (args.name is None) == (not args.all):
        args.parser.error("name a node, or use --all (not both)")


#: Calls that wait for an operation with its own timeout get this much more.
CALL_MARGIN = 10.0

#: The time to give a node to connect to another (its own connect timeout
#: is 10 s) and answer.
CONNECT_CALL_TIMEOUT = 30.0


#: How long C{node list} and C{node show} wait for a running node to answer.
NODE_ANSWER_TIMEOUT = 5.0


def _broken_info(name: str, error, pid) -> dict:
    """
    What C{node list} shows of a node whose state cannot be read.
    """
    return {
        "name": name,
        "status": BROKEN,
        "pid": pid,
        "route": f"/node/{name}",
        "listener": None,
        "services": [],
        "forwarders": [],
        "identity": None,
        "project": None,
        "authority": None,
        "inlets": [],
        "outlets": [],
        "relays": [],
        "problem": error.problem,
    }


def _authority_on_disk(state: dict) -> Optional[dict]:
    """
    What a stopped authority node's state says of its authority.
    """
    doc = state.get("authority")
    if not isinstance(doc, dict):
        return None
    return {"project_identifier": doc.get("project_identifier"), "identifier": None, "services": [],
            "members": len(doc.get("members") or {}), "trusted_identities_file": doc.get("trusted_identities_file")}


def _identity_on_disk(nodes, name, state):
    """
    The identifier of a stopped node's identity, read from its file.
    """
    from ..secure.identity import LocalIdentity

    home = nodes.home
    path = st.identity_path(home, state["identity"]) if state.get("identity") else os.path.join(nodes.dir(name), st.IDENTITY)
    try:
        return LocalIdentity.load(path).identifier
    except Exception:
        return None


def _attach_dash_values(argv: List[str]) -> List[str]:
    """
    C{--to -/service/x} as C{--to=-/service/x}: argparse would take a value
    starting with C{-} for an option.
    """
    out: List[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--to", "--at") and i + 1 < len(argv) and argv[i + 1].startswith("-/"):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def _inlet_key(text: str) -> str:
    """
    An inlet as C{tcp-inlet show/delete} take it: its address as printed
    (C{127.0.0.1:6000}), a port, or a MultiAddr; anything else is passed
    on as typed (the node says it has no such inlet).
    """
    try:
        return hostport(text, "inlet")
    except CLIError:
        return text


def _identity_name(name: Optional[str]) -> str:
    name = "default" if name is None else name
    if not st.valid_node_name(name):
        raise CLIError(f"not an identity name: {name!r}")
    return name


class _Interrupt:
    """
    Ctrl-C (SIGINT): the command is cancelled where it waits (its cleanups
    run: a node being created is removed), then C{ockam: interrupted} and
    exit status 130.  In a blocking section (L{interruptible}: waiting for
    a lock, a process, standard input) it raises L{KeyboardInterrupt} there.
    A second Ctrl-C leaves at once.
    """

    def __init__(self) -> None:
        self.interrupted = False
        #: While the command runs: how to cancel it (from the signal handler).
        self.cancel = None
        #: Once the command has ended: there is nothing left to interrupt.
        self.done = False

    def handler(self, signum, frame) -> None:
        from .nodes import blocking

        if self.done:
            return
        if self.interrupted:
            _say("interrupted")
            os._exit(INTERRUPTED)
        self.interrupted = True
        if blocking():
            raise KeyboardInterrupt
        if self.cancel is not None:
            self.cancel()
        # Otherwise the command has not started waiting yet: it is cancelled
        # as soon as it does (see _run).  Raising here instead could land in
        # a finalizer or a weakref callback, where Python only prints the
        # exception and carries on.


#: The exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def _say(line: str) -> None:
    try:
        print(f"ockam: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _exit_status(result, interrupt: _Interrupt) -> int:
    """
    Say what went wrong (one line) and return the exit status.
    """
    if not isinstance(result, Failure):
        return 0
    e = result.value
    if interrupt.interrupted or isinstance(e, (KeyboardInterrupt, defer.CancelledError)):
        _say("interrupted")
        return INTERRUPTED
    if isinstance(e, SystemExit):
        # A usage mistake a command found (parser.error): already said.
        return e.code if isinstance(e.code, int) else 2
    if isinstance(e, BrokenPipeError):
        # The reader went away (e.g. `| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if isinstance(e, (CLIError, OckamError)):
        _say(str(e))
    elif isinstance(e, OSError):
        _say(os_error(e))
    else:
        _say(f"unexpected error: {type(e).__name__}: {e}")
    return 1


def main(argv: Optional[List[str]] = None) -> None:
    interrupt = _Interrupt()
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, interrupt.handler)
    try:
        code = _run(argv, interrupt)
    except KeyboardInterrupt:
        _say("interrupted")
        code = INTERRUPTED
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(code)


def _run(argv: Optional[List[str]], interrupt: _Interrupt) -> int:
    from twisted.internet import reactor

    argv = list(sys.argv[1:] if argv is None else argv)
    top = parser()
    args, extras = top.parse_known_args(_attach_dash_values(argv))
    if extras:
        # Said with the usage of the command they were given to, not ockam's.
        getattr(args, "parser", top).error(f"unrecognized arguments: {' '.join(extras)}")
    _check_usage(args)
    outcome = []

    async def run():
        commands = Commands(reactor, args, Nodes())
        try:
            await args.func(commands)
        finally:
            await commands.close()

    def start():
        d = defer.Deferred.fromCoroutine(run())
        if not d.called:
            interrupt.cancel = lambda: reactor.callFromThread(d.cancel)
            if interrupt.interrupted:  # Ctrl-C while the command line was getting ready
                d.cancel()

        def done(result):
            interrupt.cancel = None
            interrupt.done = True
            outcome.append(result)
            reactor.stop()

        d.addBoth(done)

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    if not outcome:  # stopped from outside (cannot happen: nothing else stops it)
        return _exit_status(Failure(CLIError("stopped")), interrupt)
    return _exit_status(outcome[0], interrupt)


if __name__ == "__main__":
    main()
