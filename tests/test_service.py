"""`replicator run` as operators deploy it: a real subprocess against the real
servers, driven over HTTP and with signals."""
from __future__ import annotations

import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler import config
from reconciler.backup.archive import verify
from tests.support import immudb_data
from tests.support.checks import assert_all_loaded
from tests.support.configs import unique_name, write_config
from tests.support.daemon import TOKEN, Daemon
from tests.support.waiting import patient, wait_for


@pytest.fixture
def daemon_factory(tmp_path, primary_server, replica_server):
    started = []

    def make(prefix, extra_env=None, **sections):
        d = Daemon(tmp_path, primary_server, replica_server, prefix, extra_env=extra_env, **sections)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


def metrics(d: Daemon) -> dict[str, float]:
    status, text = d.request("GET", "/metrics", token=None)
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


# --------------------------------------------------------------------------- backups over HTTP

def test_go_tool_json_starts_backups_of_every_kind(tmp_path, request, daemon_factory, replica, replicated,
                                                   sftp_server, s3_server):
    prefix, names, _ = replicated
    home = tmp_path / ".ssh"
    home.mkdir()
    (home / "known_hosts").write_text(sftp_server.known_hosts.read_text())  # the daemon's ~/.ssh/known_hosts
    bucket = unique_name("gob").replace("_", "-")
    s3_server.client().create_bucket(Bucket=bucket)
    # sftp and s3 inline targets connect where the request says: the operator opts in
    d = daemon_factory(prefix, extra_env={"AWS_ENDPOINT_URL_S3": s3_server.endpoint_url},
                       api={"inline_targets": ["file", "sftp", "s3"]}).start()
    sftp_dir = f"{sftp_server.upload_dir}/{unique_name('go')}"
    bodies = {
        "file": {"type": "file", "path": str(tmp_path / "out" / "go-{timestamp}.tar.gz"), "host": "", "port": 0,
                 "username": "", "password": ""},
        "sftp": {"type": "sftp", "path": f"{sftp_dir}-go.tar.gz", "host": "127.0.0.1", "port": sftp_server.port,
                 "username": sftp_server.username, "password": sftp_server.password},
        "s3": {"type": "s3", "path": f"s3://{bucket}/go/backup.tar.gz", "host": "us-east-1", "port": 0,
               "username": s3_server.access_key, "password": s3_server.secret_key},
    }
    for kind, body in bodies.items():
        status, answer = d.request("POST", "/backup/start", body)
        assert status == 202, answer
        assert answer["status"] == "/backup/status"
        done = d.wait_backup()
        result = done["last_result"]
        assert result["id"] == answer["id"] and result["result"] == "ok", result
        assert done["running"] is False and done["progress"] == 100.0 and done["progress_bytes"] == 1.0
        assert sorted(result["databases"]) == names
        location = result["location"]
        if kind == "file":
            stream = open(location, "rb")
        elif kind == "sftp":
            stream = open(location.split(f":{sftp_server.port}", 1)[1], "rb")  # the server's file, read locally
        else:
            stream = s3_server.client().get_object(Bucket=bucket, Key="go/backup.tar.gz")["Body"]
        assert verify(stream).ok, kind
    assert_all_loaded(replica, names)
    for secret in (sftp_server.password, s3_server.secret_key, TOKEN):
        assert secret not in d.output()


def test_named_target_backup_and_history(tmp_path, daemon_factory, replicated):
    prefix, names, _ = replicated
    d = daemon_factory(prefix, backup={"targets": {"local": {
        "type": "file", "path": str(tmp_path / "named" / "n-{timestamp}.tar.gz")}}}).start()
    status, answer = d.request("POST", "/backup/start", {"target": "local"})
    assert status == 202 and answer["target"] == "local"
    done = d.wait_backup()
    assert done["last_result"]["result"] == "ok"
    assert verify(open(done["last_result"]["location"], "rb")).ok
    status, history = d.request("GET", "/backups")
    assert status == 200 and history["backups"][0]["backup_id"] == answer["id"]
    assert history["backups"][0]["ok"] is True


# --------------------------------------------------------------------------- refusals

@pytest.mark.faults
def test_token_is_required_except_on_probes_and_metrics(daemon_factory, replicated):
    prefix, _, _ = replicated
    d = daemon_factory(prefix).start()
    for path in ("/backup/status", "/backups", "/status"):
        assert d.request("GET", path, token=None)[0] == 401
        assert d.request("GET", path, token="wrong-token")[0] == 401
        assert d.request("GET", path)[0] == 200
    assert d.request("POST", "/backup/start", {"target": "x"}, token=None)[0] == 401
    for path in ("/livez", "/readyz", "/metrics"):
        assert d.request("GET", path, token=None)[0] == 200


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, None),
    ({"type": "ftp", "path": "/x"}, 400, "type"),
    ({"type": "sftp", "path": "/x"}, 400, "host"),
    ({"path": "/x"}, 400, "type"),
    ({"type": "file", "path": 42}, 400, "path"),
    ({"type": "sftp", "path": "/x", "host": "h", "username": "u", "port": "22"}, 400, "port"),
    ({"type": "file", "path": "/x", "color": "blue"}, 400, "color"),
    ({"target": "nope"}, 404, "target"),
    ({"target": 5}, 400, "target"),
    ([1, 2], 400, None),
    ({"type": "file", "path": "/etc/cron.d/x-{timestamp}"}, 403, "path"),
    ({"type": "file", "path": "OUT/../../etc/x.tar.gz"}, 400, "path"),
])
@pytest.mark.faults
def test_malformed_requests_get_a_json_4xx_naming_the_field(tmp_path, daemon_factory, replicated, body, status, field):
    prefix, _, _ = replicated
    d = daemon_factory(prefix).start()
    if isinstance(body, dict) and isinstance(body.get("path"), str):
        body = dict(body, path=body["path"].replace("OUT", str(tmp_path / "out")))
    raw = body if isinstance(body, bytes) else None
    got, answer = d.request("POST", "/backup/start", None if raw else body, raw=raw)
    assert got == status, answer
    assert isinstance(answer, dict) and answer["error"]
    assert answer.get("field") == field
    assert d.request("GET", "/livez", token=None)[0] == 200  # and it keeps serving


@pytest.mark.faults
def test_oversized_body_is_413(daemon_factory, replicated):
    prefix, _, _ = replicated
    d = daemon_factory(prefix, api={"max_body_bytes": 1024}).start()
    status, answer = d.request("POST", "/backup/start", raw=b'{"target": "' + b"x" * 5000 + b'"}')
    assert status == 413 and "larger than 1024 bytes" in answer["error"], answer


@pytest.mark.faults
def test_unknown_endpoint_is_a_json_404(daemon_factory, replicated):
    prefix, _, _ = replicated
    d = daemon_factory(prefix).start()
    status, answer = d.request("GET", "/nope")
    assert status == 404 and answer == {"error": "no such endpoint"}


# --------------------------------------------------------------------------- lifecycle

def test_status_and_metrics_move_with_passes_and_backups(tmp_path, daemon_factory, replicated):
    prefix, names, _ = replicated
    d = daemon_factory(prefix, reconcile={"interval": 1}, backup={"targets": {"local": {
        "type": "file", "path": str(tmp_path / "m" / "m-{timestamp}.tar.gz")}}}).start()

    def all_in_sync(body):
        return sorted(db["name"] for db in body["databases"]) == names and all(
            db["state"] == "in_sync" and db["lag"] == 0 for db in body["databases"])
    body = wait_for(lambda: (lambda b: b if all_in_sync(b) else None)(d.request("GET", "/status")[1]), 30,
                    "every replica database in sync in /status")
    assert body["config"]["digest"] and body["config"]["last_reload_error"] is None
    first = metrics(d)
    assert d.request("POST", "/backup/start", {"target": "local"})[0] == 202
    finished = d.wait_backup()["last_result"]["finished_at"]

    def moved_on():
        now = metrics(d)
        # a pass that started after the backup ended: the databases it held are in sync again
        passes_since = now["replicator_reconcile_last_pass_timestamp_seconds"] - now[
            "replicator_reconcile_last_pass_duration_seconds"] > finished
        return now if (passes_since and now["replicator_reconcile_passes_total"] > first[
            "replicator_reconcile_passes_total"] and now["replicator_databases{state=in_sync}"] == len(names)) else None
    second = wait_for(moved_on, 30, "passes after the backup, every database in sync")
    assert second["replicator_backup_last_success_timestamp_seconds{target=local}"] > 0
    assert second["replicator_backup_read_bytes_total{target=local}"] > 0
    assert all(second[f"replicator_database_lag_transactions{{database={n}}}"] == 0 for n in names)


@pytest.mark.faults
def test_reload_on_file_change_and_refusal_of_a_broken_file(tmp_path, daemon_factory, replicated):
    prefix, _, _ = replicated
    d = daemon_factory(prefix).start()
    digest = d.request("GET", "/status")[1]["config"]["digest"]
    d.data["reconcile"]["interval"] = 1800
    d.write_config()
    new_digest = wait_for(lambda: (now := d.request("GET", "/status")[1]["config"]["digest"]) != digest and now,
                          10, "the changed file to be loaded", interval=0.2)
    d.config_path.write_text("primary: [this is not a mapping\n")
    wait_for(lambda: d.request("GET", "/status")[1]["config"]["last_reload_error"], 10, "the reload error",
             interval=0.2)
    body = d.request("GET", "/status")[1]
    assert "invalid YAML" in body["config"]["last_reload_error"]
    assert body["config"]["digest"] == new_digest  # the previous configuration stays in force
    assert "config_rejected" in d.output()
    assert metrics(d)["replicator_config_reloads_total{result=error}"] >= 1
    assert d.stop() == 0


def test_sighup_reloads(daemon_factory, replicated):
    prefix, _, _ = replicated
    d = daemon_factory(prefix).start()
    d.data["reconcile"]["interval"] = 900
    d.config_path.write_text(__import__("yaml").safe_dump(d.data))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config_reloaded" in d.output(), 10, "config_reloaded in the log", interval=0.2)


@pytest.mark.faults
def test_sigterm_during_a_backup_loads_every_database_and_leaves_no_partial_archive(
        tmp_path, daemon_factory, primary, primary_server, replica_server, replica):
    prefix = unique_name("st") + "_"
    name = f"{prefix}big"
    primary.create_database(name)
    immudb_data.write_blobs(primary_server, name, 60)
    out = tmp_path / "slow"
    # zstd's slowest level: a backup slow enough to be caught mid-way
    d = daemon_factory(prefix, backup={"compression": "zstd", "compression_level": 22, "targets": {"local": {
        "type": "file", "path": str(out / "s-{timestamp}.tar.gz")}}}).start()
    wait_for(lambda: d.request("GET", "/status")[1]["databases"], 60, "the first pass", interval=0.2)
    assert immudb_data.wait_caught_up(primary_server, replica_server, name, name, timeout=60)[1] is not None
    assert d.request("POST", "/backup/start", {"target": "local"})[0] == 202
    wait_for(lambda: d.request("GET", "/backup/status")[1]["bytes_done"], 30, "the backup to read", interval=0.05)
    assert d.request("GET", "/backup/status")[1]["running"]
    assert d.stop(signal.SIGTERM) == 0
    assert "backup_cancelling" in d.output() and "stopped" in d.output()
    assert list(out.iterdir()) == []  # neither a final nor a partial archive
    assert_all_loaded(replica, [name])


def test_notify_protocol_ready_watchdog_stopping(tmp_path, daemon_factory, replicated):
    prefix, _, _ = replicated
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    d = daemon_factory(prefix, extra_env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "600000"})
    d.start(wait_ready=False)
    messages = []
    try:
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert d.request("GET", "/readyz", token=None)[0] == 200  # READY=1 came once the API listened
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        d.proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    finally:
        sock.close()
    assert d.stop() == 0


@pytest.mark.timeout(180)
def test_scheduled_backup_fires(tmp_path, daemon_factory, replicated):
    prefix, names, _ = replicated
    out = tmp_path / "sched"
    d = daemon_factory(prefix, backup={"targets": {"local": {"type": "file", "path": str(out / "c-{timestamp}.tar.gz")}},
                                       "schedules": [{"cron": "* * * * *", "target": "local"}]}).start()
    def archives():
        return [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []

    made = wait_for(archives, 75, "the scheduled backup's archive (the next minute boundary)", interval=0.5)
    assert len(made) == 1
    assert verify(open(made[0], "rb")).ok
    status, history = d.request("GET", "/backups")
    assert history["backups"][0]["target"] == "local" and history["backups"][0]["ok"]


def test_scheduled_backup_finding_another_running_is_skipped_and_recorded(tmp_path, primary_server, replica_server,
                                                                         replicated):
    from reconciler.daemon import Service
    prefix, _, _ = replicated
    cfg = config.load(write_config(tmp_path, primary_server, replica_server, prefix,
                                   targets={"local": {"type": "file", "path": str(tmp_path / "s-{timestamp}.tar.gz")}}),
                      env={})
    service = Service(cfg)
    try:
        with service.backups._lock:  # another backup holds it
            service._scheduled_backup("local")
        skipped = service.backups.history[-1]
        assert not skipped.ok and skipped.error.startswith("skipped: a backup is already running")
        assert {t: s.backup_failures for t, s in service.stats.targets.items()} == {"local": 1}
        service._scheduled_backup("local")  # free again: it runs
        assert service.backups.history[-1].ok
        assert service.stats.targets["local"].last_success_at
    finally:
        service.reconciler.close()


@pytest.mark.faults
def test_json_logs_are_one_object_per_line_without_secrets(tmp_path, daemon_factory, replicated):
    import json as json_module
    prefix, names, _ = replicated
    d = daemon_factory(prefix, logging={"format": "json"}, reconcile={"interval": 1}).start()
    wait_for(lambda: d.request("GET", "/status")[1]["last_pass"], 30, "a first pass")
    assert d.stop() == 0
    lines = [line for line in d.output().splitlines() if line.strip()]
    events = [json_module.loads(line) for line in lines]
    assert {"started", "stopped"} <= {e["event"] for e in events}
    assert all({"ts", "level", "event"} <= set(e) for e in events)
    assert TOKEN not in d.output() and "Follower-pw-1" not in d.output()


@pytest.mark.faults
def test_sigterm_while_the_target_is_frozen_still_loads_the_database_and_exits(
        tmp_path, daemon_factory, primary, primary_server, replica_server, replica, sftp_server):
    import subprocess as sp
    prefix = unique_name("fz") + "_"
    name = f"{prefix}big"
    primary.create_database(name)
    immudb_data.write_blobs(primary_server, name, 40)
    target = {"type": "sftp", "path": f"{sftp_server.upload_dir}/{unique_name('fz')}/f-{{timestamp}}.tar",
              "host": "127.0.0.1", "port": sftp_server.port, "username": sftp_server.username,
              "password": sftp_server.password, "known_hosts_file": str(sftp_server.known_hosts),
              "create_dirs": True, "timeout": 120}
    d = daemon_factory(prefix, backup={"compression": "none", "targets": {"remote": target}},
                       daemon={"shutdown_grace": 2}).start()
    wait_for(lambda: d.request("GET", "/status")[1]["databases"], 60, "the first pass", interval=0.2)
    assert immudb_data.wait_caught_up(primary_server, replica_server, name, name, timeout=60)[1] is not None
    frozen = False
    try:
        assert d.request("POST", "/backup/start", {"target": "remote"})[0] == 202
        wait_for(lambda: d.request("GET", "/backup/status")[1]["bytes_done"], 30, "the backup to send",
                 interval=0.02)
        # the SFTP server stalls, as a network stall would: its session processes stop answering
        sp.run(["pkill", "-STOP", "-u", sftp_server.username], check=False)
        frozen = True
        assert d.wait_backup_stalled()["running"]
        started = time.monotonic()
        assert d.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < patient(20)  # not the SFTP timeout (120 s)
    finally:
        if frozen:
            sp.run(["pkill", "-CONT", "-u", sftp_server.username], check=False)
    assert "backup_still_running" in d.output()
    assert_all_loaded(replica, [name])
