"""
The Orchestrator's database: SQLite (a file in the data directory) by
default, PostgreSQL for several instances, both through
C{twisted.enterprise.adbapi}.

The SQL is written once, with C{?} placeholders and only what both engines
run unchanged (C{INSERT ... ON CONFLICT ... DO UPDATE ... RETURNING},
TEXT for JSON, REAL epoch seconds, BLOB/BYTEA for bytes); L{Store} turns
C{?} into C{%s} for psycopg.  The schema is versioned: L{MIGRATIONS} are
applied in order at start, inside one transaction (on PostgreSQL under an
advisory lock, so that instances starting together run them once).

Secrets (project and authority private keys) are stored encrypted by the
caller (L{ockamtw.orchestrator.secrets}); tokens and enrollment codes only
as SHA-256 hashes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from ..errors import OckamError

log = Logger(namespace="ockamtw.orchestrator.store")


class StoreError(OckamError):
    """
    A database that cannot be used (a bad URL, a failed migration).
    """


class Conflict(OckamError):
    """
    A row that would duplicate a unique name.
    """


#: The advisory lock key under which PostgreSQL migrations run.
_MIGRATION_LOCK = 0x6F636B61  # "ocka"

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
]


def _sqlite_open(conn) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")


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

    # --- lifecycle ---------------------------------------------------------------------

    def open(self) -> Deferred:
        """
        Open the pool and bring the schema up to date; fires with the schema
        version.
        """
        if self.postgres:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise StoreError("PostgreSQL needs psycopg (pip install 'psycopg[binary]')") from None
            self.pool = adbapi.ConnectionPool("psycopg", self.db, cp_min=1, cp_max=5, cp_reconnect=True)
        else:
            directory = os.path.dirname(os.path.abspath(self.db))
            if not os.path.isdir(directory):
                raise StoreError(f"no directory for the database: {directory}")
            self.pool = adbapi.ConnectionPool(
                "sqlite3", self.db, check_same_thread=False, cp_min=1, cp_max=1, cp_openfun=_sqlite_open
            )
        return self.pool.runInteraction(self._migrate)

    def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.close()

    def now(self) -> float:
        if self._clock is not None:
            return self._clock.seconds()
        return time.time()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _migrate(self, txn) -> int:
        if self.postgres:
            # Instances starting together migrate one at a time.
            txn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        txn.execute("SELECT version FROM schema_version")
        row = txn.fetchone()
        version = row[0] if row else 0
        if row is None:
            txn.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"), (0,))
        for number, statements in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            for statement in statements:
                txn.execute(statement if not self.postgres else statement.replace("BLOB", "BYTEA"))
            txn.execute(self._sql("UPDATE schema_version SET version = ?"), (number,))
            version = number
            log.info("database schema at version {version}", version=version)
        return version

    # --- running SQL -------------------------------------------------------------------

    def run(self, f: Callable, *args) -> Deferred:
        """
        Run C{f(txn, *args)} in a transaction; C{txn.execute} takes C{?}
        placeholders on both engines.
        """
        if self.pool is None:
            return Deferred.fromCoroutine(_raise(StoreError("the database is closed")))
        store = self

        def interaction(txn):
            return f(_Cursor(txn, store), *args)

        return self.pool.runInteraction(interaction)

    def query(self, sql: str, *params) -> Deferred:
        """
        Rows of one SELECT, as tuples.
        """

        def q(c):
            c.execute(sql, params)
            return c.fetchall()

        return self.run(q)

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

        return self.run(f)

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

        return self.run(f)

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
            )
        )

    def add_space(self, space_id: str, name: str, users: List[str]) -> Deferred:
        def f(c):
            c.execute("SELECT id FROM spaces WHERE name = ?", (name,))
            if c.fetchone() is not None:
                raise Conflict(f"a space named {name!r} exists")
            c.execute("INSERT INTO spaces (id, name, created_at) VALUES (?, ?, ?)", (space_id, name, self.now()))
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

        return self.run(f)

    def delete_space(self, space_id: str) -> Deferred:
        def f(c):
            c.execute("SELECT COUNT(*) FROM projects WHERE space_id = ?", (space_id,))
            if c.fetchone()[0]:
                raise Conflict("the space still has projects: delete them first")
            c.execute("DELETE FROM space_users WHERE space_id = ?", (space_id,))
            c.execute("DELETE FROM spaces WHERE id = ?", (space_id,))
            return c.rowcount

        return self.run(f)

    _PROJECT_COLUMNS = (
        "id", "space_id", "name", "admin_identifier", "project_port", "authority_port",
        "project_identity", "project_secret", "authority_identity", "authority_secret",
        "project_credential", "state", "created_at",
    )

    def add_project(self, row: Dict[str, Any]) -> Deferred:
        columns = [k for k in self._PROJECT_COLUMNS if k in row]

        def f(c):
            c.execute("SELECT id FROM projects WHERE name = ?", (row["name"],))
            if c.fetchone() is not None:
                raise Conflict(f"a project named {row['name']!r} exists")
            c.execute(
                f"INSERT INTO projects ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                tuple(row[k] for k in columns),
            )

        return self.run(f)

    def projects(self) -> Deferred:
        """
        Every project row, as dicts, oldest first.
        """

        def f(c):
            c.execute(f"SELECT {', '.join(self._PROJECT_COLUMNS)} FROM projects ORDER BY created_at, name")
            return [_project_row(self._PROJECT_COLUMNS, r) for r in c.fetchall()]

        return self.run(f)

    def set_project(self, project_id: str, **values) -> Deferred:
        keys = sorted(values)
        return self.run(
            lambda c: c.execute(
                f"UPDATE projects SET {', '.join(k + ' = ?' for k in keys)} WHERE id = ?",
                tuple(values[k] for k in keys) + (project_id,),
            )
        )

    def delete_project(self, project_id: str) -> Deferred:
        def f(c):
            for table in ("members", "tickets", "relays", "project_owner"):
                c.execute(f"DELETE FROM {table} WHERE project_id = ?", (project_id,))
            c.execute("DELETE FROM projects WHERE id = ?", (project_id,))
            return c.rowcount

        return self.run(f)

    def used_ports(self) -> Deferred:
        def f(c):
            c.execute("SELECT project_port, authority_port FROM projects")
            return {p for row in c.fetchall() for p in row}

        return self.run(f)

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
            )
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

        return self.run(f)

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

        return self.run(f)

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

        return self.run(f)

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

        return self.run(f)

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
            )
        )

    def relays(self, project_id: str) -> Deferred:
        def f(c):
            c.execute(
                "SELECT name, owner, created_at, last_registered_at FROM relays WHERE project_id = ? ORDER BY name",
                (project_id,),
            )
            return [{"name": n, "owner": o, "created_at": t, "last_registered_at": r} for n, o, t, r in c.fetchall()]

        return self.run(f)


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


def _project_row(columns, row) -> Dict[str, Any]:
    out = dict(zip(columns, row))
    for key in ("project_identity", "project_secret", "authority_identity", "authority_secret", "project_credential"):
        if out.get(key) is not None:
            out[key] = bytes(out[key])
    return out


async def _raise(error):
    raise error


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
