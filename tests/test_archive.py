"""The archive format on its own: writing, verifying, restoring, refusing
damaged and hostile archives. Local files only; no servers."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from reconciler.backup import archive
from reconciler.backup.restore import RestoreError, restore
from reconciler.backup.retention import expired
from reconciler.config.model import Retention
from reconciler.manifest import from_dict as manifest_from_dict
from reconciler.targets.base import ArchiveInfo


class MemoryUpload:
    def __init__(self):
        self.buffer = io.BytesIO()

    def write(self, data):
        self.buffer.write(data)

    def commit(self):
        return "memory"

    def abort(self):
        self.buffer = io.BytesIO()


def make_tree(root: Path) -> dict[str, bytes]:
    """Two fake databases; returns their files' contents by archive path."""
    files = {
        "alpha/commit/00000000.txi": os.urandom(3000),
        "alpha/tx/00000000.tx": b"transaction-log " * 500,
        "alpha/index/nodes/00000000.n": os.urandom(100),
        "beta/val_0/00000000.val": b'{"json": "like"}' * 2000,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "beta/aht").mkdir(parents=True)  # an empty folder survives the round trip
    return files


def manifest_fields(writer: archive.ArchiveWriter, compression: str = "gzip") -> dict:
    """What the backup job puts in a manifest besides the files, for the databases written so far."""
    databases = {}
    for f in writer.files:
        d = databases.setdefault(f.path.split("/", 1)[0], {"files": 0, "bytes": 0})
        d["files"] += 1
        d["bytes"] += f.size
    return {"tool": "immudb-replicator", "backup_id": "test", "started_at": "2026-11-27T00:00:00Z",
            "finished_at": "2026-11-27T00:00:01Z", "compression": compression,
            "databases": [{"name": n, "tx_id": 1, "tx_hash": "ab" * 32, **d} for n, d in sorted(databases.items())]}


def write_archive(tree: Path, compression: str = "gzip") -> bytes:
    upload = MemoryUpload()
    writer = archive.ArchiveWriter(upload, compression)
    for db in ("alpha", "beta"):
        writer.add_tree(tree / db, db)
    writer.finish(manifest_from_dict(manifest_fields(writer, compression)))
    return upload.buffer.getvalue()


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return root, make_tree(root)


@pytest.mark.parametrize("compression, magic", [("gzip", b"\x1f\x8b"), ("zstd", b"\x28\xb5\x2f\xfd"), ("none", b"alpha")])
def test_archive_round_trip_verifies(tree, compression, magic):
    root, files = tree
    data = write_archive(root, compression)
    assert data.startswith(magic)
    result = archive.verify(io.BytesIO(data))
    assert result.ok, result.problems
    assert result.compression == compression
    assert {p: (f.size) for p, f in result.files.items()} == {p: len(d) for p, d in files.items()}
    assert result.databases == ["alpha", "beta"]


def test_manifest_is_last_and_lists_every_file_with_its_checksum(tree):
    import hashlib
    import json
    root, files = tree
    with tarfile.open(fileobj=io.BytesIO(write_archive(root)), mode="r:gz") as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(archive.MANIFEST).read())
    assert names[-1] == archive.MANIFEST
    assert all(not n.startswith("/") for n in names)
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


@pytest.mark.faults
def test_one_flipped_byte_fails_verification_naming_the_file(tree):
    root, files = tree
    plain = bytearray(write_archive(root, "none"))
    offset = plain.index(b"transaction-log ")
    plain[offset] ^= 0xFF
    result = archive.verify(io.BytesIO(bytes(plain)))
    assert not result.ok
    assert any("alpha/tx/00000000.tx" in p and "sha256" in p for p in result.problems)


@pytest.mark.faults
def test_flipped_byte_in_compressed_archive_fails(tree):
    root, _ = tree
    data = bytearray(write_archive(root, "gzip"))
    data[len(data) // 2] ^= 0x01
    assert not archive.verify(io.BytesIO(bytes(data))).ok


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.faults
def test_truncated_archive_fails(tree, compression):
    root, _ = tree
    data = write_archive(root, compression)
    result = archive.verify(io.BytesIO(data[: len(data) * 2 // 3]))
    assert not result.ok
    assert any("truncated" in p or "MANIFEST" in p or "missing" in p for p in result.problems), result.problems


@pytest.mark.faults
def test_manifest_that_lies_about_a_size_fails(tree):
    import json
    root, _ = tree
    members = []
    with tarfile.open(fileobj=io.BytesIO(write_archive(root)), mode="r:gz") as tar:
        for m in tar.getmembers():
            members.append((m, tar.extractfile(m).read() if m.isfile() else None))
    forged = io.BytesIO()
    with tarfile.open(fileobj=forged, mode="w") as out:
        for m, data in members:
            if m.name == archive.MANIFEST:
                manifest = json.loads(data)
                manifest["files"][0]["size"] += 1
                data = json.dumps(manifest).encode()
                m.size = len(data)
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    result = archive.verify(io.BytesIO(forged.getvalue()))
    assert any("the manifest says" in p for p in result.problems)


# --------------------------------------------------------------------------- restore

def test_restore_into_empty_directory(tree, tmp_path):
    root, files = tree
    dest = tmp_path / "restored"
    result = restore(io.BytesIO(write_archive(root)), dest)
    assert result.databases == ["alpha", "beta"]
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert (dest / "beta" / "aht").is_dir()
    assert not any(p.name.startswith(".restore-") for p in dest.iterdir())


def test_restore_selected_database_only(tree, tmp_path):
    root, _ = tree
    dest = tmp_path / "restored"
    assert restore(io.BytesIO(write_archive(root)), dest, ["beta"]).databases == ["beta"]
    assert sorted(p.name for p in dest.iterdir()) == ["beta"]


def test_restore_of_unknown_database_is_refused(tree, tmp_path):
    root, _ = tree
    with pytest.raises(RestoreError, match="not in the archive: gamma"):
        restore(io.BytesIO(write_archive(root)), tmp_path / "r", ["gamma"])


def test_restore_refuses_non_empty_destination_unless_forced(tree, tmp_path):
    root, files = tree
    dest = tmp_path / "busy"
    (dest / "alpha").mkdir(parents=True)
    (dest / "alpha" / "old").write_text("old")
    with pytest.raises(RestoreError, match="not empty"):
        restore(io.BytesIO(write_archive(root)), dest)
    assert (dest / "alpha" / "old").exists()
    restore(io.BytesIO(write_archive(root)), dest, force=True)
    assert not (dest / "alpha" / "old").exists()
    assert (dest / "alpha/tx/00000000.tx").read_bytes() == files["alpha/tx/00000000.tx"]


@pytest.mark.faults
def test_damaged_archive_restores_nothing(tree, tmp_path):
    root, _ = tree
    plain = bytearray(write_archive(root, "none"))
    plain[plain.index(b'{"json"')] ^= 0xFF
    dest = tmp_path / "r"
    with pytest.raises(RestoreError, match="damaged"):
        restore(io.BytesIO(bytes(plain)), dest)
    assert not dest.exists()  # the folder restore made is gone again


def _hostile(member: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return out.getvalue()


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname = kind, link
    return m


@pytest.mark.parametrize("member, why", [
    (_member("/etc/cron.d/evil"), "absolute"),
    (_member("alpha/../../evil"), "leaves"),
    (_member("alpha/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (_member("alpha/hard", tarfile.LNKTYPE, "alpha/../../etc/passwd"), "link"),
    (_member("alpha/dev", tarfile.CHRTYPE), "not a regular file"),
    (_member("not a db/file"), "database folder"),
])
@pytest.mark.faults
def test_hostile_archives_are_refused(tmp_path, member, why):
    data = _hostile(member)
    dest = tmp_path / "dest"
    with pytest.raises(RestoreError, match=why):
        restore(io.BytesIO(data), dest)
    assert not dest.exists()  # the folder restore made is gone again
    assert not (tmp_path / "evil").exists()
    verification = archive.verify(io.BytesIO(data))
    assert not verification.ok and any(why in p for p in verification.problems)


# --------------------------------------------------------------------------- retention

DAY = 86400.0


def _archives(*ages_days: float, now: float = 100 * DAY) -> list[ArchiveInfo]:
    import time
    out = []
    for age in ages_days:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - age * DAY))
        out.append(ArchiveInfo(f"immudb-{stamp}.tar.gz", 1, now - age * DAY, ""))
    return out


def test_retention_keep_last():
    archives = _archives(5, 4, 3, 2, 1, 0)
    doomed = expired(archives, Retention(keep_last=3), 100 * DAY, archives[-1].name)
    assert [a.name for a in doomed] == [a.name for a in archives[:3]]


def test_retention_max_age():
    archives = _archives(40, 31, 29, 1, 0)
    doomed = expired(archives, Retention(max_age_seconds=int(30 * DAY)), 100 * DAY, archives[-1].name)
    assert [a.name for a in doomed] == [a.name for a in archives[:2]]


def test_retention_keeps_what_any_rule_keeps():
    archives = _archives(40, 20, 10, 0)
    doomed = expired(archives, Retention(keep_last=1, max_age_seconds=int(15 * DAY)), 100 * DAY, archives[-1].name)
    assert [a.name for a in doomed] == [a.name for a in archives[:2]]


def test_retention_never_deletes_the_archive_just_written_nor_anything_without_a_policy():
    archives = _archives(50)
    assert expired(archives, Retention(max_age_seconds=60), 100 * DAY, archives[0].name) == []
    assert expired(_archives(50, 40), None, 100 * DAY, "x") == []


# --------------------------------------------------------------------------- one reader, one verdict

def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


def _manifest(files: list[tuple[str, bytes]], **changes) -> tuple[tarfile.TarInfo, bytes]:
    import hashlib
    import json
    body = {"format": 1, "tool": "immudb-replicator", "backup_id": "x", "started_at": "s", "finished_at": "f",
            "compression": "none",
            "databases": [{"name": "alpha", "tx_id": 1, "tx_hash": "ab" * 32, "files": len(files), "bytes": 1}],
            "files": [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in files]}
    body.update(changes)
    return _file("MANIFEST.json", body if isinstance(body, bytes) else json.dumps(body).encode())


def _sparse() -> tuple[tarfile.TarInfo, bytes]:
    """A PAX sparse member: 1 byte stored, 1 GiB when extracted."""
    info = tarfile.TarInfo("alpha/tx/00000000.tx")
    info.pax_headers = {"GNU.sparse.size": str(1 << 30), "GNU.sparse.map": f"{(1 << 30) - 1},1"}
    return info, b"x"


GOOD = [("alpha/tx/00000000.tx", b"transactions")]
HOSTILE = {
    "sparse member": ([_dir("alpha"), _sparse(), _manifest(GOOD)], "sparse"),
    "member after the manifest": ([_dir("alpha"), _file(*GOOD[0]), _manifest(GOOD), _file("alpha/late")],
                                  "after MANIFEST.json"),
    "duplicate member": ([_dir("alpha"), _file(*GOOD[0]), _file(*GOOD[0]), _manifest(GOOD)], "appears twice"),
    "control character in a name": ([_dir("alpha"), _file("alpha/\x1b[31mred"), _manifest(GOOD)], "control"),
    "manifest that is a list": ([_dir("alpha"), _file(*GOOD[0]), _file("MANIFEST.json", b"[]")], "MANIFEST.json at"),
    "manifest database without a name": (
        [_dir("alpha"), _file(*GOOD[0]), _manifest(GOOD, databases=[{"tx_id": 1, "tx_hash": None, "files": 1,
                                                                     "bytes": 1}])], "'name' is a required"),
    "manifest that is not JSON": ([_dir("alpha"), _file(*GOOD[0]), _file("MANIFEST.json", b"{nope")],
                                  "not valid JSON"),
    "folder that is no database name": ([_dir("Alpha"), _file("Alpha/x"), _manifest(GOOD)], "database folder"),
    "file where a database belongs": ([_file("alpha"), _manifest(GOOD)], "where a database folder belongs"),
    "database the manifest does not list": (
        [_dir("alpha"), _file(*GOOD[0]), _dir("beta"), _file("beta/x", b"y"),
         _manifest(GOOD + [("beta/x", b"y")])], "its database is not in the manifest"),
    "transactions and no files": ([_dir("alpha"), _manifest([])], "transactions and no files"),
}


@pytest.mark.faults
@pytest.mark.parametrize("case", list(HOSTILE))
def test_verify_and_restore_give_the_same_verdict_on_hostile_archives(tmp_path, case):
    members, why = HOSTILE[case]
    data = _tar(members)
    verification = archive.verify(io.BytesIO(data))
    assert not verification.ok and any(why in p for p in verification.problems), verification.problems
    dest = tmp_path / "dest"
    with pytest.raises(RestoreError, match=why.replace("[", r"\[").replace("(", r"\(")):
        restore(io.BytesIO(data), dest)
    assert not dest.exists()  # the folder restore made is gone again
    used = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert used < 1 << 20  # the sparse member's gigabyte was never written


def test_verify_and_restore_accept_the_same_good_archive(tmp_path):
    data = _tar([_dir("alpha"), _file(*GOOD[0]), _manifest(GOOD)])
    assert archive.verify(io.BytesIO(data)).ok
    assert restore(io.BytesIO(data), tmp_path / "d").databases == ["alpha"]


# --------------------------------------------------------------------------- restore --force

def _archive_of(tmp_path: Path, **databases: bytes) -> bytes:
    files = [(f"{name}/tx/00000000.tx", data) for name, data in databases.items()]
    members = []
    for name, data in databases.items():
        members += [_dir(name), _dir(f"{name}/tx"), _file(f"{name}/tx/00000000.tx", data)]
    manifest = _manifest(files, databases=[{"name": n, "tx_id": 1, "tx_hash": "ab" * 32, "files": 1, "bytes": 1}
                                          for n in databases])
    return _tar(members + [manifest])


@pytest.mark.faults
def test_restore_force_replaces_moving_the_old_folders_aside_and_says_what_changed(tmp_path):
    dest = tmp_path / "data"
    (dest / "alpha" / "tx").mkdir(parents=True)
    (dest / "alpha" / "tx" / "old").write_bytes(b"old")
    (dest / "keep").mkdir()
    result = restore(io.BytesIO(_archive_of(tmp_path, alpha=b"new-a", beta=b"new-b")), dest, force=True)
    assert (result.added, result.replaced) == (["beta"], ["alpha"])
    assert sorted(p.name for p in dest.iterdir()) == ["alpha", "beta", "keep"]  # nothing else left behind
    assert [p.name for p in (dest / "alpha" / "tx").iterdir()] == ["00000000.tx"]


@pytest.mark.faults
def test_restore_force_refuses_a_database_folder_that_is_a_link_and_changes_nothing(tmp_path):
    dest, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (elsewhere / "tx").mkdir(parents=True)
    (elsewhere / "tx" / "precious").write_bytes(b"keep me")
    dest.mkdir()
    (dest / "alpha").symlink_to(elsewhere)
    (dest / "beta").mkdir()
    (dest / "beta" / "mine").write_bytes(b"mine")
    with pytest.raises(RestoreError, match="alpha is a symbolic link"):
        restore(io.BytesIO(_archive_of(tmp_path, beta=b"b", alpha=b"a")), dest, force=True)
    assert (elsewhere / "tx" / "precious").read_bytes() == b"keep me"
    assert (dest / "beta" / "mine").read_bytes() == b"mine"
    assert sorted(p.name for p in dest.iterdir()) == ["alpha", "beta"]


@pytest.mark.faults
def test_restore_force_refuses_a_database_folder_that_is_a_mount_point(tmp_path):
    import subprocess
    dest = tmp_path / "data"
    (dest / "alpha").mkdir(parents=True)
    (dest / "beta").mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(dest / "beta")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the test needs root): {done.stderr.strip()}", pytrace=False)
    try:
        (dest / "beta" / "mine").write_bytes(b"mine")
        (dest / "alpha" / "old").write_bytes(b"old")
        with pytest.raises(RestoreError, match="beta is a mount point"):
            restore(io.BytesIO(_archive_of(tmp_path, alpha=b"a", beta=b"b")), dest, force=True)
        assert (dest / "beta" / "mine").read_bytes() == b"mine"
        assert (dest / "alpha" / "old").read_bytes() == b"old"
    finally:
        subprocess.run(["umount", "-l", str(dest / "beta")], check=False)


@pytest.mark.faults
def test_restore_force_puts_the_old_folders_back_when_a_move_fails(tmp_path, monkeypatch):
    """A move failing half way (a fake: the file system cannot be made to
    fail one chosen rename): the destination is as it was."""
    dest = tmp_path / "data"
    for name in ("alpha", "beta"):
        (dest / name).mkdir(parents=True)
        (dest / name / "old").write_bytes(name.encode())
    real_rename, calls = os.rename, []

    def failing_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 3:  # alpha aside, alpha in, then beta aside fails
            raise OSError(28, "No space left on device", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(RestoreError, match="the destination is as it was"):
        restore(io.BytesIO(_archive_of(tmp_path, alpha=b"a", beta=b"b")), dest, force=True)
    monkeypatch.undo()
    assert sorted(p.name for p in dest.iterdir()) == ["alpha", "beta"]
    assert (dest / "alpha" / "old").read_bytes() == b"alpha" and (dest / "beta" / "old").read_bytes() == b"beta"


@pytest.mark.faults
def test_a_write_the_destination_refuses_names_the_file_and_says_what_to_do(tmp_path):
    """A file-size limit (prlimit --fsize, as `ulimit -f` or a unit's
    LimitFSIZE= sets it) refuses a database file half written. The write's
    OSError names no file, and restore said "File too large: None"; it names
    the file and the destination, says what to do, and changes nothing."""
    from tests.support.cli import replicator, system_binary
    size = 3 << 20
    archived = tmp_path / "big.tar"
    archived.write_bytes(_archive_of(tmp_path, alpha=os.urandom(size)))
    dest = tmp_path / "data"
    (dest / "alpha").mkdir(parents=True)
    (dest / "alpha" / "old").write_bytes(b"old")
    done = replicator("restore", str(archived), "--data-dir", str(dest), "--force", "--unanchored",
                      prefix=[system_binary("prlimit", "util-linux"), f"--fsize={1 << 20}", "--"])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert (f"nothing restored: writing alpha/tx/00000000.tx ({size} bytes) into {dest}: File too large; a "
            f"file-size limit on this process (ulimit -f") in done.stderr, done.stderr
    assert "raise the limit, or restore onto a file system that takes it" in done.stderr
    assert "None" not in done.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["alpha"]
    assert [p.name for p in (dest / "alpha").iterdir()] == ["old"]


@pytest.mark.faults
@pytest.mark.parametrize("compression, position", [("gzip", 100), ("gzip", 300), ("zstd", 100), ("zstd", 300)])
def test_damage_inside_the_compressed_data_is_a_verdict_not_a_crash(tmp_path, compression, position):
    """A byte dropped from the compressed stream: whatever the
    decompressor raises (at 100 here ISA-L raises its own IsalError, no
    zlib.error; at 300 a CRC mismatch) becomes a listed problem and a
    refused restore, never an internal error."""
    import random
    rng = random.Random(7)  # the same bytes every run, so the same error types
    for db in ("alpha", "beta"):
        (tmp_path / "tree" / db / "tx").mkdir(parents=True)
        (tmp_path / "tree" / db / "tx" / "00000000.tx").write_bytes(
            bytes(rng.getrandbits(8) for _ in range(20000)) + b"pattern-" * 5000)
    data = write_archive(tmp_path / "tree", compression)
    damaged = data[:position] + data[position + 1:]
    verification = archive.verify(io.BytesIO(damaged))
    assert not verification.ok and "truncated or corrupt" in " ".join(verification.problems)
    with pytest.raises(RestoreError, match="nothing restored"):
        restore(io.BytesIO(damaged), tmp_path / "dest")
