"""
The PostgreSQL server of the tests: one per test process, started the first
time a test asks for a database (L{database}) and stopped when the process
exits; each test gets a database of its own on it.

The server runs from PostgreSQL's own binaries (C{initdb}, C{pg_ctl},
C{postgres}) found in C{PATH}, C{/usr/local/bin} or
C{/usr/lib/postgresql/*/bin} (where Debian's C{postgresql} package puts
them; C{.ci/run} installs it when C{python3 tests/pgserver.py} finds none).  A missing server is an
error, never a skipped test.  It lives in a temporary directory and listens
only on a UNIX socket there (no TCP port to collide with another run); as
root it runs as the C{postgres} user (C{nobody} if there is none), since
PostgreSQL refuses to run as root (through C{setpriv}; and where
C{/dev/null} is closed to other users, as in some containers, in a mount
namespace of its own where a usable C{/dev/null} is bound over it).  Durability is off (C{fsync},
C{synchronous_commit}, C{full_page_writes}): the tests want speed, and
nothing they write must outlive them.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import sys
from typing import List, Optional

#: Where the server binaries are looked for, in order (after C{PATH}).
SEARCH = ["/usr/local/bin"]
DEBIAN = "/usr/lib/postgresql/*/bin"

_NEEDED = ("initdb", "pg_ctl", "postgres")


class PostgresMissing(AssertionError):
    """
    No PostgreSQL server binaries: the PostgreSQL tests fail (they never
    skip).
    """


def _version(path: str):
    try:
        return int(path.split("/")[-2])
    except (ValueError, IndexError):
        return 0


def binaries() -> str:
    """
    The directory holding C{initdb}, C{pg_ctl} and C{postgres}.
    """
    places: List[str] = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        places.append(os.path.dirname(os.path.realpath(pg_ctl)))
    places += SEARCH
    places += sorted(glob.glob(DEBIAN), key=_version, reverse=True)
    for place in places:
        if all(os.access(os.path.join(place, name), os.X_OK) for name in _NEEDED):
            return place
    raise PostgresMissing(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in PATH, /usr/local/bin or "
        f"{DEBIAN}: install them (apt-get install postgresql; .ci/run does)"
    )


class Server:
    """
    A PostgreSQL server in a temporary directory (or C{directory}, made
    here), on a UNIX socket there.  (The benchmarks run one too:
    L{benchmarks.orchestrator}.)
    """

    def __init__(self, directory: Optional[str] = None) -> None:
        self.bin = binaries()
        if directory is None:
            directory = tempfile.mkdtemp(prefix="ockamtw-pg-")
        else:
            os.makedirs(directory, mode=0o700)
        self.directory = directory
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "server.log")
        self._prefix: List[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                user = pwd.getpwnam("nobody")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
            if not os.stat("/dev/null").st_mode & 0o002:
                null = os.path.join(self.directory, "null")
                os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
                os.chmod(null, 0o666)
                self._prefix = [
                    "unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f'mount --bind {null} /dev/null && exec "$@"', "sh",
                ] + self._prefix
        self._names = itertools.count(1)
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
        self.start()

    def _run(self, program: str, *args: str) -> str:
        argv = [os.path.join(self.bin, program), *args]
        result = subprocess.run(
            self._prefix + argv, cwd=self.directory, capture_output=True, text=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
        if result.returncode != 0:
            tail = self._log_tail()
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr or result.stdout}{tail}")
        return result.stdout

    def _log_tail(self) -> str:
        try:
            with open(self.log) as f:
                return "\nserver log:\n" + "".join(f.readlines()[-20:])
        except OSError:
            return ""

    @property
    def options(self) -> str:
        return (
            f"-k {self.directory} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB"
        )

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", self.options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-w", "-t", "60", "-m", mode, "stop")

    def stop_in_thread(self, mode: str = "fast"):
        """
        L{stop} without blocking the reactor: a Deferred.
        """
        from twisted.internet import threads

        return threads.deferToThread(self.stop, mode)

    def start_in_thread(self):
        from twisted.internet import threads

        return threads.deferToThread(self.start)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.directory}"

    def create_database(self) -> str:
        """
        A new empty database; its URL.
        """
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.split("/")[3].split("?")[0]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        try:
            self.stop("immediate")
        except AssertionError:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


_server: Optional[Server] = None


def server() -> Server:
    """
    This process's server (started now if it is not yet).
    """
    global _server
    if _server is None:
        _server = Server()
        atexit.register(_server.close)
    return _server


def database(testcase) -> str:
    """
    The URL of a new database for C{testcase}, dropped at its cleanup (after
    the cleanups added later, which close what uses it).
    """
    from twisted.internet import threads

    s = server()
    url = s.create_database()
    testcase.addCleanup(lambda: threads.deferToThread(s.drop_database, url))
    return url


if __name__ == "__main__":
    # `python3 tests/pgserver.py`: whether the tests will find PostgreSQL's
    # server binaries (exit status 0, and where), or not (1, and what to
    # install).  .ci/run asks this, with the system's python3 (standard
    # library only), before it installs what the tests need.
    try:
        print(binaries())
    except PostgresMissing as e:
        print(e, file=sys.stderr)
        sys.exit(1)
