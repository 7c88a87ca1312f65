"""
Background nodes for the command line: each is a detached C{twistd ockam}
process with its state under C{$OCKAM_HOME/nodes/NAME/}, reached through
its control API (L{ockamtw.cli.client}).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import List, Optional

from ..control import state as st


class CLIError(Exception):
    """
    A user-facing error: one line on stderr, exit status 1.
    """


def node_name(text: str) -> str:
    """
    C{n1} or C{/node/n1} to C{n1}.
    """
    if text.startswith("/node/"):
        text = text[len("/node/") :]
    text = text.strip("/")
    if not st.valid_node_name(text):
        raise CLIError(f"not a node name: {text!r}")
    return text


class Nodes:
    """
    The nodes under one C{OCKAM_HOME}.
    """

    def __init__(self, home: Optional[str] = None) -> None:
        self.home = home or st.ockam_home()

    def dir(self, name: str) -> str:
        return st.node_dir(self.home, name)

    def socket(self, name: str) -> str:
        return os.path.join(self.dir(name), st.SOCKET)

    def names(self) -> List[str]:
        try:
            entries = sorted(os.listdir(st.nodes_dir(self.home)))
        except FileNotFoundError:
            return []
        return [n for n in entries if os.path.exists(os.path.join(st.nodes_dir(self.home), n, st.STATE))]

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.dir(name), st.STATE))

    def require(self, name: str) -> str:
        name = node_name(name)
        if not self.exists(name):
            raise CLIError(f"no node named {name!r} (see: ockam node list)")
        return name

    def default(self) -> str:
        """
        The node to use when none is named: the only one there is.
        """
        names = self.names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise CLIError("there is no node yet (create one with: ockam node create)")
        raise CLIError(f"there are {len(names)} nodes ({', '.join(names)}): name one")

    def pick(self, name: Optional[str]) -> str:
        return self.require(name) if name else self.default()

    def pid(self, name: str) -> Optional[int]:
        pid = st.read_pid(self.dir(name))
        return pid if st.pid_alive(pid) else None

    def running(self, name: str) -> bool:
        return self.pid(name) is not None and os.path.exists(self.socket(name))

    def state(self, name: str) -> dict:
        return st.read_state(self.dir(name)) or {}

    def log_path(self, name: str) -> str:
        return os.path.join(self.dir(name), st.LOGFILE)

    # --- processes --------------------------------------------------------------

    def spawn(self, name: str) -> subprocess.Popen:
        """
        Start node C{name} from its state as a detached process.
        """
        d = self.dir(name)
        log = open(self.log_path(name), "ab")
        try:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ockamtw",
                    "-n",
                    "--pidfile",
                    os.path.join(d, st.PIDFILE),
                    "ockam",
                    "--state",
                    d,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=d,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            log.close()

    def startup_error(self, name: str, offset: int) -> str:
        """
        The reason a node process gave for not starting: its last "ockam:"
        line in the log after C{offset}.
        """
        try:
            with open(self.log_path(name), "rb") as f:
                f.seek(offset)
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            lines = []
        for line in reversed(lines):
            if line.startswith("ockam: "):
                return line[len("ockam: ") :]
        for line in reversed(lines):
            if line.strip():
                return line.strip()
        return "the node process exited at start"

    def log_size(self, name: str) -> int:
        try:
            return os.path.getsize(self.log_path(name))
        except OSError:
            return 0

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """
        SIGTERM the node's process and wait for it to exit (SIGKILL after
        C{timeout}).  Returns whether it was running.
        """
        pid = self.pid(name)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout
        while st.pid_alive(pid):
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 5
            time.sleep(0.02)
        _reap(pid)
        for leftover in (st.PIDFILE, st.SOCKET):
            try:
                os.unlink(os.path.join(self.dir(name), leftover))
            except FileNotFoundError:
                pass
        return True

    def delete(self, name: str) -> None:
        self.stop(name)
        shutil.rmtree(self.dir(name), ignore_errors=True)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
