"""No secret in any output (issue 7): every command and every endpoint runs
with known secret values (the immudb admin password, the follower password
and its rotated successor, the API token, the S3 keys, the SFTP password,
wrong ones of each), and everything they print, answer, log or write into
an archive is searched for every one of them, as is, repr'd, JSON-escaped or
URL-quoted, in any case: none may appear.

Some values carry `"` and `\\`, which JSON and repr escape: a scrubber that
only looks for the raw value would miss them in a JSON log line."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml

from reconciler.backup.archive import open_decompressor
from tests.support.cli import replicator
from tests.support.configs import unique_name, write_data
from tests.support.daemon import Daemon
from tests.support.servers import S3_ACCESS_KEY, S3_SECRET_KEY, SFTP_PASSWORD, ImmudbServer
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.servers]

ROOT = Path(__file__).resolve().parent.parent

FOLLOWER = 'Fol"Sekret\\7q-x'          # what the config sets (immudb wants upper, lower, digit, symbol)
FOLLOWER_BEFORE = "Follower-pw-1"     # what the `replicated` fixture created the follower with
FOLLOWER_ROTATED = 'Rot"Sekret\\8w-y'  # a later rotation
TOKEN = 'Tok"Sekret\\9z-api'
WRONG_PRIMARY = 'Wrong"Primary\\Sekret-1'
WRONG_S3 = "Wrong-S3-Sekret-2xq"
WRONG_SFTP = "Wrong-Sftp-Sekret-3xq"
WRONG_INLINE = 'Wrong"Inline\\Sekret-4'
WRONG_TOKEN = "Wrong-Token-Sekret-5"
RELOADED = "Reload-Sekret-6xq"         # only ever in a config the daemon refuses
LONG_ACCESS_KEY = "AKIA-Sekret-7xq-" + "k" * 1100  # an inline access key beyond the schema's limit
SERVER_SECRETS = (ImmudbServer.password, SFTP_PASSWORD, S3_SECRET_KEY, S3_ACCESS_KEY)
SECRETS = SERVER_SECRETS + (FOLLOWER, FOLLOWER_BEFORE, FOLLOWER_ROTATED, TOKEN, WRONG_PRIMARY, WRONG_S3, WRONG_SFTP,
                            WRONG_INLINE, WRONG_TOKEN, RELOADED, LONG_ACCESS_KEY)


def _forms(value: str) -> set[str]:
    return {f.lower() for f in (value, repr(value)[1:-1], json.dumps(value)[1:-1], urllib.parse.quote(value),
                                urllib.parse.quote_plus(value))}


def secrets_in(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    low = text.lower()
    return [s for s in SECRETS if any(f in low for f in _forms(s))]


class Transcript:
    """Everything a test saw: (where, text). `check()` fails naming the first leaks."""

    def __init__(self):
        self.entries: list[tuple[str, str]] = []

    def add(self, where: str, text: str | bytes) -> None:
        self.entries.append((where, text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text))

    def check(self) -> None:
        leaks = [(where, found, text) for where, text in self.entries if (found := secrets_in(text))]
        assert not leaks, "\n\n".join(f"{where}: {[s[:40] for s in found]}\n{text[:3000]}"
                                        for where, found, text in leaks[:5])
        assert self.entries


def test_the_search_finds_every_form():
    """The search has teeth: each value is found raw, escaped, quoted or re-cased."""
    for value in SECRETS:
        for form in (value, json.dumps({"v": value}), repr(value), value.upper(), urllib.parse.quote(value),
                     f"error: at {json.dumps(value)[1:-1]}!"):
            assert value in secrets_in(form), (value, form)
    assert secrets_in("error: the password was refused; ***") == []


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_are_scrubbed_of_every_secret_used_even_escaped(log_format):
    """The last line of defence: a secret the process has used that slips into a log
    line (an event field, the message, an exception) prints as `***`, also when the
    formatter escapes it (a `"`, `\\` or non-ASCII letter in JSON or a quoted text value)."""
    import io
    import logging

    from reconciler import log, secret
    root = logging.getLogger()
    saved_handlers, saved_level, saved_secrets = list(root.handlers), root.level, set(secret._revealed)
    stream = io.StringIO()
    try:
        log.setup("debug", log_format, stream=stream)
        used = [secret.Secret(value).reveal() for value in (FOLLOWER, TOKEN, WRONG_INLINE, "Pl\u00e4in-Sekret-8xq")]
        logger = logging.getLogger("reconciler.test")
        for value in used:
            log.event(logger, "thing_failed", logging.ERROR, error=f"refused {value}!", value=value)
            logger.warning("message with %s in it", value)
            try:
                raise RuntimeError(f"boom: {value}")
            except RuntimeError:
                logger.exception("crashed")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        secret._revealed.clear()
        secret._revealed.update(saved_secrets)
    output = stream.getvalue()
    assert output.count("***") >= 4 * len(used), output
    low = output.lower()
    for value in used:
        assert not any(form in low for form in _forms(value)), output


# --------------------------------------------------------------------------- set-up

@pytest.fixture
def configured(tmp_path, primary_server, replica_server, sftp_server, s3_server, replicated):
    """A config with a target of every kind, and broken twins of the credentials."""
    prefix, names, _ = replicated
    bucket = unique_name("sx").replace("_", "-")
    s3_server.client().create_bucket(Bucket=bucket)
    replica_pw = tmp_path / "replica-password"
    replica_pw.write_text(replica_server.password + "\n")  # a secret read from a file too
    sftp_dir = f"{sftp_server.upload_dir}/{unique_name('sx')}"
    sftp = {"type": "sftp", "path": f"{sftp_dir}/r-{{timestamp}}.tar.gz", "host": "127.0.0.1",
            "port": sftp_server.port, "username": sftp_server.username, "password": sftp_server.password,
            "known_hosts_file": str(sftp_server.known_hosts), "create_dirs": True}
    s3 = {"type": "s3", "path": f"s3://{bucket}/sx/c-{{timestamp}}.tar.gz", "endpoint_url": s3_server.endpoint_url,
          "region": s3_server.region, "access_key": s3_server.access_key, "secret_key": s3_server.secret_key,
          "addressing_style": "path", "part_size_mib": 5}
    data = {
        "primary": {"host": "127.0.0.1", "port": primary_server.port, "password": primary_server.password},
        "replica": {"host": "127.0.0.1", "port": replica_server.port, "password_file": str(replica_pw),
                    "data_dir": str(replica_server.data_dir)},
        "follower": {"username": "fol_" + prefix.strip("_"), "password": FOLLOWER},
        "reconcile": {"databases": {"include": [f"{prefix}*"]}},
        "backup": {"databases": {"include": [f"{prefix}*"]}, "targets": {
            "local": {"type": "file", "path": str(tmp_path / "out" / "l-{timestamp}.tar.gz")},
            "remote": sftp, "cloud": s3,
            "remote_bad": {**sftp, "password": WRONG_SFTP},
            "cloud_bad": {**s3, "secret_key": WRONG_S3, "path": f"s3://{bucket}/bad/c-{{timestamp}}.tar.gz"},
        }},
        "api": {"token": TOKEN, "file_target_dirs": [str(tmp_path / "out")]},
        "logging": {"level": "debug"},
    }
    return {"data": data, "prefix": prefix, "names": names, "bucket": bucket, "sftp_dir": sftp_dir,
            "tmp_path": tmp_path}


def _env(tmp_path: Path, debug: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MASTER_", "REPLICA_", "FOLLOWER_", "REPLICATOR_", "AWS_")) and k != "DATADIR"}
    env["HOME"] = str(tmp_path)
    if debug:
        env["REPLICATOR_DEBUG"] = "1"
    return env


def cli(transcript: Transcript, tmp_path: Path, *argv: str, debug: bool = True, expect: int | None = 0,
        ) -> subprocess.CompletedProcess:
    done = replicator(*argv, env=_env(tmp_path, debug), timeout=300)
    where = f"replicator {' '.join(argv)}{' (REPLICATOR_DEBUG=1)' if debug else ''} -> {done.returncode}"
    transcript.add(where, done.stdout + "\n" + done.stderr)
    assert "Traceback" not in done.stderr, f"{where}\n{done.stderr}"
    if expect is not None:
        assert done.returncode == expect, f"{where}\n{done.stdout}\n{done.stderr}"
    return done


def _location(done: subprocess.CompletedProcess) -> str:
    return done.stdout.split("-> ")[1].split()[0]


def _archive_bytes(stream) -> bytes:
    _, raw = open_decompressor(stream)
    return raw.read()


# --------------------------------------------------------------------------- the commands

def test_every_command_prints_no_secret(configured, s3_server, sftp_server):
    tmp, data, transcript = configured["tmp_path"], configured["data"], Transcript()
    config = str(write_data(tmp / "replicator.yaml", data))
    cli(transcript, tmp, "validate", "-c", config)
    cli(transcript, tmp, "plan", "-c", config, expect=2)  # the follower's password changes
    cli(transcript, tmp, "reconcile", "--once", "-c", config)
    cli(transcript, tmp, "plan", "-c", config)
    cli(transcript, tmp, "status", "-c", config, expect=None)
    status = cli(transcript, tmp, "status", "--json", "-c", config, expect=None)
    assert status.returncode in (0, 2) and json.loads(status.stdout)["databases"]

    archives = {}
    for target in ("local", "remote", "cloud"):
        done = cli(transcript, tmp, "backup", "-c", config, "--target", target)
        archives[target] = _location(done)
        listed = cli(transcript, tmp, "list", "-c", config, "--target", target)
        assert archives[target] in listed.stdout
        cli(transcript, tmp, "verify", "-c", config, archives[target])
    cli(transcript, tmp, "verify", "-c", config, "--target", "cloud", archives["cloud"].rsplit("/", 1)[1])
    cli(transcript, tmp, "restore", "-c", config, archives["local"], "--data-dir", str(tmp / "restored-local"))
    cli(transcript, tmp, "restore", "-c", config, archives["remote"], "--data-dir", str(tmp / "restored-remote"))
    cli(transcript, tmp, "restore", "-c", config, archives["cloud"], "--data-dir", str(tmp / "restored-cloud"),
        "--database", configured["names"][0])

    # inline targets, their secret from a file as the Go tool's fields give it
    sftp_pw, s3_key = tmp / "sftp-password", tmp / "s3-secret"
    sftp_pw.write_text(sftp_server.password)
    s3_key.write_text(s3_server.secret_key)
    cli(transcript, tmp, "backup", "-c", config, "--type", "sftp", "--path",
        f"{sftp_server.upload_dir}/{unique_name('sxi')}-{{timestamp}}.tar.gz", "--host", "127.0.0.1",
        "--port", str(sftp_server.port), "--username", sftp_server.username, "--password-file", str(sftp_pw),
        "--known-hosts-file", str(sftp_server.known_hosts))
    cli(transcript, tmp, "backup", "-c", config, "--type", "s3", "--path",
        f"s3://{configured['bucket']}/inline/i-{{timestamp}}.tar.gz", "--host", s3_server.region,
        "--username", s3_server.access_key, "--password-file", str(s3_key), "--endpoint-url", s3_server.endpoint_url)

    # a rotation: the plan says the password changes, never what it was or becomes
    rotated = json.loads(json.dumps(data))
    rotated["follower"]["password"] = FOLLOWER_ROTATED
    rotated_config = str(write_data(tmp / "rotated.yaml", rotated))
    plan = cli(transcript, tmp, "plan", "-c", rotated_config, expect=2)
    assert "password" in plan.stdout
    cli(transcript, tmp, "reconcile", "--once", "-c", rotated_config)

    # what went into the archives (the manifest, the database files) holds no secret either
    transcript.add("local archive", _archive_bytes(open(archives["local"], "rb")))
    key = archives["cloud"].split("/", 3)[3]
    body = s3_server.client().get_object(Bucket=configured["bucket"], Key=key)["Body"]
    transcript.add("s3 archive", _archive_bytes(body))
    transcript.check()


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "REPLICATOR_DEBUG"])
def test_refused_credentials_fail_without_echoing_them(configured, s3_server, sftp_server, debug):
    tmp, data, transcript = configured["tmp_path"], configured["data"], Transcript()
    config = str(write_data(tmp / "replicator.yaml", data))
    wrong = json.loads(json.dumps(data))
    wrong["primary"]["password"] = WRONG_PRIMARY
    wrong_config = str(write_data(tmp / "wrong-primary.yaml", wrong))
    for command in (["plan"], ["reconcile", "--once"], ["status"], ["status", "--json"]):
        done = cli(transcript, tmp, *command, "-c", wrong_config, debug=debug, expect=1)
        assert "refused" in done.stderr, done.stderr
    for target, why in (("remote_bad", "refused the credentials"), ("cloud_bad", "403")):
        done = cli(transcript, tmp, "backup", "-c", config, "--target", target, debug=debug, expect=1)
        assert f"backup to {target} failed" in done.stderr and why in done.stderr, done.stderr
        cli(transcript, tmp, "list", "-c", config, "--target", target, debug=debug, expect=1)
    bad_pw = tmp / "wrong-password"
    bad_pw.write_text(WRONG_INLINE)
    cli(transcript, tmp, "backup", "-c", config, "--type", "sftp", "--path",
        f"{sftp_server.upload_dir}/{unique_name('sxb')}-{{timestamp}}.tar.gz", "--host", "127.0.0.1",
        "--port", str(sftp_server.port), "--username", sftp_server.username, "--password-file", str(bad_pw),
        "--known-hosts-file", str(sftp_server.known_hosts), debug=debug, expect=1)
    cli(transcript, tmp, "backup", "-c", config, "--type", "s3", "--path",
        f"s3://{configured['bucket']}/badinline/i-{{timestamp}}.tar.gz", "--host", s3_server.region,
        "--username", s3_server.access_key, "--password-file", str(bad_pw), "--endpoint-url", s3_server.endpoint_url,
        debug=debug, expect=1)
    # remote archives read with the wrong credentials (the bucket/host matches the bad target first)
    only_bad = json.loads(json.dumps(data))
    only_bad["backup"]["targets"] = {k: v for k, v in data["backup"]["targets"].items() if k.endswith("_bad")}
    bad_config = str(write_data(tmp / "only-bad.yaml", only_bad))
    cli(transcript, tmp, "verify", "-c", bad_config, f"s3://{configured['bucket']}/sx/c-20260101T000000Z.tar.gz",
        debug=debug, expect=1)
    cli(transcript, tmp, "verify", "-c", bad_config,
        f"sftp://127.0.0.1:{sftp_server.port}{configured['sftp_dir']}/r-20260101T000000Z.tar.gz", debug=debug, expect=1)
    transcript.check()


# --------------------------------------------------------------------------- the daemon

def _call(transcript: Transcript, d: Daemon, method: str, path: str, body=None, token: str | None = TOKEN,
          raw: bytes | None = None, headers: dict | None = None) -> tuple[int, dict | str]:
    status, head, text = d.exchange(method, path, body, token, raw, headers, timeout=60)
    transcript.add(f"{method} {path} -> {status}", head + "\n" + text)
    assert status < 500, (method, path, status, text)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _backup(transcript: Transcript, d: Daemon, body: dict) -> dict:
    status, answer = _call(transcript, d, "POST", "/backup/start", body)
    assert status == 202, answer
    def finished():
        _, state = _call(transcript, d, "GET", "/backup/status")
        last = state["last_result"]
        return last if not state["running"] and last and last["id"] == answer["id"] else None
    return wait_for(finished, 180, f"backup {answer['id']} to finish", interval=0.2)


def _wait_status(transcript: Transcript, d: Daemon, done) -> dict:
    seen: list[dict] = []

    def reached():
        _, status = _call(transcript, d, "GET", "/status")
        seen[:] = [status]
        return status if done(status) else None
    try:
        return wait_for(reached, 60, "the expected /status", interval=0.2)
    except AssertionError:
        raise AssertionError(f"status never reached the expected state: {seen}") from None


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_endpoint_and_log_line_holds_no_secret(configured, primary_server, replica_server, s3_server, sftp_server,
                                                     log_format):
    tmp, transcript = configured["tmp_path"], Transcript()
    d = Daemon(tmp, primary_server, replica_server, configured["prefix"])
    data = json.loads(json.dumps(configured["data"]))
    data["api"] = {**data["api"], "listen": f"127.0.0.1:{d.port}", "inline_targets": ["file", "sftp", "s3"],
                   "inline_known_hosts_file": str(sftp_server.known_hosts),
                   "inline_endpoint_urls": [s3_server.endpoint_url]}
    data["logging"]["format"] = log_format
    data["daemon"] = {"config_check_interval": 0.5, "shutdown_grace": 30}
    d.data = data
    d.write_config()
    d.start()
    try:
        # the open endpoints, and the guarded ones with the right token, a wrong one and none
        for path in ("/livez", "/readyz", "/metrics"):
            assert _call(transcript, d, "GET", path, token=None)[0] == 200
        _wait_status(transcript, d, lambda s: s["last_pass"] is not None)
        for path in ("/status", "/backups", "/backup/status"):
            assert _call(transcript, d, "GET", path)[0] == 200
            assert _call(transcript, d, "GET", path, token=WRONG_TOKEN)[0] == 401
            assert _call(transcript, d, "GET", path, token=None)[0] == 401
            assert _call(transcript, d, "GET", path, token=None, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        assert _call(transcript, d, "POST", "/backup/start", {"target": "local"}, token=WRONG_TOKEN)[0] == 401

        # refused requests, several of them carrying a secret
        sftp_inline = {"type": "sftp", "path": f"{sftp_server.upload_dir}/{unique_name('sxd')}-{{timestamp}}.tar.gz",
                       "host": "127.0.0.1", "port": sftp_server.port, "username": sftp_server.username,
                       "password": sftp_server.password}
        s3_inline = {"type": "s3", "path": f"s3://{configured['bucket']}/api/a-{{timestamp}}.tar.gz",
                     "host": s3_server.region, "username": s3_server.access_key, "password": s3_server.secret_key,
                     "endpoint_url": s3_server.endpoint_url}
        refused = [
            (400, None, b'{"type": "sftp", "password": "' + sftp_server.password.encode() + b'", '),
            (400, None, b"\xff\xfe" + TOKEN.encode()),
            (400, None, json.dumps([sftp_inline]).encode()),
            (400, {**sftp_inline, "port": "22"}, None),
            (400, {**sftp_inline, "colour": "blue"}, None),
            (400, {**sftp_inline, "password": 12345}, None),
            (400, {**sftp_inline, "password": ["x", WRONG_INLINE]}, None),
            (400, {**s3_inline, "username": LONG_ACCESS_KEY}, None),
            (400, {**s3_inline, "path": "not-s3"}, None),
            (400, {k: v for k, v in sftp_inline.items() if k != "host"}, None),
            (400, {"target": "local", "password": WRONG_INLINE}, None),
            (403, {"type": "file", "path": "/etc/x-{timestamp}.tar.gz", "password": WRONG_INLINE}, None),
            (404, {"target": "nowhere"}, None),
            (413, None, json.dumps({**sftp_inline, "password": WRONG_INLINE * 8000}).encode()),
        ]
        for status, body, raw in refused:
            got, answer = _call(transcript, d, "POST", "/backup/start", body, raw=raw)
            assert got == status, (body or raw, answer)
            assert isinstance(answer, dict) and answer["error"]
        assert _call(transcript, d, "GET", "/backup/start")[0] == 200  # the status, as the Go tool answers
        assert _call(transcript, d, "PUT", "/backup/start")[0] == 405
        assert _call(transcript, d, "GET", "/no/such/endpoint")[0] == 404

        # backups: named targets of every kind, inline ones, and ones whose credentials are refused
        for target in ("local", "remote", "cloud"):
            assert _backup(transcript, d, {"target": target})["result"] == "ok"
        assert _backup(transcript, d, sftp_inline)["result"] == "ok"
        assert _backup(transcript, d, s3_inline)["result"] == "ok"
        assert _backup(transcript, d, {"type": "file", "path": str(tmp / "out" / "i-{timestamp}.tar.gz")})[
            "result"] == "ok"
        for body in ({"target": "remote_bad"}, {"target": "cloud_bad"}, {**sftp_inline, "password": WRONG_INLINE},
                     {**s3_inline, "password": WRONG_INLINE}):
            result = _backup(transcript, d, body)
            assert result["result"] == "error" and result["error"], result

        # a new file the daemon refuses: a secret that starts with `*` and is not quoted
        good = d.config_path.read_text()
        d.config_path.write_text(good.replace(yaml.safe_dump({"password": FOLLOWER}).strip(),
                                              f"password: *{RELOADED}"))
        assert d.config_path.read_text() != good
        _wait_status(transcript, d, lambda s: s["config"]["last_reload_error"])
        # then a valid one with a rotated follower password
        d.data["follower"]["password"] = FOLLOWER_ROTATED
        d.write_config()
        _wait_status(transcript, d, lambda s: s["config"]["last_reload_error"] is None)

        for path in ("/status", "/backups", "/backup/status"):
            _call(transcript, d, "GET", path)
        _call(transcript, d, "GET", "/metrics", token=None)
    finally:
        assert d.stop() == 0
        transcript.add(f"daemon log ({log_format})", d.output())
    if log_format == "json":
        assert all(json.loads(line) for line in d.output().splitlines() if line.strip())
    assert "config_rejected" in d.output() and "backup_started" in d.output()
    transcript.check()
