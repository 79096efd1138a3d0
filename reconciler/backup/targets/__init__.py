"""Backup targets: one module per kind, one interface (base.Target)."""
from __future__ import annotations

from typing import Any, Mapping

from reconciler.backup.targets.base import ArchiveExists, ArchiveInfo, Target, TargetError, Upload
from reconciler.config.model import TargetConfig
from reconciler.secret import Secret

__all__ = ["ArchiveExists", "ArchiveInfo", "Target", "TargetError", "Upload", "build", "from_request"]


def build(cfg: TargetConfig) -> Target:
    """The target a config entry describes."""
    if cfg.kind == "file":
        from reconciler.backup.targets.file import FileTarget
        return FileTarget(cfg.name, cfg.path, **cfg.options)
    if cfg.kind == "sftp":
        from reconciler.backup.targets.sftp import SftpTarget
        return SftpTarget(cfg.name, cfg.path, **cfg.options)
    if cfg.kind == "s3":
        from reconciler.backup.targets.s3 import S3Target
        return S3Target(cfg.name, cfg.path, **cfg.options)
    raise TargetError(f"target {cfg.name}: unknown type {cfg.kind!r}")


def from_request(body: Mapping[str, Any], name: str = "inline", known_hosts_file: str | None = None) -> TargetConfig:
    """A target from the Go tool's request fields: type, path, host, port,
    username, password. For s3, host is the region, username the access key
    and password the secret key. Extra keys of the config's target schema
    (endpoint_url, known_hosts_file, host_key_fingerprint) are passed
    through: the caller decides which a request may carry (see api.py).
    `known_hosts_file` is the configured default for sftp. The body must
    have been validated against schemas/backup-request.schema.json."""
    kind = body["type"]
    password = Secret(body["password"], origin=f"{name}.password") if body.get("password") else None
    options: dict[str, Any] = {}
    extra = {k: v for k, v in body.items() if k not in ("type", "path", "host", "port", "username", "password")}
    if kind == "sftp":
        options = {"host": body["host"], "port": int(body.get("port") or 22), "username": body["username"]}
        if password:
            options["password"] = password
        if known_hosts_file:
            options["known_hosts_file"] = known_hosts_file
    elif kind == "s3":
        options = {"region": body.get("host") or None}
        if body.get("username"):
            options["access_key"] = Secret(body["username"], origin=f"{name}.username")
        if password:
            options["secret_key"] = password
    options.update(extra)
    return TargetConfig(name=name, kind=kind, path=body["path"], options=options)
