"""The test servers themselves: proof that SFTP and S3 behave like the real
thing before any backup test relies on them."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import paramiko
import pytest
from botocore.exceptions import ClientError

from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _ssh(sftp_server, known_hosts, **auth) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect("127.0.0.1", port=sftp_server.port, username=sftp_server.username, timeout=10,
                   allow_agent=False, look_for_keys=False, **auth)
    return client


@pytest.mark.parametrize("auth", ["password", "key"])
def test_sftp_upload_stat_download(sftp_server, tmp_path, auth):
    kwargs = {"password": sftp_server.password} if auth == "password" else {"key_filename": str(sftp_server.client_key)}
    payload = os.urandom(300_000)
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    remote = f"{sftp_server.upload_dir}/smoke-{auth}.bin"
    with _ssh(sftp_server, sftp_server.known_hosts, **kwargs) as client:
        sftp = client.open_sftp()
        sftp.put(str(local), remote)
        assert sftp.stat(remote).st_size == len(payload)
        sftp.get(remote, str(tmp_path / "down.bin"))
        sftp.remove(remote)
    assert (tmp_path / "down.bin").read_bytes() == payload


def test_sftp_wrong_host_key_is_refused(sftp_server, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(str(sftp_server.client_key))  # any key but the host's
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sftp_server.port} ssh-ed25519 {other.get_base64()}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        _ssh(sftp_server, known, password=sftp_server.password)


def test_sftp_wrong_password_is_refused(sftp_server):
    with pytest.raises(paramiko.AuthenticationException):
        _ssh(sftp_server, sftp_server.known_hosts, password="not-the-password")


def test_s3_multipart_upload_reads_back_byte_for_byte(s3_server):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="harness")
    part = 5 * 1024 * 1024
    parts_data = [os.urandom(part), os.urandom(part), os.urandom(1234)]
    upload = s3.create_multipart_upload(Bucket="harness", Key="multi.bin")
    etags = []
    for number, data in enumerate(parts_data, start=1):
        r = s3.upload_part(Bucket="harness", Key="multi.bin", UploadId=upload["UploadId"], PartNumber=number, Body=data)
        etags.append({"PartNumber": number, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket="harness", Key="multi.bin", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": etags})
    body = s3.get_object(Bucket="harness", Key="multi.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(parts_data)).digest()


def test_s3_small_non_final_part_is_refused(s3_server):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="harness-small")
    upload = s3.create_multipart_upload(Bucket="harness-small", Key="k")
    etags = []
    for number in (1, 2):
        r = s3.upload_part(Bucket="harness-small", Key="k", UploadId=upload["UploadId"], PartNumber=number, Body=b"x" * 100)
        etags.append({"PartNumber": number, "ETag": r["ETag"]})
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(Bucket="harness-small", Key="k", UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": etags})
    assert caught.value.response["Error"]["Code"] == "EntityTooSmall"


def test_s3_wrong_credentials_are_refused(s3_server):
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                      aws_access_key_id=s3_server.access_key, aws_secret_access_key="wrong-secret")
    with pytest.raises(ClientError) as caught:
        s3.list_buckets()
    assert caught.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")


def test_immuclient_reads_what_immudb_py_wrote(primary_server, primary, replica_server):
    from tests.support import immudb_data
    from tests.support.configs import unique_name
    db = unique_name()
    primary.create_database(db)
    immudb_data.write(primary_server, db, 3, prefix="ic")
    assert primary_server.get(db, "ic1") == (2, "value-ic-1" * 3)
    replica_server.immuclient("defaultdb", "info")  # another server in between: no stale login
    assert primary_server.get(db, "ic2") == (3, "value-ic-2" * 3)


def test_servers_started_by_a_process_die_with_it(tmp_path, immudb_build):
    """A crashed test run (SIGKILL: no cleanup runs) leaves no server behind."""
    import signal
    import subprocess
    import sys
    script = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r});"
              f"from tests.support.servers import ImmudbServer;"
              f"s = ImmudbServer('orphan', __import__('pathlib').Path({str(tmp_path)!r}) / 's').start();"
              f"print(s.process.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_for(lambda: not _alive(child_pid), 10, f"the orphaned child {child_pid} to be gone")


def _alive(pid: int) -> bool:
    from tests.support.servers import _pid_alive
    return _pid_alive(pid)


def test_servers_up_and_down_by_hand(tmp_path, immudb_build):
    import json
    import subprocess
    import sys
    env = dict(__import__("os").environ, TMPDIR=str(tmp_path))
    up = subprocess.run([sys.executable, "-m", "tests.support.servers", "up", "--immudb-only"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    pids = [info["primary"]["pid"], info["replica"]["pid"]]
    assert all(_alive(p) for p in pids)
    down = subprocess.run([sys.executable, "-m", "tests.support.servers", "down"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not any(_alive(p) for p in pids)
    assert not Path(info["root"]).exists()


def test_immudb_build_failure_says_why(tmp_path, monkeypatch, immudb_build):
    from tests.support.servers import ServerError, build_immudb
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ServerError) as caught:
        build_immudb("0.0.0-no-such-version")
    assert "cannot build immudb" in str(caught.value) and "go mod download" in str(caught.value)
