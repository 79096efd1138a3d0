"""Faults: real processes killed or frozen with signals in the middle of the
work, and what is left afterwards. Each scenario is listed in
docs/reliability.md. Servers that a test kills or freezes are its own, so
that no other test sees the damage."""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from reconciler import config
from reconciler.reconcile import Reconciler
from tests.support import immudb_data
from tests.support.checks import assert_all_loaded, is_unloaded
from tests.support.cli import replicator
from tests.support.configs import unique_name, write_config
from tests.support.daemon import Daemon
from tests.support.servers import LISTS_WHILE_UNLOADED, admin_for
from tests.support.targets import target_dict
from tests.support.waiting import patient, wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.faults, pytest.mark.servers]


def reconciler(tmp_path: Path, p, r, prefix: str, timeout: float = 5, **reconcile) -> Reconciler:
    path = write_config(tmp_path, p, r, prefix, "follower", name=f"{unique_name('cfg')}.yaml", timeout=timeout,
                        max_new_replicas=0, **reconcile)
    return Reconciler.from_config(config.load(path, env={}))


def follows(p, r, name: str, timeout: float = 90) -> bool:
    want, got = immudb_data.wait_caught_up(p, r, name, name, timeout=timeout)
    return got == want


# --------------------------------------------------------------------------- the primary

def test_primary_sigkilled_during_a_pass_then_restarted(tmp_path, pair):
    """The primary dies while the pass is granting the follower its
    databases. The next pass (after a restart) completes; nothing is created
    twice and every replica has a follower that may export its database."""
    p, r = pair()
    prefix = "k_"
    names = [f"{prefix}{i:03d}" for i in range(60)]
    with admin_for(p, "setup") as admin:
        for n in names:
            admin.create_database(n)
    immudb_data.write(p, names[0], 3)
    rec = reconciler(tmp_path, p, r, prefix, timeout=30)  # listing right after 60 creations is slow
    first: list = []
    worker = threading.Thread(target=lambda: first.append(rec.run_pass()))
    with admin_for(p, "watch") as watch:
        worker.start()
        # kill as soon as the follower exists (its grants and the replicas follow it)
        wait_for(lambda: any(u.name == "follower" for u in watch.list_users()), 30, "the follower user",
                 interval=0.005)
    p.process.kill()
    worker.join(60)
    assert first and not first[0].ok  # the pass saw the primary go
    p.process.start()  # same port, same data
    second = rec.run_pass()
    assert second.ok, second.error or [o.line() for o in second.failed]  # a second "create" would fail
    third = rec.run_pass()
    assert third.plan.in_sync, third.plan.lines()
    with admin_for(p, "check") as admin:
        follower = next(u for u in admin.list_users() if u.name == "follower")
    assert all(follower.may_export(n) for n in names)
    replicas = {d.name: d for d in rec.replica.list_databases()}
    assert all(replicas[n].is_replica and replicas[n].loaded for n in names)
    for n in (names[0], names[-1]):
        immudb_data.write(p, n, 2, prefix="after")
        assert follows(p, r, n)
    rec.close()


def test_primary_frozen_calls_time_out_and_the_daemon_keeps_answering(tmp_path, pair):
    """SIGSTOP on the primary, as a network stall: passes fail within the
    configured timeout, /livez and /status answer meanwhile, and after SIGCONT
    the daemon reconciles again without help."""
    p, r = pair()
    prefix = "z_"
    with admin_for(p, "setup") as admin:
        admin.create_database(f"{prefix}one")
    # a pass hangs on the frozen primary for this long; an API that waited for the pass would
    # take as long to answer, and the requests below give up after half of it
    pass_timeout = 20
    d = Daemon(tmp_path, p, r, prefix, reconcile={"interval": 1}, primary={"timeout": pass_timeout}).start()
    try:
        wait_for(lambda: d.request("GET", "/status")[1]["databases"], 30, "the first pass")
        p.process.signal(signal.SIGSTOP)
        try:
            def failed_pass():
                live, _ = d.request("GET", "/livez", token=None, timeout=pass_timeout / 2)
                status, body = d.request("GET", "/status", timeout=pass_timeout / 2)
                assert (live, status) == (200, 200)
                last = body["last_pass"]
                return last if last and not last["ok"] else None
            failed = wait_for(failed_pass, 60, "a failed pass while the primary is frozen", interval=0.2)
            assert f"primary (127.0.0.1:{p.port})" in failed["error"]
            assert f"no answer within {pass_timeout}s" in failed["error"]
        finally:
            p.process.signal(signal.SIGCONT)
        with admin_for(p, "later") as admin:
            admin.create_database(f"{prefix}two")
        wait_for(lambda: f"{prefix}two" in {x["name"] for x in d.request("GET", "/status")[1]["databases"]}
                 and d.request("GET", "/status")[1]["last_pass"]["ok"], 60, "a pass after SIGCONT")
        assert follows(p, r, f"{prefix}two")
    finally:
        assert d.stop() == 0
    assert "Traceback" not in d.output()


def test_token_expiry_between_passes_logs_in_again(tmp_path, pair):
    """immudb's tokens last --token-expiry-time minutes (default 24 h); with
    1 minute, a pass after 65 s uses expired tokens on both servers."""
    p, r = pair("--token-expiry-time", "1", replica_args=("--token-expiry-time", "1"))
    prefix = "x_"
    with admin_for(p, "setup") as admin:
        admin.create_database(f"{prefix}one")
    rec = reconciler(tmp_path, p, r, prefix)
    assert rec.run_pass().ok
    logins = rec.primary.logins + rec.replica.logins
    time.sleep(65)
    with admin_for(p, "later") as admin:
        admin.create_database(f"{prefix}two")
    result = rec.run_pass()
    assert result.ok, result.error or [o.line() for o in result.failed]
    assert rec.primary.logins + rec.replica.logins > logins  # it did log in again
    assert follows(p, r, f"{prefix}two")
    rec.close()


# --------------------------------------------------------------------------- backups

def freeze_sftp(sftp_server) -> None:
    subprocess.run(["pkill", "-STOP", "-u", sftp_server.username], check=False)


def thaw_sftp(sftp_server) -> None:
    subprocess.run(["pkill", "-CONT", "-u", sftp_server.username], check=False)


def sftp_target(sftp_server, folder: str) -> dict:
    return {"type": "sftp", "path": f"{sftp_server.upload_dir}/{folder}/b-{{timestamp}}.tar",
            "host": "127.0.0.1", "port": sftp_server.port, "username": sftp_server.username,
            "password": sftp_server.password, "known_hosts_file": str(sftp_server.known_hosts),
            "create_dirs": True, "timeout": 120}


def test_replica_sigkilled_during_a_backup(tmp_path, pair, sftp_server):
    """The replica dies while a database is unloaded and streaming to an SFTP
    target: the backup fails, no archive (final or partial) is left; after
    the replica restarts, one pass loads everything and replication goes on."""
    p, r = pair()
    prefix = "rk_"
    names = [f"{prefix}a", f"{prefix}b"]
    with admin_for(p, "setup") as admin:
        for n in names:
            admin.create_database(n)
    immudb_data.write_blobs(p, names[0], 40)
    immudb_data.write(p, names[1], 5)
    folder = unique_name("rk")
    d = Daemon(tmp_path, p, r, prefix, backup={"compression": "none",
                                                "targets": {"remote": sftp_target(sftp_server, folder)}}).start()
    try:
        wait_for(lambda: len(d.request("GET", "/status")[1]["databases"]) == 2, 60, "the replicas")
        assert all(follows(p, r, n) for n in names)
        assert d.request("POST", "/backup/start", {"target": "remote"})[0] == 202
        wait_for(lambda: d.request("GET", "/backup/status")[1]["bytes_done"], 30, "the backup to stream")
        freeze_sftp(sftp_server)
        try:
            assert d.request("GET", "/backup/status")[1]["current_database"] == names[0]
            r.process.kill()
        finally:
            thaw_sftp(sftp_server)
        body = d.wait_backup(timeout=120)
        assert body["last_result"]["result"] == "error"
        assert f"replica (127.0.0.1:{r.port})" in body["last_result"]["error"]
        left = sftp_server.upload_dir / folder
        assert not left.exists() or list(left.iterdir()) == []  # no final archive, no partial one
        r.process.start()
        # the next pass (interval 3600: ask for it with a reload-free restart of the daemon)
    finally:
        d.stop()
    d2 = Daemon(tmp_path, p, r, prefix).start()
    try:
        wait_for(lambda: d2.request("GET", "/status")[1]["last_pass"], 60, "one pass")
        with admin_for(r, "check") as replica:
            assert_all_loaded(replica, names)
        immudb_data.write(p, names[0], 3, prefix="after")
        assert follows(p, r, names[0])
    finally:
        assert d2.stop() == 0


def test_replicator_sigkilled_mid_backup_is_cleaned_up_at_restart(tmp_path, request, pair, s3_server):
    """SIGKILL of the replicator itself, twice: once while a database is
    unloaded and its archive half written to a `file` target, once while a
    staged copy streams to S3 as a multipart upload. After a restart, within
    one pass: every database loaded, the partial file, the staging copy and
    the multipart upload gone."""
    p, r = pair()
    prefix = "sk_"
    name = f"{prefix}big"
    with admin_for(p, "setup") as admin:
        admin.create_database(name)
    immudb_data.write_blobs(p, name, 80)
    out = tmp_path / "out"
    staging = tmp_path / "staging"
    cloud = target_dict("s3", tmp_path, request)
    bucket = cloud["path"][len("s3://"):].split("/")[0]
    s3 = s3_server.client()
    targets = {"local": {"type": "file", "path": str(out / "l-{timestamp}.tar.gz")}, "cloud": cloud}
    # gzip -9 (zlib-ng): a steady, slow stream, so the database stays unloaded for a while
    slow = {"compression": "gzip", "compression_level": 9, "targets": targets}

    # 1. killed while streaming to a file: the database is unloaded, a .partial file exists
    d = Daemon(tmp_path, p, r, prefix, backup=slow).start()
    wait_for(lambda: d.request("GET", "/status")[1]["databases"], 60, "the replica")
    assert follows(p, r, name)
    with admin_for(r, "watch") as replica:
        def unloaded():
            return is_unloaded(replica, name)
        assert d.request("POST", "/backup/start", {"target": "local"})[0] == 202
        wait_for(unloaded, 60, "the backup to unload the database", interval=0.01)
        d.proc.send_signal(signal.SIGSTOP)  # caught while it streams the unloaded database
        assert unloaded(), d.output()[-2000:]
        d.stop(signal.SIGKILL)
    assert [f.name for f in out.iterdir() if f.name.endswith(".partial")]

    # the restart repairs it within its first pass
    with_staging = {**slow, "staging_dir": str(staging)}
    d = Daemon(tmp_path, p, r, prefix, backup=with_staging).start()
    wait_for(lambda: d.request("GET", "/status")[1]["last_pass"], 60, "the first pass")
    with admin_for(r, "check") as replica:
        assert_all_loaded(replica, [name])
    assert list(out.iterdir()) == []
    assert "partial_removed" in d.output()

    # 2. killed while a staged copy streams to S3: a staging copy and a pending multipart upload
    assert d.request("POST", "/backup/start", {"target": "cloud"})[0] == 202
    wait_for(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), 120, "a multipart upload",
             interval=0.2)
    d.stop(signal.SIGKILL)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert list(staging.iterdir())

    d = Daemon(tmp_path, p, r, prefix, backup=with_staging).start()
    try:
        wait_for(lambda: d.request("GET", "/status")[1]["last_pass"], 60, "the first pass")
        with admin_for(r, "check") as replica:
            assert_all_loaded(replica, [name])
        assert list(staging.iterdir()) == []
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
        assert "staging_removed" in d.output()
    finally:
        assert d.stop() == 0


def test_a_backup_asked_for_while_recovery_runs_at_start_is_refused_saying_why(tmp_path, primary, primary_server,
                                                                                replica_server, sftp_server):
    """At start the daemon cleans what a killed backup may have left on every
    target, holding the backup lock. A backup asked for meanwhile (here the
    SSH server stops answering, so the cleanup waits) gets 409 saying that,
    not "a backup is already running" (none is); once the cleanup is done
    the same request starts a backup that succeeds."""
    prefix = unique_name("rc") + "_"
    name = f"{prefix}db"
    primary.create_database(name)
    d = Daemon(tmp_path, primary_server, replica_server, prefix,
               backup={"targets": {"remote": sftp_target(sftp_server, unique_name("rc"))}})
    sftp_server.process.signal(signal.SIGSTOP)
    try:
        d.start()
        wait_for(lambda: "recovery_started" in d.output(), 60, "the cleanup at start")
        status, body = d.request("POST", "/backup/start", {"target": "remote"})
        assert status == 409 and "interrupted backup" in str(body) and "already running" not in str(body), body
    finally:
        sftp_server.process.signal(signal.SIGCONT)
    try:
        wait_for(lambda: "recovery_done" in d.output(), 180, "the cleanup to finish")
        wait_for(lambda: [db for db in d.request("GET", "/status")[1]["databases"] if db["name"] == name
                          and db["state"] == "in_sync"], 60, "the replica of the database")
        assert d.request("POST", "/backup/start", {"target": "remote"})[0] == 202
        assert d.wait_backup()["last_result"]["result"] == "ok"
    finally:
        assert d.stop() == 0


# --------------------------------------------------------------------------- load

def test_hundred_concurrent_backup_requests_and_status_under_load(tmp_path, primary, primary_server,
                                                                   replica_server, replica, sftp_server):
    """100 simultaneous POST /backup/start while the SFTP server of the
    winner's target is frozen (so it still runs when the last arrives): exactly
    one 202, 99 409s. Then a backup that keeps both cores busy (zstd at its
    highest level): /backup/status answers all along."""
    prefix = unique_name("cc") + "_"
    name = f"{prefix}big"
    primary.create_database(name)
    immudb_data.write_blobs(primary_server, name, 30)
    d = Daemon(tmp_path, primary_server, replica_server, prefix, backup={
        "compression": "zstd", "compression_level": 22, "targets": {
        "remote": sftp_target(sftp_server, unique_name("cc")),
        "local": {"type": "file", "path": str(tmp_path / "out" / "c-{timestamp}.tar.zst")}}}).start()
    try:
        wait_for(lambda: d.request("GET", "/status")[1]["databases"], 60, "the replica")
        assert follows(primary_server, replica_server, name)
        barrier = threading.Barrier(100)
        statuses: list[int] = []

        def post():
            barrier.wait()
            statuses.append(d.request("POST", "/backup/start", {"target": "remote"}, timeout=60)[0])

        # the SSH server itself stops answering: the winner's backup waits for its banner
        sftp_server.process.signal(signal.SIGSTOP)
        try:
            threads = [threading.Thread(target=post) for _ in range(100)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert d.request("GET", "/backup/status")[1]["running"]
        finally:
            sftp_server.process.signal(signal.SIGCONT)
        assert sorted(statuses) == [202] + [409] * 99
        assert d.wait_backup()["last_result"]["result"] == "ok"

        assert d.request("POST", "/backup/start", {"target": "local"})[0] == 202
        seen_running = 0
        while True:
            status, body = d.request("GET", "/backup/status", timeout=patient(10))
            assert status == 200, body
            if not body["running"]:
                break
            seen_running += 1
            time.sleep(0.1)
        assert seen_running > 0
        assert d.wait_backup()["last_result"]["result"] == "ok"
    finally:
        assert d.stop() == 0
    assert_all_loaded(replica, [name])


@pytest.mark.timeout(patient(1500))
@pytest.mark.skipif(not LISTS_WHILE_UNLOADED, reason="immudb before 1.11.1 cannot list while a backup holds a "
                    "database unloaded: passes are skipped then (tests/test_backup.py checks that), never busy")
def test_passes_every_second_during_a_backup_of_200_databases(tmp_path, pair, sftp_server):
    """200 replica databases backed up one after the other (each unloaded in
    turn) while a pass runs every second. Midway, the SFTP target freezes, so
    the backup holds one database unloaded until a pass has seen it: that
    pass leaves it alone (busy). At the end the backup is whole, no pass
    acted on any database while the backup ran, none is left unloaded."""
    import json

    from reconciler.backup.archive import verify
    p, r = pair()
    prefix = "l_"
    names = [f"{prefix}{i:03d}" for i in range(200)]
    with admin_for(p, "setup", timeout=60) as admin:
        for n in names:
            immudb_data.create_small_database(admin, n)
    for n in names[::50]:
        immudb_data.write(p, n, 3)
    folder = unique_name("l")
    d = Daemon(tmp_path, p, r, prefix, logging={"format": "json"},
               primary={"timeout": 60}, replica={"timeout": 60},
               reconcile={"interval": 1, "max_new_replicas": 100, "batch_interval": 1},
               backup={"compression": "none", "targets": {"remote": sftp_target(sftp_server, folder)}})
    d.start()
    try:
        def all_in_sync():
            dbs = d.request("GET", "/status", timeout=60)[1]["databases"]
            return len(dbs) == 200 and all(x["state"] == "in_sync" for x in dbs)
        # waits scaled to the work: a few seconds per database on an idle machine
        wait_for(all_in_sync, 3 * len(names), "200 replicas in sync", interval=1)
        assert d.request("POST", "/backup/start", {"target": "remote"})[0] == 202
        wait_for(lambda: d.request("GET", "/backup/status")[1]["databases_done"] >= 20, 3 * 20, "20 databases")
        freeze_sftp(sftp_server)
        try:
            # the backup blocks on its next write to the target, holding the database it streams
            holding = d.wait_backup_stalled()["current_database"]
            with admin_for(r, "check", timeout=60) as replica:
                assert not {x.name: x for x in replica.list_databases()}[holding].loaded

            def seen_busy():
                dbs = {x["name"]: x for x in d.request("GET", "/status", timeout=60)[1]["databases"]}
                return dbs[holding]["state"] == "busy"
            wait_for(seen_busy, 120, f"a pass to see {holding} busy", interval=1)
            with admin_for(r, "check", timeout=60) as replica:  # and it did not load it
                assert not {x.name: x for x in replica.list_databases()}[holding].loaded
        finally:
            thaw_sftp(sftp_server)
        result = d.wait_backup(timeout=3 * len(names))["last_result"]
        assert result["result"] == "ok", result
        assert len(result["databases"]) == 200
    finally:
        assert d.stop() == 0
    [archive] = list((sftp_server.upload_dir / folder).iterdir())
    with open(archive, "rb") as stream:
        checked = verify(stream)
    assert checked.ok, checked.problems
    assert sorted(checked.databases) == names
    with admin_for(r, "check", timeout=60) as replica:
        assert_all_loaded(replica, names)
    events = [json.loads(line) for line in d.output().splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    start, done = kinds.index("backup_started"), kinds.index("backup_done")
    acted = [e for e in events[start:done] if e["event"] in ("action_done", "action_failed")]
    assert acted == [], acted[:5]


# --------------------------------------------------------------------------- targets that cannot take the archive

def _misconfigured(kind: str, case: str, tmp_path, request) -> dict:
    t = target_dict(kind, tmp_path, request)
    if case == "bucket missing":
        t["path"] = f"s3://{unique_name('nobucket').replace('_', '-')}/a-{{timestamp}}.tar.gz"
    elif case == "wrong secret key":
        t["secret_key"] = "Wrong-S3-secret-77"
    elif case == "remote directory missing":
        t["path"] = t["path"].rsplit("/", 1)[0] + "/not/there/a-{timestamp}.tar.gz"
        t["create_dirs"] = False
    return t


@pytest.mark.parametrize("kind,case,says", [
    ("s3", "bucket missing", "does not exist"),
    ("s3", "wrong secret key", "access key and secret key"),
    ("sftp", "remote directory missing", "not/there"),
])
def test_target_that_cannot_take_the_archive_fails_clearly(kind, case, says, tmp_path, request, primary_server,
                                                           replica_server, replica, replicated):
    prefix, names, _ = replicated
    target = _misconfigured(kind, case, tmp_path, request)
    path = write_config(tmp_path, primary_server, replica_server, prefix, targets={"broken": target})
    done = replicator("backup", "-c", str(path), "--target", "broken", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "broken" in error and says in error, error
    assert "Traceback" not in done.stderr and "Wrong-S3-secret-77" not in done.stdout + done.stderr
    assert_all_loaded(replica, names)
    if kind == "s3" and case == "wrong secret key":
        bucket = target["path"][len("s3://"):].split("/")[0]
        s3 = request.getfixturevalue("s3_server").client()
        assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --------------------------------------------------------------------------- slow HTTP clients

def test_slow_clients_do_not_stop_the_api(tmp_path, primary_server, replica_server):
    """60 connections that send half a request (headers, or a body shorter
    than its Content-Length) and then wait: the API still answers everyone
    else at once; the stalled requests never reach a handler."""
    import socket

    from tests.support.daemon import TOKEN
    d = Daemon(tmp_path, primary_server, replica_server, unique_name("sl") + "_").start()
    stalled = []
    try:
        for i in range(60):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            if i % 2:
                s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")  # headers never end
            else:
                s.sendall(b"POST /backup/start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"tar")
            stalled.append(s)
        for _ in range(5):
            assert d.request("GET", "/livez", token=None, timeout=patient(5))[0] == 200
            assert d.request("GET", "/status", timeout=patient(5))[0] == 200
            assert d.request("GET", "/backup/status", timeout=patient(5))[1]["running"] is False
    finally:
        for s in stalled:
            s.close()
        assert d.stop() == 0
    assert "backup_started" not in d.output() and "Traceback" not in d.output()
