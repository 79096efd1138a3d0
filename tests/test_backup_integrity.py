"""Backups you can trust: the quiet failures that once ended as a success
nobody could restore (docs/reliability.md, "Backups you can trust"). Each
test stages the fault where it lives: a full disk behind a real SFTP
server, a folder the process cannot list, a database name outside ASCII on
a real immudb, a target that loses bytes."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import config
from reconciler.backup import archive
from reconciler.backup.job import Backups
from reconciler.backup.restore import restore
from reconciler.manifest import from_dict as manifest_from_dict
from reconciler.state import is_database_name
from tests.support import immudb_data
from tests.support.checks import assert_all_loaded
from tests.support.cli import replicator
from tests.support.configs import unique_name, write_config
from tests.support.servers import ImmudbServer
from tests.support.targets import target_dict
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.faults


cli = replicator


@pytest.fixture
def tmpfs():
    """mount(size, where): a tiny file system (tmpfs) at `where`, unmounted afterwards."""
    mounted = []

    def mount(size: str, where: Path, owner: str | None = None) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs (the test needs root): {done.stderr.strip()}", pytrace=False)
        mounted.append(where)
        if owner:
            subprocess.run(["chown", owner, str(where)], check=True)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


# --------------------------------------------------------------------------- 1. SFTP, full remote disk

@pytest.mark.parametrize("size", ["small", "large"])
def test_sftp_full_remote_disk_fails_the_backup_and_keeps_the_previous_archive(
        size, tmp_path, request, primary_server, replica_server, replica, replicated, sftp_server, tmpfs,
        big_replica):
    """paramiko reads the answers to pipelined writes only once more than
    100 are unanswered, and close() drops the last ones' errors: a disk that
    fills up within the last 100 writes went unnoticed. `small`: the whole
    archive (gzip, some 20 KiB) is fewer writes than that, on a disk of
    12 KiB; `large`: an archive of ~10 MB, many times that, on a disk that
    lacks only its last 256 KiB."""
    prefix, names, _ = replicated
    target = target_dict("sftp", tmp_path, request)
    backup = {"compression": "gzip"}
    if size == "large":
        names = names + [big_replica(prefix, 20)]
        backup = {"compression": "none"}
        probe = write_config(tmp_path, primary_server, replica_server, prefix, **backup, targets={
            "probe": {"type": "file", "path": str(tmp_path / "probe" / "p-{timestamp}.tar")}})
        assert cli("backup", "-c", str(probe), "--target", "probe").returncode == 0
        [whole] = (tmp_path / "probe").iterdir()
        disk = f"{(whole.stat().st_size - 256 * 1024) // 4096 * 4096}"
    else:
        disk = "12k"
    remote = tmpfs(disk, sftp_server.upload_dir / unique_name("full"), owner=sftp_server.username)
    target.update(path=f"{remote}/b-{{timestamp}}.tar", retention={"keep_last": 1})
    previous = remote / "b-20200101T000000Z.tar"  # the last good archive, as far as retention can tell
    previous.write_bytes(b"x" * 1024)
    path = write_config(tmp_path, primary_server, replica_server, prefix, **backup, targets={"remote": target})
    done = cli("backup", "-c", str(path), "--target", "remote")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "target remote" in done.stderr and "full disk or a quota" in done.stderr
    assert sorted(p.name for p in remote.iterdir()) == [previous.name]  # no new archive, no partial one
    assert_all_loaded(replica, names)


# --------------------------------------------------------------------------- 2. unreadable folders

@pytest.mark.parametrize("staging", [False, True])
def test_a_database_folder_the_process_cannot_list_fails_the_backup_naming_it(staging, tmp_path, primary_server,
                                                                              replica_server, replica, replicated):
    """The backup runs as root without the capabilities that let root read
    anything (as a dedicated user would); one database folder belongs to
    another user, mode 0700. Before: archived empty, and verify and restore
    said OK."""
    prefix, names, _ = replicated
    locked = replica_server.data_dir / names[1]
    out = tmp_path / "out"
    extra = {"staging_dir": str(tmp_path / "staging")} if staging else {}
    path = write_config(tmp_path, primary_server, replica_server, prefix,
                        targets={"t": {"type": "file", "path": str(out / "u-{timestamp}.tar.gz")}}, **extra)
    subprocess.run(["chown", "nobody", str(locked)], check=True)
    os.chmod(locked, 0o700)
    try:
        done = cli("backup", "-c", str(path), "--target", "t",
                   prefix=["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"])
    finally:
        subprocess.run(["chown", "root", str(locked)], check=True)
        os.chmod(locked, 0o755)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"database {names[1]}: cannot list {locked}: Permission denied" in done.stderr
    assert not out.exists() or [p.name for p in out.iterdir()] == []
    assert_all_loaded(replica, names)


def test_a_database_with_transactions_and_no_files_is_an_error(tmp_path, primary_server, replica_server, replica,
                                                               replicated):
    """replica.data_dir pointing at a folder where the databases' folders
    exist but hold nothing (a wrong mount, say)."""
    prefix, names, _ = replicated
    fake = tmp_path / "not-the-data-dir"
    for n in names:
        (fake / n).mkdir(parents=True)
    path = write_config(tmp_path, primary_server, replica_server, prefix,
                        targets={"t": {"type": "file", "path": str(tmp_path / "out" / "e-{timestamp}.tar.gz")}})
    data = yaml.safe_load(path.read_text())
    data["replica"]["data_dir"] = str(fake)
    path.write_text(yaml.safe_dump(data))
    done = cli("backup", "-c", str(path), "--target", "t")
    assert done.returncode == 1
    assert "transactions, and its folder" in done.stderr and "holds no file" in done.stderr
    assert_all_loaded(replica, names)


# --------------------------------------------------------------------------- 3. names

NAME_ALPHABET = st.sampled_from(list("abzé_δжß0٣9") + ["A", "É", "-", ".", " ", "中", "\u0301", "ǅ", "/", "\x00",
                                                       "\U0001d41a", "²", "ª"])


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(NAME_ALPHABET, min_size=1, max_size=8) | st.text(st.sampled_from("aé"), min_size=60,
                                                                     max_size=130))
def test_writer_and_reader_accept_exactly_the_names_immudb_gives(tmp_path, name):
    """Both ends of the archive, one rule: what the writer archives the
    reader accepts, and what immudb cannot name neither does."""
    tree = tmp_path / unique_name("n")
    folder = tree / "db"
    folder.mkdir(parents=True)
    (folder / "f").write_bytes(b"data")
    out = []

    class Memory:
        def write(self, data):
            out.append(bytes(data))

    writer = archive.ArchiveWriter(Memory(), "none")
    try:
        writer.add_tree(folder, name)
        written = True
    except archive.SourceError:
        written = False
    assert written == is_database_name(name)
    if not written:
        return
    writer.finish(manifest_from_dict({
        "tool": "t", "backup_id": "b", "started_at": "s", "finished_at": "f", "compression": "none",
        "databases": [{"name": name, "tx_id": 1, "tx_hash": "0" * 64, "files": 1, "bytes": 4}]}))
    import io
    assert archive.verify(io.BytesIO(b"".join(out))).ok
    restored = restore(io.BytesIO(b"".join(out)), tmp_path / unique_name("r"))
    assert restored.databases == [name]


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(name=st.text(NAME_ALPHABET, min_size=1, max_size=6).filter(lambda n: n == n.lower() and "\x00" not in n))
def test_immudb_accepts_exactly_the_names_the_archive_accepts(primary, name):
    """The rule read from immudb's source, checked against immudb itself
    (names already in lowercase: immudb lowercases what it is given)."""
    from reconciler.admin import ImmudbError
    full = unique_name("h") + name  # a name no other example or test uses
    try:
        primary.create_database(full)
        accepted = True
    except ImmudbError as exc:
        assert "already exists" not in exc.detail
        accepted = False
    assert accepted == is_database_name(full), full
    if accepted:
        assert full in {d.name for d in primary.list_databases()}


def test_a_replica_database_named_outside_ascii_backs_up_and_restores(tmp_path, primary_server, replica_server,
                                                                     primary, replica, immudb_build):
    prefix = unique_name("nm") + "_"
    name = f"{prefix}dé_δ"
    primary.create_database(name)
    written = immudb_data.write(primary_server, name, 5)
    path = write_config(tmp_path, primary_server, replica_server, prefix,
                        targets={"t": {"type": "file", "path": str(tmp_path / "out" / "n-{timestamp}.tar.gz")}})
    assert cli("reconcile", "--once", "-c", str(path)).returncode == 0
    want, got = immudb_data.wait_caught_up(primary_server, replica_server, name, name)
    assert got == want
    done = cli("backup", "-c", str(path), "--target", "t")
    assert done.returncode == 0, done.stderr
    [made] = (tmp_path / "out").iterdir()
    assert cli("verify", "-c", str(path), str(made)).returncode == 0
    server = ImmudbServer("restored", tmp_path / "restored")
    assert cli("restore", "-c", str(path), str(made), "--data-dir", str(server.data_dir)).returncode == 0
    server.start()
    try:
        assert immudb_data.state(server, name) == want
        assert immudb_data.read(server, name, written) == written
    finally:
        server.stop()


# --------------------------------------------------------------------------- 7. private files

def test_archives_and_their_folders_are_private_whatever_the_umask(tmp_path, request, primary_server,
                                                                   replica_server, replicated, sftp_server):
    prefix, _, _ = replicated
    local = tmp_path / "new" / "dir"
    remote = target_dict("sftp", tmp_path, request)
    remote["path"] = f"{sftp_server.upload_dir}/{unique_name('p')}/made/p-{{timestamp}}.tar"
    path = write_config(tmp_path, primary_server, replica_server, prefix, compression="none", targets={
        "local": {"type": "file", "path": str(local / "p-{timestamp}.tar")}, "remote": remote})
    for name in ("local", "remote"):
        done = cli("backup", "-c", str(path), "--target", name, umask="000")
        assert done.returncode == 0, done.stderr
    [made] = local.iterdir()
    assert made.stat().st_mode & 0o777 == 0o600
    assert local.stat().st_mode & 0o777 == 0o700
    remote_dir = Path(remote["path"]).parent
    [sent] = remote_dir.iterdir()
    assert sent.stat().st_mode & 0o777 == 0o600
    assert remote_dir.stat().st_mode & 0o777 == 0o700


def test_staged_copies_are_private_whatever_the_umask(tmp_path, primary_server, replica_server, replicated):
    from reconciler.backup.progress import Progress
    prefix, _, _ = replicated
    staging = tmp_path / "staging"
    cfg = config.load(env={}, path=write_config(tmp_path, primary_server, replica_server, prefix, staging_dir=str(staging),
                            targets={"t": {"type": "file", "path": str(tmp_path / "s-{timestamp}.tar.gz")}}))
    modes = set()

    def look(p):
        if p.phase == "archiving" and not modes:
            for f in staging.rglob("*"):
                modes.add((f.is_dir(), f.stat().st_mode & 0o777))

    progress = Progress()
    progress.listen(look)
    old = os.umask(0)
    try:
        assert Backups(cfg).run(cfg.backup.targets["t"], progress=progress).ok
    finally:
        os.umask(old)
    assert modes and modes <= {(True, 0o700), (False, 0o600)}, modes


# --------------------------------------------------------------------------- 8. verify after upload

class _Lossy:
    """A target whose uploads silently drop the first block of file data, as
    a lossy network or a broken server could. (A real server cannot be made
    to lose bytes on demand; this wraps the real file target.)"""

    def __init__(self, upload):
        self.upload, self.dropped = upload, False

    def write(self, data):
        if len(data) > 4096 and not self.dropped:
            self.dropped = True
            return
        self.upload.write(data)

    def __getattr__(self, name):
        return getattr(self.upload, name)


@pytest.mark.parametrize("verify_after_upload", [True, "full", False])
def test_an_archive_that_does_not_read_back_whole_is_not_a_success(verify_after_upload, tmp_path, monkeypatch,
                                                                   primary_server, replica_server, replicated):
    from reconciler.targets.file import FileTarget
    prefix, _, _ = replicated
    out = tmp_path / "lossy"
    out.mkdir()
    previous = out / "l-20200101T000000Z.tar"
    previous.write_bytes(b"the last good archive")
    cfg = config.load(env={}, path=write_config(tmp_path, primary_server, replica_server, prefix, compression="none",
                            verify_after_upload=verify_after_upload,
                            targets={"t": {"type": "file", "path": str(out / "l-{timestamp}.tar"),
                                           "retention": {"keep_last": 1}}}))
    real_open = FileTarget.open
    monkeypatch.setattr(FileTarget, "open", lambda self, *a, **k: _Lossy(real_open(self, *a, **k)))
    result = Backups(cfg).run(cfg.backup.targets["t"])
    # whatever the setting (false: the length the target lists), a short archive is no success
    assert not result.ok
    assert "does not read back whole" in result.error and "it was deleted" in result.error
    assert [p.name for p in out.iterdir()] == [previous.name]  # retention did not run


def test_verify_after_upload_reads_back_from_every_kind(tmp_path, request, primary_server, replica_server,
                                                        replicated, sftp_server, s3_server):
    prefix, _, _ = replicated
    proofs = {"file": "read back", "sftp": "read back", "s3": "the service's SHA-256 checksums"}
    for kind in ("file", "sftp", "s3"):
        cfg = config.load(env={}, path=write_config(tmp_path, primary_server, replica_server, prefix,
                                targets={"t": target_dict(kind, tmp_path, request)}))
        result = Backups(cfg).run(cfg.backup.targets["t"])
        assert result.ok, (kind, result.error)
        assert result.verify_seconds is not None and result.verify_seconds > 0
        assert result.verified_by.startswith(proofs[kind]), (kind, result.verified_by)


def _damage_stored(target, name: str, how: str) -> None:
    """Change what `target` holds under `name` behind our back, through the
    target's own server (a flipped byte keeps the size; a cut one does not)."""
    data = target.read(name).read()
    damaged = data[:len(data) // 2] if how == "cut" else \
        data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x01]) + data[len(data) // 2 + 1:]
    if target.kind == "file":
        Path(target.location(name)).write_bytes(damaged)
    elif target.kind == "sftp":
        with target.sftp.open(target.directory + "/" + name, "wb") as f:
            f.write(damaged)
    else:  # a plain put: what someone with write access to the bucket would do
        target.client.put_object(Bucket=target.bucket, Key=target.prefix + name, Body=damaged)


@pytest.mark.parametrize("verify_after_upload,kind,how", [
    *[(setting, kind, how) for setting in (True, "full") for kind, how in
      (("file", "flip"), ("file", "cut"), ("sftp", "flip"), ("s3", "flip"), ("s3", "cut"))],
    # false reads nothing back: the length the target lists still has to be the one written
    (False, "file", "cut"), (False, "sftp", "cut"), (False, "s3", "cut")])
def test_a_stored_archive_changed_after_commit_is_caught_by_every_setting(kind, how, verify_after_upload, tmp_path,
                                                                          request, monkeypatch, primary_server,
                                                                          replica_server, replicated):
    """Between the commit and the read-back the stored archive changes (a
    disk, a server, or someone else): the default (bytes as written) and the
    full read-back both fail the backup, delete it, and retention keeps the
    previous archive; with the read-back off, a cut archive (its length)
    fails it too."""
    from reconciler import targets
    prefix, _, _ = replicated
    target_yaml = target_dict(kind, tmp_path, request)
    target_yaml["retention"] = {"keep_last": 1}
    cfg = config.load(env={}, path=write_config(tmp_path, primary_server, replica_server, prefix,
                                                verify_after_upload=verify_after_upload,
                                                targets={"t": target_yaml}))
    first = Backups(cfg).run(cfg.backup.targets["t"])
    assert first.ok, first.error
    wait_for(lambda: int(time.time()) > int(first.started_at), 5, "the next second (archives are named by it)")
    real = Backups._checkpoint
    damaged = []

    def checkpoint_then_damage(self, target_cfg, name, written, states):
        real(self, target_cfg, name, written, states)
        target = targets.build(target_cfg)
        try:
            _damage_stored(target, name, how)
        finally:
            target.close()
        damaged.append(name)

    monkeypatch.setattr(Backups, "_checkpoint", checkpoint_then_damage)
    second = Backups(cfg).run(cfg.backup.targets["t"])
    assert damaged and not second.ok, second.error
    assert "does not read back whole" in second.error and "it was deleted" in second.error, second.error
    monkeypatch.undo()
    target = targets.build(cfg.backup.targets["t"])
    try:
        assert [a.name for a in target.list()] == [Path(first.location).name]
    finally:
        target.close()


# --------------------------------------------------------------------------- 4. failures nobody waits for

class _Exploding:
    """An upload that fails with an error no target raises on purpose (a
    fake: a real server cannot make our own code raise an unexpected type)."""

    def __init__(self, upload):
        self.upload = upload

    def write(self, data):
        raise RuntimeError("an error nobody expected")

    def __getattr__(self, name):
        return getattr(self.upload, name)


def test_an_unexpected_error_in_the_background_backup_is_recorded_as_a_failure(tmp_path, monkeypatch, primary_server,
                                                                              replica_server, replica, replicated):
    from reconciler.targets.file import FileTarget
    prefix, names, _ = replicated
    cfg = config.load(env={}, path=write_config(tmp_path, primary_server, replica_server, prefix, compression="none",
                            targets={"t": {"type": "file", "path": str(tmp_path / "x" / "x-{timestamp}.tar")}}))
    real_open = FileTarget.open
    monkeypatch.setattr(FileTarget, "open", lambda self, *a, **k: _Exploding(real_open(self, *a, **k)))
    backups = Backups(cfg)
    recorded = []
    backup_id = backups.start(cfg.backup.targets["t"], on_done=recorded.append)
    backups.worker.join(120)
    assert [r.backup_id for r in recorded] == [backup_id]
    [result] = backups.history
    assert not result.ok and result.error == "internal error (RuntimeError): an error nobody expected"
    assert not backups.running
    assert_all_loaded(replica, names)
    assert list((tmp_path / "x").iterdir()) == []


def test_an_archive_damaged_on_its_way_is_read_back_found_damaged_and_deleted(tmp_path, monkeypatch, primary_server,
                                                                              replica_server, replica, replicated):
    """A damaged stream (fake: a compressor whose output loses a byte, as a
    compressor bug would) is read back after the commit, fails, and is
    deleted; the backup fails. Only `verify_after_upload: full` reads the
    archive back whole: the default proves that the target holds the bytes
    written, and a compressor that writes wrong bytes is not what it checks
    (README: Proof that a backup restores)."""
    prefix, names, _ = replicated
    real = archive.open_compressor

    import io

    class Damaged(io.RawIOBase):
        def __init__(self, inner):
            self.inner, self.done = inner, False

        def writable(self):
            return True

        def write(self, data):
            if not self.done and len(data) > 4096:
                self.done = True
                self.inner.write(bytes(data[:100]) + bytes(data[101:]))
                return len(data)
            return self.inner.write(data)

    monkeypatch.setattr(archive, "open_compressor", lambda kind, level, raw, threads=None: real(kind, level, Damaged(raw)))
    out = tmp_path / "damaged"
    cfg = config.load(env={}, path=write_config(tmp_path, primary_server, replica_server, prefix,
                            verify_after_upload="full",
                            targets={"t": {"type": "file", "path": str(out / "d-{timestamp}.tar.gz")}}))
    result = Backups(cfg).run(cfg.backup.targets["t"])
    assert not result.ok and "does not read back whole" in result.error and "it was deleted" in result.error
    assert not out.exists() or list(out.iterdir()) == []
    assert_all_loaded(replica, names)
