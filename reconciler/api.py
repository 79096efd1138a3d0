"""The HTTP API (Bottle), served by waitress in its own thread.

Every answer is JSON (Prometheus text for /metrics); every error is a JSON
object `{"error": ..., "field": ...}` with a 4xx status, never a traceback.
A bearer token guards everything but /livez, /readyz and /metrics, compared
in constant time. No answer ever holds a password, token or secret key.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bottle
from jsonschema import Draft202012Validator

from reconciler.backup import targets
from reconciler.backup.job import BackupAlreadyRunning
from reconciler.config.validate import dotted, load_schema
from reconciler.log import event
from reconciler.secret import redact

if TYPE_CHECKING:
    from reconciler.daemon import Service

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def _json(status: int, body: dict) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(status=status, body=json.dumps(body, default=str),
                               headers={"Content-Type": "application/json"})


def _problem(status: int, message: str, field: str | None = None) -> bottle.HTTPResponse:
    body = {"error": redact(message)}
    if field:
        body["field"] = field
    return _json(status, body)


def build_app(service: "Service") -> bottle.Bottle:
    app = bottle.Bottle(catchall=False)
    request_schema = Draft202012Validator(load_schema("backup-request.schema.json"))

    def guarded(handler):
        def wrapper(*args, **kwargs):
            try:
                if bottle.request.path not in OPEN_PATHS:
                    _authorize(service)
                return handler(*args, **kwargs)
            except HTTPProblem as p:
                return _problem(p.status, p.message, p.field)
            except Exception as exc:  # noqa: BLE001 - never a traceback to a client
                event(log, "api_error", logging.ERROR, path=bottle.request.path, error=f"{type(exc).__name__}: {exc}")
                return _problem(500, "internal error; see the server's log")
        return wrapper

    @app.post("/backup/start")
    @guarded
    def backup_start():
        body = _read_json(service.cfg.api.max_body_bytes)
        target_cfg = _target_from(service, body, request_schema)
        try:
            backup_id = service.start_backup(target_cfg, source="api")
        except BackupAlreadyRunning as exc:
            raise HTTPProblem(409, str(exc)) from None
        return _json(202, {"id": backup_id, "target": target_cfg.name, "status": "/backup/status"})

    @app.get("/backup/status")
    @guarded
    def backup_status():
        return _json(200, service.backup_status())

    @app.get("/backups")
    @guarded
    def backups():
        return _json(200, {"backups": [r.as_dict() for r in reversed(service.backups.history)]})

    @app.get("/status")
    @guarded
    def status():
        return _json(200, service.status())

    @app.get("/livez")
    @guarded
    def livez():
        problems = service.liveness_problems()
        return _json(503 if problems else 200, {"status": "failing" if problems else "ok", "problems": problems})

    @app.get("/readyz")
    @guarded
    def readyz():
        # never the primary's health: a failing sidecar probe would take the replica pod out of its Service
        return _json(200, {"status": "ready", "config_loaded_at": service.config_loaded_at})

    @app.get("/metrics")
    @guarded
    def metrics():
        from reconciler.metrics import render
        text, content_type = render(service)
        return bottle.HTTPResponse(status=200, body=text, headers={"Content-Type": content_type})

    def error_handler(res: bottle.HTTPError):
        message = {404: "no such endpoint", 405: "method not allowed"}.get(res.status_code, res.status_line)
        res.content_type = "application/json"
        return json.dumps({"error": message})

    app.default_error_handler = error_handler
    return app


def _authorize(service: "Service") -> None:
    token = service.cfg.api.token
    if token is None:
        return  # warned about at start
    header = bottle.request.get_header("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.reveal().encode()):
        raise HTTPProblem(401, "missing or wrong bearer token")


def _read_json(limit: int) -> Any:
    length = bottle.request.content_length
    if length > limit:
        raise HTTPProblem(413, f"body larger than {limit} bytes")
    raw = bottle.request.body.read(limit + 1)
    if len(raw) > limit:
        raise HTTPProblem(413, f"body larger than {limit} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HTTPProblem(400, "body is not valid JSON") from None


def _target_from(service: "Service", body: Any, schema: Draft202012Validator):
    if not isinstance(body, dict):
        raise HTTPProblem(400, "body must be a JSON object")
    branch = schema.schema["oneOf"][0 if "target" in body else 1]
    errors = sorted(Draft202012Validator(branch).iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        field = dotted(e.absolute_path) if e.absolute_path else None
        if e.validator == "required":
            field = e.message.split("'")[1]
            raise HTTPProblem(400, f"missing field '{field}'", field)
        if e.validator == "additionalProperties":
            extra = sorted(set(body) - set(e.schema.get("properties", {})))
            raise HTTPProblem(400, f"unknown field '{extra[0]}'", extra[0])
        # never echoed: the password, and the username (for s3 it is the access key)
        shown = "" if field in ("password", "username") else f": {e.message}"
        raise HTTPProblem(400, f"invalid field '{field}'{shown}", field)
    if "target" in body:
        name = body["target"]
        if name not in service.cfg.backup.targets:
            raise HTTPProblem(404, f"unknown target '{name}'", "target")
        return service.cfg.backup.targets[name]
    if body["type"] not in service.cfg.api.inline_targets:
        raise HTTPProblem(403, f"inline {body['type']} targets are disabled (api.inline_targets)", "type")
    if body["type"] == "file":
        _check_file_path(service, body["path"])
    return targets.from_request(body)


def _check_file_path(service: "Service", path: str) -> None:
    allowed = service.cfg.api.file_target_dirs
    if not allowed:
        raise HTTPProblem(403, "inline file targets are disabled: list the directories they may use in "
                               "api.file_target_dirs", "path")
    if not os.path.isabs(path) or ".." in Path(path).parts or "\x00" in path:
        raise HTTPProblem(400, "path must be absolute and must not contain '..'", "path")
    directory = Path(path).parent
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    real = Path(os.path.realpath(probe)) / directory.relative_to(probe)
    for root in allowed:
        root_real = Path(os.path.realpath(root))
        if real == root_real or root_real in real.parents:
            return
    raise HTTPProblem(403, f"path is outside the directories inline file targets may use "
                           f"({', '.join(str(d) for d in allowed)})", "path")


class ApiServer:
    """waitress in a thread; `stop()` closes the listening socket."""

    def __init__(self, service: "Service"):
        import waitress
        host, port = service.cfg.api.host_port
        self.server = waitress.create_server(
            build_app(service), host=host, port=port, threads=8, ident="immudb-replicator",
            # above api.max_body_bytes our handler answers 413 in JSON; waitress itself
            # (plain text) only cuts bodies far beyond it
            max_request_body_size=max(1 << 20, 16 * service.cfg.api.max_body_bytes), channel_timeout=30,
            cleanup_interval=10, connection_limit=200, clear_untrusted_proxy_headers=True)
        self.address = f"{host}:{self.server.effective_port}"
        self.thread = threading.Thread(target=self._serve, name="api", daemon=True)
        self.started_at = time.time()

    def _serve(self) -> None:
        try:
            self.server.run()
        except OSError:
            pass  # closed by stop()

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.server.close()
        self.thread.join(5)
