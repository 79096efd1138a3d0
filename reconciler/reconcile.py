"""A reconcile pass: observe both servers, plan, apply; and the memory that
passes share (per-database status, backoff, what was logged last).

Level-triggered: each pass reads the world as it is. One database failing
does not stop the others. Errors are temporary (retried on a later pass
with per-database exponential backoff) or permanent (retried only when the
config changes, the planned action changes, or after `backoff.max`).
A state change is logged once, not on every pass.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reconciler.admin import AlreadyLoaded, DatabaseClosed, ImmudbAdmin, ImmudbError, NotLoaded, Unreachable
from reconciler.config.model import Config
from reconciler.holds import Holds, backup_running
from reconciler.log import event
from reconciler.plan import Action, ActionKind, Observed, Plan, plan, selected_databases
from reconciler.secret import Secret
from reconciler.state import PERMISSION_ADMIN, SERVER_DATABASES, DatabaseInfo
from reconciler.status import DRIFT, ERROR, IN_SYNC, MISSING, UNLOADED, DatabaseStatus, moved

log = logging.getLogger(__name__)

DONE, FAILED, SKIPPED, DEFERRED = "done", "failed", "skipped", "deferred"
FOLLOWER = "(follower)"  # status key of actions on the follower user


@dataclass
class Outcome:
    action: Action
    result: str                 # done | failed | skipped | deferred
    detail: str = ""

    def line(self) -> str:
        return f"{self.action.description}: {self.result}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class PassResult:
    started: float
    finished: float = 0.0
    plan: Plan | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None    # the pass could not observe (a server down, bad credentials)

    @property
    def ok(self) -> bool:
        return self.error is None and all(o.result in (DONE, DEFERRED) for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == FAILED]


@dataclass
class _Backoff:
    failures: int
    retry_at: float
    description: str
    config_digest: str
    error: str
    at: float


def version_tuple(version: str) -> tuple[int, ...]:
    """'1.10.0' -> (1, 10, 0); parts that are not numbers end it."""
    out = []
    for part in version.lstrip("v").split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


class Reconciler:
    """Runs passes for one config; safe to call from the scheduler thread
    and the API thread (one pass at a time)."""

    def __init__(self, cfg: Config, primary: ImmudbAdmin, replica: ImmudbAdmin,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.cfg = cfg
        self.primary = primary
        self.replica = replica
        self._clock, self._wall = clock, wall
        self._pass_lock = threading.Lock()
        self._holds = Holds()  # databases a backup in this process holds
        self._backoff: dict[str, _Backoff] = {}
        self.seed_failed: set[str] = set()  # replicas whose creation over seeded files failed: not seeded again
        self._states: dict[str, DatabaseStatus] = {}
        self._last_pass_error: str | None = None
        self._replica_names: set[str] = set()  # what the replica held at the last listing
        self._replica_version: str | None = None  # asked only where a feature depends on it
        self.last_result: PassResult | None = None
        self.passes = 0
        self.closed = False  # set by close(): a pass still running is being cut short

    @classmethod
    def from_config(cls, cfg: Config) -> Reconciler:
        return cls(cfg, ImmudbAdmin.from_config("primary", cfg.primary), ImmudbAdmin.from_config("replica", cfg.replica))

    def close(self, wait: float = 0) -> None:
        """Close both connections; first wait up to `wait` seconds for a pass
        in progress to finish (one cut short is logged as interrupted)."""
        got = self._pass_lock.acquire(timeout=wait) if wait > 0 else False
        self.closed = True
        try:
            self.primary.close()
            self.replica.close()
        finally:
            if got:
                self._pass_lock.release()

    # -- backups hold databases so that no pass touches them mid-copy (a holds.Holder)
    def hold(self, database: str) -> None:
        self._holds.hold(database)

    def release(self, database: str) -> None:
        self._holds.release(database)

    @property
    def busy(self) -> frozenset[str]:
        return self._holds.busy

    # ------------------------------------------------------------------

    def follower_password(self) -> Secret:
        """The configured follower password, read now (a file may have rotated)."""
        return Secret(self.cfg.follower.password.reveal(), origin="follower.password")

    def observe(self, password: Secret, may_load: bool = False) -> Observed:
        """Two DatabaseListV2, one ListUsers and one follower login: the same
        number of RPCs whatever the number of databases. `may_load`: see
        _list_replica_loading."""
        if self.cfg.reconcile.on_primary_removed == "unload":
            self._check_unload_is_supported()
        primary_dbs = tuple(self.primary.list_databases())
        replica_dbs: Sequence[DatabaseInfo]
        try:
            replica_dbs = tuple(self.replica.list_databases())
        except DatabaseClosed as exc:
            replica_dbs = self._list_replica_loading(primary_dbs, exc, may_load)
        self._replica_names = {d.name for d in replica_dbs}
        users = {u.name: u for u in self.primary.list_users()}
        follower = users.get(self.cfg.follower.username)
        password_ok = follower is None or self.primary.check_credentials(self.cfg.follower.username, password)
        return Observed(primary_dbs, replica_dbs, follower, password_ok)

    def _check_unload_is_supported(self) -> None:
        """on_primary_removed: unload needs immudb 1.11.1 on the replica:
        before it, every listing fails while a database is unloaded (and
        loading it to list would undo the policy). Asked once."""
        if self._replica_version is None:
            self._replica_version = self.replica.version()
        if self._replica_version and version_tuple(self._replica_version) < (1, 11, 1):
            raise ImmudbError(f"replica ({self.cfg.replica.address})", "check the version",
                              f"on_primary_removed: unload needs immudb 1.11.1 or newer on the replica; it runs "
                              f"{self._replica_version}, which cannot list its databases while one is unloaded: "
                              f"upgrade it, or choose ignore, promote or delete", temporary=False)

    def _list_replica_loading(self, primary_dbs: tuple[DatabaseInfo, ...], failure: ImmudbError,
                              may_load: bool) -> list[DatabaseInfo]:
        """immudb before 1.11.1 fails DatabaseListV2 ("already closed")
        while any database is unloaded, so a database unloaded by hand or
        by a crash would stop every later pass. Then (`may_load`, and no
        backup holding databases) every replica database we know of or
        expect is loaded, and the list asked again. Raises ImmudbError,
        saying why, when that is not allowed or does not help."""
        held = self.busy or backup_running(self.cfg.replica.data_dir)
        why = (f"{failure.server}: immudb before 1.11.1 cannot list its databases while one is unloaded "
               f"(upgrade the replica to 1.11.1 to avoid this)")
        if held:
            raise ImmudbError(failure.server, "list databases", f"{why}; a backup holds databases unloaded: "
                              f"this pass is skipped", temporary=True)
        if not may_load:
            raise ImmudbError(failure.server, "list databases", f"{why}; a pass loads the unloaded ones",
                              temporary=True)
        names = set(self._replica_names) | set(selected_databases(self.cfg, primary_dbs))
        for name in sorted(names - SERVER_DATABASES):
            try:
                self.replica.load(name)
                event(log, "database_loaded_to_list", database=name, reason=why)
            except ImmudbError:
                pass  # loaded already, or not there
        try:
            return self.replica.list_databases()
        except DatabaseClosed:
            raise ImmudbError(failure.server, "list databases", f"{why}; loading every replica database this "
                              f"tool knows did not help: load the unloaded one by hand", temporary=True) from None

    def plan(self, may_load: bool = False) -> tuple[Observed, Plan]:
        """Observe and plan. Changes nothing, unless `may_load` lets an old
        immudb's unloaded databases be loaded so that it can list them.
        Raises ImmudbError, ConfigError."""
        password = self.follower_password()
        observed = self.observe(password, may_load)
        busy = self.busy
        if backup_running(self.cfg.replica.data_dir):
            # a backup (here or in another process) unloads databases on purpose: leave them be
            busy |= {d.name for d in observed.replica if not d.loaded}
        return observed, plan(self.cfg, observed, password, busy)

    def run_pass(self) -> PassResult:
        """One pass. Never raises for server errors: they are in the result."""
        with self._pass_lock:
            result = PassResult(started=self._wall())
            self.passes += 1
            try:
                observed, the_plan = self.plan(may_load=True)
            except ImmudbError as exc:
                result.error = str(exc)
                self._states_unknown(result.error, result.started)
            else:
                result.plan = the_plan
                result.outcomes = self._apply(the_plan)
                self._record_states(the_plan, result.outcomes)
            result.finished = self._wall()
            self._log_pass(result)
            self.last_result = result
            return result

    # ------------------------------------------------------------------

    def _apply(self, the_plan: Plan) -> list[Outcome]:
        outcomes: list[Outcome] = []
        failed_keys: set[str] = set()
        down: dict[str, str] = {}  # server -> why: the rest of its actions wait for the next pass
        now = self._clock()
        password = None
        for action in the_plan.actions:
            status_key = action.database or FOLLOWER
            missing = [k for k in action.requires if k in failed_keys]
            if missing:
                outcomes.append(Outcome(action, SKIPPED, f"needs {', '.join(missing)}"))
                failed_keys.add(action.key)
                continue
            if action.server in down:
                outcomes.append(Outcome(action, SKIPPED, down[action.server]))
                failed_keys.add(action.key)
                continue
            backoff = self._backoff.get(status_key)
            if backoff and backoff.retry_at > now and backoff.description == action.description \
                    and backoff.config_digest == self.cfg.digest:
                outcomes.append(Outcome(action, DEFERRED, f"retry in {backoff.retry_at - now:.0f}s after: {backoff.error}"))
                failed_keys.add(action.key)
                continue
            try:
                password = password or self.follower_password()
                self._execute(action, password)
            except ImmudbError as exc:
                outcomes.append(Outcome(action, FAILED, str(exc)))
                failed_keys.add(action.key)
                if isinstance(exc, Unreachable):
                    down[action.server] = f"{action.server} unreachable"
                else:
                    self._fail(status_key, action, exc, now)
                event(log, "action_failed", logging.WARNING, action=action.kind, database=action.database,
                      server=action.server, error=str(exc))
            else:
                outcomes.append(Outcome(action, DONE))
                self._backoff.pop(status_key, None)
                event(log, "action_done", action=action.kind, database=action.database, server=action.server,
                      change=action.description)
        return outcomes

    def _fail(self, key: str, action: Action, exc: ImmudbError, now: float) -> None:
        previous = self._backoff.get(key)
        failures = (previous.failures + 1) if previous else 1
        b = self.cfg.reconcile
        delay = min(b.backoff_max, b.backoff_initial * 2 ** (failures - 1)) if exc.temporary else b.backoff_max
        self._backoff[key] = _Backoff(failures, now + delay, action.description, self.cfg.digest, str(exc), self._wall())

    def _execute(self, action: Action, password: Secret) -> None:
        EXECUTORS[action.kind](self, action, password)

    # ------------------------------------------------------------------

    def _record_states(self, the_plan: Plan, outcomes: list[Outcome]) -> None:
        """Remember each database's state after this pass; log the changes."""
        results: dict[str, set[str]] = {}
        for o in outcomes:
            if o.action.database:
                results.setdefault(o.action.database, set()).add(o.result)
        seen = set()
        for db in the_plan.databases:
            seen.add(db.name)
            if results.get(db.name) == {DONE} and db.state in (MISSING, DRIFT, UNLOADED):
                db = dataclasses.replace(db, state=IN_SYNC)  # repaired by this pass
            before = self._states.get(db.name)
            progressing = moved(before.replica_tx if before else None, db.replica_tx) if db.lag else None
            backoff = self._backoff.get(db.name)
            status = db.with_(state=ERROR if backoff else db.state, progressing=progressing,
                              last_error=backoff.error if backoff else None,
                              last_error_at=backoff.at if backoff else None,
                              failures=backoff.failures if backoff else 0)
            if before is None or before.state != status.state or before.last_error != status.last_error:
                event(log, "database_state", logging.WARNING if status.last_error else logging.INFO,
                      database=db.name, state=status.state, previous=before.state if before else None,
                      lag=status.lag, error=status.last_error)
            self._states[db.name] = status
        for gone in set(self._states) - seen:
            event(log, "database_state", database=gone, state="gone", previous=self._states[gone].state)
            del self._states[gone]

    def _states_unknown(self, error: str, at: float) -> None:
        """The pass could not observe the servers: no database is known to
        be in sync any more. Each becomes `error` with the reason (status,
        /status, the not-in-sync alert), until a pass sees them again."""
        for name, before in list(self._states.items()):
            if before.state != ERROR or before.last_error != error:
                self._states[name] = before.with_(state=ERROR, last_error=error, last_error_at=at,
                                                  failures=before.failures + 1, progressing=None)
                event(log, "database_state", logging.WARNING, database=name, state=ERROR, previous=before.state,
                      error=error)

    def _log_pass(self, result: PassResult) -> None:
        if self.closed:
            event(log, "pass_interrupted", reason="stopping")
            return
        if result.error != self._last_pass_error:
            if result.error:
                event(log, "pass_failed", logging.ERROR, error=result.error)
            else:
                event(log, "pass_recovered", previous_error=self._last_pass_error)
            self._last_pass_error = result.error
        changed = sum(1 for o in result.outcomes if o.result == DONE)
        if changed or result.failed:
            event(log, "pass_done", changes=changed, failures=len(result.failed),
                  seconds=round(result.finished - result.started, 3))

    def next_pass_in(self, result: PassResult) -> float:
        """Seconds until the next pass: `interval`, or `batch_interval` while
        new replica databases wait for their batch."""
        r = self.cfg.reconcile
        return r.batch_interval if result.plan is not None and result.plan.waiting else r.interval

    def statuses(self) -> list[DatabaseStatus]:
        return [self._states[k] for k in sorted(self._states)]


# ---------------------------------------------------------------------- executors
# one per action kind: what apply does for it (tests check that every kind has one)

def _create_follower(r: Reconciler, a: Action, password: Secret) -> None:
    r.primary.create_user(r.cfg.follower.username, password, PERMISSION_ADMIN, a.primary_database)


def _activate_follower(r: Reconciler, a: Action, password: Secret) -> None:
    r.primary.set_active(r.cfg.follower.username, True)


def _change_follower_password(r: Reconciler, a: Action, password: Secret) -> None:
    r.primary.change_password(r.cfg.follower.username, password)


def _grant(r: Reconciler, a: Action, password: Secret) -> None:
    r.primary.grant(r.cfg.follower.username, _named(a), PERMISSION_ADMIN)


def _create_replica(r: Reconciler, a: Action, password: Secret) -> None:
    name = _named(a)
    seeded = None
    if r.cfg.reconcile.seed_from is not None and name not in r.seed_failed:
        from reconciler.backup.seed import seed
        seeded = seed(r.cfg, name)  # the archive's files in place, checked; None: from transaction 1
    try:
        r.replica.create_replica(name, a.settings, a.limits)
    except BaseException:
        if seeded is not None:
            from reconciler.backup.seed import discard
            r.seed_failed.add(name)  # e.g. immudb cannot open the files: the next try replicates from 1
            discard(r.cfg, seeded, r.replica)
        raise


def _update_replication(r: Reconciler, a: Action, password: Secret) -> None:
    r.replica.update_replication(_named(a), a.settings)


def _load(r: Reconciler, a: Action, password: Secret) -> None:
    try:
        r.replica.load(_named(a))
    except AlreadyLoaded:
        pass  # loaded meanwhile (a backup ending between observing and acting): the goal is reached


def _unload(r: Reconciler, a: Action, password: Secret) -> None:
    r.replica.unload(_named(a))


def _promote(r: Reconciler, a: Action, password: Secret) -> None:
    r.replica.promote(_named(a))


def _delete(r: Reconciler, a: Action, password: Secret) -> None:
    name = _named(a)
    try:
        r.replica.unload(name)  # immudb deletes only unloaded databases
    except (DatabaseClosed, NotLoaded):
        pass  # unloaded already
    r.replica.delete(name)


def _named(a: Action) -> str:
    if a.database is None:
        raise AssertionError(f"{a.kind} needs a database")
    return a.database


Executor = Callable[[Reconciler, Action, Secret], None]
EXECUTORS: dict[ActionKind, Executor] = {
    ActionKind.CREATE_FOLLOWER: _create_follower,
    ActionKind.ACTIVATE_FOLLOWER: _activate_follower,
    ActionKind.CHANGE_FOLLOWER_PASSWORD: _change_follower_password,
    ActionKind.GRANT: _grant,
    ActionKind.CREATE_REPLICA: _create_replica,
    ActionKind.UPDATE_REPLICA: _update_replication,
    ActionKind.ADOPT: _update_replication,
    ActionKind.LOAD: _load,
    ActionKind.UNLOAD: _unload,
    ActionKind.PROMOTE: _promote,
    ActionKind.DELETE: _delete,
}
