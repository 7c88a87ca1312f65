"""
The C{ockam} command line: background nodes, TCP connections, messages,
relays (forwarders), TCP inlets and outlets, as in Ockam's own CLI.

A command that only talks to nodes through their control API, or only
reads and writes files (C{node list}, C{tcp-inlet create}, C{identity
list}, ...) runs without Twisted's reactor and without importing Twisted,
the node or cryptography: it answers in a small part of the time those
imports take; so do C{node create} and C{node start}, which wait for the
node's process with blocking calls.  A command that needs the reactor
(C{message send} from a temporary node, the Orchestrator's, project and
credential commands) says so where the parser declares it (C{reactor=}),
and the modules behind the Orchestrator's commands are imported only when
one of them runs (L{_Later}).  C{tests/test_cli_imports.py} holds the line.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from typing import List, Optional

from .. import __version__
from ..control import state as st
from ..errors import OckamError
from ..routing import MultiAddr
from ..endpoints import split_hostport
from ..status import BROKEN, DOWN, UNRESPONSIVE, UP, title
from .nodes import IOERR, SOFTWARE, CLIError, Nodes, PipeTail, end_process, interruptible, node_name, os_error, pause
from .text import HOSTPORT_FORMS, hostport
from .output import CHECK, Out, _port_of, node_block, ockam_node_block, stdout_is_terminal, table  # noqa: F401

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


_SEGMENT_MARK = re.compile(r"/-(?=/|$)")
_LEADING_MARK = re.compile(r"(^|=)-/")


def replace_stdin_markers(argv: List[str], stdin=None) -> List[str]:
    """
    Ockam's piping: in every argument, C{/-} standing for a whole route
    segment (C{/node/n2/service/hop/-/service/uppercase}, C{/project/-})
    is replaced by the route read from standard input, and a leading
    C{-/} (C{--to -/service/uppercase}) by that route followed by C{/}.
    Each argument that has one reads one line, in order; the line's route
    is normalized as Ockam does (empty segments dropped).
    """
    out = []
    for arg in argv:
        segment = _SEGMENT_MARK.search(arg) is not None
        leading = not segment and _LEADING_MARK.search(arg) is not None
        if not (segment or leading):
            out.append(arg)
            continue
        stdin = stdin or sys.stdin
        mark = "/-" if segment else "-/"
        if stdin is None or _isatty(stdin):
            raise CLIError(f"{arg!r} has {mark!r} but nothing is piped into standard input")
        with interruptible():
            line = stdin.readline()
        parts = [p for p in line.strip().split("/") if p]
        if not line:
            raise CLIError(f"{arg!r} has {mark!r} but standard input is empty")
        if not parts:
            raise CLIError(f"{arg!r} has {mark!r} but standard input has no route on its line")
        if segment:
            out.append(_SEGMENT_MARK.sub(lambda m: "/" + "/".join(parts), arg))
        else:
            out.append(_LEADING_MARK.sub(lambda m: m.group(1) + "/" + "".join(p + "/" for p in parts), arg))
    return out


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


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
        self.reactor = reactor  # None for a command run without the reactor
        self.args = args
        self.nodes = nodes
        self.out = Out(getattr(args, "output", "plain") or "plain", quiet=getattr(args, "quiet", False))
        self._clients = []

    def client(self, name: str):
        from .oneshot import BlockingControlClient

        name = self.nodes.require(name)
        c = BlockingControlClient(name, self.nodes.socket(name), lambda: self._unreachable(name))
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
        from .oneshot import BlockingControlClient

        deadline = time.monotonic() + timeout
        c = BlockingControlClient(name, self.nodes.socket(name))
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
                pause(0.05)  # Ctrl-C: KeyboardInterrupt here (the node is ended, its directory removed)
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
        identity = a.identity
        if getattr(a, "vault", None) is not None:
            identity = self._identity_in_vault(identity, a.vault)
        await self.create_node(a.name, listen, extra=extra, identity=identity, foreground=a.foreground)

    def _identity_in_vault(self, identity: Optional[str], vault: str) -> str:
        """
        C{node create --vault V}: the identity given, whose key must be in
        V, else a new identity (random name) whose key is kept in V.
        """
        from . import identities as ids

        ids.open_vault(self.nodes.home, vault)
        if identity is not None:
            held = ids._identity_doc(self.nodes.home, identity).get("vault")
            if held != vault:
                ids.load_identity(self.nodes.home, identity)  # a missing identity is said first
                raise CLIError(f"identity {identity!r} keeps its key in vault {held or '(its own file)'}, not in {vault!r}")
            return identity
        name = ids.random_name()
        ids.create_identity(self, name, vault)
        return name

    async def create_node(self, name, listen: str, extra: Optional[dict] = None, identity: Optional[str] = None,
                          foreground: bool = False, enrolled: bool = True) -> None:
        """
        Create node C{name} (random when C{None}) listening at C{listen},
        with C{extra} in its state, start it and print it.  In a home
        that enrolled (C{ockam enroll}), with C{enrolled}, the node uses the
        enrolled identity unless C{identity} names another, and belongs to
        the home's default project unless C{extra} names one.  The first
        node of a home becomes its default node.
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
                self.nodes.claim_default(name)
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
        await self._print_node(info)

    async def _print_node(self, info: dict) -> None:
        """
        A node's status as C{node show} prints it: Ockam's block (the
        running node is asked for its listeners, secure channel listeners
        and services), ours with C{--details}, the info with C{--output
        json}.
        """
        if self.out.json:
            self.out.emit(info, None)
            return
        if getattr(self.args, "details", False):
            print(node_block(info))
            return
        name = info["name"]
        transports = services = None
        if info.get("status") == UP:
            c = self.client(name)
            try:
                transports = [t for t in await c.call("GET", "tcp", timeout=NODE_ANSWER_TIMEOUT) if t["mode"] == "Listening"]
                services = await c.call("GET", "services", timeout=NODE_ANSWER_TIMEOUT)
                listeners = await c.call("GET", "secure-channel-listeners", timeout=NODE_ANSWER_TIMEOUT)
            except CLIError:
                transports = services = None
            else:
                info = dict(info, secure_channel_listeners=[l["address"] for l in listeners])
        print(ockam_node_block(info, self.nodes.default_name() == name, transports, services))

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
            "inlets": [{"listen": i["listen"], "route": i["to"], "status": title(DOWN), "alias": i.get("alias")}
                       for i in state.get("inlets", [])],
            "outlets": [{"address": o["address"], "target": o["to"], "alias": o.get("alias")}
                        for o in state.get("outlets", [])],
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
        names = self.nodes.names()
        if not names and not self.out.json:
            raise CLIError("No nodes registered on this system!", code=IOERR)
        for n in names:
            try:
                infos.append(await self._node_info(n))
            except st.StateError as e:
                problems.append(str(e))
                infos.append(_broken_info(n, e, self.nodes.pid(n)))
        if self.out.json:
            self.out.emit(infos, None)
        elif self.args.table:
            rows = [[i["name"], i["status"], str(i.get("pid") or "-"), i.get("listener") or "-"] for i in infos]
            print(table(["Node", "Status", "PID", "Listener"], rows))
        else:
            for info in infos:
                await self._print_node(info)
        for problem in problems:
            print(f"ockam: {problem}", file=sys.stderr)

    async def node_show(self):
        name = self.nodes.pick(self.args.name)
        await self._print_node(await self._node_info(name))

    async def node_stop(self):
        name = self.nodes.pick(self.args.name)
        with self.nodes.lock(name):
            stopped = self.nodes.stop(name, force=self.args.force)
            self.nodes.clear_stale(name)
        self.out.emit({"name": name, "status": DOWN, "was_running": stopped}, f"Stopped node '{name}'")

    async def node_start(self):
        name = self.nodes.pick(self.args.name)
        with self.nodes.lock(name):
            pid = self.nodes.pid(name)
            if pid is not None:
                if not self.args.force:
                    self.out.emit({"name": name, "status": UP, "pid": pid, "started": False},
                                  f"Restart aborted, node: {name} already running")
                    return
                self.nodes.stop(name)
            self.nodes.state(name)  # a broken state.json: say so here, start nothing
            problem = st.socket_path_problem(self.nodes.dir(name))
            if problem:
                raise CLIError(problem)
            self.nodes.clear_stale(name, starting=True)
            offset = self.nodes.log_size(name)
            proc = self.nodes.spawn(name)
            info = await self._wait_ready(name, proc, offset)
        await self._print_node(info)

    async def node_logs(self):
        name = self.nodes.pick(self.args.name)
        path = self.nodes.log_path(name)
        self.out.emit({"name": name, "log": path}, path)

    async def node_default(self):
        name = self.nodes.pick(self.args.name)
        if self.nodes.default_name() == name:
            self.out.emit({"name": name, "default": True}, "Already set to default node")
            return
        self.nodes.set_default(name)
        self.out.emit({"name": name, "default": True}, f"Set node '{name}' as default")

    async def node_delete(self):
        a = self.args
        names = self.nodes.names() if a.all else [self.nodes.pick(a.name)]
        deleted = []
        for name in names:
            try:
                with self.nodes.lock(name):
                    self.nodes.delete(name, force=a.force)
            except CLIError:
                if a.all and not self.nodes.exists(name):
                    continue  # deleted by another command meanwhile
                raise
            deleted.append(name)
        if a.all:
            if self.out.json:
                self.out.emit({"deleted": deleted}, None)
            return
        name = deleted[0]
        self.out.shell({"node": {"name": name}}, f"{CHECK}Node with name '{name}' has been deleted.", name)

    async def reset(self):
        """
        Delete every node and what ockam keeps under C{$OCKAM_HOME}
        (identities, vaults, projects, credentials, configuration); files
        it did not make stay, and so does the home directory if anything
        is left in it.  Asks first unless C{--yes}.
        """
        from . import home as h

        a = self.args
        home = self.nodes.home
        if not a.yes and not _confirm("Please confirm the you really want a full reset (y/N) ", a.no_input):
            return
        if os.path.exists(home) and not os.path.isdir(home):
            raise CLIError(f"{home}: not a directory (OCKAM_HOME)")
        problems = []
        for name in self.nodes.names():
            try:
                with self.nodes.lock(name):
                    self.nodes.delete(name, force=True)
            except CLIError as e:
                problems.append(str(e))
        if a.with_orchestrator:
            from .orchestrator import LocalOrchestrator

            try:
                LocalOrchestrator(home).stop()
            except CLIError as e:
                problems.append(str(e))
        owned = ["nodes", "identities", "vaults", "projects", "credentials", "defaults"]
        if a.with_orchestrator:
            owned.append("orchestrator")
        for entry in owned:
            problems += _remove_tree(os.path.join(home, entry))
        for entry in (h.CONFIG_JSON, h.ORCHESTRATOR_JSON):
            path = os.path.join(home, entry)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                problems.append(f"cannot remove {os_error(e, path)}")
        try:
            os.rmdir(home)  # only when nothing else is left in it
        except OSError:
            pass
        if problems:
            raise CLIError(f"reset incomplete: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))

    # tcp-connection ------------------------------------------------------------

    async def tcp_create(self):
        a = self.args
        name = self.nodes.pick(a.from_)
        to = a.to
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
        worker = conn["worker_address"].split("#", 1)[1]
        if self.out.json:
            # Ockam's shape: the route to the connection through this
            # node's listener.
            port = _port_of(st.listener_of(self.nodes.home, name))
            route = (f"/dnsaddr/localhost/tcp/{port}" if port is not None else "") + f"/worker/{worker}"
            self.out.emit([{"route": route}], None, compact=True)
        elif a.print_address:
            print(f"/service/{worker}")
        else:
            host, port = split_hostport(conn["socket_address"]) or (conn["socket_address"], "")
            kind = "ip6" if ":" in host else "ip4"
            print("\n".join([
                "",
                "  TCP Connection:",
                f"    ID: {conn['transport_id']}",
                f"    From: /node/{name}",
                f"    To: {conn['socket_address']} (/{kind}/{host}/tcp/{port})",
            ]))

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
        self.out.emit(c, f"Tcp connection `{self.args.id}` successfully deleted")

    # tcp-listener ---------------------------------------------------------------

    async def tcp_listener_create(self):
        a = self.args
        name = self.nodes.pick(a.at)
        listen = hostport(a.address, "ADDRESS")
        l = await self.client(name).call("POST", "tcp-listeners", {"address": listen})
        worker = l["worker_address"].split("#", 1)[-1]
        port = _port_of(st.listener_of(self.nodes.home, name))
        route = (f"/dnsaddr/localhost/tcp/{port}" if port is not None else "") + f"/service/{worker}"
        self.out.emit(l, f"Tcp listener created! You can send messages to it via this route:\n`{route}`")

    async def tcp_listener_list(self):
        name = self.nodes.pick(self.args.node)
        items = [c for c in await self.client(name).call("GET", "tcp") if c["mode"] == "Listening"]
        rows = [
            [c["transport_id"], c["transport_type"], c["mode"], c["socket_address"], c["worker_address"]]
            for c in items
        ]
        headers = ["Transport ID", "Transport Type", "Mode", "Address bind", "Worker address"]
        self.out.emit(items, table(headers, rows))

    async def tcp_listener_delete(self):
        name = self.nodes.pick(self.args.node)
        l = await self.client(name).call("DELETE", ("tcp-listeners", self.args.id))
        self.out.emit(l, f"Tcp listener `{self.args.id}` successfully deleted")

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
        Send from a short-lived node in this process, with C{--identity},
        else the identity this home enrolled, else its default identity
        (as Ockam 0.83's embedded node: a member added with C{project
        enroll --member $(ockam identity show)} sends as that member), else
        a new one it forgets; and the projects it knows (or
        C{--project-path}), so that C{/project/NAME} routes work.
        """
        from ..control.server import reply_dict
        from ..wire import encode_string
        from . import projects as p

        a = self.args
        home = self.nodes.home
        name = a.identity
        if name is None:
            name = p.identity_name(self)
            if not os.path.exists(st.identity_path(home, name)):
                name = None
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
        body = {"name": a.name if a.name is not None else os.urandom(4).hex(), "at": at, "timeout": a.timeout}
        if a.authorized:
            if at.startswith("/project/"):
                raise CLIError("--authorized can not be used with project addresses")
            raise CLIError("--authorized is not supported by ockamtw's forwarder create (see docs/cli.md)")
        relay = await self.client(name).call("POST", "relays", body, timeout=a.timeout + CALL_MARGIN)
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

    # portals -------------------------------------------------------------------------------

    async def _portal_call(self, kind: str, method: str, alias: str, node: str):
        """
        C{method} on the inlet or outlet (C{kind}) C{alias} of C{node}; an
        unknown one is Ockam's C{NotFound}.
        """
        try:
            return await self.client(node).call(method, (kind, alias))
        except CLIError as e:
            if getattr(e, "status", None) == 404:
                what = "Inlet" if kind == "inlets" else "Outlet"
                raise CLIError(
                    f"An error occurred while processing the request. Status code: NotFound. "
                    f"Message: {what} with alias {alias} not found on node {node}"
                ) from None
            raise

    async def outlet_create(self):
        a = self.args
        name = self.nodes.pick(a.at)
        body = {"address": a.from_, "to": hostport(a.to, "--to")}
        if a.alias is not None:
            body["alias"] = a.alias
        if a.authorized:
            body["authorized"] = a.authorized
        o = await self.client(name).call("POST", "outlets", body)
        self.out.emit(o, f"/service/{o['address']}")

    @staticmethod
    def _outlet_text(o: dict) -> str:
        return f"Outlet:\n  Alias: {o.get('alias')}\n  From Outlet: /service/{o['address']}\n  To TCP: {o['target']}"

    async def outlet_list(self):
        name = self.nodes.pick(self.args.node)
        outlets = await self.client(name).call("GET", "outlets")
        if self.args.table:
            rows = [[o.get("alias") or "-", f"/service/{o['address']}", o["target"], str(o["connections"])] for o in outlets]
            self.out.emit(outlets, table(["Alias", "Address", "To", "Connections"], rows))
            return
        if not outlets and not self.out.json:
            raise CLIError("No Outlets found on this system!", code=IOERR)
        self.out.emit(outlets, "\n".join(self._outlet_text(o) for o in outlets))

    async def outlet_show(self):
        name = self.nodes.pick(self.args.node)
        o = await self._portal_call("outlets", "GET", self.args.alias, name)
        self.out.emit(o, self._outlet_text(o))

    async def outlet_delete(self):
        name = self.nodes.pick(self.args.node)
        await self._portal_call("outlets", "DELETE", self.args.alias, name)
        alias = self.args.alias
        self.out.shell({"tcp-outlet": {"alias": alias, "node": name}},
                       f"{CHECK}TCP Outlet with alias {alias} on Node {name} has been deleted.", alias)

    async def inlet_create(self):
        a = self.args
        name = self.nodes.pick(a.at)
        listen = hostport(a.from_, "--from")
        to = read_route(a.to)
        if a.authorized and to.startswith("/project/"):
            raise CLIError("--authorized can not be used with project addresses")
        body = {"listen": listen, "to": to}
        if a.alias is not None:
            body["alias"] = a.alias
        if a.authorized:
            body["authorized"] = a.authorized
        i = await self.client(name).call("POST", "inlets", body)
        # Ockam prints nothing; the address is in --output json and show.
        self.out.emit(i, None)

    @staticmethod
    def _inlet_text(i: dict) -> str:
        lines = ["Inlet:", f"  Alias: {i.get('alias')}", f"  TCP Address: {i['listen']}"]
        if i.get("route"):
            lines.append(f"  To Outlet Address: {i['route']}")
        return "\n".join(lines)

    async def inlet_list(self):
        name = self.nodes.pick(self.args.node)
        inlets = await self.client(name).call("GET", "inlets")
        if self.args.table:
            rows = [[i.get("alias") or "-", i["listen"], i["route"], i["status"], str(i["connections"])] for i in inlets]
            self.out.emit(inlets, table(["Alias", "Listen", "To", "Status", "Connections"], rows))
            return
        if not inlets and not self.out.json:
            raise CLIError("No Inlets found on this system!", code=IOERR)
        self.out.emit(inlets, "\n".join(self._inlet_text(i) for i in inlets))

    async def inlet_show(self):
        name = self.nodes.pick(self.args.node)
        i = await self._portal_call("inlets", "GET", _inlet_key(self.args.alias), name)
        self.out.emit(i, self._inlet_text(i))

    async def inlet_delete(self):
        name = self.nodes.pick(self.args.node)
        await self._portal_call("inlets", "DELETE", _inlet_key(self.args.alias), name)
        alias = self.args.alias
        self.out.shell({"tcp-inlet": {"alias": alias, "node": name}},
                       f"{CHECK}TCP Inlet with alias {alias} on Node {name} has been deleted.", alias)

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
        address = f"/service/{sc['encryptor']}"
        self._channel_printed(address, ["", "  Created Secure Channel:", f"  \u2022 From: /node/{name}",
                                        f"  \u2022   To: {a.to} ({to})", f"  \u2022   At: {address}"])

    def _channel_printed(self, address: str, note: List[str]) -> None:
        """
        As Ockam prints a channel it made or closed: its address on
        standard output when that is not a terminal (for the next command of
        a pipe), C{[{"address": ...}]} with C{--output json}, and a note on
        standard error when that is a terminal.
        """
        if self.out.json:
            self.out.emit([{"address": address}], None, compact=True)
            return
        if not stdout_is_terminal():
            print(address)
        self.out.info("\n".join(note))

    async def sc_list(self):
        name = self.nodes.pick(self.args.at)
        channels = await self.client(name).call("GET", "secure-channels")
        for c in channels:
            c["address"] = f"/service/{c['encryptor']}"
        if self.out.json:
            self.out.emit(channels, None)
        elif self.args.table:
            rows = [[c["address"], c["role"], c["status"], c["peer"] or "-", c["route"] or "-"] for c in channels]
            print(table(["Channel", "Role", "Status", "Peer", "Route"], rows))
        elif not stdout_is_terminal():
            for c in channels:
                print(c["address"])
        elif channels:
            lines = ["", "Secure Channels"]
            for c in channels:
                lines += ["", "    Secure Channel:", f"      \u2022 From: /node/{name}",
                          f"      \u2022   To: {c['route'] or '-'}", f"      \u2022   At: {c['address']}"]
            print("\n".join(lines))

    async def sc_show(self):
        name = self.nodes.pick(self.args.at)
        c = await self.client(name).call("GET", ("secure-channels", self.args.channel))
        if self.args.details and not self.out.json:
            print("\n".join([
                f"Secure channel: /service/{c['encryptor']}",
                f"  Role: {c['role']}",
                f"  Status: {c['status']}",
                f"  Peer: {c['peer'] or '-'}",
                f"  Route: {c['route'] or '-'}",
                f"  Decryptor: /service/{c['decryptor']}",
            ]))
            return
        # Ockam's block: each label ends in a space and is followed by
        # another before the value.
        authorized = c.get("authorized") or ["none"]
        text = "\n".join(
            [
                "",
                "  Secure Channel:",
                f"  \u2022         At:  /service/{c['encryptor']}",
                f"  \u2022         To:  {c['route'] or '-'}",
                "  \u2022 Authorized:  " + "\n\t".join(authorized),
            ]
        )
        self.out.emit(c, text)

    async def sc_delete(self):
        name = self.nodes.pick(self.args.at)
        c = await self.client(name).call("DELETE", ("secure-channels", self.args.channel))
        address = f"/service/{c['encryptor']}"
        self._channel_printed(address, ["", "  Deleted Secure Channel:", f"  \u2022        At: /node/{name}",
                                        f"  \u2022   Address: {self.args.channel}"])

    async def scl_create(self):
        a = self.args
        name = self.nodes.pick(a.at)
        body = {"address": a.address}
        if a.authorized:
            body["authorized"] = a.authorized
        if a.vault is not None and a.identity is None:
            a.parser.error("--vault requires --identity")
        if a.identity is not None:
            from . import identities as ids

            ids.load_identity(self.nodes.home, a.identity)  # a missing or broken identity is said here
            held = ids._identity_doc(self.nodes.home, a.identity).get("vault")
            if a.vault is not None and held != a.vault:
                ids.open_vault(self.nodes.home, a.vault)
                raise CLIError(f"identity {a.identity!r} keeps its key in vault {held or '(its own file)'}, not in {a.vault!r}")
            body["identity"] = a.identity
        l = await self.client(name).call("POST", "secure-channel-listeners", body)
        self.out.emit(l, f"/service/{l['address']}")

    async def scl_list(self):
        name = self.nodes.pick(self.args.node)
        listeners = await self.client(name).call("GET", "secure-channel-listeners")
        if self.out.json:
            self.out.emit(listeners, None)
        elif self.args.table:
            rows = [[f"/service/{l['address']}", ", ".join(l["authorized"]) if l["authorized"] else "everyone",
                     l.get("identity") or "-", str(l["channels"])] for l in listeners]
            print(table(["Listener", "Authorized", "Identity", "Channels"], rows))
        else:
            print("\n".join([f"Secure channel listeners for node `{name}`:"]
                            + [f"  0#{l['address']}" for l in listeners]))

    async def scl_show(self):
        name = self.nodes.pick(self.args.at)
        l = await self.client(name).call("GET", ("secure-channel-listeners", self.args.address))
        self.out.emit(l, f"/service/{l['address']}")

    async def scl_delete(self):
        name = self.nodes.pick(self.args.at)
        l = await self.client(name).call("DELETE", ("secure-channel-listeners", self.args.address))
        self.out.emit(l, f"Deleted secure-channel listener with address '/service/{l['address']}' on node '{name}'")

    # services and workers ----------------------------------------------------------------------

    async def service_start(self):
        a = self.args
        if a.kind not in ("uppercase", "echo", "hop"):
            raise CLIError(
                f"the {a.kind} service of Ockam 0.83 is not available in ockamtw "
                "(services here: uppercase, echo, hop; see docs/cli.md)"
            )
        name = self.nodes.pick(a.node)
        s = await self.client(name).call("POST", "services", {"type": a.kind, "address": a.addr})
        label = {"uppercase": "Uppercase", "echo": "Echoer", "hop": "Hop"}[a.kind]
        self.out.emit(s, f"{label} service started at address: {s['address']}")

    async def service_list(self):
        name = self.nodes.pick(self.args.node)
        services = await self.client(name).call("GET", "services")
        if self.args.table:
            text = table(["Type", "Address"], [[s["type"], f"/service/{s['address']}"] for s in services])
        elif not services:
            text = "No services found"
        else:
            text = "Services:" + "".join(
                f"\n  Service: \n    Type: {s['type']}\n    Address: /service/{s['address']}" for s in services
            )
        self.out.emit(services, text)

    async def worker_list(self):
        name = self.nodes.pick(self.args.at)
        workers = await self.client(name).call("GET", "workers")
        if not workers:
            text = f"Node: {name}\nNo workers found."
        else:
            text = "\n".join([f"Node: {name}", "  Workers:"] + [f"    {w}" for w in workers])
        self.out.emit(workers, text)

    async def completion(self):
        from .completion import script

        sys.stdout.write(script(parser(), self.args.shell))


# --- the parser -----------------------------------------------------------------------------------


class _Later:
    """
    A module of commands that is imported only when one of its commands
    runs: C{_Later(".projects").enroll} is a command function as the
    parser wants one (the project and Orchestrator modules load Twisted,
    treq and cryptography, which the other commands do without).
    """

    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str) -> "_LaterCommand":
        if name.startswith("__"):
            raise AttributeError(name)
        return _LaterCommand(self._module, name)


class _LaterCommand:
    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def resolve(self):
        from importlib import import_module

        return getattr(import_module(self.module, __package__), self.name)

    def __call__(self, commands):
        return self.resolve()(commands)

    def __repr__(self) -> str:
        return f"<command {self.module.lstrip('.')}.{self.name}>"


def _from_a_temporary_node(args) -> bool:
    """
    Whether C{message send} sends from a temporary node in this process
    (without C{--from}), which needs the reactor.
    """
    return args.from_ is None


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
    The command line, with Ockam 0.83's commands, flags and aliases.  The
    global options (C{--output}, C{--quiet}, C{--verbose}, C{--no-color},
    C{--no-input}) are taken before the command, after it, or after the
    action: C{ockam --output json node list}, C{ockam node --output json
    list}, C{ockam node list --output json}.
    """
    from . import identities as ids

    # Below the top level, the global options have no default, so that
    # one given earlier on the line is not reset by the parser of a later
    # word.
    common = _Parser(add_help=False)
    _global_options(common, argparse.SUPPRESS)

    p = _Parser(prog="ockam", description="Ockam nodes, relays and portals (ockamtw).")
    _global_options(p, None)
    p.add_argument("--version", "-V", action="version", version=f"ockam {__version__} (ockamtw)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def group(name, help_, aliases=()):
        g = sub.add_parser(name, help=help_, description=help_, aliases=list(aliases), parents=[common])
        return g.add_subparsers(dest="action", metavar="ACTION", required=True)

    def cmd(parent, name, func, help_, reactor=False):
        # reactor: whether the command needs Twisted's reactor (True, or a
        # function of the parsed arguments); without, it runs plainly.
        c = (parent or sub).add_parser(name, help=help_, description=help_, parents=[common])
        c.set_defaults(func=func, parser=c, reactor=reactor)
        return c

    def node_opt(c, *extra, default=None):
        # Ockam's NodeOpts: -n/--node, the default node when not given.
        c.add_argument("--node", "-n", *extra, dest="node", metavar="NODE", default=default,
                       help="the node (default: the default node, see: ockam node default)")

    def table_opt(c):
        c.add_argument("--table", action="store_true", help="print ockamtw's table instead of Ockam's blocks")

    node = group("node", "manage nodes")
    c = cmd(node, "create", Commands.node_create, "create and start a node")
    c.add_argument("name", nargs="?", help="node name (random by default)")
    c.add_argument("--tcp-listener-address", "-t", default="127.0.0.1:0", metavar="SOCKET_ADDRESS",
                   help=f"where the node listens: {HOSTPORT_FORMS} (default: a free port on 127.0.0.1)")
    c.add_argument("--foreground", "-f", action="store_true", help="run in this process instead of in the background")
    c.add_argument("--identity", metavar="IDENTITY", help="use the named identity (see: ockam identity create; "
                   "in an enrolled home: the enrolled one; by default the node has its own)")
    c.add_argument("--vault", metavar="VAULT", help="make the node a new identity whose key is kept in this vault")
    c.add_argument("--project", "--project-path", dest="project", metavar="PROJECT_JSON",
                   help="belong to the project this project.json describes (in an enrolled home: its default project)")
    c.add_argument("--details", action="store_true", help="print ockamtw's view of the node instead of Ockam's")
    cmd(node, "list", Commands.node_list, "list nodes (their status, as node show prints it)").add_argument(
        "--table", action="store_true", help="print ockamtw's table instead of Ockam's blocks")
    c = cmd(node, "show", Commands.node_show, "show the details of a node")
    c.add_argument("name", nargs="?", metavar="NODE", help="default: the default node")
    c.add_argument("--details", action="store_true", help="print ockamtw's view of the node instead of Ockam's")
    c = cmd(node, "stop", Commands.node_stop, "stop a running node (its state is kept)")
    c.add_argument("name", nargs="?", metavar="NODE", help="default: the default node")
    c.add_argument("--force", action="store_true", help="SIGKILL instead of SIGTERM")
    c = cmd(node, "start", Commands.node_start, "start a node that was stopped, with its state")
    c.add_argument("name", nargs="?", metavar="NODE", help="default: the default node")
    c.add_argument("--force", action="store_true", help="restart it if it runs")
    c.add_argument("--details", action="store_true", help="print ockamtw's view of the node instead of Ockam's")
    c = cmd(node, "logs", Commands.node_logs, "print the path of a node's log file")
    c.add_argument("name", nargs="?", metavar="NODE", help="default: the default node")
    c.add_argument("--err", action="store_true", help="the standard error log (the same file: nodes log to one)")
    c = cmd(node, "delete", Commands.node_delete, "stop nodes and delete their state")
    c.add_argument("name", nargs="?", metavar="NODE", help="default: the default node")
    c.add_argument("--all", "-a", action="store_true", help="delete every node")
    c.add_argument("--force", "-f", action="store_true", help="SIGKILL instead of SIGTERM")
    c = cmd(node, "default", Commands.node_default, "change the default node")
    c.add_argument("name", nargs="?", metavar="NODE")

    c = cmd(None, "reset", Commands.reset, "delete every node and all of ockam's state under $OCKAM_HOME")
    c.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    c.add_argument("--with-orchestrator", action="store_true",
                   help="stop the local Orchestrator and delete its data too (kept by default)")

    tcp = group("tcp-connection", "TCP connections of a node")
    c = cmd(tcp, "create", Commands.tcp_create, "connect a node to another")
    c.add_argument("--from", "-f", dest="from_", metavar="NODE", help="default: the default node")
    c.add_argument("--to", "-t", required=True, metavar="ADDRESS", help=f"{HOSTPORT_FORMS} or /node/NAME")
    c.add_argument("--print-address", action="store_true",
                   help="print only the connection's worker address (/service/HEX), as ockamtw did")
    c = cmd(tcp, "list", Commands.tcp_list, "list a node's TCP connections")
    node_opt(c, "--from")
    for action, func, help_ in (("show", Commands.tcp_show, "show"), ("delete", Commands.tcp_delete, "close")):
        c = cmd(tcp, action, func, f"{help_} a TCP connection")
        c.add_argument("id", metavar="ID", help="transport id, worker address (/service/HEX, 0#HEX or HEX) or socket address")
        node_opt(c, "--from")

    tl = group("tcp-listener", "TCP listeners of a node")
    c = cmd(tl, "create", Commands.tcp_listener_create, "start another TCP listener on a node")
    c.add_argument("address", metavar="ADDRESS", help="where to listen (e.g. 127.0.0.1:7000)")
    c.add_argument("--at", metavar="NODE", help="default: the default node")
    c = cmd(tl, "list", Commands.tcp_listener_list, "list a node's TCP listeners")
    node_opt(c)
    c = cmd(tl, "delete", Commands.tcp_listener_delete, "stop a TCP listener")
    c.add_argument("id", metavar="ID", help="transport id, worker address or socket address")
    node_opt(c)

    msg = group("message", "send messages")
    c = cmd(msg, "send", Commands.message_send, "send a message and print the reply", reactor=_from_a_temporary_node)
    c.add_argument("message", metavar="MESSAGE")
    c.add_argument("--from", "-f", dest="from_", metavar="NODE", help="the node that sends (default: a temporary node)")
    c.add_argument("--to", "-t", required=True, metavar="ROUTE", help="MultiAddr route; /- (or a leading -) reads standard input")
    c.add_argument("--timeout", type=_seconds, default=10.0, metavar="TIMEOUT", help="seconds (default: 10)")
    c.add_argument("--identity", metavar="IDENTITY", help="without --from: send as this identity (default: the enrolled one)")
    c.add_argument("--project-path", metavar="PROJECT_JSON",
                   help="without --from: the project of /project/NAME (default: the one this home knows)")

    for name in ("forwarder", "relay"):
        r = group(name, "forwarders (relays)" if name == "forwarder" else "relays, as forwarders are now called")
        c = cmd(r, "create", Commands.relay_create, "register a forwarder at another node")
        c.add_argument("name", nargs="?", default=None, metavar="NAME", help="default: random")
        c.add_argument("--at", required=True, metavar="ROUTE", help="the relay node: /node/n2, n2, a route or HOST:PORT")
        c.add_argument("--to", metavar="NODE", help="the node the forwarder forwards to (default: the default node)")
        c.add_argument("--authorized", type=identifier_arg, metavar="IDENTIFIER",
                       help="accept only this identity at the relay node (through a secure channel)")
        c.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS")
        c = cmd(r, "list", Commands.relay_list, "list a node's forwarders")
        c.add_argument("--to", "--node", "-n", dest="to", metavar="NODE")
        for action, func in (("show", Commands.relay_show), ("delete", Commands.relay_delete)):
            c = cmd(r, action, func, f"{action} a forwarder")
            c.add_argument("name", metavar="NAME", help="its name (n3) or address (/service/forward_to_n3)")
            c.add_argument("--to", "--node", "-n", dest="to", metavar="NODE")

    o = group("tcp-outlet", "TCP outlets")
    c = cmd(o, "create", Commands.outlet_create, "create a TCP outlet")
    c.add_argument("--at", metavar="NODE", help="default: the default node")
    c.add_argument("--from", dest="from_", default="/service/outlet", metavar="OUTLET_ADDRESS",
                   help="its address (default: /service/outlet)")
    c.add_argument("--to", required=True, metavar="SOCKET_ADDRESS", help=HOSTPORT_FORMS)
    c.add_argument("--alias", type=_alias, metavar="ALIAS", help="a name for show and delete (default: random)")
    c.add_argument("--authorized", action="append", type=identifier_arg, metavar="IDENTIFIER",
                   help="accept only this identity through a secure channel (repeatable)")
    c = cmd(o, "list", Commands.outlet_list, "list TCP outlets")
    node_opt(c, "--at")
    table_opt(c)
    for action, func in (("show", Commands.outlet_show), ("delete", Commands.outlet_delete)):
        c = cmd(o, action, func, f"{action} a TCP outlet")
        c.add_argument("alias", metavar="ALIAS", help="its alias, or its address (/service/NAME or NAME)")
        node_opt(c, "--at")

    i = group("tcp-inlet", "TCP inlets")
    c = cmd(i, "create", Commands.inlet_create, "create a TCP inlet")
    c.add_argument("--at", metavar="NODE", help="default: the default node")
    c.add_argument("--from", dest="from_", required=True, metavar="SOCKET_ADDRESS", help=HOSTPORT_FORMS)
    c.add_argument("--to", required=True, metavar="ROUTE", help="MultiAddr route to the outlet; /- reads standard input")
    c.add_argument("--alias", type=_alias, metavar="ALIAS", help="a name for show and delete (default: random)")
    c.add_argument("--authorized", action="append", type=identifier_arg, metavar="IDENTIFIER",
                   help="accept only an outlet with this identity, through a secure channel (repeatable)")
    c = cmd(i, "list", Commands.inlet_list, "list TCP inlets")
    node_opt(c, "--at")
    table_opt(c)
    for action, func in (("show", Commands.inlet_show), ("delete", Commands.inlet_delete)):
        c = cmd(i, action, func, f"{action} a TCP inlet")
        c.add_argument("alias", metavar="ALIAS", help="its alias, or its address (HOST:PORT)")
        node_opt(c, "--at")

    ident = group("identity", "identities")
    c = cmd(ident, "create", ids.identity_create, "create an identity (its key kept in a vault)")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: random")
    c.add_argument("--vault", metavar="VAULT", help="the vault to keep its key in (default: the default vault)")
    c = cmd(ident, "show", ids.identity_show, "print an identity's identifier (its change history with --full)")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: the default identity")
    c.add_argument("--full", "-f", action="store_true", help="print the change history")
    c.add_argument("--encoding", choices=["plain", "hex"], help="with --full: hex prints the export")
    c.add_argument("--node", metavar="NODE", help="the identity of this node")
    c = cmd(ident, "list", ids.identity_list, "list identities")
    c.add_argument("--full", "-f", action="store_true", help="print each change history")
    table_opt(c)
    c = cmd(ident, "default", ids.identity_default, "change the default identity")
    c.add_argument("name", metavar="NAME")
    c = cmd(ident, "delete", ids.identity_delete, "delete an identity (not while a node uses it)")
    c.add_argument("name", metavar="NAME")

    v = group("vault", "vaults (where identities' keys are kept)")
    c = cmd(v, "create", ids.vault_create, "create a vault")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: random")
    c.add_argument("--path", "-p", metavar="PATH", help=argparse.SUPPRESS)
    c.add_argument("--aws-kms", action="store_true", help=argparse.SUPPRESS)
    c = cmd(v, "show", ids.vault_show, "show a vault")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: the default vault")
    c = cmd(v, "list", ids.vault_list, "list vaults")
    table_opt(c)
    c = cmd(v, "delete", ids.vault_delete, "delete a vault (not while an identity's key is in it)")
    c.add_argument("name", metavar="NAME")
    c = cmd(v, "default", ids.vault_default, "change the default vault")
    c.add_argument("name", metavar="NAME")
    c = cmd(v, "attach-key", ids.vault_attach_key, "attach an AWS KMS key (not supported)")
    c.add_argument("vault", metavar="VAULT")
    c.add_argument("--key-id", "-k", required=True, metavar="KEY_ID")

    sc = group("secure-channel", "secure channels")
    c = cmd(sc, "create", Commands.sc_create, "create a secure channel from a node to a listener")
    c.add_argument("--from", dest="from_", metavar="NODE", help="default: the default node")
    c.add_argument("--to", required=True, metavar="ROUTE", help="route to the listener, e.g. /node/n2/service/api")
    c.add_argument("--authorized", "-a", action="append", type=identifier_arg, metavar="IDENTIFIER", help="accept only this peer (repeatable)")
    c.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS")
    c = cmd(sc, "list", Commands.sc_list, "list a node's established secure channels")
    c.add_argument("--at", metavar="NODE", help="default: the default node")
    table_opt(c)
    for action, func, help_ in (("show", Commands.sc_show, "show"), ("delete", Commands.sc_delete, "close")):
        c = cmd(sc, action, func, f"{help_} a secure channel")
        c.add_argument("channel", metavar="ADDRESS", help="/service/<encryptor> or its hex")
        c.add_argument("--at", metavar="NODE", help="default: the default node")
        if action == "show":
            c.add_argument("--details", action="store_true", help="print ockamtw's view of the channel instead of Ockam's")

    scl = group("secure-channel-listener", "secure channel listeners")
    c = cmd(scl, "create", Commands.scl_create, "start a secure channel listener (api: restrict the node's own)")
    c.add_argument("address", metavar="ADDRESS", help="/service/NAME or NAME")
    c.add_argument("--at", metavar="NODE", help="default: the default node")
    c.add_argument("--authorized", "-a", action="append", type=identifier_arg, metavar="IDENTIFIER", help="accept only this peer (repeatable)")
    c.add_argument("--identity", metavar="IDENTITY", help="present this identity instead of the node's")
    c.add_argument("--vault", metavar="VAULT", help="with --identity: the vault that keeps its key")
    c = cmd(scl, "list", Commands.scl_list, "list a node's secure channel listeners")
    node_opt(c, "--at")
    table_opt(c)
    for action, func, help_ in (("show", Commands.scl_show, "show a secure channel listener"),
                                ("delete", Commands.scl_delete, "stop a secure channel listener and close its channels")):
        c = cmd(scl, action, func, help_)
        c.add_argument("address", metavar="ADDRESS", help="/service/NAME or NAME")
        c.add_argument("--at", metavar="NODE", help="default: the default node")

    svc = group("service", "services of a node")
    start = svc.add_parser("start", help="start a service", description="start a service", parents=[common])
    node_opt(start)
    kinds = start.add_subparsers(dest="kind", metavar="SERVICE", required=True)
    for kind in ("uppercase", "echo", "hop"):
        c = cmd(kinds, kind, Commands.service_start, f"the {kind} service (ockamtw)")
        c.add_argument("--addr", default=kind, metavar="ADDRESS", help=f"its address (default: {kind})")
        node_opt(c, default=argparse.SUPPRESS)
    for kind, default in (("vault", "vault_service"), ("identity", "identity_service"),
                          ("authenticated", "authenticated")):
        c = cmd(kinds, kind, Commands.service_start, f"Ockam's {kind} service (not in ockamtw)")
        c.add_argument("addr", nargs="?", default=default, metavar="ADDRESS")
        node_opt(c, default=argparse.SUPPRESS)
    for kind, default in (("verifier", "verifier"), ("credentials", "credentials"),
                          ("authenticator", "direct_authenticator")):
        c = cmd(kinds, kind, Commands.service_start, f"Ockam's {kind} service (not in ockamtw)")
        c.add_argument("--addr", default=default, metavar="ADDRESS")
        if kind == "credentials":
            c.add_argument("--oneway", action="store_true")
        if kind == "authenticator":
            c.add_argument("--project", required=True, metavar="PROJECT")
        node_opt(c, default=argparse.SUPPRESS)
    c = cmd(svc, "list", Commands.service_list, "list a node's services")
    node_opt(c)
    table_opt(c)

    w = group("worker", "workers of a node")
    c = cmd(w, "list", Commands.worker_list, "list a node's workers")
    c.add_argument("--at", metavar="NODE", help="default: the default node")

    c = cmd(None, "completion", Commands.completion, "print a shell completion script")
    c.add_argument("--shell", "-s", required=True, choices=["bash", "zsh", "fish"], metavar="SHELL",
                   help="bash, zsh or fish")
    _orchestrator_parsers(group, cmd, common)
    return p


def _global_options(p, default) -> None:
    """
    Ockam 0.83's global options, on C{p}; their value is C{default} where
    not given (C{SUPPRESS} below the top level).
    """
    d = (lambda value: argparse.SUPPRESS) if default is argparse.SUPPRESS else (lambda value: value)
    p.add_argument("--output", choices=["plain", "json"], default=d("plain"), help="output format (default: plain)")
    p.add_argument("--quiet", "-q", action="store_true", default=d(False), help="print no notes (errors are printed)")
    p.add_argument("--verbose", "-v", action="count", default=d(0), help="accepted; nodes log to their node.log")
    p.add_argument("--no-color", action="store_true", default=d(False), help="accepted; nothing is printed in colour")
    p.add_argument("--no-input", action="store_true", default=d(False), help="never ask (as --yes is not given: no)")
    p.add_argument("--test-argument-parser", action="store_true", default=d(False), help=argparse.SUPPRESS)


def _orchestrator_parsers(group, cmd, common) -> None:
    """
    The Orchestrator's commands: orchestrator, enroll, space, project,
    policy, credential, authority.
    """
    o = _Later(".orchestrator")
    pr = _Later(".projects")
    po_ = _Later(".policies")

    def cmd_r(parent, name, func, help_, reactor=True):
        return cmd(parent, name, func, help_, reactor=reactor)

    orch = group("orchestrator", "the local Orchestrator (a background process, as nodes are)")
    c = cmd_r(orch, "start", o.orchestrator_start, "start the Orchestrator in the background and wait until it serves")
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
    cmd_r(orch, "stop", o.orchestrator_stop, "stop the Orchestrator (SIGTERM, and wait)")
    cmd_r(orch, "status", o.orchestrator_status,
        "whether the Orchestrator runs, its URL, its projects, and the instances sharing its database")
    cmd_r(orch, "logs", o.orchestrator_logs, "print the path of the Orchestrator's log file")
    tok = orch.add_parser("token", help="bearer tokens of the Orchestrator's HTTP API", parents=[common])
    toks = tok.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    c = cmd_r(toks, "create", o.orchestrator_token_create, "make a token for another machine (ockam enroll --token)")
    c.add_argument("--label", metavar="LABEL")
    c.add_argument("--expires-in", type=_seconds, metavar="SECONDS")

    c = cmd_r(None, "enroll", pr.enroll, "enroll this home's identity with an Orchestrator")
    c.add_argument("--orchestrator", metavar="URL", help="a remote Orchestrator's URL (with --token)")
    c.add_argument("--token", metavar="TOKEN", help="a token of that Orchestrator (ockam orchestrator token create)")
    c.add_argument("--identity", metavar="NAME", help="the identity to enroll (default: default, made if missing)")

    sp = group("space", "spaces of the Orchestrator")
    c = cmd_r(sp, "create", pr.space_create, "create a space")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: random")
    c.add_argument("admins", nargs="*", metavar="ADMIN", help="after --: its users")
    cmd_r(sp, "list", pr.space_list, "list spaces")
    for action, func in (("show", pr.space_show), ("delete", pr.space_delete)):
        c = cmd_r(sp, action, func, f"{action} a space")
        c.add_argument("name", metavar="NAME")

    pj = group("project", "projects of the Orchestrator, their members and credentials")
    c = cmd_r(pj, "create", pr.project_create, "create a project in a space")
    c.add_argument("space", metavar="SPACE")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: random")
    c.add_argument("services", nargs="*", metavar="SERVICE", help=argparse.SUPPRESS)
    cmd_r(pj, "list", pr.project_list, "list projects")
    c = cmd_r(pj, "show", pr.project_show, "show a project")
    c.add_argument("name", metavar="NAME")
    c = cmd_r(pj, "information", pr.project_information, "a project's project.json (with --output json)")
    c.add_argument("name", nargs="?", metavar="NAME", help="default: default")
    c = cmd_r(pj, "delete", pr.project_delete, "delete a project")
    c.add_argument("space", metavar="SPACE")
    c.add_argument("name", metavar="NAME")
    c = cmd_r(pj, "enroll", pr.project_enroll, "an enroller adds a member (--member) or makes a one-time code")
    c.add_argument("--member", "-m", metavar="IDENTIFIER", help="add this identity as a member")
    c.add_argument("--to", "-t", default="/project/default", metavar="ROUTE", help="the project (default: /project/default)")
    c.add_argument("--attribute", "-a", action="append", metavar="KEY=VALUE", help="an attribute (repeatable)")
    c.add_argument("--expires-in", type=_whole_seconds, metavar="SECONDS", help="the code's lifetime (default: 600)")
    c.add_argument("--usage-count", type=_count, metavar="N", help="how many times the code may be used (default: 1)")
    c.add_argument("--relay", metavar="NAME", help="the relay the member may take (attribute ockam-relay)")
    c.add_argument("--identity", metavar="NAME", help="the enroller's identity (default: the enrolled one)")
    c.add_argument("--project-path", metavar="PROJECT_JSON", help="the project (instead of --to)")
    c = cmd_r(pj, "authenticate", pr.project_authenticate, "redeem a one-time code and print this identity's credential")
    c.add_argument("--token", metavar="CODE", help="a one-time code (64 hex)")
    c.add_argument("--project-path", metavar="PROJECT_JSON", help="the project (default: the home's)")
    c.add_argument("--identity", metavar="NAME", help="the member's identity (default: the enrolled one)")
    c = cmd_r(pj, "revoke", pr.project_revoke, "revoke a member (it cannot use the project any more)")
    c.add_argument("--member", "-m", required=True, metavar="IDENTIFIER")
    c.add_argument("--to", "-t", default="/project/default", metavar="ROUTE", help="the project (default: /project/default)")
    c.add_argument("--project-path", metavar="PROJECT_JSON", help="the project (instead of --to)")

    po = group("policy", "ABAC policies of a node's inlets and outlets")
    for action, func, help_ in (
        ("set", po_.policy_set, "set the policy of a resource (tcp-inlet, tcp-outlet)"),
        ("show", po_.policy_show, "print the policy of a resource"),
        ("get", po_.policy_show, "print the policy of a resource (as show)"),
        ("delete", po_.policy_delete, "delete the policy of a resource (it then denies)"),
    ):
        c = cmd(po, action, func, help_)
        c.add_argument("--at", metavar="NODE")
        c.add_argument("--resource", "-r", required=True, metavar="RESOURCE")
        c.add_argument("--action", "-a", default="handle_message", metavar="ACTION")
        if action == "set":
            c.add_argument("--expression", "-e", required=True, metavar="EXPRESSION")
    c = cmd(po, "list", po_.policy_list, "list a node's policies")
    c.add_argument("--at", metavar="NODE")
    c.add_argument("--resource", "-r", metavar="RESOURCE")

    cr = group("credential", "credentials")
    c = cmd_r(cr, "issue", pr.credential_issue, "issue a credential as one of this home's identities")
    c.add_argument("--as", dest="as_", metavar="IDENTITY", help="the issuer (default: the enrolled identity, or default)")
    c.add_argument("--for", dest="for_", required=True, metavar="IDENTIFIER", help="the subject")
    c.add_argument("--attribute", "-a", action="append", metavar="KEY=VALUE")
    c.add_argument("--encoding", choices=["plain", "hex"], default="plain")
    for action, func, help_ in (("verify", pr.credential_verify, "verify a credential"),
                                ("store", pr.credential_store, "keep a credential in this home")):
        c = cmd_r(cr, action, func, help_)
        if action == "store":
            c.add_argument("name", nargs="?", metavar="NAME", help="default: random")
        c.add_argument("--issuer", required=True, metavar="IDENTITY",
                       help="identifier (of an identity or project authority of this home) or exported identity (hex)")
        c.add_argument("--credential", metavar="HEX")
        c.add_argument("--credential-path", metavar="FILE")
    c = cmd_r(cr, "show", pr.credential_show, "show a stored credential")
    c.add_argument("name", metavar="NAME")
    cmd_r(cr, "list", pr.credential_list, "list stored credentials")

    au = group("authority", "standalone project authorities")
    c = cmd_r(au, "create", pr.authority_create, "create a node running a project authority")
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
    if getattr(args, "func", None) is Commands.node_delete and args.name is not None and args.all:
        args.parser.error("name a node, or use --all (not both)")
    if getattr(args, "quiet", False) and getattr(args, "verbose", 0):
        args.parser.error("--quiet and --verbose cannot be used together")


def _alias(text: str) -> str:
    """
    An inlet's or outlet's alias, as Ockam checks it.
    """
    if ":" in text:
        raise argparse.ArgumentTypeError("an alias must not contain ':' characters")
    if not text or "/" in text:
        raise argparse.ArgumentTypeError(f"not an alias: {text!r}")
    return text


def _confirm(prompt: str, no_input: bool) -> bool:
    """
    Ask a yes/no question on standard output and read the answer (the
    first character of a line of standard input: y or Y); no when
    standard input is closed, or with C{--no-input}.
    """
    if no_input:
        return False
    sys.stdout.write(prompt)
    sys.stdout.flush()
    with interruptible():
        answer = sys.stdin.readline()
    return answer[:1] in ("y", "Y")


def _remove_tree(path: str) -> List[str]:
    """
    Remove C{path} (a directory tree, or a file) if it is there; the
    problems, each in one line.
    """
    import shutil

    problems: List[str] = []
    if not os.path.lexists(path):
        return problems
    if os.path.isdir(path) and not os.path.islink(path):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=lambda func, p, e: problems.append(f"cannot remove {os_error(e, p)}"))
        else:
            shutil.rmtree(path, onerror=lambda func, p, info: problems.append(f"cannot remove {os_error(info[1], p)}"))
    else:
        try:
            os.unlink(path)
        except OSError as e:
            problems.append(f"cannot remove {os_error(e, path)}")
    return problems


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
        from .nodes import blocking, press

        if self.done:
            return
        if self.interrupted:
            _say("interrupted")
            os._exit(INTERRUPTED)
        self.interrupted = True
        press()  # a wait that starts after this ends at once
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


def _exit_status(e: Optional[BaseException], interrupt: _Interrupt) -> int:
    """
    Say what went wrong (one line) and return the exit status; C{e}: what
    the command raised (C{None}: it succeeded).
    """
    if e is None:
        return 0
    if interrupt.interrupted or isinstance(e, KeyboardInterrupt):
        _say("interrupted")
        return INTERRUPTED
    if isinstance(e, SystemExit):
        # A usage mistake a command found (parser.error): already said.
        return e.code if isinstance(e.code, int) else 2
    if isinstance(e, BrokenPipeError):
        # The reader went away (e.g. `| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if isinstance(e, CLIError):
        _say(str(e))
        return e.code
    if isinstance(e, OckamError):
        _say(str(e))
    elif isinstance(e, OSError):
        _say(os_error(e))
    else:
        _say(f"unexpected error: {type(e).__name__}: {e}")
    return SOFTWARE


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
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = replace_stdin_markers(argv)
    except CLIError as e:
        _say(str(e))
        return e.code
    top = parser()
    args, extras = top.parse_known_args(_attach_dash_values(argv))
    if extras:
        # Said with the usage of the command they were given to, not ockam's.
        getattr(args, "parser", top).error(f"unrecognized arguments: {' '.join(extras)}")
    _check_usage(args)
    if args.test_argument_parser:
        return 0
    needs_reactor = args.reactor(args) if callable(args.reactor) else args.reactor
    if needs_reactor:
        return _run_in_reactor(args, interrupt)
    return _run_plainly(args, interrupt)


async def _command(reactor, args) -> None:
    commands = Commands(reactor, args, Nodes())
    try:
        await args.func(commands)
    finally:
        await commands.close()


def _run_plainly(args, interrupt: _Interrupt) -> int:
    """
    Run a command that needs no reactor: its coroutine waits on nothing
    but blocking calls (the control client's, a lock, a process), each of
    which Ctrl-C ends with L{KeyboardInterrupt} (L{interruptible}).
    """
    if interrupt.interrupted:  # Ctrl-C while the command line was getting ready
        interrupt.done = True
        return _exit_status(KeyboardInterrupt(), interrupt)
    run = _command(None, args)
    error: Optional[BaseException] = None
    try:
        run.send(None)
    except StopIteration:
        pass
    except BaseException as e:
        error = e
    else:
        # A command declared without the reactor waited on a Deferred.
        run.close()
        error = RuntimeError(f"{args.func!r} needs the reactor (declare it with reactor=True)")
    interrupt.done = True
    return _exit_status(error, interrupt)


def _run_in_reactor(args, interrupt: _Interrupt) -> int:
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    outcome = []

    def start():
        d = defer.Deferred.fromCoroutine(_command(reactor, args))
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
        return _exit_status(CLIError("stopped"), interrupt)
    result = outcome[0]
    if not isinstance(result, Failure):
        return _exit_status(None, interrupt)
    if isinstance(result.value, defer.CancelledError):
        return _exit_status(KeyboardInterrupt(), interrupt)
    return _exit_status(result.value, interrupt)


if __name__ == "__main__":
    main()
