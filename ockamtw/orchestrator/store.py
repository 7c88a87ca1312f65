"""
The Orchestrator's database: SQLite (a file in the data directory) by
default, PostgreSQL for several instances, both through
C{twisted.enterprise.adbapi}.

The SQL is written once, with C{?} placeholders and only what both engines
run unchanged (C{INSERT ... ON CONFLICT ... DO UPDATE ... RETURNING},
TEXT for JSON, REAL epoch seconds, BLOB/BYTEA for bytes); L{Store} turns
C{?} into C{%s} for psycopg.  The schema is versioned: L{MIGRATIONS} are
applied in order at start, inside one transaction (on PostgreSQL under an
advisory lock, so that instances starting together run them once).  On
PostgreSQL C{REAL} becomes C{DOUBLE PRECISION} (its C{REAL} has 24 bits:
epoch seconds in it are 128 s apart) and C{BLOB} becomes C{BYTEA}.

Instances sharing a PostgreSQL database share everything here; which
instance serves which project is a lease (L{Store.lease_tick},
L{Store.claim}), timed by the database's clock so that the hosts' clocks
need not agree.

A lost connection (a database restart, a network cut) is survived:
L{_Pool} drops every connection of the pool once one is found broken and
reconnects on next use; what the caller marks idempotent (reads, upserts,
lease renewals) is run again, a few times with short pauses; anything else
is run again only when it surely never reached the database (its connection
failed before it began, checked with a probe), and otherwise fails with
L{StoreUnavailable}: a redeemed code or a revocation is never counted twice.

Secrets (project and authority private keys) are stored encrypted by the
caller (L{ockamtw.orchestrator.secrets}); tokens and enrollment codes only
as SHA-256 hashes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..errors import OckamError

log = Logger(namespace="ockamtw.orchestrator.store")


class StoreError(OckamError):
    """
    A database that cannot be used (a bad URL, a failed migration).
    """


class StoreUnavailable(StoreError):
    """
    The database cannot be reached now (it restarted, or the network to it
    is cut).  C{sent}: whether the work may have reached it (then it may
    have been done, and is not run again unless idempotent).
    """

    def __init__(self, message: str, sent: bool = True) -> None:
        StoreError.__init__(self, message)
        self.sent = sent


class Conflict(OckamError):
    """
    A row that would duplicate a unique name.
    """


class NoFreePorts(Conflict):
    """
    Every port of C{--project-ports} is taken.
    """


#: The advisory lock key under which PostgreSQL migrations (and the first
#: start's bootstrap token) are made, one instance at a time.
_MIGRATION_LOCK = 0x6F636B61  # "ocka"
#: The advisory lock key under which a project's ports are chosen (two
#: instances creating projects at once must not choose the same ones).
_PORTS_LOCK = 0x6F636B62

#: Seconds between the attempts of an interaction whose connection was lost.
RETRY_DELAYS = (0.05, 0.25, 0.5, 1.0)

_TIMESTAMPS = {
    "tokens": ("created_at", "expires_at", "revoked_at", "last_used"),
    "challenges": ("expires_at",),
    "identities": ("enrolled_at",),
    "spaces": ("created_at",),
    "projects": ("created_at",),
    "members": ("added_at", "revoked_at"),
    "tickets": ("expires_at", "created_at"),
    "relays": ("created_at", "last_registered_at"),
    "project_owner": ("lease_until",),  # since, renewed_at: made DOUBLE PRECISION by migration 3
    "instances": ("started_at", "last_seen"),
}

#: Numbered migrations; each is a list of statements.  Never edit a
#: released one: add the next.
MIGRATIONS: List[List[str]] = [
    # 1: the first schema
    [
        """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,
            scope TEXT NOT NULL,
            label TEXT NOT NULL,
            identifier TEXT,
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL,
            last_used REAL
        )""",
        """CREATE TABLE challenges (
            nonce TEXT PRIMARY KEY,
            expires_at REAL NOT NULL
        )""",
        """CREATE TABLE identities (
            identifier TEXT PRIMARY KEY,
            export BLOB NOT NULL,
            enrolled_at REAL NOT NULL
        )""",
        """CREATE TABLE spaces (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE space_users (
            space_id TEXT NOT NULL,
            identifier TEXT NOT NULL,
            PRIMARY KEY (space_id, identifier)
        )""",
        """CREATE TABLE projects (
            id TEXT PRIMARY KEY,
            space_id TEXT NOT NULL,
            name TEXT NOT NULL UNIQUE,
            admin_identifier TEXT,
            project_port INTEGER NOT NULL,
            authority_port INTEGER NOT NULL,
            project_identity BLOB NOT NULL,
            project_secret BLOB NOT NULL,
            authority_identity BLOB NOT NULL,
            authority_secret BLOB NOT NULL,
            project_credential BLOB,
            state TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE members (
            project_id TEXT NOT NULL,
            identifier TEXT NOT NULL,
            attributes TEXT NOT NULL,
            added_by TEXT,
            added_at REAL NOT NULL,
            revoked_at REAL,
            PRIMARY KEY (project_id, identifier)
        )""",
        """CREATE TABLE tickets (
            code_hash TEXT PRIMARY KEY,
            project_id TEXT NOT NULL,
            attributes TEXT NOT NULL,
            uses_left INTEGER NOT NULL,
            expires_at REAL NOT NULL,
            created_by TEXT,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE relays (
            project_id TEXT NOT NULL,
            name TEXT NOT NULL,
            owner TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_registered_at REAL NOT NULL,
            PRIMARY KEY (project_id, name)
        )""",
        """CREATE TABLE project_owner (
            project_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            lease_until REAL NOT NULL
        )""",
        """CREATE TABLE instances (
            instance_id TEXT PRIMARY KEY,
            http_url TEXT,
            advertise_host TEXT,
            started_at REAL NOT NULL,
            last_seen REAL NOT NULL
        )""",
    ],
    # 2: several instances on one database
    [
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # project.json names the host it was made with, whichever instance
        # answers (NULL: the answering instance's --advertise-host)
        "ALTER TABLE projects ADD COLUMN advertise_host TEXT",
        "CREATE INDEX project_owner_owner ON project_owner (owner)",
    ]
    # Databases made before REAL became DOUBLE PRECISION on PostgreSQL.
    + [
        ("postgresql", f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {c} TYPE DOUBLE PRECISION" for c in columns))
        for table, columns in _TIMESTAMPS.items()
    ],
    # 3: when a lease was taken by its owner, and last renewed (for
    # `ockam orchestrator status`)
    [
        "ALTER TABLE project_owner ADD COLUMN since REAL",
        "ALTER TABLE project_owner ADD COLUMN renewed_at REAL",
    ],
]


def _dialect(statement: str, postgres: bool) -> str:
    if not postgres:
        return statement
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", re.sub(r"\bBLOB\b", "BYTEA", statement))


def _sqlite_open(conn) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")


def _one_line(error: BaseException) -> str:
    """
    An error in one line: libpq's lines (a reason, then a hint such as
    "Is the server running locally ...?") joined by "; ", runs of blanks
    made one, at most 200 characters.
    """
    lines = (" ".join(line.split()) for line in str(error).splitlines())
    text = "; ".join(line for line in lines if line) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class _Pool(adbapi.ConnectionPool):
    """
    adbapi's pool (one connection per thread of its thread pool), where a
    lost connection is no traceback in the log but a L{StoreUnavailable},
    and makes the pool drop every connection it holds (each thread closes
    its own on its next use): after a database restart they are all dead.

    C{_runInteraction(..., _probe=True)} first runs C{SELECT 1}: a
    connection found dead then has surely not run the interaction.
    """

    def __init__(self, *args, **kw) -> None:
        adbapi.ConnectionPool.__init__(self, *args, **kw)
        self._generation = 0
        self._born: Dict[int, int] = {}
        self._lock = threading.Lock()

    def connect(self):
        tid = self.threadID()
        with self._lock:
            conn = self.connections.get(tid)
            stale = conn is not None and self._born.get(tid, -1) < self._generation
            if stale:
                del self.connections[tid]
        if stale:
            _close_quietly(conn)
            conn = None
        if conn is None:
            generation = self._generation
            conn = self.dbapi.connect(*self.connargs, **self.connkw)
            if self.openfun is not None:
                self.openfun(conn)
            with self._lock:
                self.connections[tid] = conn
                self._born[tid] = generation
        return conn

    def _lost(self, conn) -> None:
        """
        C{conn} (this thread's) is dead: close it, and every other at its
        thread's next use.
        """
        tid = self.threadID()
        with self._lock:
            self._generation += 1
            if conn is not None and self.connections.get(tid) is conn:
                del self.connections[tid]
        if conn is not None:
            _close_quietly(conn)

    def _broken(self, conn) -> bool:
        if conn is None:
            return True
        if getattr(conn, "broken", False) or getattr(conn, "closed", False):
            return True
        return False

    #: How many times an interaction is run when the database rolls its
    #: transaction back for a concurrent one (see L{_rolled_back}).
    attempts = 3

    def _runInteraction(self, interaction, *args, **kw):
        probe = kw.pop("_probe", False)
        for attempt in range(1, self.attempts + 1):
            try:
                return self._run_once(interaction, probe, *args, **kw)
            except _RolledBack as e:
                if attempt == self.attempts:
                    raise StoreUnavailable(
                        f"the database gave up the transaction {attempt} times in a row: {e}", sent=True
                    ) from None
                probe = False
                time.sleep(0.01 * attempt)  # a database thread of the pool, not the reactor's

    def _run_once(self, interaction, probe: bool, *args, **kw):
        errors = getattr(self.dbapi, "Error", Exception)
        conn = None
        try:
            conn = self.connect()
            cursor = conn.cursor()
            if probe:
                cursor.execute(self.good_sql)
                cursor.fetchall()
        except errors as e:
            self._lost(conn)
            raise StoreUnavailable(f"the database is unreachable: {_one_line(e)}", sent=False) from None
        try:
            result = interaction(cursor, *args, **kw)
            cursor.close()
            conn.commit()
            return result
        except BaseException as e:
            try:
                conn.rollback()
            except errors:
                self._lost(conn)
            else:
                if isinstance(e, errors) and _rolled_back(e) and not self._broken(conn):
                    # Nothing of it was committed: running it again counts nothing twice.
                    raise _RolledBack(_one_line(e)) from None
                if not (isinstance(e, errors) and self._broken(conn)):
                    raise
                self._lost(conn)
            if isinstance(e, errors):
                raise StoreUnavailable(f"the database connection was lost: {_one_line(e)}", sent=True) from None
            raise


class _RolledBack(Exception):
    """
    The database rolled an interaction's transaction back because of a
    concurrent one (L{_rolled_back}); it may run again.
    """


def _rolled_back(error: BaseException) -> bool:
    """
    Whether C{error} is PostgreSQL's "transaction rollback" class (SQLSTATE
    40: a serialization failure, a deadlock detected): the server undid the
    whole transaction because another one ran at the same time, and says
    that running it again is the remedy.
    """
    state = getattr(error, "sqlstate", None)
    return isinstance(state, str) and state.startswith("40")


def _close_quietly(conn) -> None:
    try:
        conn.close()
    except Exception:
        pass


class Store:
    """
    The database of one Orchestrator instance.

    @param db: a SQLite file path, or a C{postgresql://} URL.
    @param clock: for timestamps (C{seconds()}); the reactor by default.
    """

    def __init__(self, db: str, clock=None) -> None:
        self.db = db
        self.postgres = db.startswith(("postgresql://", "postgres://"))
        self._clock = clock
        self.pool: Optional[adbapi.ConnectionPool] = None
        #: pauses between attempts of an interaction whose connection was lost
        self.retry_delays = RETRY_DELAYS
        #: retries waiting for their turn (cancelled by L{close})
        self._waiting: set = set()

    # --- lifecycle ---------------------------------------------------------------------

    def open(self) -> Deferred:
        """
        Open the pool and bring the schema up to date; fires with the schema
        version.
        """
        if self.postgres:
            if importlib.util.find_spec("psycopg") is None:
                raise StoreError("PostgreSQL needs psycopg (pip install 'psycopg[binary]')")
            extra = {} if "connect_timeout" in self.db else {"connect_timeout": 10}
            self.pool = _Pool(
                "psycopg", self.db, cp_min=1, cp_max=5, application_name="ockamtw-orchestrator",
                cp_reactor=self._reactor(), **extra,
            )
        else:
            directory = os.path.dirname(os.path.abspath(self.db))
            if not os.path.isdir(directory):
                raise StoreError(f"no directory for the database: {directory}")
            self.pool = _Pool(
                "sqlite3", self.db, check_same_thread=False, cp_min=1, cp_max=1, cp_openfun=_sqlite_open,
                cp_reactor=self._reactor(),
            )
        self.pool.start()
        return self.run(self._migrate, idempotent=True)

    def _reactor(self):
        if self._clock is not None and hasattr(self._clock, "callFromThread"):
            return self._clock
        from twisted.internet import reactor

        return reactor

    def close(self) -> None:
        for d in list(self._waiting):
            d.cancel()
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.close()

    def now(self) -> float:
        if self._clock is not None:
            return self._clock.seconds()
        return time.time()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _exclusive(self, c, key: int) -> None:
        """
        Make the rest of the transaction C{c} run alone among those that
        call this with C{key}: PostgreSQL's advisory transaction lock;
        SQLite's write lock, taken now (C{BEGIN IMMEDIATE}, for every
        key).  For a read that decides a write.
        """
        if self.postgres:
            c.execute("SELECT pg_advisory_xact_lock(?)", (key,))
        else:
            c.execute("BEGIN IMMEDIATE")

    def _migrate(self, txn) -> int:
        # Instances starting together migrate one at a time.
        self._exclusive(txn, _MIGRATION_LOCK)
        txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        txn.execute("SELECT version FROM schema_version")
        row = txn.fetchone()
        version = row[0] if row else 0
        if row is None:
            txn.execute("INSERT INTO schema_version (version) VALUES (?)", (0,))
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database's schema (version {version}) is newer than this ockamtw's ({len(MIGRATIONS)})"
            )
        for number, statements in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            for statement in statements:
                if isinstance(statement, tuple):
                    dialect, statement = statement
                    if dialect != ("postgresql" if self.postgres else "sqlite"):
                        continue
                txn.execute(_dialect(statement, self.postgres))
            txn.execute("UPDATE schema_version SET version = ?", (number,))
            version = number
            log.info("database schema at version {version}", version=version)
        return version

    # --- running SQL -------------------------------------------------------------------

    def run(self, f: Callable, *args, idempotent: bool = False) -> Deferred:
        """
        Run C{f(txn, *args)} in a transaction; C{txn.execute} takes C{?}
        placeholders on both engines.

        When the connection is lost, C{f} is run again (after short pauses)
        if it is C{idempotent} (running it twice does what running it once
        does), or else only if it surely never reached the database;
        otherwise, and when the database stays away, this fails with
        L{StoreUnavailable}.
        """
        return Deferred.fromCoroutine(self._run(f, args, idempotent))

    async def _run(self, f: Callable, args, idempotent: bool):
        store = self

        def interaction(txn):
            return f(_Cursor(txn, store), *args)

        attempt = 0
        while True:
            if self.pool is None:
                raise StoreError("the database is closed")
            try:
                return await self.pool.runInteraction(interaction, _probe=self.postgres and not idempotent)
            except StoreUnavailable as e:
                if (e.sent and not idempotent) or attempt >= len(self.retry_delays):
                    raise
                delay = self.retry_delays[attempt]
                attempt += 1
                log.info("database: {error}; trying again in {delay} s", error=str(e), delay=delay)
                d = deferLater(self._reactor(), delay, lambda: None)
                self._waiting.add(d)
                try:
                    await d
                except CancelledError:
                    raise StoreError("the database is closed") from None
                finally:
                    self._waiting.discard(d)

    def query(self, sql: str, *params) -> Deferred:
        """
        Rows of one SELECT, as tuples (run again if the connection is lost).
        """

        def q(c):
            c.execute(sql, params)
            return c.fetchall()

        return self.run(q, idempotent=True)

    def _db_now(self, c) -> float:
        """
        The database's time (PostgreSQL's clock, which every instance
        shares), or this instance's (SQLite).
        """
        if self.postgres:
            c.execute("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)")
            return float(c.fetchone()[0])
        return self.now()

    # --- tokens ---------------------------------------------------------------------------

    def add_token(self, token_hash: str, scope: str, label: str, expires_at: Optional[float] = None) -> Deferred:
        return self.run(
            lambda c: c.execute(
                "INSERT INTO tokens (token_hash, scope, label, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (token_hash, scope, label, self.now(), expires_at),
            )
        )

    def token(self, token_hash: str) -> Deferred:
        """
        The token's row as a dict (scope, label, identifier, expires_at,
        revoked_at), or C{None}.
        """

        def f(c):
            c.execute(
                "SELECT scope, label, identifier, expires_at, revoked_at FROM tokens WHERE token_hash = ?",
                (token_hash,),
            )
            row = c.fetchone()
            if row is None:
                return None
            c.execute("UPDATE tokens SET last_used = ? WHERE token_hash = ?", (self.now(), token_hash))
            return dict(zip(("scope", "label", "identifier", "expires_at", "revoked_at"), row))

        return self.run(f, idempotent=True)

    def bind_token(self, token_hash: str, identifier: str) -> Deferred:
        """
        Record the identity that enrolled with a token (once: a token
        already bound to another identity is not rebound).  Fires with the
        identifier it is bound to.
        """

        def f(c):
            c.execute(
                "UPDATE tokens SET identifier = ? WHERE token_hash = ? AND (identifier IS NULL OR identifier = ?)",
                (identifier, token_hash, identifier),
            )
            c.execute("SELECT identifier FROM tokens WHERE token_hash = ?", (token_hash,))
            row = c.fetchone()
            return row[0] if row else None

        return self.run(f, idempotent=True)

    def add_bootstrap_token(self, token_hash: str) -> Deferred:
        """
        Add the administrator's first token if the database has no token
        yet (once, however many instances start at once); fires with
        whether it was added.
        """

        def f(c):
            self._exclusive(c, _MIGRATION_LOCK)
            c.execute("SELECT COUNT(*) FROM tokens")
            if c.fetchone()[0]:
                return False
            c.execute(
                "INSERT INTO tokens (token_hash, scope, label, created_at) VALUES (?, 'admin', 'bootstrap', ?)",
                (token_hash, self.now()),
            )
            return True

        return self.run(f)

    # --- meta ------------------------------------------------------------------------------

    def meta(self, name: str) -> Deferred:
        def f(c):
            c.execute("SELECT value FROM meta WHERE name = ?", (name,))
            row = c.fetchone()
            return None if row is None else row[0]

        return self.run(f, idempotent=True)

    def set_meta_once(self, name: str, value: str) -> Deferred:
        """
        Set C{name} unless it is set; fires with its value.
        """

        def f(c):
            c.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, value))
            c.execute("SELECT value FROM meta WHERE name = ?", (name,))
            return c.fetchone()[0]

        return self.run(f, idempotent=True)

    # --- challenges ------------------------------------------------------------------------

    def add_challenge(self, nonce: str, ttl: float) -> Deferred:
        now = self.now()

        def f(c):
            c.execute("DELETE FROM challenges WHERE expires_at < ?", (now,))
            c.execute("INSERT INTO challenges (nonce, expires_at) VALUES (?, ?)", (nonce, now + ttl))

        return self.run(f)

    def take_challenge(self, nonce: str) -> Deferred:
        """
        Whether C{nonce} was issued and has not expired; it is used up
        either way.
        """
        now = self.now()

        def f(c):
            c.execute("DELETE FROM challenges WHERE nonce = ? RETURNING expires_at", (nonce,))
            row = c.fetchone()
            return row is not None and row[0] >= now

        return self.run(f)

    # --- identities, spaces, projects -------------------------------------------------------

    def add_identity(self, identifier: str, export: bytes) -> Deferred:
        return self.run(
            lambda c: c.execute(
                "INSERT INTO identities (identifier, export, enrolled_at) VALUES (?, ?, ?) "
                "ON CONFLICT (identifier) DO NOTHING",
                (identifier, export, self.now()),
            ),
            idempotent=True,
        )

    def add_space(self, space_id: str, name: str, users: List[str]) -> Deferred:
        def f(c):
            c.execute("SELECT id FROM spaces WHERE name = ?", (name,))
            if c.fetchone() is not None:
                raise Conflict(f"a space named {name!r} exists")
            c.execute(
                # Any unique key (the name, the id): a row made meanwhile through another
                # instance is a conflict, never a raw error of the database.
                "INSERT INTO spaces (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (space_id, name, self.now()),
            )
            if c.rowcount == 0:  # made meanwhile through another instance
                raise Conflict(f"a space named {name!r} exists")
            for user in users:
                c.execute("INSERT INTO space_users (space_id, identifier) VALUES (?, ?)", (space_id, user))

        return self.run(f)

    def spaces(self) -> Deferred:
        def f(c):
            c.execute("SELECT id, name FROM spaces ORDER BY created_at, name")
            out = []
            for space_id, name in c.fetchall():
                c.execute("SELECT identifier FROM space_users WHERE space_id = ? ORDER BY identifier", (space_id,))
                out.append({"id": space_id, "name": name, "users": [r[0] for r in c.fetchall()]})
            return out

        return self.run(f, idempotent=True)

    def delete_space(self, space_id: str) -> Deferred:
        def f(c):
            c.execute("SELECT COUNT(*) FROM projects WHERE space_id = ?", (space_id,))
            if c.fetchone()[0]:
                raise Conflict("the space still has projects: delete them first")
            c.execute("DELETE FROM space_users WHERE space_id = ?", (space_id,))
            c.execute("DELETE FROM spaces WHERE id = ?", (space_id,))
            return c.rowcount

        return self.run(f, idempotent=True)

    _PROJECT_COLUMNS = (
        "id", "space_id", "name", "admin_identifier", "project_port", "authority_port",
        "project_identity", "project_secret", "authority_identity", "authority_secret",
        "project_credential", "state", "created_at", "advertise_host",
    )

    def add_project(self, row: Dict[str, Any], ports: Optional[Tuple[int, int]] = None) -> Deferred:
        """
        Add a project; with C{ports} (a range), its two ports are chosen
        here, free ones of the range (the row's are set), one creation at a
        time across instances.  Fires with the row.
        """
        columns = [k for k in self._PROJECT_COLUMNS if k in row]

        def f(c):
            if ports is not None:
                self._exclusive(c, _PORTS_LOCK)
                c.execute("SELECT project_port, authority_port FROM projects")
                used = {p for r in c.fetchall() for p in r}
                low, high = ports
                free = [p for p in range(low, high + 1) if p not in used]
                if len(free) < 2:
                    raise NoFreePorts(f"no free ports left in --project-ports {low}-{high}")
                row["project_port"], row["authority_port"] = free[0], free[1]
            c.execute("SELECT id FROM projects WHERE name = ?", (row["name"],))
            if c.fetchone() is not None:
                raise Conflict(f"a project named {row['name']!r} exists")
            c.execute(
                f"INSERT INTO projects ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
                "ON CONFLICT DO NOTHING",  # any unique key, as for spaces
                tuple(row[k] for k in columns),
            )
            if c.rowcount == 0:  # made meanwhile through another instance
                raise Conflict(f"a project named {row['name']!r} exists")
            return row

        return self.run(f)

    def projects(self) -> Deferred:
        """
        Every project row, as dicts, oldest first; C{served_by} is the
        instance whose lease on it is live (C{None}: no instance serves it
        now).
        """

        def f(c):
            now = self._db_now(c)
            c.execute("SELECT project_id, owner FROM project_owner WHERE lease_until >= ?", (now,))
            owners = dict(c.fetchall())
            c.execute(f"SELECT {', '.join(self._PROJECT_COLUMNS)} FROM projects ORDER BY created_at, name")
            rows = [_project_row(self._PROJECT_COLUMNS, r) for r in c.fetchall()]
            for row in rows:
                row["served_by"] = owners.get(row["id"])
            return rows

        return self.run(f, idempotent=True)

    def project(self, project_id: str) -> Deferred:
        """
        One project's row, or C{None}.
        """

        def f(c):
            c.execute(f"SELECT {', '.join(self._PROJECT_COLUMNS)} FROM projects WHERE id = ?", (project_id,))
            row = c.fetchone()
            return None if row is None else _project_row(self._PROJECT_COLUMNS, row)

        return self.run(f, idempotent=True)

    def set_project(self, project_id: str, **values) -> Deferred:
        keys = sorted(values)
        return self.run(
            lambda c: c.execute(
                f"UPDATE projects SET {', '.join(k + ' = ?' for k in keys)} WHERE id = ?",
                tuple(values[k] for k in keys) + (project_id,),
            ),
            idempotent=True,
        )

    def delete_project(self, project_id: str) -> Deferred:
        def f(c):
            for table in ("members", "tickets", "relays", "project_owner"):
                c.execute(f"DELETE FROM {table} WHERE project_id = ?", (project_id,))
            c.execute("DELETE FROM projects WHERE id = ?", (project_id,))
            return c.rowcount

        return self.run(f, idempotent=True)

    def mark_deleting(self, project_id: str) -> Deferred:
        """
        Mark a project for deletion (no instance claims it from now on, its
        server stops it at its next renewal); fires with the instance whose
        lease on it is live, or C{None}.
        """

        def f(c):
            now = self._db_now(c)
            c.execute("UPDATE projects SET state = 'deleting' WHERE id = ?", (project_id,))
            c.execute("SELECT owner FROM project_owner WHERE project_id = ? AND lease_until >= ?", (project_id, now))
            row = c.fetchone()
            return None if row is None else row[0]

        return self.run(f, idempotent=True)

    def used_ports(self) -> Deferred:
        def f(c):
            c.execute("SELECT project_port, authority_port FROM projects")
            return {p for row in c.fetchall() for p in row}

        return self.run(f, idempotent=True)

    # --- leases: which instance serves which project ----------------------------------------------

    def lease_tick(self, instance_id: str, http_url: Optional[str], advertise_host: Optional[str],
                   ttl: float) -> Deferred:
        """
        An instance's turn, in one transaction on the database's clock:
        say it is alive, renew its leases (on projects not being deleted;
        a lease that ran out is not renewed: it may be claimed), and read
        what it needs to decide: fires with a L{LeaseView}.
        """

        def f(c):
            now = self._db_now(c)
            c.execute(
                "INSERT INTO instances (instance_id, http_url, advertise_host, started_at, last_seen) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (instance_id) DO UPDATE SET http_url = excluded.http_url, "
                "advertise_host = excluded.advertise_host, last_seen = excluded.last_seen",
                (instance_id, http_url, advertise_host, now, now),
            )
            c.execute(
                "UPDATE project_owner SET lease_until = ?, renewed_at = ? WHERE owner = ? AND lease_until >= ? "
                "AND project_id IN (SELECT id FROM projects WHERE state = 'ready') RETURNING project_id",
                (now + ttl, now, instance_id, now),
            )
            renewed = {r[0] for r in c.fetchall()}
            c.execute(
                "SELECT p.id, p.state, o.owner, o.lease_until FROM projects p "
                "LEFT JOIN project_owner o ON o.project_id = p.id"
            )
            projects = [LeaseRow(*r) for r in c.fetchall()]
            c.execute("SELECT COUNT(*) FROM instances WHERE last_seen >= ?", (now - ttl,))
            live = c.fetchone()[0]
            # Instances not seen for a day are forgotten.
            c.execute("DELETE FROM instances WHERE last_seen < ?", (now - 86400,))
            return LeaseView(now, renewed, projects, live)

        return self.run(f, idempotent=True)

    def claim(self, instance_id: str, project_ids: List[str], ttl: float) -> Deferred:
        """
        Take the leases of C{project_ids} that no instance holds (none, or
        run out), for projects not being deleted; fires with the set of
        those taken.  (Rows are locked in id order: instances claiming at
        once wait for each other, never deadlock; each project goes to one.)
        """
        ids = sorted(set(project_ids))

        def f(c):
            if not ids:
                return set()
            now = self._db_now(c)
            c.execute(
                "INSERT INTO project_owner (project_id, owner, lease_until, since, renewed_at) "
                f"SELECT id, ?, ?, ?, ? FROM projects WHERE state = 'ready' AND id IN ({', '.join('?' for _ in ids)}) "
                "ORDER BY id "
                "ON CONFLICT (project_id) DO UPDATE SET lease_until = excluded.lease_until, "
                "renewed_at = excluded.renewed_at, since = CASE WHEN project_owner.owner = excluded.owner "
                "THEN COALESCE(project_owner.since, excluded.since) ELSE excluded.since END, owner = excluded.owner "
                "WHERE project_owner.lease_until < ? OR project_owner.owner = excluded.owner "
                "RETURNING project_id",
                (instance_id, now + ttl, now, now, *ids, now),
            )
            return {r[0] for r in c.fetchall()}

        return self.run(f, idempotent=True)

    def release(self, instance_id: str, project_ids: Optional[List[str]] = None) -> Deferred:
        """
        Give up leases (all of C{instance_id}'s, or those of
        C{project_ids}), so that another instance may claim them at once.
        """

        def f(c):
            if project_ids is None:
                c.execute("DELETE FROM project_owner WHERE owner = ?", (instance_id,))
            elif project_ids:
                c.execute(
                    f"DELETE FROM project_owner WHERE owner = ? AND project_id IN ({', '.join('?' for _ in project_ids)})",
                    (instance_id, *project_ids),
                )

        return self.run(f, idempotent=True)

    def leave(self, instance_id: str) -> Deferred:
        """
        An instance that stops: give up all its leases and forget it, in
        one transaction, so that the others take its projects at their
        next turn (their fair share no longer counts it among the live
        instances, as it would until it had not been seen for a lease
        time).
        """

        def f(c):
            c.execute("DELETE FROM project_owner WHERE owner = ?", (instance_id,))
            c.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))

        return self.run(f, idempotent=True)

    def instances(self, ttl: float) -> Deferred:
        """
        The instances seen in the last day, oldest first: id, HTTP URL,
        advertised host, times, whether alive (seen within C{ttl}), how
        many projects each serves (C{projects}) and their leases
        (C{leases}: project id and name, C{held} seconds since the
        instance took the lease, C{age} seconds since it last renewed it,
        C{left} seconds until it runs out), all by the database's clock
        (C{now}).
        """

        def f(c):
            now = self._db_now(c)
            c.execute(
                "SELECT o.owner, o.project_id, p.name, o.since, o.renewed_at, o.lease_until FROM project_owner o "
                "JOIN projects p ON p.id = o.project_id WHERE o.lease_until >= ? ORDER BY p.name, o.project_id",
                (now,),
            )
            leases: Dict[str, List[Dict[str, Any]]] = {}
            for owner, project_id, name, since, renewed, until in c.fetchall():
                leases.setdefault(owner, []).append({
                    "project_id": project_id, "name": name,
                    "held": None if since is None else round(now - since, 3),
                    "age": None if renewed is None else round(now - renewed, 3),
                    "left": round(until - now, 3),
                })
            c.execute(
                "SELECT instance_id, http_url, advertise_host, started_at, last_seen FROM instances "
                "ORDER BY started_at, instance_id"
            )
            return [
                {"id": i, "http_url": u, "advertise_host": h, "started_at": s, "last_seen": seen,
                 "seen": round(now - seen, 3), "alive": seen >= now - ttl, "projects": len(leases.get(i, [])),
                 "leases": leases.get(i, []), "now": now}
                for i, u, h, s, seen in c.fetchall()
            ]

        return self.run(f, idempotent=True)

    def members_served_by(self, instance_id: str) -> Deferred:
        """
        The enrolled administrators (a set) and the live members of every
        project C{instance_id} holds a lease on (project id -> identifier
        -> attributes), in one read.
        """

        def f(c):
            c.execute("SELECT identifier FROM identities")
            admins = {r[0] for r in c.fetchall()}
            c.execute(
                "SELECT m.project_id, m.identifier, m.attributes FROM members m "
                "JOIN project_owner o ON o.project_id = m.project_id "
                "WHERE o.owner = ? AND m.revoked_at IS NULL",
                (instance_id,),
            )
            members: Dict[str, Dict[str, Dict[str, str]]] = {}
            for project_id, identifier, attributes in c.fetchall():
                members.setdefault(project_id, {})[identifier] = json.loads(attributes)
            return admins, members

        return self.run(f, idempotent=True)

    # --- members ----------------------------------------------------------------------------

    def put_member(self, project_id: str, identifier: str, attributes: Dict[str, str], added_by: Optional[str]) -> Deferred:
        """
        Write a member's entry, replacing any it had (and lifting a
        revocation), as Ockam 0.83's authority does.
        """
        return self.run(
            lambda c: c.execute(
                "INSERT INTO members (project_id, identifier, attributes, added_by, added_at, revoked_at) "
                "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (project_id, identifier) DO UPDATE SET "
                "attributes = excluded.attributes, added_by = excluded.added_by, "
                "added_at = excluded.added_at, revoked_at = NULL",
                (project_id, identifier, json.dumps(attributes, sort_keys=True), added_by, self.now()),
            ),
            idempotent=True,
        )

    def member(self, project_id: str, identifier: str) -> Deferred:
        """
        The member's attributes (a dict), or C{None} when absent or revoked.
        """

        def f(c):
            c.execute(
                "SELECT attributes FROM members WHERE project_id = ? AND identifier = ? AND revoked_at IS NULL",
                (project_id, identifier),
            )
            row = c.fetchone()
            return None if row is None else json.loads(row[0])

        return self.run(f, idempotent=True)

    def members(self, project_id: str) -> Deferred:
        def f(c):
            c.execute(
                "SELECT identifier, attributes, added_by, added_at, revoked_at FROM members "
                "WHERE project_id = ? ORDER BY added_at, identifier",
                (project_id,),
            )
            return [
                {"identifier": i, "attributes": json.loads(a), "added_by": b, "added_at": t, "revoked_at": r}
                for i, a, b, t, r in c.fetchall()
            ]

        return self.run(f, idempotent=True)

    def revoke_member(self, project_id: str, identifier: str) -> Deferred:
        """
        Revoke a member; fires with whether it was a (live) member.
        """
        return self.run(
            lambda c: (
                c.execute(
                    "UPDATE members SET revoked_at = ? WHERE project_id = ? AND identifier = ? AND revoked_at IS NULL",
                    (self.now(), project_id, identifier),
                ),
                c.rowcount,
            )[1]
            > 0
        )

    def revoked_since(self, since: float) -> Deferred:
        """
        (project_id, identifier) of members revoked at or after C{since}.
        """
        return self.query(
            "SELECT project_id, identifier FROM members WHERE revoked_at IS NOT NULL AND revoked_at >= ?", since
        )

    # --- enrollment codes ---------------------------------------------------------------------

    def add_ticket(self, code_hash: str, project_id: str, attributes: Dict[str, str], uses: int, expires_at: float,
                   created_by: Optional[str]) -> Deferred:
        return self.run(
            lambda c: c.execute(
                "INSERT INTO tickets (code_hash, project_id, attributes, uses_left, expires_at, created_by, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (code_hash, project_id, json.dumps(attributes, sort_keys=True), uses, expires_at, created_by, self.now()),
            )
        )

    def redeem_ticket(self, code_hash: str, project_id: str) -> Deferred:
        """
        Use a code once, atomically (one UPDATE: concurrent redemptions
        through any instance count once each); fires with
        C{(attributes, created_by)} or C{None} when unknown, used up,
        expired or of another project (the caller must not say which).
        """
        now = self.now()

        def f(c):
            c.execute(
                "UPDATE tickets SET uses_left = uses_left - 1 WHERE code_hash = ? AND project_id = ? "
                "AND uses_left > 0 AND expires_at > ? RETURNING attributes, created_by",
                (code_hash, project_id, now),
            )
            row = c.fetchone()
            return None if row is None else (json.loads(row[0]), row[1])

        return self.run(f)

    def tickets(self, project_id: str) -> Deferred:
        now = self.now()

        def f(c):
            c.execute(
                "SELECT attributes, uses_left, expires_at, created_by, created_at FROM tickets "
                "WHERE project_id = ? AND uses_left > 0 AND expires_at > ? ORDER BY created_at",
                (project_id, now),
            )
            return [
                {"attributes": json.loads(a), "uses_left": u, "expires_at": e, "created_by": b, "created_at": t}
                for a, u, e, b, t in c.fetchall()
            ]

        return self.run(f, idempotent=True)

    # --- relays ---------------------------------------------------------------------------------

    def claim_relay(self, project_id: str, name: str, owner: str) -> Deferred:
        """
        Register relay C{name} for C{owner}: fires with the name's owner
        after the call (C{owner} when it was free or already C{owner}'s,
        someone else's when taken).
        """
        now = self.now()

        def f(c):
            c.execute(
                "INSERT INTO relays (project_id, name, owner, created_at, last_registered_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (project_id, name) DO UPDATE SET last_registered_at = excluded.last_registered_at "
                "WHERE relays.owner = excluded.owner",
                (project_id, name, owner, now, now),
            )
            c.execute("SELECT owner FROM relays WHERE project_id = ? AND name = ?", (project_id, name))
            return c.fetchone()[0]

        return self.run(f, idempotent=True)

    def give_relay(self, project_id: str, name: str, owner: str) -> Deferred:
        """
        Make C{owner} the owner of C{name} (a member allowed to take it).
        """
        now = self.now()
        return self.run(
            lambda c: c.execute(
                "INSERT INTO relays (project_id, name, owner, created_at, last_registered_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (project_id, name) DO UPDATE SET owner = excluded.owner, "
                "last_registered_at = excluded.last_registered_at",
                (project_id, name, owner, now, now),
            ),
            idempotent=True,
        )

    def relays(self, project_id: str) -> Deferred:
        def f(c):
            c.execute(
                "SELECT name, owner, created_at, last_registered_at FROM relays WHERE project_id = ? ORDER BY name",
                (project_id,),
            )
            return [{"name": n, "owner": o, "created_at": t, "last_registered_at": r} for n, o, t, r in c.fetchall()]

        return self.run(f, idempotent=True)


class _Cursor:
    """
    A cursor that takes C{?} placeholders on both engines.
    """

    def __init__(self, txn, store: Store) -> None:
        self._txn = txn
        self._store = store

    def execute(self, sql: str, params: Tuple = ()) -> None:
        self._txn.execute(self._store._sql(sql), params)

    def fetchone(self):
        return self._txn.fetchone()

    def fetchall(self):
        return self._txn.fetchall()

    @property
    def rowcount(self) -> int:
        return self._txn.rowcount


class LeaseRow(NamedTuple):
    id: str
    state: str
    owner: Optional[str]
    lease_until: Optional[float]


class LeaseView(NamedTuple):
    """
    What an instance's turn read (L{Store.lease_tick}).
    """

    now: float  # the database's time
    renewed: set  # the projects whose lease it holds, renewed
    projects: List[LeaseRow]
    live: int  # instances seen within a lease time (itself included)


def _project_row(columns, row) -> Dict[str, Any]:
    out = dict(zip(columns, row))
    for key in ("project_identity", "project_secret", "authority_identity", "authority_secret", "project_credential"):
        if out.get(key) is not None:
            out[key] = bytes(out[key])
    return out


class StoreService(Service):
    """
    Opens the store (migrating it) when started and closes its pool when
    stopped, so that no database thread outlives the service.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ready: Deferred = Deferred()

    def startService(self):
        Service.startService(self)
        d = maybeDeferred(self.store.open)
        d.chainDeferred(self.ready)
        return d

    def stopService(self):
        Service.stopService(self)
        self.store.close()
