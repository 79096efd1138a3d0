"""The HTTP API is safe by default: tried as a web page the operator happens
to visit and as a careless client would, against a real `replicator run`
(docs/reliability.md, "Safe by default")."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from reconciler.backup.archive import verify
from tests.support.cli import replicator
from tests.support.configs import unique_name
from tests.support.daemon import TOKEN, Daemon
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.faults
GO_DIR = Path("/var/backups/immudb")  # api.file_target_dirs' default


@pytest.fixture
def daemons(tmp_path, primary_server, replica_server):
    started = []

    def make(prefix, token: bool = True, api_defaults: bool = False, extra_env=None, **sections) -> Daemon:
        d = Daemon(tmp_path, primary_server, replica_server, prefix, extra_env=extra_env, **sections)
        if api_defaults:
            d.data["api"] = {"listen": d.data["api"]["listen"]}  # the port, and every other api default
        if not token:
            d.data["api"].pop("token", None)
        d.write_config()
        started.append(d)
        return d.start()

    yield make
    for d in started:
        d.stop()


def post(d: Daemon, body, content_type: str | None = "application/json", host: str | None = None,
         token: str | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(d.url + "/backup/start", data=data, method="POST")
    if content_type:
        request.add_header("Content-Type", content_type)
    if host:
        request.add_header("Host", host)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_go_tools_file_body_works_on_loopback_with_the_defaults(daemons, replicated):
    """No token, every api setting at its default: the Go tool's JSON (sent
    as JSON) backs up into /var/backups/immudb as before."""
    prefix, names, _ = replicated
    folder = GO_DIR / unique_name("go")
    d = daemons(prefix, token=False, api_defaults=True)
    try:
        status, answer = post(d, {"type": "file", "path": f"{folder}/go-{{timestamp}}.tar.gz", "host": "",
                                  "port": 0, "username": "", "password": ""})
        assert status == 202, answer
        result = d.wait_backup()["last_result"]
        assert result["result"] == "ok", result
        with open(result["location"], "rb") as stream:
            assert sorted(verify(stream).databases) == names
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_post_a_browser_could_send_without_asking_is_refused(daemons, replicated, content_type):
    prefix, _, _ = replicated
    d = daemons(prefix, token=False)
    status, answer = post(d, {"target": "x"}, content_type=content_type)
    assert status == 415 and "application/json" in answer["error"]
    assert "backup_started" not in d.output()


def test_without_a_token_only_loopback_host_names_are_served(daemons, replicated):
    """DNS rebinding: a page on evil.example whose name now points to
    127.0.0.1; the browser still sends Host: evil.example."""
    prefix, _, _ = replicated
    d = daemons(prefix, token=False, api={"allowed_hosts": ["replica-1.internal"]})
    status, answer = post(d, {"target": "x"}, host=f"evil.example:{d.port}")
    assert status == 403 and "api.allowed_hosts" in answer["error"]
    for host in (f"localhost:{d.port}", f"127.0.0.1:{d.port}", f"[::1]:{d.port}", "replica-1.internal"):
        assert post(d, {"target": "nope"}, host=host)[0] == 404  # served: an unknown target
    request = urllib.request.Request(d.url + "/status", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 403


def test_with_a_token_any_host_name_may_be_used(daemons, replicated):
    prefix, _, _ = replicated
    d = daemons(prefix)
    assert post(d, {"target": "nope"}, host="replica.example.com", token=TOKEN)[0] == 404


@pytest.mark.parametrize("body, field, says", [
    ({"type": "sftp", "path": "/x/y.tar", "host": "h", "username": "u"}, "type", "api.inline_targets"),
    ({"type": "s3", "path": "s3://bucket/y.tar"}, "type", "api.inline_targets"),
])
def test_inline_sftp_and_s3_are_off_by_default(daemons, replicated, body, field, says):
    prefix, _, _ = replicated
    d = daemons(prefix)
    status, answer = post(d, body, token=TOKEN)
    assert (status, answer["field"]) == (403, field) and says in answer["error"]


@pytest.mark.parametrize("extra, field", [
    ({"known_hosts_file": "/etc/immudb-replicator/credentials/api-token"}, "known_hosts_file"),
    ({"host_key_fingerprint": "SHA256:" + "A" * 43}, "host_key_fingerprint"),
])
def test_a_request_cannot_choose_host_keys_or_local_files(daemons, replicated, extra, field):
    prefix, _, _ = replicated
    d = daemons(prefix, api={"inline_targets": ["file", "sftp", "s3"]})
    body = {"type": "sftp", "path": "/x/y.tar", "host": "127.0.0.1", "username": "u", "password": "p", **extra}
    status, answer = post(d, body, token=TOKEN)
    assert (status, answer.get("field")) == (403, field), answer


def test_s3_endpoints_from_a_request_must_be_listed(daemons, replicated, s3_server):
    prefix, _, _ = replicated
    bucket = unique_name("ep").replace("_", "-")
    s3_server.client().create_bucket(Bucket=bucket)
    d = daemons(prefix, api={"inline_targets": ["s3"], "inline_endpoint_urls": [s3_server.endpoint_url]})
    body = {"type": "s3", "path": f"s3://{bucket}/e-{{timestamp}}.tar.gz", "host": "us-east-1",
            "username": s3_server.access_key, "password": s3_server.secret_key}
    status, answer = post(d, dict(body, endpoint_url="https://attacker.example"), token=TOKEN)
    assert (status, answer["field"]) == (403, "endpoint_url")
    status, answer = post(d, dict(body, endpoint_url=s3_server.endpoint_url), token=TOKEN)
    assert status == 202, answer
    assert d.wait_backup()["last_result"]["result"] == "ok"


def test_file_paths_are_checked_exactly_as_they_are_written(daemons, replicated, tmp_path):
    prefix, _, _ = replicated
    allowed = tmp_path / "out"
    (allowed / "inner").mkdir(parents=True)
    (allowed / "escape").symlink_to("/etc")
    d = daemons(prefix)
    cases = {
        f"{allowed}/escape/x-{{timestamp}}.tar": 403,          # a link out of the allowed folder
        f"{allowed}/inner/{'a' * 256}.tar": 400,                # a part longer than a file name can be
        f"{allowed}/./x.tar": 400,
        f"{allowed}/inner/": 400,                                # names no file
        str(allowed): 403,                                       # the folder itself is not inside it
    }
    for path, want in cases.items():
        status, answer = post(d, {"type": "file", "path": path}, token=TOKEN)
        assert status == want, (path, answer)
    assert not list(Path("/etc").glob("x-*.tar"))


def test_an_unpaired_surrogate_is_a_400_not_a_dead_backup(daemons, replicated, tmp_path):
    prefix, _, _ = replicated
    d = daemons(prefix)
    raw = b'{"type": "file", "path": "' + str(tmp_path / "out").encode() + b'/\\ud800-{timestamp}.tar"}'
    status, answer = post(d, raw, token=TOKEN)
    assert (status, answer["field"]) == (400, "path")
    assert d.request("GET", "/livez", token=None)[0] == 200


def test_a_malformed_known_hosts_file_ends_as_a_recorded_failure_that_quotes_nothing(daemons, replicated,
                                                                                  tmp_path, sftp_server):
    """Before: the backup thread died after the 202 (nothing in /backups, no
    failure counted) and Python's traceback quoted the file's line."""
    prefix, _, _ = replicated
    secret_line = "127.0.0.1 ssh-ed25519 This-Line-Is-A-Secret-Not-A-Key"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(secret_line + "\n")
    target = {"type": "sftp", "path": f"{sftp_server.upload_dir}/{unique_name('kh')}/k-{{timestamp}}.tar",
              "host": "127.0.0.1", "port": sftp_server.port, "username": sftp_server.username,
              "password": sftp_server.password, "known_hosts_file": str(known_hosts), "create_dirs": True}
    d = daemons(prefix, backup={"targets": {"remote": target}})
    # the start-up clean-up of every target holds the backup lock until the first pass
    wait_for(lambda: d.request("GET", "/status")[1]["last_pass"], 30, "the first pass")
    status, answer = d.request("POST", "/backup/start", {"target": "remote"})
    assert status == 202, answer
    result = d.wait_backup()["last_result"]
    assert result["result"] == "error" and "malformed line" in result["error"]
    assert d.request("GET", "/backups")[1]["backups"][0]["ok"] is False
    status, text = d.request("GET", "/metrics", token=None)
    assert 'replicator_backup_failures_total{target="remote"} 1.0' in text
    assert "This-Line-Is-A-Secret" not in d.output() + json.dumps(result)
    assert "Traceback" not in d.output()


def test_a_non_loopback_listen_address_without_a_token_refuses_to_start(tmp_path, primary_server, replica_server):
    data = {"primary": {"host": "127.0.0.1", "port": primary_server.port, "password": "x-Secret-1"},
            "replica": {"host": "127.0.0.1", "port": replica_server.port, "password": "x-Secret-2"},
            "follower": {"password": "x-Secret-3"}, "api": {"listen": "0.0.0.0:18081"}}
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_API_TOKEN")}
    done = replicator("run", "-c", str(path), env=env, timeout=60)
    assert done.returncode == 2
    assert "api.token is not set" in done.stderr and "0.0.0.0:18081" in done.stderr
    data["api"]["token"] = "A-token-of-20-chars-x"
    path.write_text(yaml.safe_dump(data))
    assert replicator("validate", "-c", str(path), env=env, timeout=60).returncode == 0


def test_uncaught_exceptions_in_any_thread_go_through_the_scrubbed_log(tmp_path):
    """Python's own hook prints a traceback to stderr, past the scrubber."""
    code = ("import threading; from reconciler import log; from reconciler.secret import Secret;"
            "s = Secret('Thread-secret-value-9'); s.reveal(); log.setup();"
            "t = threading.Thread(target=lambda: (_ for _ in ()).throw(RuntimeError('boom ' + s.reveal())),"
            " name='worker'); t.start(); t.join();"
            "raise ValueError('main ' + s.reveal())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all("uncaught_exception" in line for line in lines), done.stderr
    assert "thread=worker" in lines[0] and "RuntimeError: boom ***" in lines[0]
    assert "ValueError: main ***" in lines[1]
    assert "Thread-secret-value-9" not in done.stderr and "Traceback" not in done.stderr
