"""
A background node's state on disk: C{$OCKAM_HOME/nodes/NAME/} (mode 0700,
every file in it 0600).

  - C{state.json}: name, listener address, outlets, inlets, relays; for
    a node of a project, C{project} (what C{project.json} holds, as an
    object) and C{policies} (resource -> ABAC expression text); for an
    authority node, C{authority} (L{ockamtw.project.authority.AuthorityConfig})
  - C{identity.json}: the node's own identity (unless it uses a named one)
  - C{pid}: the node process's pid (written by twistd)
  - C{node.log}: its log, rotated by size (C{node.log.1} ... C{node.log.N})
  - C{control.sock}: its control API (mode 0600)
  - C{lock}: held by a command line that creates, starts, stops or deletes
    the node

The node process owns C{state.json} while it runs; the command line writes it
only to create a node.  L{read_state} is the one reader of C{state.json}: it
validates what it reads and says in one line which field is wrong.

A pid file is believed only for a live process whose command line is this
node's (L{node_pid}): after a crash, the pid in it may belong to anyone.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from typing import Any, List, Optional

from ..errors import OckamError

STATE = "state.json"
PIDFILE = "pid"
LOGFILE = "node.log"
SOCKET = "control.sock"
IDENTITY = "identity.json"
LOCK = "lock"

#: The mode of every directory under C{$OCKAM_HOME} we create or use.
DIR_MODE = 0o700
#: The mode of every file in them.
FILE_MODE = 0o600


#: The longest path a UNIX socket can have (sun_path is 108 bytes).
MAX_SOCKET_PATH = 107


def socket_path_problem(directory: str) -> Optional[str]:
    """
    Why the control socket cannot live in C{directory}, or C{None}.
    """
    path = os.path.join(directory, SOCKET)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return (
            f"the control socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "set OCKAM_HOME to a shorter directory"
        )
    return None


def identities_dir(home: str) -> str:
    return os.path.join(home, "identities")


def identity_path(home: str, name: str) -> str:
    """
    The file of the named identity C{name} (shared by nodes created with
    C{--identity NAME}).
    """
    return os.path.join(identities_dir(home), name + ".json")


def ockam_home(environ=None) -> str:
    """
    C{$OCKAM_HOME}, or C{~/.ockamtw}.
    """
    env = os.environ if environ is None else environ
    home = env.get("OCKAM_HOME")
    if home:
        return os.path.abspath(home)
    return os.path.join(os.path.expanduser("~"), ".ockamtw")


def nodes_dir(home: str) -> str:
    return os.path.join(home, "nodes")


def node_dir(home: str, name: str) -> str:
    return os.path.join(nodes_dir(home), name)


def valid_node_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name) and name[0] not in ".-"


# --- private directories ---------------------------------------------------------


def private_dir(path: str) -> None:
    """
    Make sure directory C{path} exists with mode 0700 (an existing one is
    chmod-ed; missing parents are created 0700 too).
    """
    if not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent and parent != path and not os.path.isdir(parent):
            private_dir(parent)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass
    _chmod(path, DIR_MODE)


def make_node_dir(home: str, name: str) -> str:
    """
    Create node C{name}'s directory (mode 0700) and return it.

    Creation is exclusive, so of two commands creating the same node exactly
    one gets the directory.

    @raise FileExistsError: if the node (or a directory of that name) exists.
    """
    if not os.path.isdir(home):
        private_dir(home)
    private_dir(nodes_dir(home))
    directory = node_dir(home, name)
    os.mkdir(directory, DIR_MODE)
    _chmod(directory, DIR_MODE)
    return directory


def secure_node_dir(directory: str) -> None:
    """
    Give a node directory mode 0700 and the files in it mode 0600 (nodes
    created by older versions have 0755 and 0644).  Symbolic links are left
    alone; so is what cannot be changed (another user's file).
    """
    _chmod(directory, DIR_MODE)
    _secure_files(directory)


def secure_identities_dir(home: str) -> str:
    """
    C{$OCKAM_HOME/identities} with mode 0700 and its files 0600; returns it.
    """
    directory = identities_dir(home)
    private_dir(directory)
    _secure_files(directory)
    return directory


def _secure_files(directory: str) -> None:
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        path = os.path.join(directory, entry)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if (stat.S_ISREG(mode) or stat.S_ISSOCK(mode)) and stat.S_IMODE(mode) & 0o077:
            _chmod(path, stat.S_IMODE(mode) & FILE_MODE)


def _chmod(path: str, mode: int) -> None:
    try:
        if stat.S_IMODE(os.lstat(path).st_mode) != mode:
            os.chmod(path, mode)
    except (PermissionError, FileNotFoundError):
        pass


# --- state.json ----------------------------------------------------------------------


class StateError(OckamError):
    """
    A node's C{state.json} that cannot be used: missing, unreadable, not
    JSON, or a field of the wrong kind.  C{str()} is one line:
    C{node n1: state.json: outlets[0]: missing "to"}.

    @ivar name: the node's name (its directory's).
    @ivar problem: what is wrong, starting with C{state.json: }.
    """

    def __init__(self, directory: str, problem: str) -> None:
        self.name = os.path.basename(os.path.normpath(directory))
        self.problem = f"{STATE}: {problem}"
        OckamError.__init__(self, f"node {self.name}: {self.problem}")


class _Invalid(Exception):
    pass


def empty_state(name: str, listen: str) -> dict:
    return {"name": name, "listen": listen, "outlets": [], "inlets": [], "relays": []}


def read_state(directory: str) -> Optional[dict]:
    """
    The state in C{directory}, checked (L{validate_state}), or C{None} when
    there is no C{state.json}.

    @raise StateError: when C{state.json} exists but cannot be used.
    """
    path = os.path.join(directory, STATE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(directory, f"cannot be read: {e.strerror or e}") from None
    if not raw.strip():
        raise StateError(directory, "empty file")
    try:
        state = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise StateError(directory, "not UTF-8 text") from None
    except ValueError as e:
        raise StateError(directory, f"not valid JSON ({e})") from None
    try:
        return validate_state(state)
    except _Invalid as e:
        raise StateError(directory, str(e)) from None


def load_state(directory: str) -> dict:
    """
    Like L{read_state}, but a missing C{state.json} is an error too.

    @raise StateError: when there is no usable C{state.json}.
    """
    state = read_state(directory)
    if state is None:
        raise StateError(directory, "missing")
    return state


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def validate_state(state: Any) -> dict:
    """
    Check decoded C{state.json} and return it with the lists an older
    version may not have written filled in (C{[]}).  Unknown keys are kept.

    @raise _Invalid: naming the first field that is wrong.
    """
    from ..errors import WireError
    from ..routing import Address, parse_route_text
    from ..endpoints import client_target, server_description

    if not isinstance(state, dict):
        raise _Invalid(f"expected a JSON object, got {_kind(state)}")

    def text(where: str, value: Any, check=None, optional: bool = False) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value:
            raise _Invalid(f"{where}: expected a non-empty string, got {_kind(value)}")
        if check is not None:
            try:
                check(value)
            except WireError as e:
                raise _Invalid(f"{where}: {e}") from None

    def authorized(where: str, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            raise _Invalid(f"{where}: expected a list of identifiers or null, got {_kind(value)}")
        for i, item in enumerate(value):
            text(f"{where}[{i}]", item)

    if "name" in state:
        text("name", state["name"])
    text("listen", state.get("listen"), server_description, optional=True)
    identity = state.get("identity")
    if identity is not None and not (isinstance(identity, str) and valid_node_name(identity)):
        raise _Invalid(f"identity: not an identity name: {identity!r}")

    def items(key: str, fields) -> None:
        value = state.setdefault(key, [])
        if not isinstance(value, list):
            raise _Invalid(f"{key}: expected a list, got {_kind(value)}")
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise _Invalid(f"{where}: expected an object, got {_kind(item)}")
            for field, check in fields:
                if field not in item:
                    raise _Invalid(f'{where}: missing "{field}"')
                text(f"{where}.{field}", item[field], check)
            if "authorized" in item:
                authorized(f"{where}.authorized", item["authorized"])

    items("outlets", [("address", Address.parse), ("to", client_target)])
    items("inlets", [("listen", server_description), ("to", parse_route_text)])
    items("relays", [("name", _relay_name), ("at", parse_route_text)])
    items("connections", [("to", client_target), ("address", Address.parse)])
    items("secure_listeners", [("address", Address.parse)])
    if state.get("project") is not None:
        project_of(state)
    policies = state.get("policies")
    if policies is not None:
        if not isinstance(policies, dict):
            raise _Invalid(f"policies: expected an object {{resource: expression}}, got {_kind(policies)}")
        for resource, expression in policies.items():
            policy_check(f"policies.{resource}", resource, expression)
    if state.get("authority") is not None:
        authority_of(state)
    return state


def project_of(state: dict):
    """
    The L{ProjectInfo} of C{state["project"]} (checked complete, as C{node
    create --project} checks it), or C{None}.

    @raise _Invalid: when it is not a usable project.
    """
    from ..project.errors import ProjectInfoError
    from ..project.projectinfo import ProjectInfo

    doc = state.get("project")
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise _Invalid(f"project: expected an object (what project.json holds), got {_kind(doc)}")
    try:
        info = ProjectInfo.from_json(json.dumps(doc))
        info.require_complete()
    except ProjectInfoError as e:
        raise _Invalid(f"project: {str(e).replace('project.json: ', '', 1)}") from None
    return info


def policy_check(where: str, resource: Any, expression: Any) -> None:
    """
    @raise _Invalid: unless C{resource} is a name and C{expression} policy
        text that parses.
    """
    from ..abac import Policy, PolicyError

    if not isinstance(resource, str) or not resource or "/" in resource:
        raise _Invalid(f"{where}: not a resource name: {resource!r}")
    if not isinstance(expression, str):
        raise _Invalid(f"{where}: expected policy text, got {_kind(expression)}")
    try:
        Policy.parse(expression)
    except PolicyError as e:
        raise _Invalid(f"{where}: {e}") from None


def authority_of(state: dict):
    """
    The L{AuthorityConfig} of C{state["authority"]}, or C{None}.

    @raise _Invalid: when it is not usable.
    """
    from ..project.authority import AuthorityConfig, AuthorityConfigError

    doc = state.get("authority")
    if doc is None:
        return None
    try:
        return AuthorityConfig.from_dict(doc)
    except AuthorityConfigError as e:
        raise _Invalid(f"authority: {e}") from None


def _relay_name(name: str) -> None:
    from ..errors import WireError

    if "/" in name:
        raise WireError(f"not a relay name: {name!r}")


def write_state(directory: str, state: dict) -> None:
    """
    Replace the state atomically and durably: write a fresh temporary file
    (mode 0600), flush it to disk, then rename it over C{state.json}.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, STATE))
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --- the node process --------------------------------------------------------------


def read_pid(directory: str) -> Optional[int]:
    try:
        with open(os.path.join(directory, PIDFILE)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def command_line(pid: int) -> Optional[List[str]]:
    """
    The arguments of process C{pid}, or C{None} if they cannot be read
    (from C{/proc}, else from C{ps}).
    """
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]] if raw else None
    try:
        out = subprocess.run(
            ["ps", "-o", "args=", "-p", str(pid)], capture_output=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return os.fsdecode(out).split() or None


def _cwd_of(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def is_node_process(pid: int, directory: str) -> bool:
    """
    Whether process C{pid} is the node of C{directory}: its command line is
    C{... ockam ... --state DIR} for this directory (as C{ockam node start},
    C{ockam node create --foreground} and C{twistd ockam --state DIR} run).
    """
    args = command_line(pid)
    if not args:
        return False
    target = os.path.realpath(directory)
    for i, arg in enumerate(args):
        if arg == "--state" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--state="):
            value = arg[len("--state=") :]
        else:
            continue
        if not os.path.isabs(value):
            cwd = _cwd_of(pid)
            if cwd is None:
                continue
            value = os.path.join(cwd, value)
        if os.path.realpath(value) == target and "ockam" in args[:i]:
            return True
    return False


def node_pid(directory: str) -> Optional[int]:
    """
    The pid of the node process of C{directory}: the pid file's, if that
    process is alive and is this node (L{is_node_process}); else C{None}
    (no pid file, a dead process, or a pid now used by another program).
    """
    pid = read_pid(directory)
    if pid is None or not pid_alive(pid):
        return None
    return pid if is_node_process(pid, directory) else None


def listener_of(home: str, name: str) -> Optional[str]:
    """
    The listener address (C{host:port}) recorded for node C{name}.

    @raise StateError: if the node's C{state.json} cannot be used.
    """
    state = read_state(node_dir(home, name))
    if state is None:
        return None
    return state.get("listen")
