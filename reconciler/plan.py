"""The planner: desired state (config + what the primary has) against observed
state (what the replica has) in, the actions that make them agree out.

Pure: no I/O, no clock, no logging. `plan()` is what `replicator plan` prints
and exactly what `apply` executes. Running it on its own output's result
gives no actions (idempotent).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from reconciler.config.model import Config
from reconciler.secret import Secret
from reconciler.state import SERVER_DATABASES, SYSTEM_DATABASE, DatabaseInfo, ReplicationSettings, StoreLimits, UserInfo
from reconciler.status import BUSY, CONFLICT, DRIFT, IN_SYNC, MISSING, ORPHAN, UNLOADED, DatabaseStatus, Word

# from this many replica databases on, warn about the primary's session limit
SESSION_WARNING = 90

class ActionKind(Word):
    """What an action does. Its `change` is what it does to what exists:
    add, change or remove (the +, ~ or - of its description). Each kind
    has one executor in reconcile.EXECUTORS (a test checks that every kind
    has one)."""

    CREATE_FOLLOWER = "create_follower"
    GRANT = "grant"
    CREATE_REPLICA = "create_replica"
    ACTIVATE_FOLLOWER = "activate_follower"
    CHANGE_FOLLOWER_PASSWORD = "change_follower_password"
    UPDATE_REPLICA = "update_replica"
    ADOPT = "adopt"
    LOAD = "load"
    PROMOTE = "promote"
    UNLOAD = "unload"
    DELETE = "delete"

    @property
    def change(self) -> str:
        return _CHANGES[self]


_CHANGES = {ActionKind.CREATE_FOLLOWER: "add", ActionKind.GRANT: "add", ActionKind.CREATE_REPLICA: "add",
            ActionKind.ACTIVATE_FOLLOWER: "change", ActionKind.CHANGE_FOLLOWER_PASSWORD: "change",
            ActionKind.UPDATE_REPLICA: "change", ActionKind.ADOPT: "change", ActionKind.LOAD: "change",
            ActionKind.PROMOTE: "change", ActionKind.UNLOAD: "remove", ActionKind.DELETE: "remove"}


@dataclass(frozen=True)
class Observed:
    """What one pass saw: both servers' databases and the follower user."""

    primary: tuple[DatabaseInfo, ...]
    replica: tuple[DatabaseInfo, ...]
    follower: UserInfo | None            # None: no such user on the primary
    follower_password_ok: bool = True    # the configured password logs in as the follower


@dataclass(frozen=True)
class Action:
    """One change. `server` is where it happens; `requires` names the keys of
    actions that must succeed first (apply skips this one otherwise)."""

    kind: ActionKind
    server: str
    database: str | None
    description: str
    primary_database: str | None = None
    settings: ReplicationSettings | None = None
    limits: StoreLimits | None = None
    requires: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.database or ''}"

    @property
    def change(self) -> str:
        """add, change or remove: what the action does to what exists (the
        +, ~ or - of its description)."""
        return self.kind.change


@dataclass(frozen=True)
class Finding:
    """Something the plan will not change but an operator must know."""

    kind: str        # conflict | orphan | limits
    database: str
    description: str


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    findings: tuple[Finding, ...] = ()
    databases: tuple[DatabaseStatus, ...] = ()
    waiting: tuple[str, ...] = ()  # replica databases to create in later passes (max_new_replicas)
    max_new_replicas: int = 0

    @property
    def in_sync(self) -> bool:
        return not self.actions

    def lines(self) -> list[str]:
        out = [a.description for a in self.actions] + [f.description for f in self.findings]
        if self.waiting:
            shown = ", ".join(self.waiting[:5]) + (", ..." if len(self.waiting) > 5 else "")
            out.append(f"+ {len(self.waiting)} more replica databases wait for the next passes "
                       f"(reconcile.max_new_replicas: {self.max_new_replicas}): {shown}")
        return out


# ---------------------------------------------------------------------------

def desired_replication(cfg: Config, source: DatabaseInfo, password: Secret) -> ReplicationSettings:
    """The settings a replica of primary database `source` should have.
    Synchronous when the primary database waits for synchronous
    acknowledgements (syncAcks > 0: an asynchronous replica never gives
    one, and the primary's writes would wait for them), unless
    reconcile.replication.sync is `async`; `sync` only keeps replicas of
    other databases from being created (see sync_finding).
    allow_tx_discarding goes to synchronous replicas only, as the Go tool
    sends it."""
    template = cfg.reconcile.replication
    sync = source.sync_acks > 0 and cfg.reconcile.sync != "async"
    return dataclasses.replace(template, primary_database=source.name, primary_password=password,
                               sync_replication=sync, allow_tx_discarding=template.allow_tx_discarding and sync)


def sync_finding(cfg: Config, name: str, source: DatabaseInfo) -> Finding | None:
    """What an operator must know when reconcile.replication.sync and the
    primary database's own setting disagree."""
    mode = cfg.reconcile.sync
    if mode == "sync" and source.sync_acks == 0:
        return Finding("sync", name, f"! {name}: {source.name} on the primary is not a synchronous database "
                       f"(syncAcks 0) and reconcile.replication.sync is sync: no replica is created for it "
                       f"(one that exists is left following asynchronously)")
    if mode == "async" and source.sync_acks > 0:
        return Finding("sync", name, f"! {name}: {source.name} on the primary waits for {source.sync_acks} "
                       f"synchronous acknowledgement(s) per commit; this replica is asynchronous "
                       f"(reconcile.replication.sync: async) and gives none")
    return None


def replication_differences(have: ReplicationSettings, want: ReplicationSettings) -> list[str]:
    """Human-readable differences; a password shows only as 'changed'."""
    out = []
    for f in fields(ReplicationSettings):
        a, b = getattr(have, f.name), getattr(want, f.name)
        if a == b:
            continue
        if f.name == "primary_password":
            out.append("primary_password changed" if a is not None else "primary_password set")
        else:
            out.append(f"{f.name} {a!r} -> {b!r}")
    return out


def selected_databases(cfg: Config, primary: Iterable[DatabaseInfo]) -> dict[str, DatabaseInfo]:
    """Replica name -> primary database, for every primary database the config follows."""
    out = {}
    for db in sorted(primary, key=lambda d: d.name):
        if db.name == SYSTEM_DATABASE or db.name not in cfg.reconcile.databases:
            continue
        out[cfg.reconcile.replica_name(db.name)] = db
    return out


def plan(cfg: Config, observed: Observed, follower_password: Secret,
         busy: frozenset[str] = frozenset()) -> Plan:
    """What to do so that every selected primary database has a working
    replica. `follower_password` is the configured password, already read;
    databases in `busy` (a backup has them unloaded) are left alone."""
    wanted = selected_databases(cfg, observed.primary)
    replica = {d.name: d for d in observed.replica}
    # each new replica logs in to the primary and replays its whole history: bring them up in batches
    limit = cfg.reconcile.max_new_replicas
    new = [name for name in wanted if name not in replica and name not in busy]
    waiting = tuple(new[limit:]) if limit else ()
    draft = _Draft()
    follower_ready = _plan_follower(cfg, observed, wanted, waiting, draft)
    _plan_replicas(cfg, wanted, replica, waiting, busy, follower_password, follower_ready, draft)
    _plan_orphans(cfg, observed, wanted, replica, busy, draft)
    if len(wanted) >= SESSION_WARNING:
        draft.findings.append(Finding("sessions", "*", f"! {len(wanted)} replica databases follow this primary and "
                                      f"each holds a session there: make sure the primary's --max-sessions "
                                      f"(immudb's default is 100) exceeds their number plus its other clients"))
    return Plan(tuple(draft.actions), tuple(draft.findings), tuple(_with_notes(draft)), waiting, limit)


def _with_notes(draft: _Draft) -> list[DatabaseStatus]:
    """Each database's note: what an operator must know about it, else
    what the plan will do to it."""
    notes = {a.database: a.description for a in draft.actions if a.database}
    notes.update({f.database: f.description for f in draft.findings})
    return [s.with_(note=notes.get(s.name)) for s in draft.states]


@dataclass
class _Draft:
    actions: list[Action] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    states: list[DatabaseStatus] = field(default_factory=list)


def _plan_follower(cfg: Config, observed: Observed, wanted: dict[str, DatabaseInfo], waiting: tuple[str, ...],
                   draft: _Draft) -> tuple[str, ...]:
    """The follower user on the primary, before anything that logs in as
    it: created, activated, its password changed, granted Admin on each
    followed database. Returns the keys of the actions replicas need."""
    if not wanted:
        return ()
    follower = cfg.follower.username
    wanted_now = {name: src for name, src in wanted.items() if name not in waiting}
    ready: tuple[str, ...] = ()
    if observed.follower is None:
        first = next(iter(wanted_now.values())).name
        a = Action(ActionKind.CREATE_FOLLOWER, "primary", None,
                   f"+ create user {follower} on primary (Admin on {first})", primary_database=first)
        draft.actions.append(a)
        ready = (a.key,)
        granted = {first}
    else:
        granted = {d.name for d in wanted.values() if observed.follower.may_export(d.name)}
        if not observed.follower.active:
            a = Action(ActionKind.ACTIVATE_FOLLOWER, "primary", None, f"~ activate user {follower} on primary")
            draft.actions.append(a)
            ready += (a.key,)
        if not observed.follower_password_ok:
            a = Action(ActionKind.CHANGE_FOLLOWER_PASSWORD, "primary", None,
                       f"~ change password of {follower} on primary (then on every replica database)")
            draft.actions.append(a)
            ready += (a.key,)
    for source in wanted_now.values():
        if source.name not in granted:
            draft.actions.append(Action(ActionKind.GRANT, "primary", source.name,
                                        f"+ grant Admin on {source.name} to {follower} on primary",
                                        primary_database=source.name, requires=ready))
    return ready


def _plan_replicas(cfg: Config, wanted: dict[str, DatabaseInfo], replica: dict[str, DatabaseInfo],
                   waiting: tuple[str, ...], busy: frozenset[str], follower_password: Secret,
                   follower_ready: tuple[str, ...], draft: _Draft) -> None:
    """One replica database per selected primary database: created,
    adopted, updated or loaded; conflicts and smaller limits reported."""
    primary_addr = f"{cfg.reconcile.replication.primary_host}:{cfg.reconcile.replication.primary_port}"
    for name, source in wanted.items():
        want = desired_replication(cfg, source, follower_password)
        needs = follower_ready + tuple(a.key for a in draft.actions
                                       if a.kind is ActionKind.GRANT and a.database == source.name)
        have = replica.get(name)
        refusal = sync_finding(cfg, name, source)
        if refusal is not None:
            draft.findings.append(refusal)
            if cfg.reconcile.sync == "sync" and have is None:
                draft.states.append(DatabaseStatus(name, source.name, MISSING, source.tx_count, None))
                continue
        if name in waiting:
            draft.states.append(DatabaseStatus(name, source.name, MISSING, source.tx_count, None))
            continue
        if name in busy:
            draft.states.append(DatabaseStatus(name, source.name, BUSY, source.tx_count,
                                             have.tx_count if have else None))
            continue
        if have is None:
            draft.actions.append(Action(ActionKind.CREATE_REPLICA, "replica", name,
                                        f"+ create replica {name} <- {primary_addr}/{source.name}",
                                        primary_database=source.name, settings=want, limits=source.limits,
                                        requires=needs))
            draft.states.append(DatabaseStatus(name, source.name, MISSING, source.tx_count, None))
            continue
        state = IN_SYNC
        if not have.is_replica:
            if cfg.reconcile.adopt_existing:
                draft.actions.append(Action(ActionKind.ADOPT, "replica", name,
                                            f"~ adopt {name} as replica of {primary_addr}/{source.name} "
                                            f"(reconcile.adopt_existing)", primary_database=source.name,
                                            settings=want, requires=needs))
                state = DRIFT
            else:
                draft.findings.append(Finding(CONFLICT, name, f"! conflict {name}: exists on the replica and is "
                                              f"not a replica; left untouched (set reconcile.adopt_existing to "
                                              f"convert it)"))
                state = CONFLICT
        else:
            diff = replication_differences(have.replication, want)
            if diff:
                draft.actions.append(Action(ActionKind.UPDATE_REPLICA, "replica", name,
                                            f"~ update replica {name}: {', '.join(diff)}",
                                            primary_database=source.name, settings=want, requires=needs))
                state = DRIFT
            if not have.limits.accepts(source.limits):
                draft.findings.append(Finding("limits", name, f"! {name}: created with smaller limits than "
                                              f"{source.name} on the primary; transactions beyond them cannot "
                                              f"replicate (recreate the replica database)"))
        if not have.loaded and state != CONFLICT:
            draft.actions.append(Action(ActionKind.LOAD, "replica", name, f"~ load {name} (it is unloaded)"))
            state = UNLOADED if state == IN_SYNC else state
        draft.states.append(DatabaseStatus(name, source.name, state, source.tx_count, have.tx_count))


def _plan_orphans(cfg: Config, observed: Observed, wanted: dict[str, DatabaseInfo],
                  replica: dict[str, DatabaseInfo], busy: frozenset[str], draft: _Draft) -> None:
    """Replica databases of this primary whose primary database is gone:
    on_primary_removed applies. Replicas of other primaries, and of
    databases the selection would not include, are not ours to touch."""
    primary_names = {d.name for d in observed.primary}
    home = (cfg.reconcile.replication.primary_host, cfg.reconcile.replication.primary_port)
    for name, have in sorted(replica.items()):
        if name in wanted or name in SERVER_DATABASES or not have.is_replica or name in busy:
            continue
        r = have.replication
        if ((r.primary_host, r.primary_port) != home or r.primary_database in primary_names
                or r.primary_database not in cfg.reconcile.databases):
            continue
        draft.states.append(DatabaseStatus(name, r.primary_database, ORPHAN, None, have.tx_count))
        policy = cfg.reconcile.on_primary_removed
        gone = f"{r.primary_database} is gone from the primary"
        if policy == "ignore":
            draft.findings.append(Finding(ORPHAN, name, f"! orphan {name}: {gone} (on_primary_removed: ignore)"))
        elif policy == "unload" and have.loaded:
            draft.actions.append(Action(ActionKind.UNLOAD, "replica", name, f"- unload {name}: {gone}"))
        elif policy == "promote":
            draft.actions.append(Action(ActionKind.PROMOTE, "replica", name,
                                        f"~ promote {name} to a writable database: {gone}"))
        elif policy == "delete":
            draft.actions.append(Action(ActionKind.DELETE, "replica", name, f"- delete {name} and its data: {gone}"))
