"""Applying a plan: isolation between databases, dependencies, backoff.

These use a fake admin client because a real server cannot be made to fail
one chosen call on demand; the real-server behaviour of each action is in
test_reconcile.py."""
from __future__ import annotations

from reconciler.admin import ImmudbError, Unreachable
from reconciler.reconcile import DEFERRED, DONE, FAILED, SKIPPED, Reconciler
from reconciler.state import UserInfo
from tests.support.plans import make_config, primary_db


class FakeAdmin:
    """Records calls; fails those named in `failures` (method, database)."""

    def __init__(self, name, databases=(), users=()):
        self.name, self.databases, self.users = name, list(databases), list(users)
        self.failures: dict[tuple[str, str | None], ImmudbError] = {}
        self.done: list[tuple[str, str | None]] = []

    def _maybe_fail(self, method, database=None):
        error = self.failures.get((method, database))
        if error is not None:
            raise error
        self.done.append((method, database))

    def list_databases(self):
        return list(self.databases)

    def list_users(self):
        return list(self.users)

    def check_credentials(self, username, password):
        return True

    def create_user(self, username, password, permission, database):
        self._maybe_fail("create_user", database)

    def grant(self, username, database, permission):
        self._maybe_fail("grant", database)

    def create_replica(self, name, settings, limits=None):
        self._maybe_fail("create_replica", name)

    def close(self):
        pass


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def setup(names=("a", "b", "c"), **reconcile):
    cfg = make_config(backoff={"initial": 10, "max": 100}, **reconcile)
    primary = FakeAdmin("primary", [primary_db(n) for n in names], [UserInfo("follower", True, {n: 254 for n in names})])
    replica = FakeAdmin("replica")
    clock = Clock()
    return Reconciler(cfg, primary, replica, clock=clock, wall=clock), primary, replica, clock


def results(result):
    return {(o.action.kind, o.action.database): o.result for o in result.outcomes}


def test_one_failing_database_does_not_stop_the_others():
    rec, _, replica, _ = setup()
    replica.failures[("create_replica", "b")] = ImmudbError("replica", "create b", "boom", temporary=True)
    result = rec.run_pass()
    assert results(result) == {("create_replica", "a"): DONE, ("create_replica", "b"): FAILED,
                               ("create_replica", "c"): DONE}
    assert not result.ok
    assert {s.name: s.state for s in rec.statuses()} == {"a": "in_sync", "b": "error", "c": "in_sync"}
    assert {s.name: s.last_error for s in rec.statuses()}["b"] == "replica: create b failed: boom"


def test_temporary_failure_waits_for_its_backoff_then_is_retried():
    rec, _, replica, clock = setup(names=("a",))
    replica.failures[("create_replica", "a")] = ImmudbError("replica", "create a", "busy", temporary=True)
    assert results(rec.run_pass()) == {("create_replica", "a"): FAILED}
    clock.now += 5  # backoff.initial is 10
    assert results(rec.run_pass()) == {("create_replica", "a"): DEFERRED}
    clock.now += 6
    assert results(rec.run_pass()) == {("create_replica", "a"): FAILED}
    clock.now += 15  # second failure: 20 s
    assert results(rec.run_pass()) == {("create_replica", "a"): DEFERRED}
    del replica.failures[("create_replica", "a")]
    clock.now += 6
    assert results(rec.run_pass()) == {("create_replica", "a"): DONE}


def test_permanent_failure_is_not_retried_until_the_config_changes():
    rec, _, replica, clock = setup(names=("a",))
    replica.failures[("create_replica", "a")] = ImmudbError("replica", "create a", "denied", temporary=False)
    assert results(rec.run_pass()) == {("create_replica", "a"): FAILED}
    clock.now += 50
    assert results(rec.run_pass()) == {("create_replica", "a"): DEFERRED}
    rec.cfg = make_config(backoff={"initial": 10, "max": 99})  # any edit of the config
    assert results(rec.run_pass()) == {("create_replica", "a"): FAILED}  # tried again at once


def test_unreachable_server_skips_its_remaining_actions_in_this_pass():
    rec, _, replica, _ = setup()
    replica.failures[("create_replica", "a")] = Unreachable("replica", "create a", "connection refused", temporary=True)
    assert results(rec.run_pass()) == {("create_replica", "a"): FAILED, ("create_replica", "b"): SKIPPED,
                                       ("create_replica", "c"): SKIPPED}
    assert replica.done == []


def test_replica_is_not_created_when_its_grant_failed():
    rec, primary, replica, _ = setup()
    primary.users = [UserInfo("follower", True, {"a": 254, "c": 254})]
    primary.failures[("grant", "b")] = ImmudbError("primary", "grant b", "denied", temporary=False)
    result = rec.run_pass()
    assert results(result) == {("grant", "b"): FAILED, ("create_replica", "a"): DONE,
                               ("create_replica", "b"): SKIPPED, ("create_replica", "c"): DONE}


def test_unreachable_primary_fails_the_pass_without_raising():
    rec, primary, _, _ = setup()

    def down():
        raise Unreachable("primary (10.0.0.5:3322)", "list databases", "connection refused", temporary=True)

    primary.list_databases = down
    result = rec.run_pass()
    assert not result.ok and result.error == "primary (10.0.0.5:3322): list databases failed: connection refused"
