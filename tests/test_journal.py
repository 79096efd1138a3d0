"""Continuous backup on the real servers and targets: every write on the
primary reaches the target within the RPO through the replica's journal; a
replicator killed mid-segment and a target stopped mid-upload both resume
with no gap and no duplicate; segments lost on the target are exported
again; restore to a transaction in the middle of a segment, or to a time,
gives exactly that state; a tampered segment is refused naming the
transaction."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from reconciler import config
from reconciler.config.model import ContinuousConfig, TargetConfig
from reconciler.journal import format as jf
from reconciler.journal import shipper
from reconciler.journal.shipper import Journal
from reconciler.journal.store import JournalStore, newest
from reconciler.reconcile import Reconciler
from tests.support import immudb_data
from tests.support.cli import replicator
from tests.support.configs import unique_name, write_config
from tests.support.daemon import Daemon
from tests.support.exported import open_segment, reseal
from tests.support.servers import admin_for, serving
from tests.support.targets import KINDS, sftp_target, target_config
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
RPO = 1.0  # segment_max_seconds in these tests


run = replicator


def journal(replica, name: str, target_cfg, tmp_path: Path, **settings) -> Journal:
    settings = ContinuousConfig(target_cfg.name, **{"segment_max_seconds": RPO, **settings})
    return Journal(name, replica, lambda: JournalStore(target_cfg, name), settings, tmp_path / "spool",
                   target_cfg.name)


def segments_on(target_cfg, name: str) -> list[jf.SegmentName]:
    with JournalStore(target_cfg, name) as store:
        return store.segments()


def assert_whole(target_cfg, name: str, last_tx: int) -> None:
    """The target holds transactions 1..last_tx of `name`, each exactly
    once, in segments that chain, every one readable and checked."""
    with JournalStore(target_cfg, name) as store:
        segs = store.segments()
        ranges = [(s.first_tx, s.last_tx) for s in segs]
        expected = 1
        for first, last in ranges:
            assert first == expected, f"gap or duplicate at {first} (expected {expected}): {ranges}"
            expected = last + 1
        assert expected - 1 == last_tx, ranges
        prev = jf.GENESIS_ALH
        for s in segs:
            with store.open(s.name) as stream:
                info, txs = jf.decode_segment(stream, s)
                assert info.prev_alh == prev
                prev = jf.check_chain(list(txs), prev)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (sshd forks a process per session)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def primary_alh(primary, name: str, tx_id: int) -> bytes:
    with primary.follow(name, tx_id, wait=10) as feed:
        for exported in feed:
            return jf.parse_tx(exported.data).header.alh
    raise AssertionError(f"no transaction {tx_id} on the primary")


@pytest.mark.faults
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_write_on_the_primary_is_on_the_target_within_the_rpo(tmp_path, request, kind, followed, primary_server,
                                                               replica_server, replica, primary):
    prefix, name = followed(10)
    target_cfg = target_config(kind, tmp_path, request)
    j = journal(replica, name, target_cfg, tmp_path)
    j.start()
    try:
        wait_for(lambda: j.snapshot()["shipped_tx"] >= 10, 30, "the first 10 transactions on the target")
        for i in range(3):
            immudb_data.write(primary_server, name, 1, prefix=f"late{i}_")
            tx_id = immudb_data.state(primary_server, name)[0]
            # replication (well under a second here) + the RPO + the upload
            wait_for(lambda: j.snapshot()["shipped_tx"] >= tx_id, RPO + 5, f"transaction {tx_id} shipped")
        status = j.snapshot()
        assert status["state"] == "shipping" and status["error"] is None
        assert status["lag_transactions"] == 0 and status["replica_tx"] == tx_id
        assert status["shipped_transactions"] == tx_id and status["spool_bytes"] == 0
    finally:
        j.stop()
    assert_whole(target_cfg, name, tx_id)
    with JournalStore(target_cfg, name) as store:
        tip = newest(store.segments())
        with store.open(tip.name) as stream:
            info, txs = jf.decode_segment(stream, tip)
            last = list(txs)[-1]
    assert b"late2_0" in last.data and info.last_alh == primary_alh(primary, name, tx_id)
    assert info.database == name


def test_restore_to_a_transaction_in_the_middle_of_a_segment_and_to_a_time(tmp_path, followed, primary_server,
                                                                        replica_server, replica, primary):
    prefix, name = followed(0)
    written = immudb_data.write(primary_server, name, 40, prefix="k")  # transactions 1..40, key k<i> in tx i+1
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    cfg_path = write_config(tmp_path, primary_server, replica_server, prefix, name="restore.yaml",
                            targets={"local": target})
    target_cfg = TargetConfig("local", "file", target["path"])
    j = journal(replica, name, target_cfg, tmp_path, segment_max_seconds=30)  # one segment of 1..40
    j.start()
    try:
        wait_for(lambda: j.snapshot()["exported_tx"] >= 40 or j.snapshot()["shipped_tx"] >= 40, 60,
                 "40 transactions exported")
    finally:
        j.stop()  # closes the open segment
    segs = segments_on(target_cfg, name)
    assert [(s.first_tx, s.last_tx) for s in segs] == [(1, 40)]

    done = run("restore", "-c", str(cfg_path), "--target", "local", "--database", name, "--to-tx", "17",
               "--as", f"{prefix}r17", "--server", "replica")
    assert done.returncode == 0, done.stderr
    assert "transaction 17 of" in done.stdout and primary_alh(primary, name, 17).hex() in done.stdout
    restored = f"{prefix}r17"
    assert immudb_data.state(replica_server, restored) == (17, primary_alh(primary, name, 17))
    got = immudb_data.read(replica_server, restored, [b"k16", b"k17"])
    assert got == {b"k16": written[b"k16"], b"k17": None}  # key k<i> is in transaction i + 1
    # an ordinary database again: it takes writes
    immudb_data.write(replica_server, restored, 1, prefix="after")

    # to a time: the last transaction at or before it
    with JournalStore(target_cfg, name) as store:
        with store.open(segs[0].name) as stream:
            _, txs = jf.decode_segment(stream, segs[0])
            stamps = {tx.id: tx.header.ts for tx in txs}
    when = stamps[20]
    last_at = max(t for t, ts in stamps.items() if ts <= when)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    done = run("restore", "-c", str(cfg_path), "--target", "local", "--database", name, "--to-time", iso,
               "--as", f"{prefix}rt", "--server", "replica")
    assert done.returncode == 0, done.stderr
    assert immudb_data.state(replica_server, f"{prefix}rt")[0] == last_at

    # beyond the journal: refused, nothing created
    done = run("restore", "-c", str(cfg_path), "--target", "local", "--database", name, "--to-tx", "41",
               "--as", f"{prefix}r41", "--server", "replica")
    assert done.returncode == 1 and "not in the journal" in done.stderr and "1-40" in done.stderr
    assert f"{prefix}r41" not in {d.name for d in replica.list_databases()}


@pytest.mark.faults
def test_a_tampered_segment_is_refused_naming_the_transaction(tmp_path, followed, primary_server, replica_server,
                                                              replica):
    prefix, name = followed(12)
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    cfg_path = write_config(tmp_path, primary_server, replica_server, prefix, name="tamper.yaml",
                            targets={"local": target})
    target_cfg = TargetConfig("local", "file", target["path"])
    j = journal(replica, name, target_cfg, tmp_path, segment_max_seconds=30)
    j.start()
    try:
        wait_for(lambda: j.snapshot()["exported_tx"] >= 12, 60, "12 transactions exported")
    finally:
        j.stop()
    [seg] = segments_on(target_cfg, name)
    path = Path(target["path"]).parent / "journal" / name / seg.name
    blob = path.read_bytes()
    _, raw = open_segment(blob)
    with open(path, "rb") as stream:
        [forged_tx] = [tx.id for tx in jf.decode_segment(stream, seg).transactions if b"value-early-7value" in tx.data]
    value = b"value-early-7" * 3
    assert raw.count(value) == 1
    raw = raw.replace(value, b"VALUE" + value[5:])  # the same length: only the hashes can tell
    path.write_bytes(reseal(blob, raw))  # a forgery whose checksums match

    done = run("restore", "-c", str(cfg_path), "--target", "local", "--database", name, "--to-end",
               "--as", f"{prefix}forged", "--server", "replica")
    assert done.returncode == 1
    assert f"transaction {forged_tx}: its entries do not match" in done.stderr, done.stderr
    assert f"{prefix}forged" not in {d.name for d in replica.list_databases()}  # the half-restored one is gone
    # a segment found forged is trusted for nothing: not even the transactions before the forged one
    done = run("restore", "-c", str(cfg_path), "--target", "local", "--database", name, "--to-tx", str(forged_tx - 1),
               "--as", f"{prefix}before", "--server", "replica")
    assert done.returncode == 1 and f"transaction {forged_tx}: its entries do not match" in done.stderr
    assert f"{prefix}before" not in {d.name for d in replica.list_databases()}


@pytest.mark.faults
def test_segments_lost_on_the_target_are_exported_again(tmp_path, followed, primary_server, replica, request):
    prefix, name = followed(0)
    target_cfg = target_config("file", tmp_path, request)
    j = journal(replica, name, target_cfg, tmp_path)
    j.start()
    try:
        for i in range(3):  # three segments at least: one write per RPO
            immudb_data.write(primary_server, name, 2, prefix=f"s{i}_")
            tx_id = immudb_data.state(primary_server, name)[0]
            wait_for(lambda: j.snapshot()["shipped_tx"] >= tx_id, 30, f"transaction {tx_id} shipped")
    finally:
        j.stop()
    segs = segments_on(target_cfg, name)
    assert len(segs) >= 3
    folder = Path(target_cfg.path).parent / "journal" / name
    (folder / segs[1].name).unlink()
    immudb_data.write(primary_server, name, 1, prefix="after")
    tx_id = immudb_data.state(primary_server, name)[0]
    j = journal(replica, name, target_cfg, tmp_path)
    j.start()
    try:
        wait_for(lambda: j.snapshot()["shipped_tx"] >= tx_id, 30, "the journal to catch up")
        assert j.snapshot()["gaps_filled"] == 1
    finally:
        j.stop()
    assert_whole(target_cfg, name, tx_id)


@pytest.mark.faults
def test_the_replicator_killed_mid_segment_resumes_with_no_gap_or_duplicate(tmp_path, followed, primary_server,
                                                                            replica_server, replica):
    prefix, name = followed(5)
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    continuous = {"target": "local", "segment_max_seconds": 60, "spool_dir": str(tmp_path / "spool")}
    d = Daemon(tmp_path, primary_server, replica_server, prefix,
               backup={"targets": {"local": target}, "continuous": continuous}).start()
    try:
        wait_for(lambda: d.request("GET", "/status")[1]["journal"], 60, "the journal to start")
        immudb_data.write(primary_server, name, 10, prefix="open")  # a segment open for 60 s
        tx_id = immudb_data.state(primary_server, name)[0]
        wait_for(lambda: d.request("GET", "/status")[1]["journal"][0]["replica_tx"] >= tx_id, 30,
                 "the journal to see the writes")
        metrics = d.request("GET", "/metrics", token=None)[1]
        assert f'replicator_journal_lag_seconds{{database="{name}"}}' in metrics
        assert f'replicator_journal_state{{database="{name}",state="shipping"}} 1.0' in metrics
    finally:
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    immudb_data.write(primary_server, name, 5, prefix="meanwhile")
    tx_id = immudb_data.state(primary_server, name)[0]
    d.data["backup"]["continuous"]["segment_max_seconds"] = RPO
    d.write_config()
    d.start()
    try:
        wait_for(lambda: (d.request("GET", "/status")[1]["journal"] or [{}])[0].get("shipped_tx", 0) >= tx_id,
                 60, "the journal to ship everything after the restart")
    finally:
        assert d.stop() == 0
    assert_whole(TargetConfig("local", "file", target["path"]), name, tx_id)
    assert not list((tmp_path / "spool" / name).iterdir())  # nothing left waiting


@pytest.mark.faults
def test_a_target_stopped_mid_upload_resumes_with_no_gap_or_duplicate(tmp_path, followed, primary_server, replica,
                                                                      sftp_server):
    prefix, name = followed(3)
    target_cfg = sftp_target(tmp_path, sftp_server)
    j = journal(replica, name, target_cfg, tmp_path, spool_max_bytes=4096)
    j.start()
    try:
        wait_for(lambda: j.snapshot()["shipped_tx"] >= 3, 30, "the first transactions shipped")
        frozen = process_tree(sftp_server.process.pid)  # the listener and the session already open
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            # incompressible values larger than the spool: the first segment waits in it, the second finds it full
            immudb_data.write_blobs(primary_server, name, 1, size=8 * 1024)
            first = immudb_data.state(primary_server, name)[0]
            wait_for(lambda: j.snapshot()["exported_tx"] >= first, 60, "the first segment spooled")
            immudb_data.write_blobs(primary_server, name, 1, size=8 * 1024)
            wait_for(lambda: j.snapshot()["state"] == "spool_full", 60, "the spool to fill")
            status = j.snapshot()
            assert status["lag_transactions"] > 0 and status["lag_seconds"] > 0
            assert status["spool_bytes"] <= 4096 + 9 * 1024  # one segment over at most: it stops, it does not grow
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        tx_id = immudb_data.state(primary_server, name)[0]
        wait_for(lambda: j.snapshot()["shipped_tx"] >= tx_id, 120, "the journal to catch up")
        assert j.snapshot()["state"] == "shipping"
    finally:
        j.stop()
    assert_whole(target_cfg, name, tx_id)


def test_list_journal_shows_each_database(tmp_path, followed, primary_server, replica_server, replica):
    prefix, name = followed(4)
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    cfg_path = write_config(tmp_path, primary_server, replica_server, prefix, name="list.yaml",
                            targets={"local": target})
    done = run("list", "-c", str(cfg_path), "--target", "local", "--journal")
    assert done.returncode == 0 and "no journal" in done.stdout
    target_cfg = TargetConfig("local", "file", target["path"])
    j = journal(replica, name, target_cfg, tmp_path)
    j.start()
    try:
        wait_for(lambda: j.snapshot()["shipped_tx"] >= 4, 30, "4 transactions shipped")
    finally:
        j.stop()
    done = run("list", "-c", str(cfg_path), "--target", "local", "--journal")
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith(name)]
    assert "1-4" in line and "complete from transaction 1: any point" in line


@pytest.mark.faults
def test_a_database_loaded_again_is_followed_at_once_even_after_failures(tmp_path, followed, primary_server,
                                                                       replica_server, replica, monkeypatch):
    """While a snapshot backup has the database unloaded, the journal's calls
    fail and it backs off; the backup's load kicks it, and it follows again
    at once rather than after its backoff (made an hour here, so only the
    kick can bring it back within the test)."""
    monkeypatch.setattr(shipper, "RETRY_FIRST", 3600.0)
    prefix, name = followed(3)
    j = journal(replica, name, TargetConfig("local", "file", str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")),
                tmp_path)
    j.start()
    try:
        wait_for(lambda: j.snapshot()["shipped_tx"] >= 3, 30, "3 transactions shipped")
        replica.unload(name)
        try:
            wait_for(lambda: j.snapshot()["state"] == "error", 60, "the journal to fail on the unloaded database")
        finally:
            replica.load(name)
        j.kick()
        immudb_data.write(primary_server, name, 2, prefix="after_load")
        tx_id = immudb_data.state(primary_server, name)[0]
        try:
            wait_for(lambda: j.snapshot()["shipped_tx"] >= tx_id, 60, f"transaction {tx_id} shipped")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; journal: {j.snapshot()}") from None
        assert j.snapshot()["state"] == "shipping"
    finally:
        j.stop()


@pytest.mark.faults
def test_a_snapshot_backup_of_a_journaled_database_leaves_the_journal_whole(tmp_path, followed, primary_server,
                                                                            replica_server, replica):
    """The backup unloads the database under the journal's waiting export
    calls and loads it again: the journal goes on, nothing missing, and the
    archive restores as before."""
    prefix, name = followed(5)
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    continuous = {"target": "local", "segment_max_seconds": RPO, "spool_dir": str(tmp_path / "spool")}
    d = Daemon(tmp_path, primary_server, replica_server, prefix,
               backup={"targets": {"local": target}, "continuous": continuous}).start()

    def shipped() -> int:
        return (d.request("GET", "/status")[1]["journal"] or [{}])[0].get("shipped_tx", 0)

    try:
        wait_for(lambda: shipped() >= 5, 60, "the journal to ship the first transactions")
        assert d.request("POST", "/backup/start", {"target": "local"})[0] == 202
        assert d.wait_backup()["last_result"]["result"] == "ok"
        immudb_data.write(primary_server, name, 3, prefix="after_backup")
        tx_id = immudb_data.state(primary_server, name)[0]
        wait_for(lambda: immudb_data.state(replica_server, name)[0] >= tx_id, 60,
                 "immudb to replicate the writes after the backup")
        wait_for(lambda: shipped() >= tx_id, 30, "the writes after the backup shipped")
        [status] = d.request("GET", "/status")[1]["journal"]
        assert status["state"] == "shipping" and status["error"] is None
    finally:
        assert d.stop() == 0
    assert_whole(TargetConfig("local", "file", target["path"]), name, tx_id)
    [archive] = [p for p in (tmp_path / "t").iterdir() if p.name.endswith(".tar.gz")]
    assert run("verify", "-c", str(d.config_path), str(archive)).returncode == 0


def test_reloads_start_and_stop_the_journal(tmp_path, followed, primary_server, replica_server, replica):
    prefix, name = followed(3)
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    d = Daemon(tmp_path, primary_server, replica_server, prefix, reconcile={"interval": 1},
               backup={"targets": {"local": target}}).start()
    try:
        wait_for(lambda: d.request("GET", "/status")[1]["last_pass"], 60, "a pass")
        assert d.request("GET", "/status")[1]["journal"] == []
        d.data["backup"]["continuous"] = {"target": "local", "segment_max_seconds": RPO,
                                          "spool_dir": str(tmp_path / "spool")}
        d.write_config()  # picked up by the daemon's config check, as a ConfigMap update is
        wait_for(lambda: any(j["database"] == name and j["shipped_tx"] >= 3
                             for j in d.request("GET", "/status")[1]["journal"]), 60, "the journal after the reload")
        del d.data["backup"]["continuous"]
        d.write_config()
        wait_for(lambda: d.request("GET", "/status")[1]["journal"] == [], 60, "the journal to stop")
        immudb_data.write(primary_server, name, 2, prefix="unjournaled")
        assert "replicator_journal_state{" not in d.request("GET", "/metrics", token=None)[1]
    finally:
        assert d.stop() == 0
    assert segments_on(TargetConfig("local", "file", target["path"]), name)[-1].last_tx == 3


@pytest.mark.faults
def test_a_snapshot_archive_is_a_base_and_retention_keeps_only_what_bases_need(tmp_path, followed, primary_server,
                                                                                replica_server, replica, immudb_build):
    prefix, name = followed(6)
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz"), "retention": {"keep_last": 1}}
    continuous = {"target": "local", "segment_max_seconds": RPO, "spool_dir": str(tmp_path / "spool")}
    d = Daemon(tmp_path, primary_server, replica_server, prefix,
               backup={"targets": {"local": target}, "continuous": continuous}).start()
    target_cfg = TargetConfig("local", "file", target["path"])

    def shipped() -> int:
        return (d.request("GET", "/status")[1]["journal"] or [{}])[0].get("shipped_tx", 0)

    try:
        wait_for(lambda: shipped() >= 6, 60, "the first transactions shipped")
        assert segments_on(target_cfg, name)[0].first_tx == 1
        assert d.request("POST", "/backup/start", {"target": "local"})[0] == 202
        assert d.wait_backup()["last_result"]["result"] == "ok"
        # the archive holds the database at transaction 6: the segments up to it are not needed any more
        wait_for(lambda: segments_on(target_cfg, name) == [] or segments_on(target_cfg, name)[0].first_tx > 6, 30,
                 "retention of the segments before the base")
        immudb_data.write(primary_server, name, 4, prefix="after_base")
        tx_id = immudb_data.state(primary_server, name)[0]
        wait_for(lambda: shipped() >= tx_id, 30, "the writes after the base shipped")
    finally:
        assert d.stop() == 0
    d.start()  # after a restart the journal does not export again what the base holds
    try:
        wait_for(lambda: (d.request("GET", "/status")[1]["journal"] or [{}])[0].get("state") == "shipping", 60,
                 "the journal after the restart")
        [status] = d.request("GET", "/status")[1]["journal"]
        assert status["gaps_filled"] == 0 and status["shipped_tx"] == tx_id
    finally:
        assert d.stop() == 0
    assert min(s.first_tx for s in segments_on(target_cfg, name)) == 7
    # what retention removed is covered by the base: not a gap
    listed = run("list", "-c", str(d.config_path), "--target", "local", "--journal")
    assert "older transactions removed by retention" in listed.stdout and "GAP" not in listed.stdout, listed.stdout
    assert "any point since" in listed.stdout, listed.stdout  # the window the retention keeps

    # a running server cannot take the archive's files: the error says what to do
    done = run("restore", "-c", str(d.config_path), "--target", "local", "--database", name, "--to-tx", str(tx_id - 1),
               "--as", f"{prefix}srv", "--server", "replica")
    assert done.returncode == 1 and "--data-dir" in done.stderr, done.stderr
    # into a new folder: the archive's database at 6, then the journal to tx_id - 1
    restored = tmp_path / "restored"
    done = run("restore", "-c", str(d.config_path), "--target", "local", "--database", name, "--to-tx", str(tx_id - 1),
               "--as", "pitr", "--data-dir", str(restored), "--immudb-binary", str(immudb_build / "immudb"))
    assert done.returncode == 0, done.stderr
    assert "snapshot immudb-" in done.stdout and "(transaction 6)" in done.stdout
    assert sorted(p.name for p in restored.iterdir()) == ["pitr"]  # the throwaway server's own folders are gone
    with serving(restored, tmp_path / "check") as check:
        assert immudb_data.state(check, "pitr")[0] == tx_id - 1
        got = immudb_data.read(check, "pitr", [b"after_base2", b"after_base3"])
        assert got[b"after_base2"] is not None and got[b"after_base3"] is None


def test_a_database_created_again_under_the_same_name_starts_a_new_journal(tmp_path, pair):
    """The old history is longer than the new one: resume and restore both
    take the new one (the replica confirms it; it was uploaded last).
    immudb takes a deleted database's name again only after a restart: the
    test has servers of its own."""
    primary_server, replica_server = pair()
    prefix = unique_name("ag") + "_"
    name = f"{prefix}db"
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    cfg_path = write_config(tmp_path, primary_server, replica_server, prefix, name="again.yaml",
                            targets={"local": target})
    target_cfg = TargetConfig("local", "file", target["path"])

    def follow(count: int) -> tuple:
        with admin_for(primary_server, "primary") as primary:
            primary.create_database(name)
        immudb_data.write(primary_server, name, count, prefix=f"h{count}_")
        rec = Reconciler.from_config(config.load(cfg_path, env={}))
        assert rec.run_pass().ok
        rec.close()
        want, got = immudb_data.wait_caught_up(primary_server, replica_server, name, name)
        assert got == want
        with admin_for(replica_server, "replica") as replica:
            j = journal(replica, name, target_cfg, tmp_path)
            j.start()
            try:
                wait_for(lambda: j.snapshot()["shipped_tx"] >= count, 30, f"{count} transactions shipped")
                return want, j.snapshot()
            finally:
                j.stop()

    follow(10)
    for server in (replica_server, primary_server):
        with admin_for(server, "admin") as admin:
            admin.unload(name)
            admin.delete(name)
        server.restart()
    want, status = follow(3)
    assert status["diverged"] == 1
    done = run("restore", "-c", str(cfg_path), "--target", "local", "--database", name, "--to-end",
               "--as", f"{prefix}second", "--server", "replica")
    assert done.returncode == 0, done.stderr
    assert immudb_data.state(replica_server, f"{prefix}second") == want


def test_defaultdbs_replica_is_journaled_like_any_other(tmp_path, pair):
    primary_server, replica_server = pair()  # its own: defaultdb is every test's
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    continuous = {"target": "local", "segment_max_seconds": RPO, "spool_dir": str(tmp_path / "spool")}
    immudb_data.write(primary_server, "defaultdb", 4, prefix="dflt")
    d = Daemon(tmp_path, primary_server, replica_server, "defaultdb",
               reconcile={"databases": {"include": ["defaultdb"]}},
               backup={"targets": {"local": target}, "continuous": continuous}).start()
    try:
        tx_id = immudb_data.state(primary_server, "defaultdb")[0]
        journals = wait_for(lambda: [j for j in d.request("GET", "/status")[1]["journal"]
                                     if j["shipped_tx"] >= tx_id], 60, "defaultdb's replica journaled")
        assert [j["database"] for j in journals] == ["defaultdbbak"]  # the replica's own defaultdb is not a replica
    finally:
        assert d.stop() == 0
    assert_whole(TargetConfig("local", "file", target["path"]), "defaultdbbak", tx_id)



@pytest.mark.faults
@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "encrypted"])
def test_history_truncated_on_the_replica_goes_on_from_the_next_snapshot_base(tmp_path, followed, primary_server,
                                                                           replica_server, replica, immudb_build,
                                                                           encrypted):
    """When the replica exports a transaction without its values (immudb's
    truncation), the journal cannot carry it and waits for a base; once a
    snapshot archive at or after it is on the journal's target, it goes on
    after that base, and restore takes the base and then the journal.

    immudb refuses a retention under an hour and a transaction replicated
    without values exports as corrupted, not as truncated, so no truncated
    history can be made here: the journal is told where truncation starts
    (as its builder records it when the export says so; parse_tx's
    recognition of that flag is tested in test_journal_format).

    Encrypted, the base's record is an age file too: the journal, which
    holds no identity, finds the base by the record's name, and the
    restore reads it with its identity."""
    prefix, name = followed(6)
    target = {"type": "file", "path": str(tmp_path / "t" / "immudb-{timestamp}.tar.gz")}
    identity, encryption = None, {}
    if encrypted:
        from pyrage import x25519
        key = x25519.Identity.generate()
        identity = tmp_path / "key.txt"
        identity.write_text(f"{key}\n")
        encryption = {"encryption": {"recipients": [str(key.to_public())]}}
    cfg_path = write_config(tmp_path, primary_server, replica_server, prefix, name="truncated.yaml",
                            targets={"local": target}, continuous={"target": "local", "spool_dir": str(tmp_path / "s")},
                            **encryption)
    target_cfg = TargetConfig("local", "file", target["path"])
    done = run("backup", "-c", str(cfg_path), "--target", "local")  # the base: the database at transaction 6
    assert done.returncode == 0, done.stderr
    [record] = (tmp_path / "t" / "journal" / name).glob("*.base")
    body = record.read_bytes()
    assert body.startswith(b"age-encryption.org/v1") == encrypted, body[:40]
    assert (name.encode() in body) != encrypted
    immudb_data.write(primary_server, name, 2, prefix="after_base")
    want = immudb_data.state(primary_server, name)
    wait_for(lambda: immudb_data.state(replica_server, name) == want, 60, "immudb to replicate the writes")

    j = journal(replica, name, target_cfg, tmp_path)
    j._truncated_at = 4  # what the builder records when the replica sends transaction 4 without values
    j.start()
    try:
        try:
            wait_for(lambda: j.snapshot()["shipped_tx"] >= want[0], 60, "the journal to go on after the base")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; journal: {j.snapshot()}") from None
        assert j.snapshot()["state"] == "shipping" and j.snapshot()["error"] is None
    finally:
        j.stop()
    assert min(s.first_tx for s in segments_on(target_cfg, name)) == 7  # nothing before the base was exported

    restored = tmp_path / "restored"
    if encrypted:  # without the identity: one line that says so (not "misses transactions", the base unreadable)
        refused = run("restore", "-c", str(cfg_path), "--target", "local", "--database", name, "--to-end", "--as",
                      "again", "--data-dir", str(restored), "--immudb-binary", str(immudb_build / "immudb"))
        assert refused.returncode == 1 and "encrypted (age): give --identity" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and not restored.exists()
    done = run("restore", "-c", str(cfg_path), "--target", "local", "--database", name, "--to-end", "--as", "again",
               "--data-dir", str(restored), "--immudb-binary", str(immudb_build / "immudb"),
               *(["--identity", str(identity)] if identity else []))
    assert done.returncode == 0, done.stderr
    assert "(transaction 6)" in done.stdout, done.stdout
    assert "snapshot anchor local (state)" in done.stdout, done.stdout  # the base's archive is anchored
    with serving(restored, tmp_path / "check") as check:
        assert immudb_data.state(check, "again") == want


@pytest.mark.faults
def test_a_truncated_transaction_stops_the_journal_until_a_base(tmp_path, followed, replica, monkeypatch):
    """The export of a transaction without values: state needs_base, an
    error naming the transaction and the target, nothing shipped; it asks
    again (here every 0.2 s) and stays there while no base covers it."""
    prefix, name = followed(3)
    real_parse = shipper.parse_tx

    def truncated_from_2(data: bytes, limits):
        tx = real_parse(data, limits)
        return dataclasses.replace(tx, truncated=tx.id >= 2)
    monkeypatch.setattr(shipper, "parse_tx", truncated_from_2)  # the export as immudb sends truncated history
    monkeypatch.setattr(shipper, "RETRY_MAX", 0.2)
    target_cfg = TargetConfig("local", "file", str(tmp_path / "t" / "immudb-{timestamp}.tar.gz"))
    j = journal(replica, name, target_cfg, tmp_path)
    j.start()
    try:
        wait_for(lambda: j.snapshot()["state"] == "needs_base", 60, "the journal to ask for a base")
        asked = replica.calls
        wait_for(lambda: replica.calls >= asked + 6, 30, "the journal to ask the replica again")
        # each retry starts the builder again, which says "shipping" until it meets transaction 2 again: what
        # must hold is that it comes back to needs_base and ships nothing
        wait_for(lambda: j.snapshot()["state"] == "needs_base", 30, "the journal to ask for a base again")
        status = j.snapshot()
        assert "transaction 2 has been truncated" in status["error"] and "'local'" in status["error"]
        assert status["shipped_tx"] == 0 and segments_on(target_cfg, name) == []
    finally:
        j.stop()


class _InFlight:
    """The journal's replica admin, counting its calls in flight (an export
    feed counts from its first request until it has ended)."""

    def __init__(self, admin):
        self.admin, self.now, self.started = admin, 0, 0
        self.lock = threading.Lock()

    def _enter(self) -> None:
        with self.lock:
            self.now += 1
            self.started += 1

    def _leave(self) -> None:
        with self.lock:
            self.now -= 1

    def follow(self, *args, **kwargs):
        feed, watch = self.admin.follow(*args, **kwargs), self

        class Watched:
            def cancel(self):
                feed.cancel()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                feed.cancel()

            def __iter__(self):
                watch._enter()
                try:
                    yield from feed
                finally:
                    watch._leave()

        return Watched()

    def state(self, *args, **kwargs):
        self._enter()
        try:
            return self.admin.state(*args, **kwargs)
        finally:
            self._leave()

    def __getattr__(self, name):
        return getattr(self.admin, name)


@pytest.mark.faults
def test_a_paused_journal_has_no_call_on_the_database_a_backup_unloads(tmp_path, followed, primary_server,
                                                                       replica_server, replica, request):
    """immudb 1.11.1 closes an unloaded database only when the last call
    using it returns, and the journal's export call waits up to FEED_WAIT:
    a backup would copy the files of a store still open, and the load after
    it would open a second one on them ("ahtree: data log is corrupted",
    then "unable to get state" until immudb restarts; seen in CI). Paused,
    the journal has no call in flight and starts none until resumed; then
    it follows again, nothing missing."""
    prefix, name = followed(4)
    target_cfg = target_config("file", tmp_path, request)
    watched = _InFlight(replica)
    j = journal(watched, name, target_cfg, tmp_path)
    j.start()
    try:
        wait_for(lambda: j.snapshot()["shipped_tx"] >= 4 and watched.now > 0, 60,
                 "the journal to ship and wait in an export call")
        assert j.pause()
        assert watched.now == 0
        started = watched.started
        immudb_data.write(primary_server, name, 3, prefix="paused")
        tx_id = immudb_data.state(primary_server, name)[0]
        wait_for(lambda: immudb_data.state(replica_server, name)[0] >= tx_id, 60, "the replica to catch up")
        replica.unload(name)
        replica.load(name)
        assert watched.started == started and watched.now == 0  # nothing asked while paused
        j.resume()
        wait_for(lambda: j.snapshot()["shipped_tx"] >= tx_id, 60, "the journal to follow again")
        assert j.snapshot()["state"] == "shipping"
    finally:
        j.stop()
    assert_whole(target_cfg, name, tx_id)
    assert immudb_data.state(replica_server, name)[0] == tx_id  # the database answers
