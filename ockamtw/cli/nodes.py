"""
Background nodes for the command line: each is a detached C{twistd ockam}
process with its state under C{$OCKAM_HOME/nodes/NAME/}, reached through
its control API (L{ockamtw.cli.client}).

A node's pid file is believed only when the process it names is this node
(L{ockamtw.control.state.node_pid}), and a signal goes only to that process
(through a pidfd where the platform has them, so a pid reused between the
check and the signal is never hit).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Iterator, List, Optional

from ..control import state as st


from . import errors as _errors

# The command line's errors and exit statuses live in a leaf module (the
# home module uses them, and this one uses the home's); callers import them
# from here as well.
CLIError, os_error = _errors.CLIError, _errors.os_error
SOFTWARE, IOERR, CANTCREAT, UNAVAILABLE, USAGE = (
    _errors.SOFTWARE, _errors.IOERR, _errors.CANTCREAT, _errors.UNAVAILABLE, _errors.USAGE
)


_blocking = [0]
_pressed = [False]


def blocking() -> bool:
    """
    Whether the command waits in an L{interruptible} section now.
    """
    return _blocking[0] > 0


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """
    A wait outside the reactor (a lock, a process, standard input) that
    Ctrl-C ends by raising L{KeyboardInterrupt} there (see the command
    line's SIGINT handler).
    """
    _blocking[0] += 1
    try:
        yield
    finally:
        _blocking[0] -= 1


def press() -> None:
    """
    Note that Ctrl-C was pressed (the command line's SIGINT handler calls
    it), for a wait that starts afterwards to end at once (L{pressed}).
    """
    _pressed[0] = True


def pressed() -> bool:
    """
    Whether Ctrl-C was pressed during this command.
    """
    return _pressed[0]


def pause(seconds: float) -> None:
    """
    Sleep C{seconds} where Ctrl-C ends the command: pressed now, or before
    (L{pressed}), it raises L{KeyboardInterrupt} here.
    """
    with interruptible():
        if pressed():
            raise KeyboardInterrupt
        time.sleep(seconds)


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
        """
        Every node, including one whose state is broken (a directory under
        C{nodes/} with a node's name).
        """
        base = st.nodes_dir(self.home)
        try:
            entries = sorted(os.listdir(base))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise CLIError(f"cannot list nodes: {os_error(e)}") from None
        return [n for n in entries if st.valid_node_name(n) and os.path.isdir(os.path.join(base, n))]

    def exists(self, name: str) -> bool:
        return os.path.isdir(self.dir(name))

    def require(self, name: str) -> str:
        name = node_name(name)
        if not self.exists(name):
            raise CLIError(f"no node named {name!r} (see: ockam node list)")
        return name

    # --- the default node ---------------------------------------------------------

    def default_name(self) -> Optional[str]:
        """
        The default node, as Ockam 0.83 has one: the node recorded in
        C{config.json} (C{default_node}: the first created, or the one
        C{node default NAME} named), else the only node, else the first
        by name; C{None} when there is no node.
        """
        from . import home as h

        name = h.read_config(self.home).get("default_node")
        if isinstance(name, str) and st.valid_node_name(name) and self.exists(name):
            return name
        names = self.names()
        return names[0] if names else None

    def set_default(self, name: Optional[str]) -> None:
        from . import home as h

        config = h.read_config(self.home)
        if name is None:
            config.pop("default_node", None)
        else:
            config["default_node"] = name
        h.write_config(self.home, config)

    def claim_default(self, name: str) -> None:
        """
        Make C{name} the default node unless another one is.
        """
        from . import home as h

        try:
            recorded = h.read_config(self.home).get("default_node")
            if not (isinstance(recorded, str) and recorded != name and self.exists(recorded)):
                self.set_default(name)
        except CLIError:
            pass  # not recorded: default_name still finds one

    def default(self) -> str:
        """
        The node to use when none is named: the default node.
        """
        name = self.default_name()
        if name is None:
            raise CLIError("there is no node yet (create one with: ockam node create)")
        return name

    def pick(self, name: Optional[str]) -> str:
        return self.require(name) if name is not None else self.default()

    def pid(self, name: str) -> Optional[int]:
        """
        The pid of node C{name}'s process, if it runs (see
        L{st.node_pid}: a stale pid file naming another process is not).
        """
        return st.node_pid(self.dir(name))

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    def state(self, name: str) -> dict:
        """
        The node's checked state.

        @raise st.StateError: (an L{OckamError}) saying what is wrong with
            its C{state.json}.
        """
        return st.load_state(self.dir(name))

    def log_path(self, name: str) -> str:
        return os.path.join(self.dir(name), st.LOGFILE)

    # --- files --------------------------------------------------------------------

    def make_dir(self, name: str) -> str:
        """
        Create node C{name}'s directory, exclusively.

        @raise CLIError: if the node exists already.
        """
        try:
            return st.make_node_dir(self.home, name)
        except FileExistsError as e:
            if e.filename is not None and os.path.abspath(e.filename) != os.path.abspath(self.dir(name)):
                raise CLIError(f"cannot create node {name}: {os_error(e)}") from None
            raise CLIError(f"node {name!r} already exists") from None
        except OSError as e:
            raise CLIError(f"cannot create node {name}: {os_error(e)}") from None

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 60.0) -> Iterator[None]:
        """
        Hold node C{name}'s lock (C{DIR/lock}) while creating, starting,
        stopping or deleting it, so that two commands do not do it at once;
        wait at most C{timeout} seconds for another command to finish.
        """
        path = os.path.join(self.dir(name), st.LOCK)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, st.FILE_MODE)
        except FileNotFoundError:
            raise CLIError(f"no node named {name!r} (see: ockam node list)") from None
        except OSError as e:
            # A read-only OCKAM_HOME: a lock file already there still locks.
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise CLIError(f"cannot lock node {name}: {os_error(e)}") from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise CLIError(f"cannot lock node {name}: {os_error(e, path)}") from None
                if time.monotonic() > deadline:
                    raise CLIError(f"node {name} is busy: another ockam command is creating, starting or stopping it")
                with interruptible():
                    time.sleep(0.05)
            if not self.exists(name):  # deleted while we waited
                raise CLIError(f"no node named {name!r} (see: ockam node list)")
            yield
        finally:
            os.close(fd)

    def clear_stale(self, name: str, starting: bool = False) -> None:
        """
        Remove a pid file that does not name this node's live process (after
        a crash; twistd would refuse to start while its pid is alive), and
        the control socket it left.  Only call with the node's lock held.

        @param starting: the node is about to start: a file that cannot be
            removed is an error (L{CLIError}); else it is left (a pid file
            is only believed for the node's own live process).
        """
        if self.running(name):
            return
        for leftover in (st.PIDFILE, st.SOCKET):
            path = os.path.join(self.dir(name), leftover)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                if starting:
                    raise CLIError(f"cannot start node {name}: cannot remove {os_error(e, path)}") from None

    # --- processes --------------------------------------------------------------

    def node_argv(self, name: str, log: bool = True) -> List[str]:
        """
        The command of node C{name}'s process: C{twistd ockam --state DIR}
        (run as C{python -m ockamtw}), writing its own, rotated log to
        C{node.log} (with C{log}; else twistd logs to standard output).
        """
        d = self.dir(name)
        argv = [sys.executable, "-m", "ockamtw", "-n", "--pidfile", os.path.join(d, st.PIDFILE), "--umask", "0077"]
        if log:
            argv += ["--logfile", self.log_path(name)]
        return argv + ["ockam", "--state", d]

    def spawn(self, name: str) -> subprocess.Popen:
        """
        Start node C{name} from its state as a detached process.  Its
        standard error is a pipe the caller reads while the node starts
        (L{startup_error}); the node logs to C{node.log} itself.
        """
        d = self.dir(name)
        try:
            st.private_dir(st.nodes_dir(self.home))
            st.secure_node_dir(d)
            if os.path.isdir(st.identities_dir(self.home)):
                st.secure_identities_dir(self.home)
        except OSError as e:
            raise CLIError(f"cannot start node {name}: {os_error(e)}") from None
        if not os.access(d, os.W_OK):
            # The node could not write its pid file, log or state.
            reason = "Read-only file system" if _read_only(d) else "Permission denied"
            raise CLIError(f"cannot start node {name}: {d}: {reason}")
        return subprocess.Popen(
            self.node_argv(name),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=d,
            start_new_session=True,
            close_fds=True,
        )

    def startup_error(self, name: str, offset: int, stderr: bytes = b"", code: Optional[int] = None) -> str:
        """
        The reason a node process gave for not starting, in one line: its
        last "ockam:" line on standard error, else in the log after
        C{offset}; else C{node NAME did not start: LINE} with its last line
        of either (without the log's time stamp).
        """
        err_lines = stderr.decode("utf-8", "replace").splitlines()
        log_lines = self._log_since(name, offset)
        for lines in (err_lines, log_lines):
            for line in reversed(lines):
                reason = _ockam_reason(line)
                if reason:
                    return reason
        for lines in (err_lines, log_lines):
            for line in reversed(lines):
                if line.strip():
                    return f"node {name} did not start: {_without_log_prefix(line.strip())}"
        status = f" (status {code})" if code is not None else ""
        return f"node {name} did not start: the node process exited at start{status}"

    def _log_since(self, name: str, offset: int) -> List[str]:
        try:
            with open(self.log_path(name), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(offset if offset <= size else 0)  # rotated since: all of the new file
                return f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []

    def log_size(self, name: str) -> int:
        try:
            return os.path.getsize(self.log_path(name))
        except OSError:
            return 0

    def stop(self, name: str, timeout: float = 10.0, force: bool = False) -> bool:
        """
        SIGTERM the node's process and wait for it to exit (SIGKILL after
        C{timeout}; at once with C{force}).  Returns whether it was
        running.  Only this node's process is ever signalled.

        @raise CLIError: if it is still there after SIGKILL.
        """
        d = self.dir(name)
        pid = self.pid(name)
        if pid is None:
            return False
        with _Process(pid) as proc, interruptible():
            # The pid may have been reused between the check and the pidfd.
            if not st.is_node_process(pid, d) or not proc.signal(signal.SIGKILL if force else signal.SIGTERM):
                return False
            if not proc.wait(5.0 if force else timeout, d):
                proc.signal(signal.SIGKILL)
                if not proc.wait(5.0, d):
                    raise CLIError(f"node {name} (pid {pid}) did not exit, even after SIGKILL")
        _reap(pid)
        if st.read_pid(d) == pid:
            for leftover in (st.PIDFILE, st.SOCKET):
                try:
                    os.unlink(os.path.join(d, leftover))
                except OSError:
                    pass  # gone, or a read-only directory: a stale pid file is never believed
        return True

    def delete(self, name: str, force: bool = False) -> None:
        """
        Stop node C{name} (with SIGKILL if C{force}) and remove its
        directory; if it was the default node, another one (the first by
        name) becomes the default.

        @raise CLIError: naming the first file that could not be removed.
        """
        self.stop(name, force=force)
        errors = []
        if sys.version_info >= (3, 12):
            shutil.rmtree(self.dir(name), onexc=lambda func, path, e: errors.append((path, e)))
        else:
            shutil.rmtree(self.dir(name), onerror=lambda func, path, info: errors.append((path, info[1])))
        if os.path.lexists(self.dir(name)):
            reason = f"{self.dir(name)}: it is still there"
            if errors and isinstance(errors[0][1], OSError):
                path, e = errors[0]
                reason = f"{path}: {e.strerror or e}"
            raise CLIError(f"cannot delete node {name}: {reason}")
        self._forget_default(name)

    def _forget_default(self, name: str) -> None:
        from . import home as h

        try:
            if h.read_config(self.home).get("default_node") == name:
                rest = self.names()
                self.set_default(rest[0] if rest else None)
        except CLIError:
            pass  # a configuration that cannot be read or written: the node is gone anyway


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _without_log_prefix(line: str) -> str:
    """
    A log line without its time stamp and source
    (C{2024-01-01T00:00:00+0000 [stderr#error] OSError: ...}).
    """
    head, sep, rest = line.partition("] ")
    if sep and " [" in head and head.split(" [", 1)[0][:4].isdigit():
        return rest
    return line


def _ockam_reason(line: str) -> Optional[str]:
    """
    The reason in a line C{ockam: REASON}, or in a log line whose message is
    that (C{TIME [ockamtw.tap#critical] ockam: REASON}).
    """
    if line.startswith("ockam: "):
        return line[len("ockam: ") :]
    marker = "] ockam: "
    if marker in line:
        return line.split(marker, 1)[1]
    return None


class _Process:
    """
    One process to signal and wait for: through a pidfd where there are
    pidfds (Linux 5.3+), so a signal never reaches a later process that got
    the same pid; else by pid, checking before each signal that the pid is
    still the node's.
    """

    def __init__(self, pid: int, check=None) -> None:
        self.pid = pid
        self.fd: Optional[int] = None
        self._directory: Optional[str] = None
        #: C{check(pid)}: whether the process is still the one meant (by
        #: default: the node of the directory given to L{wait})
        self._check = check
        opener = getattr(os, "pidfd_open", None)
        if opener is not None and hasattr(signal, "pidfd_send_signal"):
            try:
                self.fd = opener(pid)
            except OSError:
                self.fd = None

    def __enter__(self) -> "_Process":
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def signal(self, signum: int) -> bool:
        """
        Send C{signum}; C{False} if the process is gone.
        """
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signum)
            elif self._directory is None or self._is_it(self._directory):
                os.kill(self.pid, signum)
            else:
                return False
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float, directory: str) -> bool:
        """
        Wait up to C{timeout} seconds for the process to end; whether it did.
        """
        self._directory = directory
        deadline = time.monotonic() + timeout
        while True:
            if self._gone(directory):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.fd is not None:
                poller = select.poll()
                poller.register(self.fd, select.POLLIN)
                poller.poll(min(left, 1.0) * 1000)
            else:
                time.sleep(min(left, 0.02))

    def _gone(self, directory: str) -> bool:
        if self.fd is not None:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            if poller.poll(0):  # readable: the process has exited
                return True
            return not st.pid_alive(self.pid)  # a zombie: exited, not reaped
        return not st.pid_alive(self.pid) or not self._is_it(directory)

    def _is_it(self, directory: str) -> bool:
        if self._check is not None:
            return self._check(self.pid)
        return st.is_node_process(self.pid, directory)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class PipeTail:
    """
    What a starting node writes on its standard error (a pipe), read
    without blocking; the last 64 KiB are kept.
    """

    LIMIT = 64 * 1024

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.data = b""
        if pipe is not None:
            os.set_blocking(pipe.fileno(), False)

    def read(self) -> None:
        if self.pipe is None or self.pipe.closed:
            return
        while True:
            try:
                chunk = os.read(self.pipe.fileno(), 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.data = (self.data + chunk)[-self.LIMIT :]

    def close(self) -> None:
        if self.pipe is not None and not self.pipe.closed:
            self.pipe.close()


def end_process(proc) -> None:
    """
    Stop a node process this command started (SIGTERM, then SIGKILL after
    5 s) and reap it.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
