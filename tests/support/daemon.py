"""A real `replicator run` subprocess for tests: config written to a file,
HTTP helpers, log capture, clean stop."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.cli import argv as cli_argv
from tests.support.configs import config_data, write_data
from tests.support.servers import free_port
from tests.support.waiting import patient, wait_for

ROOT = Path(__file__).resolve().parents[2]  # the repository
TOKEN = "Api-token-for-tests-123"
STARTED: list[Daemon] = []  # every daemon started, so a failing test's report can show their logs (conftest)


class Daemon:
    def __init__(self, tmp_path: Path, primary_server, replica_server, prefix: str, extra_env: dict | None = None,
                 **sections):
        self.tmp_path = tmp_path
        self.port = free_port()
        self.config_path = tmp_path / "replicator.yaml"
        defaults = {"reconcile": {"interval": 3600},
                    "api": {"listen": f"127.0.0.1:{self.port}", "token": TOKEN,
                            "file_target_dirs": [str(tmp_path / "out")]},
                    "daemon": {"config_check_interval": 0.5, "shutdown_grace": 30}}
        for key, value in sections.items():  # a section given is added to its defaults
            defaults[key] = {**defaults[key], **value} if key in defaults else value
        sections = defaults
        self.data = config_data(primary_server, replica_server, prefix, **sections)
        self.write_config()
        self.env = dict(os.environ, HOME=str(tmp_path), **(extra_env or {}))
        self.log_path = tmp_path / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        write_data(self.config_path, self.data)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> Daemon:
        self.log = open(self.log_path, "wb")
        STARTED.append(self)
        self.proc = subprocess.Popen(cli_argv("run", "-c", str(self.config_path)),
                                     cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if wait_ready:
            def ready() -> bool:
                if self.proc.poll() is not None:
                    raise ChildProcessError(f"daemon exited {self.proc.returncode}: {self.output()}")
                try:
                    return self.request("GET", "/readyz", token=None)[0] == 200
                except OSError:
                    return False
            try:
                wait_for(ready, 30, "the daemon to be ready")
            except ChildProcessError as exc:
                raise AssertionError(str(exc)) from None
            except AssertionError:
                raise AssertionError("daemon not ready: " + self.output()) from None
        return self

    def exchange(self, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None,
                 headers: dict | None = None, timeout: float = 30) -> tuple[int, str, str]:
        """One HTTP request: (status, response headers as text, body as text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, str(resp.headers), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, str(err.headers), err.read().decode(errors="replace")

    def request(self, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None,
                headers: dict | None = None, timeout: float = 30) -> tuple[int, dict | str]:
        status, head, text = self.exchange(method, path, body, token, raw, headers, timeout)
        return status, (json.loads(text) if "application/json" in head.lower() else text)

    def wait_backup(self, timeout: float = 120) -> dict:
        """Poll /backup/status until no backup runs; the last result."""
        def finished():
            status, body = self.request("GET", "/backup/status")
            assert status == 200, body
            return body if not body["running"] and body["last_result"] else None
        return wait_for(finished, timeout, "the backup to finish", interval=0.2)

    def journal(self, database: str) -> dict | None:
        """The journal of `database` as /status shows it, or None (not running)."""
        status, body = self.request("GET", "/status")
        assert status == 200, body
        return next((j for j in body["journal"] or [] if j["database"] == database), None)

    def wait_shipped(self, database: str, tx: int, timeout: float = 90) -> dict:
        """Until the journal of `database` has shipped transaction `tx` (its
        /status `shipped_tx` is at least `tx`); that journal's status then."""
        def shipped() -> dict | None:
            journal = self.journal(database)
            return journal if journal is not None and journal["shipped_tx"] >= tx else None
        return wait_for(shipped, timeout, f"transaction {tx} of {database} shipped")

    def wait_backup_stalled(self, timeout: float = 120, window: float = 2.0) -> dict:
        """Until the running backup has read nothing for `window` seconds (its
        target stopped taking data); the backup status then."""
        def stalled():
            first = self.request("GET", "/backup/status")[1]
            time.sleep(window)
            again = self.request("GET", "/backup/status")[1]
            return again if again["running"] and again["bytes_done"] == first["bytes_done"] else None
        return wait_for(stalled, timeout, "the backup to stall", interval=0)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(patient(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode
