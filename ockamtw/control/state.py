"""
A background node's state on disk: C{$OCKAM_HOME/nodes/NAME/}.

  - C{state.json}: name, listener address, outlets, inlets, relays
  - C{pid}: the node process's pid (written by twistd)
  - C{node.log}: its log
  - C{control.sock}: its control API (mode 0600)

The node process owns C{state.json} while it runs; the command line writes it
only to create a node.
"""

from __future__ import annotations

import json
import os
from typing import Optional

STATE = "state.json"
PIDFILE = "pid"
LOGFILE = "node.log"
SOCKET = "control.sock"
IDENTITY = "identity.json"


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


def empty_state(name: str, listen: str) -> dict:
    return {"name": name, "listen": listen, "outlets": [], "inlets": [], "relays": []}


def read_state(directory: str) -> Optional[dict]:
    """
    The state in C{directory}, or C{None} when there is none.
    """
    try:
        with open(os.path.join(directory, STATE), encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    for key in ("outlets", "inlets", "relays"):
        state.setdefault(key, [])
    return state


def write_state(directory: str, state: dict) -> None:
    """
    Replace the state atomically (write a temporary file, then rename).
    """
    path = os.path.join(directory, STATE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_pid(directory: str) -> Optional[int]:
    try:
        with open(os.path.join(directory, PIDFILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


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


def listener_of(home: str, name: str) -> Optional[str]:
    """
    The listener address (C{host:port}) recorded for node C{name}.
    """
    state = read_state(node_dir(home, name))
    if state is None:
        return None
    return state.get("listen")
