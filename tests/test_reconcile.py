"""Reconcile passes against the real primary and replica servers.

Each test selects only databases with its own name prefix and uses its own
follower user, so tests sharing the session's servers do not see each
other's databases."""
from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path

import pytest

from reconciler import config
from reconciler.reconcile import DONE, Reconciler
from reconciler.secret import Secret
from reconciler.state import PERMISSION_READ
from tests.support import immudb_data
from tests.support.checks import assert_follows
from tests.support.cli import argv as cli_argv
from tests.support.cli import replicator
from tests.support.configs import unique_name, write_config
from tests.support.servers import LISTS_WHILE_UNLOADED, ImmudbServer, admin_for
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def prefix():
    return unique_name("t") + "_"


@pytest.fixture
def follower_name():
    return unique_name("fol")


def reconciler_for(path: Path) -> Reconciler:
    return Reconciler.from_config(config.load(path, env={}))


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return replicator(*argv, timeout=120)


def wait_on_replica(replica, names, timeout: float) -> None:
    """Until every one of `names` exists on the replica; asserts it."""
    wait_for(lambda: set(names) <= {d.name for d in replica.list_databases()}, timeout,
             f"{sorted(names)} on the replica", interval=0.2)


@contextlib.contextmanager
def running_daemon(path: Path):
    """`replicator run -c path` as a subprocess. Yields a dict that holds
    returncode, out and err once the block ends with SIGTERM."""
    proc = subprocess.Popen(cli_argv("run", "-c", str(path)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: dict = {}
    try:
        yield result
        proc.send_signal(signal.SIGTERM)
        result["out"], result["err"] = proc.communicate(timeout=30)
        result["returncode"] = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()


def create_with_data(primary, primary_server, name: str, count: int = 10) -> dict:
    primary.create_database(name)
    return immudb_data.write(primary_server, name, count, prefix=name)


# --------------------------------------------------------------------------- the main job

def test_one_pass_brings_every_primary_database_to_the_replica(tmp_path, primary_server, replica_server,
                                                               primary, replica, prefix, follower_name):
    names = [f"{prefix}{i}" for i in range(3)]
    written = {n: create_with_data(primary, primary_server, n) for n in names}
    rec = reconciler_for(write_config(tmp_path, primary_server, replica_server, prefix, follower_name))

    result = rec.run_pass()

    assert result.ok, [o.line() for o in result.outcomes]
    infos = {d.name: d for d in replica.list_databases()}
    for name in names:
        r = infos[name].replication
        assert infos[name].is_replica and infos[name].loaded
        assert (r.primary_database, r.primary_host, r.primary_port, r.primary_username) == (
            name, "127.0.0.1", primary_server.port, follower_name)
        assert r.primary_password.reveal() == "Follower-pw-1"
        assert_follows(primary_server, replica_server, name, name)
        assert immudb_data.read(replica_server, name, written[name]) == written[name]
        # immudb's own client reads the same key at the same transaction on both servers
        key = next(iter(written[name])).decode()
        assert replica_server.get(name, key) == primary_server.get(name, key)
    # writes made afterwards arrive too
    later = immudb_data.write(primary_server, names[0], 5, prefix="later")
    assert_follows(primary_server, replica_server, names[0], names[0])
    assert immudb_data.read(replica_server, names[0], later) == later


def test_second_pass_plans_nothing_and_plan_exits_0(tmp_path, primary_server, replica_server, primary,
                                                    prefix, follower_name):
    create_with_data(primary, primary_server, f"{prefix}a")
    path = write_config(tmp_path, primary_server, replica_server, prefix, follower_name)
    before = run_cli("plan", "-c", str(path))
    assert before.returncode == 2, before.stdout + before.stderr
    assert f"+ create replica {prefix}a <- 127.0.0.1:{primary_server.port}/{prefix}a" in before.stdout

    assert reconciler_for(path).run_pass().ok
    after = run_cli("plan", "-c", str(path))
    assert after.returncode == 0, after.stdout + after.stderr
    assert "In sync" in after.stdout
    assert "Follower-pw-1" not in before.stdout + after.stdout


def test_database_created_later_is_picked_up_by_the_next_pass(tmp_path, primary_server, replica_server,
                                                              primary, replica, prefix, follower_name):
    create_with_data(primary, primary_server, f"{prefix}first")
    rec = reconciler_for(write_config(tmp_path, primary_server, replica_server, prefix, follower_name))
    assert rec.run_pass().ok
    create_with_data(primary, primary_server, f"{prefix}second")
    result = rec.run_pass()
    assert [(o.action.kind, o.action.database, o.result) for o in result.outcomes] == [
        ("grant", f"{prefix}second", DONE), ("create_replica", f"{prefix}second", DONE)]
    assert_follows(primary_server, replica_server, f"{prefix}second", f"{prefix}second")


def test_reconcile_once_cli_prints_what_it_did(tmp_path, primary_server, replica_server, primary, prefix, follower_name):
    create_with_data(primary, primary_server, f"{prefix}x")
    path = write_config(tmp_path, primary_server, replica_server, prefix, follower_name)
    result = run_cli("reconcile", "--once", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert f"+ create replica {prefix}x" in result.stdout and ": done" in result.stdout
    status = run_cli("status", "-c", str(path))
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{prefix}x" in status.stdout and "in_sync" in status.stdout


def test_status_says_moving_only_of_replicas_that_lag(tmp_path, primary_server, replica_server, primary, prefix,
                                                     follower_name):
    """MOVING (progressing in --json) is whether a lagging replica's count
    moved between status's two looks; `-` (null) for one that does not lag."""
    import json

    from tests.support.servers import free_port
    create_with_data(primary, primary_server, f"{prefix}live")
    create_with_data(primary, primary_server, f"{prefix}stuck")
    live = write_config(tmp_path, primary_server, replica_server, f"{prefix}live", follower_name, name="live.yaml")
    # the stuck replica follows a port where nothing listens: it exists, has the settings the config
    # asks for, and never receives a transaction
    stuck = write_config(tmp_path, primary_server, replica_server, f"{prefix}stuck", follower_name, name="stuck.yaml",
                         replication={"primary_port": free_port()})
    for path in (live, stuck):
        assert run_cli("reconcile", "--once", "-c", str(path)).returncode == 0
    assert_follows(primary_server, replica_server, f"{prefix}live", f"{prefix}live")

    [row] = json.loads(run_cli("status", "--json", "-c", str(live)).stdout)["databases"]
    assert (row["state"], row["lag"], row["progressing"]) == ("in_sync", 0, None)
    table = run_cli("status", "-c", str(live)).stdout.splitlines()
    moving = table[0].index("MOVING")
    assert table[1][moving] == "-"

    [row] = json.loads(run_cli("status", "--json", "-c", str(stuck)).stdout)["databases"]
    assert row["replica_tx"] == 0 and row["lag"] > 0
    assert row["progressing"] is False


def test_synchronous_primary_databases_get_synchronous_replicas(tmp_path, primary_server, replica_server, primary,
                                                                replica, prefix, follower_name):
    """A primary database created with syncAcks=1 waits for one synchronous
    replica to acknowledge each commit. With `sync: auto` (the default, as
    in the Go tool) its replica is created synchronous and writes commit.
    With `sync: async` the replica gives no acknowledgement and a write
    waits until its client gives up: the reason auto is the default. Switching
    that configuration back to auto updates the replica, and writes commit."""
    auto_db, async_db = f"{prefix}auto", f"{prefix}async"
    for name in (auto_db, async_db):
        immudb_data.create_sync_database(primary, name, acks=1)
    auto = write_config(tmp_path, primary_server, replica_server, auto_db, follower_name, name="auto.yaml")
    assert run_cli("reconcile", "--once", "-c", str(auto)).returncode == 0
    assert {d.name: d for d in replica.list_databases()}[auto_db].replication.sync_replication
    assert immudb_data.try_write(primary_server, auto_db, timeout=60)

    stuck = write_config(tmp_path, primary_server, replica_server, async_db, follower_name, name="async.yaml",
                         replication={"sync": "async"})
    done = run_cli("reconcile", "--once", "-c", str(stuck))
    assert done.returncode == 0 and "gives none" in done.stdout
    assert not {d.name: d for d in replica.list_databases()}[async_db].replication.sync_replication
    assert not immudb_data.try_write(primary_server, async_db, timeout=5)  # waits for an ack that never comes

    repaired = write_config(tmp_path, primary_server, replica_server, async_db, follower_name, name="repaired.yaml")
    done = run_cli("reconcile", "--once", "-c", str(repaired))
    assert done.returncode == 0 and f"~ update replica {async_db}: sync_replication False -> True" in done.stdout
    assert immudb_data.try_write(primary_server, async_db, timeout=60)


# --------------------------------------------------------------------------- names

def test_rename_map_and_exclude_patterns(tmp_path, primary_server, replica_server, primary, replica,
                                         prefix, follower_name):
    for n in ("keep", "skipme", "renamed"):
        create_with_data(primary, primary_server, f"{prefix}{n}", 3)
    path = write_config(tmp_path, primary_server, replica_server, prefix, follower_name,
                        reconcile={"databases": {"include": [f"{prefix}*"], "exclude": ["*skip*"]}},
                        rename={f"{prefix}renamed": f"{prefix}copy"})
    assert reconciler_for(path).run_pass().ok
    names = {d.name for d in replica.list_databases()}
    assert f"{prefix}keep" in names and f"{prefix}copy" in names
    assert f"{prefix}skipme" not in names and f"{prefix}renamed" not in names
    assert_follows(primary_server, replica_server, f"{prefix}renamed", f"{prefix}copy")


def test_primary_defaultdb_is_followed_as_defaultdbbak(tmp_path, immudb_build):
    # own servers: defaultdb is shared by every test on the session's servers
    primary_server = ImmudbServer("primary-dd", tmp_path / "p").start()
    replica_server = ImmudbServer("replica-dd", tmp_path / "r").start()
    try:
        immudb_data.write(primary_server, "defaultdb", 4, prefix="dd")
        path = write_config(tmp_path, primary_server, replica_server, "", "follower")
        assert reconciler_for(path).run_pass().ok
        with admin_for(replica_server, "replica") as replica:
            names = {d.name: d for d in replica.list_databases()}
        assert names["defaultdbbak"].is_replica and not names["defaultdb"].is_replica
        assert_follows(primary_server, replica_server, "defaultdb", "defaultdbbak")
    finally:
        primary_server.stop()
        replica_server.stop()


# --------------------------------------------------------------------------- the follower user

def test_existing_follower_without_grants_is_granted(tmp_path, primary_server, replica_server, primary,
                                                      prefix, follower_name):
    create_with_data(primary, primary_server, f"{prefix}g")
    other = unique_name("other")
    primary.create_database(other)
    primary.create_user(follower_name, Secret("Follower-pw-1"), PERMISSION_READ, other)  # no right on ours
    result = reconciler_for(write_config(tmp_path, primary_server, replica_server, prefix, follower_name)).run_pass()
    assert result.ok
    assert [o.action.kind for o in result.outcomes] == ["grant", "create_replica"]
    assert {u.name: u for u in primary.list_users()}[follower_name].may_export(f"{prefix}g")
    assert_follows(primary_server, replica_server, f"{prefix}g", f"{prefix}g")


def test_follower_password_rotation_keeps_replication_working(tmp_path, primary_server, replica_server,
                                                              primary, replica, prefix, follower_name):
    for n in ("r1", "r2"):
        create_with_data(primary, primary_server, f"{prefix}{n}", 3)
    assert reconciler_for(write_config(tmp_path, primary_server, replica_server, prefix, follower_name)).run_pass().ok

    rotated = write_config(tmp_path, primary_server, replica_server, prefix, follower_name,
                           password="Rotated-pw-2", name="rotated.yaml")
    result = reconciler_for(rotated).run_pass()
    assert result.ok
    assert [o.action.kind for o in result.outcomes] == ["change_follower_password", "update_replica", "update_replica"]
    assert primary.check_credentials(follower_name, Secret("Rotated-pw-2"))
    assert not primary.check_credentials(follower_name, Secret("Follower-pw-1"))
    for n in ("r1", "r2"):
        immudb_data.write(primary_server, f"{prefix}{n}", 4, prefix="after-rotation")
        assert_follows(primary_server, replica_server, f"{prefix}{n}", f"{prefix}{n}")
    assert reconciler_for(rotated).run_pass().plan.in_sync


# --------------------------------------------------------------------------- drift and conflicts

def test_replica_pointed_elsewhere_by_hand_is_repaired(tmp_path, primary_server, replica_server, primary, replica,
                                                       prefix, follower_name):
    name = f"{prefix}d"
    create_with_data(primary, primary_server, name, 3)
    path = write_config(tmp_path, primary_server, replica_server, prefix, follower_name)
    assert reconciler_for(path).run_pass().ok
    info = {d.name: d for d in replica.list_databases()}[name]
    import dataclasses
    replica.update_replication(name, dataclasses.replace(info.replication, primary_port=1,
                                                         primary_password=Secret("Wrong-pw-3")))
    result = reconciler_for(path).run_pass()
    assert [(o.action.kind, o.result) for o in result.outcomes] == [("update_replica", DONE)]
    assert "primary_port 1 -> " in result.outcomes[0].action.description
    assert "Wrong-pw-3" not in result.outcomes[0].line()
    immudb_data.write(primary_server, name, 3, prefix="after-repair")
    assert_follows(primary_server, replica_server, name, name)


@pytest.mark.faults
def test_non_replica_database_of_same_name_is_a_conflict_and_its_data_is_untouched(
        tmp_path, primary_server, replica_server, primary, replica, prefix, follower_name):
    name = f"{prefix}c"
    create_with_data(primary, primary_server, name, 3)
    replica.create_database(name)
    own = immudb_data.write(replica_server, name, 2, prefix="replica-own")
    before = immudb_data.state(replica_server, name)
    result = reconciler_for(write_config(tmp_path, primary_server, replica_server, prefix, follower_name)).run_pass()
    assert result.ok
    assert [f.kind for f in result.plan.findings] == ["conflict"]
    assert not {d.name: d for d in replica.list_databases()}[name].is_replica
    assert immudb_data.state(replica_server, name) == before
    assert immudb_data.read(replica_server, name, own) == own


def test_unloaded_replica_is_loaded_again(tmp_path, primary_server, replica_server, primary, replica,
                                          prefix, follower_name):
    name = f"{prefix}u"
    create_with_data(primary, primary_server, name, 3)
    path = write_config(tmp_path, primary_server, replica_server, prefix, follower_name)
    assert reconciler_for(path).run_pass().ok
    replica.unload(name)
    result = reconciler_for(path).run_pass()
    if LISTS_WHILE_UNLOADED:
        assert [(o.action.kind, o.result) for o in result.outcomes] == [("load", DONE)]
    else:  # immudb before 1.11.1: loaded so that the replica can be listed at all
        assert result.ok and result.outcomes == []
    assert {d.name: d for d in replica.list_databases()}[name].loaded


# --------------------------------------------------------------------------- primary database removed

def _remove_on_primary(primary, name: str) -> None:
    primary.unload(name)
    primary.delete(name)


@pytest.mark.parametrize("policy", ["ignore", "unload", "promote", "delete"])
def test_policy_when_the_primary_database_is_removed(tmp_path, primary_server, replica_server, primary, replica,
                                                     prefix, follower_name, policy):
    name = f"{prefix}gone"
    create_with_data(primary, primary_server, name, 3)
    path = write_config(tmp_path, primary_server, replica_server, prefix, follower_name, on_primary_removed=policy)
    if policy == "unload" and not LISTS_WHILE_UNLOADED:  # refused, saying why (docs: "immudb versions")
        result = reconciler_for(path).run_pass()
        assert not result.ok and "unload needs immudb 1.11.1 or newer on the replica" in result.error
        return
    assert reconciler_for(path).run_pass().ok
    _remove_on_primary(primary, name)

    result = reconciler_for(path).run_pass()
    assert result.ok, [o.line() for o in result.outcomes]
    infos = {d.name: d for d in replica.list_databases()}
    if policy == "ignore":
        assert result.outcomes == [] and [f.kind for f in result.plan.findings] == ["orphan"]
        assert infos[name].is_replica and infos[name].loaded
    elif policy == "unload":
        assert not infos[name].loaded
    elif policy == "promote":
        assert not infos[name].is_replica
        immudb_data.write(replica_server, name, 1, prefix="writable")  # promoted: accepts writes
    else:
        assert name not in infos
        assert not (replica_server.data_dir / name).exists()
    # the next pass changes nothing more
    assert reconciler_for(path).run_pass().outcomes == []


# --------------------------------------------------------------------------- failures

@pytest.mark.faults
def test_primary_down_during_a_pass_then_back(tmp_path, immudb_build):
    primary_server = ImmudbServer("primary-down", tmp_path / "p").start()
    replica_server = ImmudbServer("replica-down", tmp_path / "r").start()
    try:
        with admin_for(primary_server, "primary") as primary:
            create_with_data(primary, primary_server, "fa_one", 3)
        path = write_config(tmp_path, primary_server, replica_server, "fa_", "follower")
        rec = reconciler_for(path)
        primary_server.stop()
        result = rec.run_pass()
        assert not result.ok and f"primary (127.0.0.1:{primary_server.port})" in result.error
        primary_server.process.start()  # same port, same data: a restart
        result = rec.run_pass()
        assert result.ok, result.error or [o.line() for o in result.outcomes]
        assert_follows(primary_server, replica_server, "fa_one", "fa_one")
    finally:
        primary_server.stop()
        replica_server.stop()


@pytest.mark.faults
def test_replica_restart_between_passes_logs_in_again(tmp_path, immudb_build):
    primary_server = ImmudbServer("primary-rs", tmp_path / "p").start()
    replica_server = ImmudbServer("replica-rs", tmp_path / "r").start()
    try:
        with admin_for(primary_server, "primary") as primary:
            create_with_data(primary, primary_server, "rs_one", 3)
            rec = reconciler_for(write_config(tmp_path, primary_server, replica_server, "rs_", "follower"))
            assert rec.run_pass().ok
            replica_server.restart()  # every token it issued is now invalid
            primary.create_database("rs_two")
        result = rec.run_pass()
        assert result.ok, result.error
        assert [(o.action.database, o.result) for o in result.outcomes if o.action.kind == "create_replica"] == [
            ("rs_two", DONE)]
        assert_follows(primary_server, replica_server, "rs_one", "rs_one")
    finally:
        primary_server.stop()
        replica_server.stop()


# --------------------------------------------------------------------------- scale

def test_fifty_databases_come_up_in_one_pass(tmp_path, primary_server, replica_server, primary, replica,
                                             prefix, follower_name):
    names = [f"{prefix}{i:02d}" for i in range(50)]
    for n in names:
        primary.create_database(n)
    immudb_data.write(primary_server, names[-1], 3)
    rec = reconciler_for(write_config(tmp_path, primary_server, replica_server, prefix, follower_name))
    result = rec.run_pass()
    assert result.ok
    assert sum(1 for o in result.outcomes if o.action.kind == "create_replica" and o.result == DONE) == 50
    infos = {d.name: d for d in replica.list_databases()}
    assert all(infos[n].is_replica for n in names)
    assert_follows(primary_server, replica_server, names[-1], names[-1])
    # a pass that changes nothing costs the same few RPCs whatever the number of databases
    calls = rec.primary.calls + rec.replica.calls
    assert rec.run_pass().plan.in_sync
    assert rec.primary.calls + rec.replica.calls - calls <= 4


# --------------------------------------------------------------------------- the daemon

def test_reconcile_once_creates_new_replicas_in_batches(tmp_path, primary_server, replica_server, primary, replica,
                                                       prefix, follower_name):
    names = [f"{prefix}{i}" for i in range(5)]
    for n in names:
        primary.create_database(n)
    path = write_config(tmp_path, primary_server, replica_server, prefix, follower_name,
                        max_new_replicas=2, batch_interval=1)
    plan = run_cli("plan", "-c", str(path))
    assert plan.returncode == 2
    assert f"+ 3 more replica databases wait for the next passes (reconcile.max_new_replicas: 2): " \
           f"{names[2]}, {names[3]}, {names[4]}" in plan.stdout
    result = run_cli("reconcile", "--once", "-c", str(path))
    assert result.returncode == 0, result.stderr
    # three passes: 2 + 2 + 1
    assert result.stdout.count("Next batch of") == 2, result.stdout
    assert [line.split()[3] for line in result.stdout.splitlines() if line.startswith("+ create replica")] == names
    assert {d.name for d in replica.list_databases() if d.is_replica} >= set(names)


def test_daemon_runs_the_next_batch_after_batch_interval(tmp_path, primary_server, replica_server, primary,
                                                         replica, prefix, follower_name):
    names = [f"{prefix}{i}" for i in range(4)]
    for n in names:
        primary.create_database(n)
    path = write_config(tmp_path, primary_server, replica_server, prefix, follower_name,
                        interval=3600, max_new_replicas=1, batch_interval=1)
    with running_daemon(path) as done:
        wait_on_replica(replica, names, 60)  # long before the 3600 s interval
    assert done["returncode"] == 0, done["err"]
    # one database per pass: four passes made a change
    assert done["err"].count("pass_done") == 4, done["err"]


def test_run_reconciles_at_start_and_stops_cleanly_on_sigterm(tmp_path, primary_server, replica_server, primary,
                                                              replica, prefix, follower_name):
    name = f"{prefix}daemon"
    create_with_data(primary, primary_server, name, 3)
    path = write_config(tmp_path, primary_server, replica_server, prefix, follower_name, password="Daemon-pw-77",
                        interval=1)
    with running_daemon(path) as done:
        wait_on_replica(replica, [name], 30)
        # a database created while it runs is picked up by a later pass (interval 1 s)
        create_with_data(primary, primary_server, f"{prefix}later", 2)
        wait_on_replica(replica, [f"{prefix}later"], 30)
    out, err = done["out"], done["err"]
    assert done["returncode"] == 0, err
    assert "started" in err and "stopped" in err
    assert "Traceback" not in err
    for secret in ("Daemon-pw-77", primary_server.password):
        assert secret not in out + err


OLD_IMMUDB = "1.10.0"  # before 1.11.1, DatabaseListV2 fails while any database is unloaded


@pytest.fixture(scope="module")
def old_immudb(immudb_build):
    """immudb 1.10.0 built from the Go module proxy (cached like the default version)."""
    from tests.support.servers import ServerError, build_immudb
    try:
        return build_immudb(OLD_IMMUDB)
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_on_immudb_before_1_11_1_a_pass_loads_an_unloaded_replica_to_list_them(tmp_path, old_immudb):
    """A replica database unloaded by hand made every DatabaseListV2 of
    the replica fail ("already closed"), so every later pass failed until
    someone loaded it. The pass now loads the databases it knows, lists
    again and goes on; `plan` (which changes nothing) says why instead."""
    p = ImmudbServer("primary-old", tmp_path / "p", version=OLD_IMMUDB).start()
    r = ImmudbServer("replica-old", tmp_path / "r", version=OLD_IMMUDB).start()
    try:
        prefix = "old_"
        with admin_for(p, "setup") as admin:
            for name in (f"{prefix}a", f"{prefix}b"):
                admin.create_database(name)
        path = write_config(tmp_path, p, r, prefix, "fol_old")
        assert run_cli("reconcile", "--once", "-c", str(path)).returncode == 0
        with admin_for(r, "by hand") as replica:
            replica.unload(f"{prefix}a")
            with pytest.raises(Exception, match="already closed"):
                replica.list_databases()  # what the old server does
        planned = run_cli("plan", "-c", str(path))
        assert planned.returncode == 1 and "before 1.11.1 cannot list" in planned.stderr
        done = run_cli("reconcile", "--once", "-c", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        with admin_for(r, "check") as replica:
            assert all(d.loaded for d in replica.list_databases())
        unload = write_config(tmp_path, p, r, prefix, "fol_old", name="unload.yaml", on_primary_removed="unload")
        refused = run_cli("reconcile", "--once", "-c", str(unload))
        assert refused.returncode == 1 and "needs immudb 1.11.1 or newer on the replica" in refused.stderr
    finally:
        p.stop()
        r.stop()
