"""What the servers hold, as plain values: the language shared by the admin
client (which observes and changes the servers) and the pure planner."""
from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.secret import Secret

# immudb permissions (immudb.constants): R=1, RW=2, ADMIN=254, SYS_ADMIN=255
PERMISSION_READ = 1
PERMISSION_READ_WRITE = 2
PERMISSION_ADMIN = 254
PERMISSION_SYSADMIN = 255

# every immudb server's own databases: never replicas (a replica server's defaultdb is its own),
# never orphans, and immudb cannot unload them (so backups leave them out)
SYSTEM_DATABASE = "systemdb"  # immudb's own (users, settings): never replicated
SERVER_DATABASES = frozenset({"defaultdb", SYSTEM_DATABASE})


def is_database_name(name: str) -> bool:
    """True for exactly the names immudb gives databases (v1.11.1,
    pkg/server isValidDBName, after it lowercases the requested name): 1 to
    128 bytes of UTF-8, each character a lowercase letter of any script
    (Unicode category Ll), a decimal digit of any script (Nd) or `_`. So
    `dé` and `δ1` are names; `Dé`, `a-b`, `a.b`, `..` and `中` are not.
    Archives are written and read with this one rule: a name one side
    accepted and the other refused would make archives unrestorable."""
    if not isinstance(name, str) or not 1 <= len(name.encode("utf-8", "surrogatepass")) <= 128:
        return False
    return all(c == "_" or unicodedata.category(c) in ("Ll", "Nd") for c in name)


@dataclass(frozen=True)
class ReplicationSettings:
    """A database's replication settings. For a replica, where its primary is
    and how it follows it; `replica=False` for an ordinary database.
    `primary_password` is the clear-text password immudb stores (and
    returns): a `Secret`, so it never prints."""

    replica: bool = False
    primary_database: str = ""
    primary_host: str = ""
    primary_port: int = 0
    primary_username: str = ""
    primary_password: Secret | None = None
    sync_replication: bool = False
    prefetch_tx_buffer_size: int = 0
    commit_concurrency: int = 0
    allow_tx_discarding: bool = False
    skip_integrity_check: bool = False
    wait_for_indexing: bool = False

    def source(self) -> str:
        """Where it replicates from, for messages: host:port/database as user."""
        return f"{self.primary_host}:{self.primary_port}/{self.primary_database} as {self.primary_username}"


@dataclass(frozen=True)
class StoreLimits:
    """Settings fixed when a database is created. A replica must accept every
    transaction of its primary, so it is created with the primary's values
    (immudb's store rejects a replicated transaction with more entries, a
    longer key or a longer value than its own limits)."""

    max_key_len: int = 0
    max_value_len: int = 0
    max_tx_entries: int = 0
    file_size: int = 0
    write_tx_header_version: int = 0
    embedded_values: bool | None = None

    def accepts(self, primary: StoreLimits) -> bool:
        """True when a replica with these limits can take every transaction
        of a primary with `primary`'s (zero means unknown: no objection)."""
        pairs = ((self.max_key_len, primary.max_key_len), (self.max_value_len, primary.max_value_len),
                 (self.max_tx_entries, primary.max_tx_entries))
        return all(mine == 0 or theirs == 0 or mine >= theirs for mine, theirs in pairs)


@dataclass(frozen=True)
class DatabaseInfo:
    """One database as `DatabaseListV2` reports it."""

    name: str
    loaded: bool = True
    tx_count: int = 0
    disk_size: int = 0
    sync_acks: int = 0  # synchronous replicas whose acknowledgement each commit waits for (a primary's setting)
    replication: ReplicationSettings = field(default_factory=ReplicationSettings)
    limits: StoreLimits = field(default_factory=StoreLimits)

    @property
    def is_replica(self) -> bool:
        return self.replication.replica


@dataclass(frozen=True)
class UserInfo:
    name: str
    active: bool = True
    permissions: Mapping[str, int] = field(default_factory=dict)  # database ('*' for all) -> permission

    def may_export(self, database: str) -> bool:
        """Replication needs Admin on the database on the primary (RW is refused)."""
        return max(self.permissions.get(database, 0), self.permissions.get("*", 0)) >= PERMISSION_ADMIN
