"""The cache database: its file, its schema and the migrations between versions.

SQLite in WAL mode: the updater reads while the command line writes, and a
crash never leaves half a transaction.  ``PRAGMA user_version`` holds the
schema version; each migration runs in the transaction that bumps it, and a
database newer than this code is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator

from .errors import EngineError

DB_NAME = "engine.db"

#: Writers wait this long for another process's transaction (milliseconds).
BUSY_TIMEOUT_MS = 10_000

_V1 = """
CREATE TABLE pool (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pool_id TEXT NOT NULL,
    map_version INTEGER NOT NULL,
    master_domain TEXT
);
-- OVFs by content: a push fetches the bytes it planned, whatever changes meanwhile.
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size > 0),
    data BLOB NOT NULL
);
CREATE TABLE domains (
    uuid TEXT PRIMARY KEY,
    type TEXT NOT NULL CHECK (type IN ('file', 'block')),
    location TEXT NOT NULL,  -- JSON list of paths
    status TEXT NOT NULL
);
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    token TEXT NOT NULL
);
CREATE TABLE host_domains (
    host TEXT NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,
    sd_uuid TEXT NOT NULL REFERENCES domains(uuid) ON DELETE CASCADE,
    PRIMARY KEY (host, sd_uuid)
);
CREATE TABLE entities (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('vm', 'template')),
    status INTEGER NOT NULL DEFAULT 0,
    origin INTEGER,
    db_generation INTEGER NOT NULL,
    ovf_generation INTEGER NOT NULL DEFAULT 0,
    source_digest TEXT NOT NULL REFERENCES blobs(digest),
    ovf_digest TEXT REFERENCES blobs(digest)
);
CREATE TABLE disks (
    entity_uuid TEXT NOT NULL REFERENCES entities(uuid) ON DELETE CASCADE,
    disk_uuid TEXT NOT NULL,
    sd_uuid TEXT NOT NULL REFERENCES domains(uuid),
    shareable INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    locked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (entity_uuid, disk_uuid)
);
CREATE INDEX disks_by_domain ON disks(sd_uuid);
CREATE TABLE snapshots (
    entity_uuid TEXT NOT NULL REFERENCES entities(uuid) ON DELETE CASCADE,
    uuid TEXT NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'OK',
    PRIMARY KEY (entity_uuid, uuid)
);
CREATE TABLE ovf_stores (
    sd_uuid TEXT PRIMARY KEY REFERENCES domains(uuid) ON DELETE CASCADE,
    outdated INTEGER NOT NULL DEFAULT 1,
    outdated_seq INTEGER NOT NULL DEFAULT 1,
    generation INTEGER,
    last_updated REAL,
    digest TEXT,
    tar_length INTEGER,
    host TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
-- The entities a domain's store may hold on storage (oVirt's stored_ovfs_ids).
CREATE TABLE store_entities (
    sd_uuid TEXT NOT NULL REFERENCES ovf_stores(sd_uuid) ON DELETE CASCADE,
    entity_uuid TEXT NOT NULL,
    PRIMARY KEY (sd_uuid, entity_uuid)
);
CREATE INDEX store_entities_by_entity ON store_entities(entity_uuid);
-- Deleted entities whose domains the next pass must mark outdated.
CREATE TABLE deletions (
    entity_uuid TEXT PRIMARY KEY,
    domains TEXT NOT NULL,  -- JSON list of the domains that held it
    deleted REAL NOT NULL
);
CREATE TABLE host_sync (
    host TEXT PRIMARY KEY REFERENCES hosts(name) ON DELETE CASCADE,
    pushed_version INTEGER,
    last_push REAL,
    last_resend REAL,
    last_error TEXT,
    stats TEXT,  -- JSON of the last GET /stats
    stats_time REAL
);
"""

# OVFs a domain import could not take into the cache (a disk on a domain
# this engine does not know yet, an OVF it cannot parse): kept in that
# domain's store as oVirt keeps its unregistered entities, until imported.
_V2 = """
CREATE TABLE held_ovfs (
    sd_uuid TEXT NOT NULL REFERENCES ovf_stores(sd_uuid) ON DELETE CASCADE,
    entity_uuid TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES blobs(digest),
    reason TEXT NOT NULL,
    PRIMARY KEY (sd_uuid, entity_uuid)
);
"""

# Whether this engine may replace a domain's store (Store.claimed): set
# once it imported the store or found it holding no OVF before its first
# push, so that a push whose answer was lost is not mistaken for another
# engine's store.  Stores pushed before this version have a generation.
_V3 = """
ALTER TABLE ovf_stores ADD COLUMN claimed INTEGER NOT NULL DEFAULT 0;
"""

# The status a domain had when a flow moved it into a transitional one
# (PreparingForMaintenance, Detaching, Activating), so that a flow cut
# short and run again can still put it back where it was; no row
# otherwise.  A table of its own, not a column of ``domains``: an older
# sluice-engine still running beside a migrated cache keeps adding domains.
_V4 = """
CREATE TABLE domain_flows (
    sd_uuid TEXT PRIMARY KEY REFERENCES domains(uuid) ON DELETE CASCADE,
    flow_from TEXT NOT NULL
);
"""

#: MIGRATIONS[i] brings a database from version i to i + 1.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
VERSION = len(MIGRATIONS)


class CacheError(EngineError):
    pass


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    with transaction(conn):
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > VERSION:
            raise CacheError(f"the cache {path} has schema version {current}, newer than "
                             f"this sluice-engine knows ({VERSION}); upgrade sluice-engine")
        for version in range(current, VERSION):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        if current == 0:
            conn.execute("INSERT INTO pool (id, pool_id, map_version) VALUES (1, ?, 0)",
                         (str(uuid.uuid4()),))


def connect(state_dir: str) -> sqlite3.Connection:
    """Open (creating if needed) the cache in ``state_dir``, migrated."""
    if not state_dir:
        raise CacheError("the state directory is empty; give --state-dir a directory")
    if os.path.exists(state_dir) and not os.path.isdir(state_dir):
        raise CacheError(f"the state directory {state_dir} is not a directory")
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create the state directory {state_dir}: "
                         f"{e.strerror}") from None
    path = os.path.join(state_dir, DB_NAME)
    try:
        # Autocommit: transactions are explicit (BEGIN IMMEDIATE) below.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        # It holds the hosts' tokens: owner only (the WAL files inherit the mode).
        os.chmod(path, 0o600)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL never corrupts
        # A pass over 10,000 VMs writes about 7 MB of WAL: at the default 1000
        # pages, a checkpoint (two fdatasyncs, 0.1 s under the hosts' writes)
        # ran in the middle of the pushes with the cache lock held.  16 MiB
        # of WAL leaves it to the close.  The price: a power failure can lose
        # up to 16 MiB of commits instead of 4 (never a corrupt cache; the
        # last connection to close, as a CLI command usually is, checkpoints).
        conn.execute("PRAGMA wal_autocheckpoint = 4096")
        _migrate(conn, path)
    except sqlite3.DatabaseError as e:
        raise CacheError(f"cannot open the cache {path}: {e}") from None
    except OSError as e:
        raise CacheError(f"cannot open the cache {path}: {e.strerror}") from None
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, write: bool = True) -> Iterator[sqlite3.Connection]:
    """One transaction: committed on success, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk, an I/O error):
        # a second ROLLBACK would hide that error behind its own.  A failed
        # COMMIT, though, can leave the transaction open.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
