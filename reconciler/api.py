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
import threading
import time
from typing import Any, Protocol

import bottle
from jsonschema import Draft202012Validator

from reconciler import __version__, targets
from reconciler.backup.job import BackupAlreadyRunning
from reconciler.config.model import Config, TargetConfig
from reconciler.config.validate import load_schema
from reconciler.log import event
from reconciler.secret import redact
from reconciler.status import DatabaseStatus, ServiceStats

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/", "/livez", "/readyz", "/metrics"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class Service(Protocol):
    """What the API serves (the daemon): its configuration, its status
    records, and backups to start."""

    cfg: Config
    config_loaded_at: float
    stats: ServiceStats

    @property
    def backup_running(self) -> bool: ...

    def start_backup(self, target_cfg: TargetConfig, source: str = "api") -> str: ...

    def backup_status(self) -> dict: ...

    def backup_history(self) -> list[dict]: ...

    def status(self) -> dict: ...

    def databases(self) -> list[DatabaseStatus]: ...

    def journal_statuses(self) -> list[dict]: ...

    def liveness_problems(self) -> list[str]: ...


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


def build_app(service: Service) -> bottle.Bottle:
    app = bottle.Bottle(catchall=False)
    request_schema = Draft202012Validator(load_schema("backup-request.schema.json"))

    def guarded(handler):
        def wrapper(*args, **kwargs):
            try:
                _check_host(service)
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
        _require_json()
        body = _read_json(service.cfg.api.max_body_bytes)
        target_cfg = _target_from(service, body, request_schema)
        try:
            backup_id = service.start_backup(target_cfg, source="api")
        except BackupAlreadyRunning as exc:
            raise HTTPProblem(409, str(exc)) from None
        return _json(202, {"id": backup_id, "target": target_cfg.name, "status": "/backup/status"})

    @app.get("/backup/status")
    @app.get("/backup/start")  # the Go tool answers GET /backup/start with the status too
    @guarded
    def backup_status():
        return _json(200, service.backup_status())

    @app.get("/")
    @guarded
    def home():
        # the Go tool's first line, which probes and scripts read: "replicator v<version>-<commit> @<build>"
        return bottle.HTTPResponse(status=200, body=f"replicator v{__version__}-immudb-replicator @python\n",
                                   headers={"Content-Type": "text/plain; charset=utf-8"})

    @app.get("/backups")
    @guarded
    def backups():
        return _json(200, {"backups": service.backup_history()})

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


def _authorize(service: Service) -> None:
    token = service.cfg.api.token
    if token is None:
        return  # warned about at start
    header = bottle.request.get_header("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.reveal().encode()):
        raise HTTPProblem(401, "missing or wrong bearer token")


def _check_host(service: Service) -> None:
    """Without a token, only requests addressed to this machine by a
    loopback name (or a configured one) are served: a web page the operator
    visits could otherwise reach the API through DNS rebinding (its own
    host name resolved to 127.0.0.1; the browser still sends that name)."""
    api = service.cfg.api
    if api.token is not None:
        return
    header = bottle.request.get_header("Host")
    if header is None:
        return  # HTTP/1.0 without Host: not a browser
    host = header.strip().lower()
    host = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rpartition(":")[0] or host
    if host in LOOPBACK_NAMES or host in {h.lower() for h in api.allowed_hosts}:
        return
    raise HTTPProblem(403, "requests without api.token must be addressed to localhost, 127.0.0.1 or [::1] "
                           "(or a name in api.allowed_hosts)")


def _require_json() -> None:
    """A browser page may send a cross-site POST with a form's or text's
    content type without asking first, never with application/json."""
    kind = (bottle.request.get_header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise HTTPProblem(415, "send the body as JSON with Content-Type: application/json")


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


def _target_from(service: Service, body: Any, schema: Draft202012Validator):
    if not isinstance(body, dict):
        raise HTTPProblem(400, "body must be a JSON object")
    for key, value in body.items():
        if isinstance(value, str) and not _is_text(value):
            raise HTTPProblem(400, f"field '{key}' is not valid Unicode text", key)
    branch = schema.schema["oneOf"][0 if "target" in body else 1]
    errors = sorted(Draft202012Validator(branch).iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        refused = targets.refusal(errors[0])
        raise HTTPProblem(refused.status, str(refused), refused.field)
    if "target" in body:
        name = body["target"]
        if name not in service.cfg.backup.targets:
            raise HTTPProblem(404, f"unknown target '{name}'", "target")
        return service.cfg.backup.targets[name]
    api = service.cfg.api
    if body["type"] not in api.inline_targets:
        raise HTTPProblem(403, f"inline {body['type']} targets are disabled (api.inline_targets)", "type")
    policy = targets.InlinePolicy(file_target_dirs=api.file_target_dirs, endpoint_urls=api.inline_endpoint_urls,
                                  known_hosts_file=api.inline_known_hosts_file,
                                  host_key_fingerprints=api.inline_host_key_fingerprints)
    try:
        return targets.from_request(body, policy)
    except targets.RequestRefused as exc:
        raise HTTPProblem(exc.status, str(exc), exc.field) from None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
        return "\x00" not in value
    except UnicodeEncodeError:  # an unpaired surrogate: JSON can carry one ("\ud800")
        return False


class ApiServer:
    """waitress in a thread; `stop()` closes the listening socket."""

    def __init__(self, service: Service):
        import waitress
        host, port = service.cfg.api.host_port
        self.server = waitress.create_server(  # type: ignore[attr-defined]  # re-exported by waitress, not by its stubs
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
