"""Backups of the real replica to every target kind, verified and restored
into a real immudb; and the failures an operator must be able to trust."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reconciler import config
from reconciler.admin import ImmudbError
from reconciler.backup.archive import verify
from reconciler.backup.job import BackupAlreadyRunning, Backups
from reconciler.backup.progress import Progress
from reconciler.plan import BUSY
from reconciler.reconcile import Reconciler
from reconciler.targets import build
from tests.support import immudb_data
from tests.support.checks import assert_all_loaded, assert_restores, is_unloaded
from tests.support.cli import replicator
from tests.support.configs import unique_name, write_config
from tests.support.servers import IMMUDB_VERSION, LISTS_WHILE_UNLOADED
from tests.support.targets import target_dict
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def load(path) -> config.Config:
    return config.load(path, env={})


# --------------------------------------------------------------------------- every kind

@pytest.mark.parametrize("kind", ["file", "sftp", "s3"])
def test_backup_verifies_and_restores_into_a_working_immudb(kind, tmp_path, request, primary_server, replica_server,
                                                           replica, replicated):
    prefix, names, written = replicated
    cfg = load(write_config(tmp_path, primary_server, replica_server, prefix,
                            targets={"t": target_dict(kind, tmp_path, request)}))
    before = {n: immudb_data.state(replica_server, n) for n in names}

    result = Backups(cfg).run(cfg.backup.targets["t"])

    assert result.ok, result.error
    assert sorted(result.databases) == names
    assert_all_loaded(replica, names)
    with build(cfg.backup.targets["t"]) as target:
        archives = target.list()
        assert [a.location for a in archives] == [result.location]
        check = verify(target.read(archives[0].name))
        assert check.ok, check.problems
        m = check.manifest
        assert m.immudb_version == IMMUDB_VERSION and m.tool == "immudb-replicator"
        states = {d.name: (d.tx_id, d.tx_hash.hex()) for d in m.databases}
        assert states == {n: (before[n][0], before[n][1].hex()) for n in names}
        assert all(f.path.split("/")[0] in names for f in m.files)
        assert_restores(tmp_path, target.read(archives[0].name), names, written, states)


@pytest.mark.parametrize("staging", [True, False])
def test_unload_window_with_and_without_staging(staging, tmp_path, primary_server, replica_server, replica,
                                                replicated):
    prefix, names, _ = replicated
    extra = {"staging_dir": str(tmp_path / "staging")} if staging else {}
    cfg = load(write_config(tmp_path, primary_server, replica_server, prefix,
                            targets={"t": {"type": "file", "path": str(tmp_path / "out/a-{timestamp}.tar.gz")}},
                            **extra))
    result = Backups(cfg).run(cfg.backup.targets["t"])
    assert result.ok, result.error
    assert set(result.unload_windows) == set(names)
    assert verify(open(result.location, "rb")).ok
    assert_all_loaded(replica, names)
    if staging:
        assert list((tmp_path / "staging").iterdir()) == []  # the staged copies are gone


def test_databases_are_held_from_reconcile_while_a_backup_runs(tmp_path, primary_server, replica_server, replicated):
    prefix, names, _ = replicated
    cfg = load(write_config(tmp_path, primary_server, replica_server, prefix,
                            targets={"t": {"type": "file", "path": str(tmp_path / "a-{timestamp}.tar")}},
                            compression="none"))
    rec = Reconciler.from_config(cfg)
    seen = {}
    progress = Progress()

    def peek(p):
        if p.current_database and p.current_database not in seen and p.phase == "archiving" and p.bytes_done:
            try:
                _, plan = rec.plan()
            except ImmudbError as exc:  # immudb before 1.11.1: no listing while one is unloaded
                seen[p.current_database] = str(exc)
            else:
                seen[p.current_database] = {d.name: d.state for d in plan.databases}[p.current_database]

    progress.listen(peek)
    assert Backups(cfg, holder=rec).run(cfg.backup.targets["t"], progress=progress).ok
    if LISTS_WHILE_UNLOADED:
        assert seen == {n: BUSY for n in names}
    else:  # held, or (when immudb cannot list while one is unloaded) the pass is skipped, saying why
        assert sorted(seen) == sorted(names)
        assert all(why == BUSY or "a backup holds databases unloaded: this pass is skipped" in why
                   for why in seen.values()), seen
    assert rec.busy == frozenset()
    rec.close()


@pytest.mark.faults
def test_second_backup_while_one_runs_is_refused(tmp_path, primary_server, replica_server, replicated):
    prefix, _, _ = replicated
    cfg = load(write_config(tmp_path, primary_server, replica_server, prefix,
                            targets={"t": {"type": "file", "path": str(tmp_path / "a-{timestamp}.tar.gz")}}))
    backups = Backups(cfg)
    inside, release = threading.Event(), threading.Event()
    progress = Progress()
    progress.listen(lambda p: (inside.set(), release.wait(30)) if p.bytes_done and not release.is_set() else None)
    worker = threading.Thread(target=backups.run, args=(cfg.backup.targets["t"],), kwargs={"progress": progress})
    worker.start()
    assert inside.wait(30)
    with pytest.raises(BackupAlreadyRunning):
        backups.run(cfg.backup.targets["t"])
    release.set()
    worker.join(60)
    assert backups.history[-1].ok


# --------------------------------------------------------------------------- failures

@pytest.mark.faults
def test_full_filesystem_fails_cleanly_with_every_database_loaded(tmp_path, primary_server, replica_server, replica,
                                                                  replicated):
    prefix, names, _ = replicated
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        cfg = load(write_config(tmp_path, primary_server, replica_server, prefix, compression="none",
                                targets={"t": {"type": "file", "path": str(mount / "a-{timestamp}.tar")}}))
        result = Backups(cfg).run(cfg.backup.targets["t"])
        assert not result.ok
        assert "no space left" in result.error and "target t" in result.error
        assert list(mount.iterdir()) == []  # no final file, no partial file
        assert_all_loaded(replica, names)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.faults
def test_s3_stopped_mid_upload_leaves_no_object_and_no_pending_upload(tmp_path, request, primary_server,
                                                                      replica_server, replica, s3_server, big_replica):
    prefix = unique_name("bs") + "_"
    name = big_replica(prefix, blobs=40)  # several 5 MiB parts
    t = target_dict("s3", tmp_path, request)
    cfg = load(write_config(tmp_path, primary_server, replica_server, prefix, targets={"t": t}))
    progress = Progress()
    stopped = threading.Event()

    def stop_midway(p):
        if p.bytes_done > 8 * 1024 * 1024 and not stopped.is_set():
            stopped.set()
            s3_server.stop()
            # the store comes back while the backup is still trying to abort its upload
            threading.Timer(3, s3_server.process.start).start()

    progress.listen(stop_midway)
    result = Backups(cfg).run(cfg.backup.targets["t"], progress=progress)
    assert stopped.is_set()
    assert not result.ok and "target t" in result.error
    s3_server.restart()  # whatever state it is in, a clean start
    bucket = t["path"][len("s3://"):].split("/")[0]
    s3 = s3_server.client()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert_all_loaded(replica, [name])


def _sftp_cfg(tmp_path, primary_server, replica_server, prefix, sftp_server, **changes):
    t = {"type": "sftp", "path": f"{sftp_server.upload_dir}/{unique_name('s')}/a-{{timestamp}}.tar.gz",
         "host": "127.0.0.1", "port": sftp_server.port, "username": sftp_server.username,
         "password": sftp_server.password, "known_hosts_file": str(sftp_server.known_hosts), "create_dirs": True}
    t.update(changes)
    return load(write_config(tmp_path, primary_server, replica_server, prefix, targets={"t": t}))


@pytest.mark.faults
def test_sftp_wrong_password_fails_clearly(tmp_path, primary_server, replica_server, replica, replicated, sftp_server):
    prefix, names, _ = replicated
    cfg = _sftp_cfg(tmp_path, primary_server, replica_server, prefix, sftp_server, password="Wrong-Pass-9")
    result = Backups(cfg).run(cfg.backup.targets["t"])
    assert not result.ok and "refused the credentials" in result.error
    assert "Wrong-Pass-9" not in result.error
    assert_all_loaded(replica, names)


@pytest.mark.faults
def test_sftp_unknown_host_key_is_refused(tmp_path, primary_server, replica_server, replica, replicated, sftp_server):
    prefix, names, _ = replicated
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cfg = _sftp_cfg(tmp_path, primary_server, replica_server, prefix, sftp_server, known_hosts_file=str(empty))
    result = Backups(cfg).run(cfg.backup.targets["t"])
    assert not result.ok and "unknown host key" in result.error
    assert_all_loaded(replica, names)


@pytest.mark.faults
def test_sftp_stopped_mid_upload_leaves_no_final_file(tmp_path, primary_server, replica_server, replica, sftp_server,
                                                      big_replica):
    prefix = unique_name("bf") + "_"
    name = big_replica(prefix, blobs=24)
    cfg = _sftp_cfg(tmp_path, primary_server, replica_server, prefix, sftp_server)
    folder = Path(cfg.backup.targets["t"].path).parent
    progress = Progress()

    def kill_midway(p):
        if p.bytes_done > 4 * 1024 * 1024 and sftp_server.process.running():
            # sshd's children serve the session: take them all down, as a crashed server would
            sftp_server.process.kill()
            subprocess.run(["pkill", "-KILL", "-u", sftp_server.username], check=False)

    progress.listen(kill_midway)
    try:
        result = Backups(cfg).run(cfg.backup.targets["t"], progress=progress)
    finally:
        if not sftp_server.process.running():
            sftp_server.process.start()
    assert not result.ok and "target t" in result.error
    assert not any(p.name.endswith(".tar.gz") for p in folder.iterdir()) if folder.exists() else True
    assert_all_loaded(replica, [name])


def test_retention_keeps_exactly_the_newest(tmp_path, primary_server, replica_server, replicated):
    prefix, _, _ = replicated
    out = tmp_path / "kept"
    out.mkdir()
    old = [out / f"a-2020010{d}T000000Z.tar.gz" for d in range(1, 5)]
    for p in old:
        p.write_bytes(b"old archive")
    (out / "unrelated.tar.gz").write_bytes(b"not ours")
    cfg = load(write_config(tmp_path, primary_server, replica_server, prefix, targets={
        "t": {"type": "file", "path": str(out / "a-{timestamp}.tar.gz"), "retention": {"keep_last": 2}}}))
    result = Backups(cfg).run(cfg.backup.targets["t"])
    assert result.ok
    assert sorted(p.name for p in out.iterdir()) == sorted([old[-1].name, Path(result.location).name, "unrelated.tar.gz"])
    assert sorted(result.deleted) == sorted(p.name for p in old[:-1])


def test_a_pinned_archive_outlives_retention_until_it_is_unpinned(tmp_path, primary_server, replica_server, replicated):
    prefix, _, _ = replicated
    out = tmp_path / "kept"
    out.mkdir()
    old = [out / f"a-2020010{d}T000000Z.tar.gz" for d in range(1, 5)]
    for p in old:
        p.write_bytes(b"old archive")
    path = write_config(tmp_path, primary_server, replica_server, prefix, targets={
        "t": {"type": "file", "path": str(out / "a-{timestamp}.tar.gz"), "retention": {"keep_last": 2}}})
    done = replicator("pin", "-c", str(path), "--target", "t", old[0].name)
    assert done.returncode == 0 and "pinned" in done.stdout, done.stdout + done.stderr
    missing = replicator("pin", "-c", str(path), "--target", "t", "a-20190101T000000Z.tar.gz")
    assert missing.returncode == 1 and "no archive" in missing.stderr, missing.stderr
    cfg = load(path)
    first = Backups(cfg).run(cfg.backup.targets["t"])
    assert first.ok and sorted(first.deleted) == sorted(p.name for p in old[1:3])  # old[0] pinned, old[3] 2nd newest
    listed = replicator("list", "-c", str(path), "--target", "t")
    pinned = [line for line in listed.stdout.splitlines() if "PINNED" in line]
    assert len(pinned) == 1 and old[0].name in pinned[0], listed.stdout
    done = replicator("unpin", "-c", str(path), "--target", "t", old[0].name)
    assert done.returncode == 0, done.stderr
    again = replicator("unpin", "-c", str(path), "--target", "t", old[0].name)
    assert again.returncode == 1 and "is not pinned" in again.stderr, again.stderr
    wait_for(lambda: int(time.time()) > int(Path(first.location).stat().st_mtime), 5, "the next second")
    second = Backups(cfg).run(cfg.backup.targets["t"])
    assert second.ok and old[0].name in second.deleted and not old[0].exists(), second.deleted


# --------------------------------------------------------------------------- the commands

def cli(*argv: str) -> subprocess.CompletedProcess:
    return replicator(*argv, timeout=300)


def test_backup_list_verify_restore_commands(tmp_path, primary_server, replica_server, replicated):
    prefix, names, _ = replicated
    path = write_config(tmp_path, primary_server, replica_server, prefix,
                        targets={"local": {"type": "file", "path": str(tmp_path / "out/r-{timestamp}.tar.gz")}})
    done = cli("backup", "-c", str(path), "--target", "local")
    assert done.returncode == 0, done.stderr
    archive_path = done.stdout.split("-> ")[1].split()[0]
    size = Path(archive_path).stat().st_size
    assert f"proven on the target: read back, {size} bytes, SHA-256 as written" in done.stdout
    listed = cli("list", "-c", str(path), "--target", "local")
    assert archive_path in listed.stdout
    ok = cli("verify", "-c", str(path), archive_path)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    assert "anchor local (state): transaction 20: the archive's sha256 and size are the ones written" in ok.stdout
    assert "anchor live (replica/primary): transaction 20" in ok.stdout
    # alone, the archive vouches only for itself: refused unless the operator says so
    alone = cli("verify", archive_path)
    assert alone.returncode == 1 and "nothing outside the target vouches" in alone.stderr
    trusted = cli("verify", "--unanchored", archive_path)
    assert trusted.returncode == 0 and "UNANCHORED" in trusted.stdout, trusted.stderr

    damaged = tmp_path / "damaged.tar.gz"
    data = bytearray(Path(archive_path).read_bytes())
    data[len(data) // 3] ^= 0x10
    damaged.write_bytes(bytes(data))
    bad = cli("verify", str(damaged))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(Path(archive_path).read_bytes()[:-200])
    cut = cli("verify", str(truncated))
    assert cut.returncode != 0 and "truncated" in cut.stderr

    dest = tmp_path / "restore-here"
    restored = cli("restore", "-c", str(path), archive_path, "--data-dir", str(dest), "--database", names[0])
    assert restored.returncode == 0, restored.stderr
    assert sorted(p.name for p in dest.iterdir()) == [names[0]]
    again = cli("restore", "-c", str(path), archive_path, "--data-dir", str(dest))
    assert again.returncode != 0 and "not empty" in again.stderr


def test_inline_go_style_backup_command(tmp_path, primary_server, replica_server, replicated):
    prefix, names, _ = replicated
    path = write_config(tmp_path, primary_server, replica_server, prefix)
    done = cli("backup", "-c", str(path), "--type", "file", "--path", str(tmp_path / "inline-{timestamp}.tar.gz"))
    assert done.returncode == 0, done.stderr
    assert verify(open(done.stdout.split("-> ")[1].split()[0], "rb")).ok


@pytest.mark.faults
def test_backup_in_another_process_is_refused_and_its_databases_are_not_loaded(tmp_path, primary_server,
                                                                               replica_server, replica, replicated):
    """A shell `replicator backup` and the daemon share the lock on the data dir."""
    prefix, names, _ = replicated
    cfg = load(write_config(tmp_path, primary_server, replica_server, prefix,
                            targets={"t": {"type": "file", "path": str(tmp_path / "a-{timestamp}.tar.gz")}}))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"), str(replica_server.data_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BackupAlreadyRunning, match="another process"):
            Backups(cfg).run(cfg.backup.targets["t"])
        replica.unload(names[0])  # as that other backup would
        rec = Reconciler.from_config(cfg)
        if LISTS_WHILE_UNLOADED:
            _, plan = rec.plan()
            assert {d.name: d.state for d in plan.databases}[names[0]] == BUSY
            assert not [a for a in plan.actions if a.kind == "load"]
        else:  # immudb before 1.11.1 cannot list: the pass is skipped, and loads nothing
            result = rec.run_pass()
            assert "a backup holds databases unloaded: this pass is skipped" in result.error
            assert is_unloaded(replica, names[0])
        rec.close()
    finally:
        holder.kill()
        holder.wait()
    rec = Reconciler.from_config(cfg)
    result = rec.run_pass()
    if LISTS_WHILE_UNLOADED:
        assert [(o.action.kind, o.action.database) for o in result.outcomes] == [("load", names[0])]
    else:  # loaded so that the replica can be listed at all
        assert result.ok and result.outcomes == []
    assert_all_loaded(replica, names)
    rec.close()


@pytest.mark.parametrize("kind", ["sftp", "s3"])
def test_verify_and_restore_remote_archives_through_the_configured_target(kind, tmp_path, request, primary_server,
                                                                         replica_server, replicated):
    prefix, names, _ = replicated
    path = write_config(tmp_path, primary_server, replica_server, prefix,
                        targets={"t": target_dict(kind, tmp_path, request)})
    done = cli("backup", "-c", str(path), "--target", "t")
    assert done.returncode == 0, done.stderr
    location = done.stdout.split("-> ")[1].split()[0]
    assert location.startswith(f"{kind}://")
    by_url = cli("verify", "-c", str(path), location)
    assert by_url.returncode == 0, by_url.stderr
    by_name = cli("verify", "-c", str(path), "--target", "t", location.rsplit("/", 1)[1])
    assert by_name.returncode == 0, by_name.stderr
    dest = tmp_path / "from-remote"
    restored = cli("restore", "-c", str(path), location, "--data-dir", str(dest))
    assert restored.returncode == 0, restored.stderr
    assert sorted(p.name for p in dest.iterdir()) == names


def test_progress_bar_on_a_terminal(tmp_path):
    import io

    from reconciler.backup.progress import TerminalBar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    screen = Tty()
    progress = Progress(databases_total=2, bytes_total=4 * 1024 * 1024)
    bar = TerminalBar(progress, stream=screen)
    progress.update(current_database="db1", phase="archiving")
    progress.add_bytes(2 * 1024 * 1024)
    bar.close()
    assert "archiving db1 [0/2]" in screen.getvalue() and "50%" in screen.getvalue()
    assert TerminalBar(progress, stream=io.StringIO()).bar is None  # not a terminal: no bar
