"""S3 Object Lock (an s3 target's `object_lock`), on the S3 test server
(SeaweedFS, which implements it): every archive stored under retention, a
delete refused by the server itself, retention that skips what is locked
instead of failing, and a lock setting on a bucket without Object Lock
refused before anything is written."""
from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from tests.support.cli import replicator
from tests.support.configs import unique_name, write_config
from tests.support.daemon import Daemon


def _bucket(s3_server, locked: bool) -> str:
    name = unique_name("lk").replace("_", "-")
    s3_server.client().create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if locked else {}))
    return name


def _target(s3_server, bucket: str, **extra) -> dict:
    return {"type": "s3", "path": f"s3://{bucket}/r/immudb-{{timestamp}}.tar.gz", "endpoint_url": s3_server.endpoint_url,
            "region": "us-east-1", "access_key": s3_server.access_key, "secret_key": s3_server.secret_key,
            "addressing_style": "path", **extra}


def _backup(cfg) -> str:
    done = replicator("backup", "-c", str(cfg), "--target", "t")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_archives_are_stored_locked_and_the_server_refuses_to_delete_them(
        mode, tmp_path, s3_server, primary_server, replica_server, replicated):
    prefix, _, _ = replicated
    bucket = _bucket(s3_server, locked=True)
    cfg = write_config(tmp_path, primary_server, replica_server, prefix, targets={"t": _target(
        s3_server, bucket, object_lock={"mode": mode, "retain_days": 2}, retention={"keep_last": 1})})
    assert replicator("validate", "-c", str(cfg)).returncode == 0
    _backup(cfg)
    client = s3_server.client()
    [first] = client.list_objects_v2(Bucket=bucket, Prefix="r/")["Contents"]
    head = client.head_object(Bucket=bucket, Key=first["Key"])
    assert head["ObjectLockMode"] == mode
    left = head["ObjectLockRetainUntilDate"].timestamp() - time.time()
    assert 2 * 86400 - 3600 < left <= 2 * 86400
    version = head["VersionId"]
    with pytest.raises(ClientError) as refused:  # whoever holds the credentials cannot remove it
        client.delete_object(Bucket=bucket, Key=first["Key"], VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    while time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) in first["Key"]:  # archives are named by the second
        time.sleep(0.05)
    out = _backup(cfg)  # keep_last: 1 would delete the first: it is kept, reported, and the backup succeeds
    assert f"kept by Object Lock until {head['ObjectLockRetainUntilDate'].strftime('%Y-%m-%d')}" in out, out
    assert first["Key"].rsplit("/", 1)[-1] in out
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="r/")["Contents"])
    assert len(keys) == 2 and first["Key"] in keys
    assert client.head_object(Bucket=bucket, Key=first["Key"], VersionId=version)["ContentLength"] == first["Size"]


def test_a_lock_setting_on_a_bucket_without_object_lock_is_refused_before_anything_is_written(
        tmp_path, s3_server, primary_server, replica_server, replicated):
    prefix, _, _ = replicated
    bucket = _bucket(s3_server, locked=False)
    cfg = write_config(tmp_path, primary_server, replica_server, prefix, targets={"t": _target(
        s3_server, bucket, object_lock={"mode": "COMPLIANCE", "retain_days": 1})})
    checked = replicator("validate", "-c", str(cfg))
    assert checked.returncode == 2 and "has no Object Lock" in checked.stderr, checked.stderr
    done = replicator("backup", "-c", str(cfg), "--target", "t")
    assert done.returncode != 0 and "has no Object Lock" in done.stderr and "Traceback" not in done.stderr
    started = replicator("run", "-c", str(cfg), timeout=120)  # the daemon does not start either
    assert started.returncode == 2 and "has no Object Lock" in started.stderr, started.stderr[-2000:]
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_status_and_metrics_say_which_targets_lock(tmp_path, s3_server, primary_server, replica_server, replicated):
    prefix, _, _ = replicated
    bucket = _bucket(s3_server, locked=True)
    d = Daemon(tmp_path, primary_server, replica_server, prefix, backup={"targets": {
        "t": _target(s3_server, bucket, object_lock={"mode": "GOVERNANCE", "retain_days": 1}),
        "plain": {"type": "file", "path": str(tmp_path / "out" / "p-{timestamp}.tar.gz"), "create_dirs": True}}})
    d.start()
    try:
        assert d.request("GET", "/status")[1]["targets"] == {
            "t": {"kind": "s3", "encrypted": False, "object_lock": "GOVERNANCE"},
            "plain": {"kind": "file", "encrypted": False, "object_lock": None}}
        _, text = d.request("GET", "/metrics", token=None)
        assert 'replicator_target_object_lock{target="t"} 1.0' in text
        assert 'replicator_target_object_lock{target="plain"} 0.0' in text
    finally:
        d.stop()


def test_journal_segments_and_bases_on_a_locked_bucket_are_locked_and_encrypted(
        tmp_path, s3_server, primary_server, replica_server, followed, immudb_build):
    """The journal at a locked S3 target with encryption: every segment and
    base record under retention, every segment an age file without the
    database's name or values; pruning the segments a base covers skips
    them (locked) instead of failing."""
    from pyrage import x25519

    from reconciler.encryption import is_encrypted
    from reconciler.journal.format import SUFFIX
    from tests.support import immudb_data
    prefix, name = followed(0)
    ident = x25519.Identity.generate()
    bucket = _bucket(s3_server, locked=True)
    target = _target(s3_server, bucket, object_lock={"mode": "GOVERNANCE", "retain_days": 1},
                     retention={"keep_last": 1})
    d = Daemon(tmp_path, primary_server, replica_server, prefix, reconcile={"interval": 1},
               backup={"targets": {"t": target}, "encryption": {"recipients": [str(ident.to_public())]},
                       "continuous": {"target": "t", "segment_max_seconds": 0.3,
                                      "spool_dir": str(tmp_path / "spool")}}).start()
    try:
        written = immudb_data.write(primary_server, name, 4, prefix="secret_")
        want = immudb_data.state(primary_server, name)[0]
        d.wait_shipped(name, want)
        assert d.request("POST", "/backup/start", {"target": "t"})[0] == 202  # a base: pruning may go
        assert d.wait_backup(timeout=180)["last_result"]["result"] == "ok"
    finally:
        assert d.stop() == 0
    client = s3_server.client()
    objects = client.list_objects_v2(Bucket=bucket, Prefix=f"r/journal/{name}/")["Contents"]
    segments = [o["Key"] for o in objects if o["Key"].endswith(SUFFIX)]
    bases = [o["Key"] for o in objects if o["Key"].endswith(".base")]
    assert segments and bases, objects
    for key in segments + bases:
        assert client.head_object(Bucket=bucket, Key=key)["ObjectLockMode"] == "GOVERNANCE", key
    for key in segments + bases:  # base records too: they name the database and its archive
        blob = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert is_encrypted(blob[:32]) and name.encode() not in blob, key
        assert not [v for v in written.values() if v in blob]
    assert "Traceback" not in d.output() and "journal_bases_failed" not in d.output()
    assert "segment_retained" in d.output()  # pruning reached the segments the base covers, and kept them


def test_a_reload_that_adds_a_lock_on_a_bucket_without_it_is_rejected(
        tmp_path, s3_server, primary_server, replica_server, replicated):
    from tests.support.waiting import wait_for
    prefix, _, _ = replicated
    bucket = _bucket(s3_server, locked=False)
    d = Daemon(tmp_path, primary_server, replica_server, prefix, backup={"targets": {"t": _target(s3_server, bucket)}})
    d.start()
    try:
        d.data["backup"]["targets"]["t"]["object_lock"] = {"mode": "COMPLIANCE", "retain_days": 1}
        d.write_config()
        error = wait_for(lambda: d.request("GET", "/status")[1]["config"]["last_reload_error"], 30,
                         "the reload to be rejected")
        assert "has no Object Lock" in error
        assert d.request("GET", "/status")[1]["targets"]["t"]["object_lock"] is None  # the old one stays in force
    finally:
        d.stop()
