"""The planner on its own: desired vs observed in, actions out. No servers."""
from __future__ import annotations

import dataclasses

import pytest

from reconciler.plan import BUSY, CONFLICT, DRIFT, IN_SYNC, MISSING, ORPHAN, UNLOADED, Observed, plan
from reconciler.secret import Secret
from reconciler.state import PERMISSION_READ_WRITE, DatabaseInfo, StoreLimits, UserInfo
from tests.support.plans import PASSWORD, follower, make_config, primary_db, replica_of


def kinds(p) -> list[tuple[str, str | None]]:
    return [(a.kind, a.database) for a in p.actions]


def states(p) -> dict[str, str]:
    return {d.name: d.state for d in p.databases}


# --------------------------------------------------------------------------- creation

def test_new_primary_databases_get_follower_grants_and_replicas():
    cfg = make_config()
    p = plan(cfg, Observed((primary_db("a"), primary_db("b")), (), None), PASSWORD)
    assert kinds(p) == [("create_follower", None), ("grant", "b"), ("create_replica", "a"), ("create_replica", "b")]
    create_a = p.actions[2]
    assert create_a.description == "+ create replica a <- 10.0.0.5:3322/a"
    assert create_a.settings.primary_password == PASSWORD and create_a.settings.primary_port == 3322
    assert create_a.limits.max_tx_entries == 1024
    assert "create_follower:" in create_a.requires
    assert set(p.actions[3].requires) == {"create_follower:", "grant:b"}
    assert states(p) == {"a": MISSING, "b": MISSING}


def test_synced_system_plans_nothing():
    cfg = make_config()
    observed = Observed((primary_db("a"),), (replica_of(cfg, "a"),), follower("a"))
    p = plan(cfg, observed, PASSWORD)
    assert p.in_sync and p.actions == () and p.findings == ()
    assert states(p) == {"a": IN_SYNC}


def test_applying_a_plan_then_planning_again_gives_nothing():
    cfg = make_config()
    first = plan(cfg, Observed((primary_db("a"),), (), None), PASSWORD)
    # the world after the actions succeeded
    after = Observed((primary_db("a"),), tuple(replica_of(cfg, a.database) for a in first.actions
                                                if a.kind == "create_replica"), follower("a"))
    assert plan(cfg, after, PASSWORD).in_sync


def test_primary_defaultdb_goes_to_defaultdbbak_and_replicas_own_dbs_are_left_alone():
    cfg = make_config()
    observed = Observed((primary_db("defaultdb"),), (DatabaseInfo("defaultdb"), DatabaseInfo("systemdb")), follower())
    p = plan(cfg, observed, PASSWORD)
    assert ("create_replica", "defaultdbbak") in kinds(p)
    assert p.actions[-1].primary_database == "defaultdb"
    assert ("grant", "defaultdb") in kinds(p)


def test_systemdb_is_never_followed_even_if_included():
    cfg = make_config(databases={"include": ["*"], "exclude": []})
    p = plan(cfg, Observed((primary_db("systemdb"), primary_db("a")), (), follower("a")), PASSWORD)
    assert kinds(p) == [("create_replica", "a")]


def test_include_and_exclude_patterns_select_databases():
    cfg = make_config(databases={"include": ["app_*", "billing"], "exclude": ["app_tmp*"]})
    dbs = tuple(primary_db(n) for n in ("app_one", "app_tmp1", "billing", "other"))
    p = plan(cfg, Observed(dbs, (), follower("app_one", "billing")), PASSWORD)
    assert [a.database for a in p.actions if a.kind == "create_replica"] == ["app_one", "billing"]


def test_rename_map_names_the_replica_database():
    cfg = make_config(rename={"orders": "orders_copy"})
    p = plan(cfg, Observed((primary_db("orders"),), (), follower("orders")), PASSWORD)
    assert kinds(p) == [("create_replica", "orders_copy")]
    assert p.actions[0].settings.primary_database == "orders"


def test_replication_options_from_config_reach_the_settings():
    cfg = make_config(replication={"primary_host": "primary.svc", "primary_port": 4000,
                                   "prefetch_tx_buffer_size": 50, "commit_concurrency": 3})
    p = plan(cfg, Observed((primary_db("a"),), (), follower("a")), PASSWORD)
    s = p.actions[0].settings
    assert (s.primary_host, s.primary_port, s.sync_replication, s.prefetch_tx_buffer_size,
            s.commit_concurrency) == ("primary.svc", 4000, False, 50, 3)


@pytest.mark.parametrize("mode, acks, sync, discarding", [
    ("auto", 0, False, False), ("auto", 1, True, True), ("async", 1, False, False), ("sync", 2, True, True)])
def test_a_replica_is_synchronous_when_its_primary_database_waits_for_acks(mode, acks, sync, discarding):
    cfg = make_config(replication={"sync": mode, "allow_tx_discarding": True})
    p = plan(cfg, Observed((primary_db("a", sync_acks=acks),), (), follower("a")), PASSWORD)
    [create] = [a for a in p.actions if a.kind == "create_replica"]
    assert (create.settings.sync_replication, create.settings.allow_tx_discarding) == (sync, discarding)
    assert bool(p.findings) == (mode == "async")  # an async replica of a database that waits for acks: said


def test_sync_mode_creates_no_replica_of_an_asynchronous_database_and_says_so():
    cfg = make_config(replication={"sync": "sync"})
    p = plan(cfg, Observed((primary_db("a"), primary_db("b", sync_acks=1)), (), follower("a", "b")), PASSWORD)
    assert kinds(p) == [("create_replica", "b")]
    assert [f.database for f in p.findings] == ["a"] and "not a synchronous database" in p.findings[0].description
    assert states(p)["a"] == MISSING


def test_a_primary_database_turned_synchronous_gets_its_replica_updated():
    cfg = make_config()
    observed = Observed((primary_db("a", sync_acks=1),), (replica_of(cfg, "a"),), follower("a"))
    p = plan(cfg, observed, PASSWORD)
    assert kinds(p) == [("update_replica", "a")]
    assert "sync_replication False -> True" in p.actions[0].description


def test_the_old_sync_replication_key_is_refused_with_its_replacement():
    from reconciler.config.validate import logic_problems, schema_problems
    data = {"primary": {"host": "h", "password": "P-pw-1"}, "replica": {"host": "r", "password": "R-pw-1"},
            "follower": {"password": "F-pw-1"}, "reconcile": {"replication": {"sync_replication": True}}}
    assert not schema_problems(data, {})
    [problem] = logic_problems(data, {})
    assert "replaced by reconcile.replication.sync: auto" in problem


def test_new_replicas_come_in_batches_of_max_new_replicas():
    cfg = make_config(max_new_replicas=2)
    names = ["a", "b", "c", "d", "e"]
    # a already has its replica; b..e are new: two now, two wait
    observed = Observed(tuple(primary_db(n) for n in names), (replica_of(cfg, "a"),), follower("a"))
    p = plan(cfg, observed, PASSWORD)
    assert kinds(p) == [("grant", "b"), ("grant", "c"), ("create_replica", "b"), ("create_replica", "c")]
    assert p.waiting == ("d", "e")
    assert states(p) == {"a": IN_SYNC, "b": MISSING, "c": MISSING, "d": MISSING, "e": MISSING}
    assert p.lines()[-1] == ("+ 2 more replica databases wait for the next passes "
                             "(reconcile.max_new_replicas: 2): d, e")
    # the next pass, after the first batch exists, takes the rest
    after = Observed(observed.primary, observed.replica + (replica_of(cfg, "b"), replica_of(cfg, "c")),
                     follower("a", "b", "c"))
    p2 = plan(cfg, after, PASSWORD)
    assert kinds(p2) == [("grant", "d"), ("grant", "e"), ("create_replica", "d"), ("create_replica", "e")]
    assert p2.waiting == ()


def test_repairs_are_never_held_back_by_the_batch_limit():
    cfg = make_config(max_new_replicas=1)
    observed = Observed(tuple(primary_db(n) for n in "abc"),
                        (replica_of(cfg, "a", loaded=False), replica_of(cfg, "b", prefetch_tx_buffer_size=7)),
                        follower("a", "b"))
    p = plan(cfg, observed, PASSWORD)
    assert kinds(p) == [("grant", "c"), ("load", "a"), ("update_replica", "b"), ("create_replica", "c")]
    assert p.waiting == ()


def test_no_batch_limit_with_zero():
    cfg = make_config(max_new_replicas=0)
    names = [f"db{i:03d}" for i in range(120)]
    p = plan(cfg, Observed(tuple(primary_db(n) for n in names), (), None), PASSWORD)
    assert sum(1 for a in p.actions if a.kind == "create_replica") == 120 and p.waiting == ()
    assert make_config().reconcile.max_new_replicas == 50


# --------------------------------------------------------------------------- the follower user

def test_follower_without_grant_is_granted():
    cfg = make_config()
    user = UserInfo("follower", True, {"a": PERMISSION_READ_WRITE})  # RW is refused for replication
    p = plan(cfg, Observed((primary_db("a"),), (replica_of(cfg, "a"),), user), PASSWORD)
    assert kinds(p) == [("grant", "a")]
    assert states(p) == {"a": IN_SYNC}


def test_follower_with_sysadmin_wildcard_needs_no_grant():
    cfg = make_config()
    user = UserInfo("follower", True, {"*": 255})
    assert plan(cfg, Observed((primary_db("a"),), (replica_of(cfg, "a"),), user), PASSWORD).in_sync


def test_inactive_follower_is_activated_first():
    cfg = make_config()
    p = plan(cfg, Observed((primary_db("a"),), (replica_of(cfg, "a"),), follower("a", active=False)), PASSWORD)
    assert kinds(p) == [("activate_follower", None)]


def test_password_rotation_changes_primary_first_then_every_replica():
    cfg = make_config()
    old = Secret("Old-follower-pw-1")
    observed = Observed((primary_db("a"), primary_db("b")),
                        (replica_of(cfg, "a", password=old), replica_of(cfg, "b", password=old)),
                        follower("a", "b"), follower_password_ok=False)
    p = plan(cfg, observed, PASSWORD)
    assert kinds(p) == [("change_follower_password", None), ("update_replica", "a"), ("update_replica", "b")]
    assert all("change_follower_password:" in a.requires for a in p.actions[1:])
    assert all("primary_password changed" in a.description for a in p.actions[1:])
    assert "Old-follower" not in " ".join(p.lines()) and "Follower-pw" not in " ".join(p.lines())


def test_no_databases_selected_means_no_follower_user():
    cfg = make_config(databases={"include": ["nothing*"]})
    assert plan(cfg, Observed((primary_db("a"),), (), None), PASSWORD).actions == ()


# --------------------------------------------------------------------------- drift and repair

@pytest.mark.parametrize("change, shown", [
    ({"primary_port": 9999}, "primary_port 9999 -> 3322"),
    ({"primary_host": "elsewhere"}, "primary_host 'elsewhere' -> '10.0.0.5'"),
    ({"primary_database": "other"}, "primary_database 'other' -> 'a'"),
    ({"primary_username": "someone"}, "primary_username 'someone' -> 'follower'"),
    ({"commit_concurrency": 1}, "commit_concurrency 1 -> 10"),
])
def test_replica_pointing_elsewhere_is_updated(change, shown):
    cfg = make_config()
    observed = Observed((primary_db("a"),), (replica_of(cfg, "a", **change),), follower("a"))
    p = plan(cfg, observed, PASSWORD)
    assert kinds(p) == [("update_replica", "a")]
    assert shown in p.actions[0].description
    assert states(p) == {"a": DRIFT}


def test_wrong_stored_password_is_updated_without_showing_it():
    cfg = make_config()
    observed = Observed((primary_db("a"),), (replica_of(cfg, "a", password=Secret("Stale-pw-9")),), follower("a"))
    p = plan(cfg, observed, PASSWORD)
    assert kinds(p) == [("update_replica", "a")]
    assert p.actions[0].description == "~ update replica a: primary_password changed"


def test_non_replica_database_of_the_same_name_is_a_conflict_and_untouched():
    cfg = make_config()
    observed = Observed((primary_db("a"),), (DatabaseInfo("a", tx_count=3),), follower("a"))
    p = plan(cfg, observed, PASSWORD)
    assert p.actions == ()
    assert [f.kind for f in p.findings] == [CONFLICT]
    assert "adopt_existing" in p.findings[0].description
    assert states(p) == {"a": CONFLICT}


def test_conflict_is_adopted_only_when_the_config_allows_it():
    cfg = make_config(adopt_existing=True)
    observed = Observed((primary_db("a"),), (DatabaseInfo("a", tx_count=3),), follower("a"))
    assert kinds(plan(cfg, observed, PASSWORD)) == [("adopt", "a")]


def test_unloaded_replica_is_loaded_again():
    cfg = make_config()
    p = plan(cfg, Observed((primary_db("a"),), (replica_of(cfg, "a", loaded=False),), follower("a")), PASSWORD)
    assert kinds(p) == [("load", "a")]
    assert states(p) == {"a": UNLOADED}


def test_databases_held_by_a_backup_are_not_touched():
    cfg = make_config()
    observed = Observed((primary_db("a"), primary_db("b")),
                        (replica_of(cfg, "a", loaded=False), replica_of(cfg, "b", loaded=False)), follower("a", "b"))
    p = plan(cfg, observed, PASSWORD, busy=frozenset({"a"}))
    assert kinds(p) == [("load", "b")]
    assert states(p)["a"] == BUSY


def test_replica_with_smaller_limits_than_its_primary_is_reported():
    cfg = make_config()
    small = dataclasses.replace(replica_of(cfg, "a"), limits=StoreLimits(max_tx_entries=10))
    p = plan(cfg, Observed((primary_db("a"),), (small,), follower("a")), PASSWORD)
    assert p.actions == () and [f.kind for f in p.findings] == ["limits"]


def test_lag_is_primary_tx_minus_replica_tx():
    cfg = make_config()
    p = plan(cfg, Observed((primary_db("a", tx=50),), (replica_of(cfg, "a", tx=42),), follower("a")), PASSWORD)
    assert p.databases[0].lag == 8


# --------------------------------------------------------------------------- primary database gone

@pytest.mark.parametrize("policy, expected", [
    ("ignore", []), ("unload", [("unload", "gone")]), ("promote", [("promote", "gone")]), ("delete", [("delete", "gone")]),
])
def test_policy_for_a_database_gone_from_the_primary(policy, expected):
    cfg = make_config(on_primary_removed=policy)
    observed = Observed((primary_db("a"),), (replica_of(cfg, "a"), replica_of(cfg, "gone")), follower("a"))
    p = plan(cfg, observed, PASSWORD)
    assert kinds(p) == expected
    assert states(p)["gone"] == ORPHAN
    if policy == "ignore":
        assert [f.kind for f in p.findings] == [ORPHAN]


def test_orphan_already_unloaded_is_not_unloaded_again_nor_loaded():
    cfg = make_config(on_primary_removed="unload")
    observed = Observed((), (replica_of(cfg, "gone", loaded=False),), follower())
    assert plan(cfg, observed, PASSWORD).actions == ()


def test_replicas_of_another_primary_are_never_orphans():
    cfg = make_config(on_primary_removed="delete")
    other = replica_of(cfg, "x", primary_host="other-primary")
    assert plan(cfg, Observed((), (other,), follower()), PASSWORD).actions == ()


def test_deselected_database_is_left_alone_not_deleted():
    cfg = make_config(on_primary_removed="delete", databases={"include": ["a"]})
    observed = Observed((primary_db("a"), primary_db("b")), (replica_of(cfg, "a"), replica_of(cfg, "b")), follower("a"))
    assert plan(cfg, observed, PASSWORD).actions == ()


def test_ordinary_databases_on_the_replica_are_not_orphans():
    cfg = make_config(on_primary_removed="delete")
    assert plan(cfg, Observed((), (DatabaseInfo("local_only"),), follower()), PASSWORD).actions == ()


def test_orphans_outside_the_selection_are_not_ours():
    cfg = make_config(on_primary_removed="delete", databases={"include": ["mine_*"]})
    observed = Observed((), (replica_of(cfg, "theirs_gone"), replica_of(cfg, "mine_gone")), follower())
    assert kinds(plan(cfg, observed, PASSWORD)) == [("delete", "mine_gone")]


def test_every_action_kind_says_what_it_changes_as_its_description_shows():
    from reconciler.plan import Action, ActionKind
    sign = {"add": "+", "change": "~", "remove": "-"}
    cfg = make_config(on_primary_removed="delete", adopt_existing=True)
    observed = Observed((primary_db("a"), primary_db("b"), primary_db("c")),
                        (replica_of(cfg, "b", loaded=False, primary_port=1),
                         DatabaseInfo("c"), replica_of(cfg, "gone", "gone")),
                        follower("b", active=False), follower_password_ok=False)
    actions = plan(cfg, observed, PASSWORD).actions
    assert {a.kind for a in actions} >= {"activate_follower", "change_follower_password", "grant", "create_replica",
                                        "update_replica", "adopt", "load", "delete"}
    assert all(a.description[0] == sign[a.change] for a in actions)
    assert {k.change for k in ActionKind} == {"add", "change", "remove"}
    assert Action(ActionKind.UNLOAD, "replica", "x", "- unload x").change == "remove"


def test_every_kind_the_planner_emits_has_an_executor():
    """The planner's whole vocabulary, from plans that use every kind,
    against the executor table apply dispatches on: a kind without an
    executor would fail only when an operator's server first needs it."""
    from reconciler.plan import ActionKind
    from reconciler.reconcile import EXECUTORS
    emitted = set()
    for policy in ("delete", "unload", "promote"):
        cfg = make_config(on_primary_removed=policy, adopt_existing=True)
        for who in (None, follower("b", active=False)):
            observed = Observed((primary_db("a"), primary_db("b"), primary_db("c")),
                                (replica_of(cfg, "b", loaded=False, primary_port=1),
                                 DatabaseInfo("c"), replica_of(cfg, "gone", "gone")),
                                who, follower_password_ok=False)
            emitted |= {a.kind for a in plan(cfg, observed, PASSWORD).actions}
    assert all(isinstance(k, ActionKind) for k in emitted)
    assert emitted == set(ActionKind), f"no plan here emits {set(ActionKind) - emitted}: extend the scenarios"
    assert set(EXECUTORS) == set(ActionKind)
    assert all(callable(EXECUTORS[k]) for k in ActionKind)


def test_action_kinds_read_as_their_plain_names_in_logs_and_json():
    import json

    from reconciler.plan import ActionKind
    kind = ActionKind.CREATE_REPLICA
    assert (str(kind), f"{kind}", f"{kind:>16}", json.dumps(kind)) == (
        "create_replica", "create_replica", "  create_replica", '"create_replica"')
    assert kind == "create_replica" and ActionKind("create_replica") is kind
