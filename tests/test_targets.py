"""One suite every backup target kind must pass, each on its real server:
a local directory, OpenSSH's SFTP, SeaweedFS's S3."""
from __future__ import annotations

import os

import pytest

from reconciler.targets import ArchiveExists, TargetError, build
from tests.support.targets import KINDS, target_config

MiB = 1024 * 1024


# sftp and s3 ask for their server at run time (request.getfixturevalue), which the
# automatic `servers` marker (conftest.py) cannot see: they carry it themselves
@pytest.fixture(params=[pytest.param(kind, marks=pytest.mark.servers) if server else kind
                        for kind, (server, _) in KINDS.items()])
def target(request, tmp_path):
    t = build(target_config(request.param, tmp_path, request))
    yield t
    t.close()


def upload(t, name: str, data: bytes, chunk: int = 1 * MiB) -> str:
    u = t.open(name)
    for i in range(0, len(data), chunk):
        u.write(data[i:i + chunk])
    return u.commit()


def read_all(t, name: str) -> bytes:
    stream = t.read(name)
    out = bytearray()
    while True:
        chunk = stream.read(MiB)
        if not chunk:
            break
        out += chunk
    stream.close()
    return bytes(out)


def test_committed_archive_is_listed_and_reads_back(target):
    data = os.urandom(12 * MiB + 123)  # several S3 parts, the last one short
    name = target.archive_name(1_800_000_000)
    location = upload(target, name, data)
    assert location == target.location(name)
    assert [(a.name, a.size) for a in target.list()] == [(name, len(data))]
    assert read_all(target, name) == data


@pytest.mark.faults
def test_aborted_archive_leaves_nothing(target):
    u = target.open(target.archive_name(1_800_000_000))
    u.write(os.urandom(6 * MiB))
    u.abort()
    assert target.list() == []
    assert target.cleanup_partial() == []  # no partial file, no pending multipart upload either


@pytest.mark.faults
def test_existing_archive_is_never_overwritten(target):
    name = target.archive_name(1_800_000_000)
    upload(target, name, b"first")
    with pytest.raises(ArchiveExists):
        target.open(name)
    assert read_all(target, name) == b"first"


def test_only_names_of_the_template_are_listed(target):
    upload(target, target.archive_name(1_800_000_000), b"a")
    upload(target, "someone-elses-file.tar.gz", b"b")
    assert [a.name for a in target.list()] == [target.archive_name(1_800_000_000)]


def test_list_is_oldest_first_and_delete_removes(target):
    names = [target.archive_name(t) for t in (1_800_000_300, 1_800_000_100, 1_800_000_200)]
    for n in names:
        upload(target, n, b"x")
    assert [a.name for a in target.list()] == sorted(names)
    target.delete(names[0])
    assert sorted(a.name for a in target.list()) == sorted(names[1:])


@pytest.mark.faults
def test_leftovers_of_an_interrupted_run_are_cleaned(target):
    u = target.open(target.archive_name(1_800_000_000))
    u.write(b"half an archive")
    # the process dies here: no commit, no abort
    removed = target.cleanup_partial()
    assert len(removed) == 1
    assert target.cleanup_partial() == [] and target.list() == []


def test_reading_a_missing_archive_is_a_target_error(target):
    with pytest.raises(TargetError):
        stream = target.read("immudb-20000101T000000Z.tar.gz")
        stream.read(1)


def test_every_kind_is_one_module_holding_its_whole_contract():
    """Adding a kind is adding a module to reconciler/targets/ (and
    its factory to KINDS above): the rest of the program finds it by name."""
    from reconciler import targets
    from reconciler.config.validate import load_schema
    found = targets.kinds()
    assert set(found) == set(KINDS)
    for name, module in found.items():
        assert module.KIND == name
        for attribute in ("URL_SCHEME", "SCHEMA", "REQUEST_SCHEMA", "config_problems", "options_from_request",
                          "target_for_url", "build"):
            assert hasattr(module, attribute), (name, attribute)
        assert load_schema()["$defs"][f"{name}_target"] is module.SCHEMA
    assert load_schema("backup-request.schema.json")["oneOf"][1]["properties"]["type"]["enum"] == sorted(KINDS)


@pytest.mark.parametrize("body, field, message", [
    ({"type": "sftp", "path": "/x"}, "host", "missing field 'host'"),
    ({"type": "sftp", "path": "/x", "host": "h"}, "username", "missing field 'username'"),
    ({"type": "sftp", "path": "/x", "host": "h", "username": ""}, "username", "invalid field 'username'"),
    ({"type": "s3", "path": "/x"}, "path", "invalid field 'path'"),
])
def test_an_inline_target_missing_what_its_kind_needs_is_refused_naming_the_field(body, field, message):
    """The same answer for the command line (`backup --type`) as the API
    gives from backup-request.schema.json, which holds each kind's
    REQUEST_SCHEMA."""
    from jsonschema import Draft202012Validator

    from reconciler import targets
    from reconciler.config.validate import load_schema
    with pytest.raises(targets.RequestRefused) as refused:
        targets.from_request(body)
    assert (refused.value.status, refused.value.field) == (400, field)
    assert str(refused.value).startswith(message) and "''" not in str(refused.value)  # never the username
    assert list(Draft202012Validator(load_schema("backup-request.schema.json")).iter_errors(body))


def test_looking_kinds_up_loads_no_client_library():
    """paramiko and boto3 load on first use: validating a configuration, or
    a backup to a file, never pays for them."""
    import subprocess
    import sys
    code = ("import sys; from reconciler import targets; from reconciler.config.validate import load_schema;"
            "targets.kinds(); load_schema();"
            "print(sorted(m for m in ('paramiko.transport', 'boto3.session', 'botocore.client') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.fixture(params=[pytest.param(kind, marks=pytest.mark.servers) if server else kind
                        for kind, (server, _) in KINDS.items()])
def target_cfg(request, tmp_path):
    return target_config(request.param, tmp_path, request)


def test_journal_folders_are_listed_and_segments_stay_apart_from_archives(target_cfg):
    """The journal's databases are the folders under journal/ (folders());
    its segments and base records are never listed as archives."""
    from reconciler.journal.format import GENESIS_ALH, segment_name
    from reconciler.journal.store import JournalStore, journal_root
    with build(journal_root(target_cfg)) as root:
        assert root.folders() == []
    for database in ("shop", "dé_1"):
        with JournalStore(target_cfg, database) as store:
            assert store.put(segment_name(1, 2, GENESIS_ALH, bytes(32)), b"segment bytes")
            assert not store.put(segment_name(1, 2, GENESIS_ALH, bytes(32)), b"segment bytes")  # there already
    with build(journal_root(target_cfg)) as root:
        assert root.folders() == sorted(["shop", "dé_1"])
    with build(target_cfg) as archives:
        assert archives.list() == [] and "journal" in archives.folders()
    with JournalStore(target_cfg, "shop") as store:
        assert [s.last_tx for s in store.segments()] == [2]


def test_check_stored_proves_length_and_bytes_on_every_kind(target):
    """What the default read-back (verify_after_upload: true) relies on: the
    bytes as written pass; a length or a digest that differs is a
    StoredMismatch naming the archive; a missing archive is a TargetError."""
    import hashlib

    from reconciler.targets import StoredMismatch
    data = os.urandom(11 * MiB + 7)
    name = target.archive_name(1_800_000_000)
    upload(target, name, data)
    digest = hashlib.sha256(data).hexdigest()
    assert target.check_stored(name, len(data), digest)
    with pytest.raises(StoredMismatch, match=name):
        target.check_stored(name, len(data) + 1, digest)
    with pytest.raises(StoredMismatch, match=name):
        target.check_stored(name, len(data) - 1, digest)
    if target.kind != "s3":  # S3 compares the service's checksum of the parts sent, not this digest
        with pytest.raises(StoredMismatch, match="SHA-256"):
            target.check_stored(name, len(data), hashlib.sha256(b"other").hexdigest())
    missing = target.archive_name(1_800_000_100)
    with pytest.raises(TargetError):
        target.check_stored(missing, len(data), digest)


@pytest.mark.faults
def test_a_write_back_error_of_a_file_target_fails_the_commit(tmp_path, monkeypatch):
    """The file target asks the kernel to write the archive out while it is
    written (so the commit's fsync is short). A write-back error there is
    reported once by the kernel, to that call: it must fail the commit, and
    nothing is left under the final name. (Fake: fdatasync raises EIO, as a
    failing disk would make it; a real disk cannot be made to fail here.)"""
    import errno

    from reconciler.targets.file import FileUpload
    monkeypatch.setattr(FileUpload, "WRITEBACK_EVERY", 1 * MiB)
    calls = []

    def failing(fd):
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    t = build(target_config("file", tmp_path, None))
    name = t.archive_name(1_800_000_000)
    u = t.open(name)
    with pytest.raises(TargetError, match="Input/output error"):
        try:  # as the backup job does: any failure aborts the upload
            for _ in range(8):
                u.write(os.urandom(MiB // 2))
            u.commit()
        except TargetError:
            u.abort()
            raise
    assert calls
    assert t.list() == [] and t.cleanup_partial() == []
