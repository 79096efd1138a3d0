"""Finding an archive named on the command line: a local path, a name at a
named target, or an `s3://` / `sftp://` location matched to a configured
target for its credentials."""
from __future__ import annotations

import contextlib
import posixpath
from dataclasses import replace
from typing import BinaryIO
from urllib.parse import urlparse

from reconciler.backup import targets
from reconciler.config.model import Config, TargetConfig
from reconciler.errors import ReplicatorError


def target_named(cfg: Config | None, name: str) -> TargetConfig:
    if cfg is None:
        raise ReplicatorError(f"--target {name} needs a configuration file (-c)")
    if name not in cfg.backup.targets:
        known = ", ".join(sorted(cfg.backup.targets)) or "none defined"
        raise ReplicatorError(f"unknown target '{name}' (targets: {known})")
    return cfg.backup.targets[name]


def open_archive(cfg: Config | None, archive: str, target_name: str | None = None) -> tuple[BinaryIO, str, list]:
    """(stream, location, things to close afterwards)."""
    if target_name:
        tcfg = target_named(cfg, target_name)
        base = posixpath.basename(archive)
        target = targets.build(tcfg)
        return target.read(base), target.location(base), [target]
    url = urlparse(archive)
    if url.scheme in ("s3", "sftp"):
        tcfg = _match(cfg, url)
        # the matched target's credentials, the URL's folder
        target = targets.build(replace(tcfg, path=archive if url.scheme == "s3" else url.path))
        base = posixpath.basename(url.path)
        return target.read(base), archive, [target]
    if url.scheme:
        raise ReplicatorError(f"unsupported archive location {archive!r}: use a path, s3://... or sftp://...")
    try:
        stream = open(archive, "rb")
    except OSError as exc:
        raise ReplicatorError(f"cannot read {archive}: {exc.strerror or exc}") from None
    return stream, archive, [stream]


@contextlib.contextmanager
def opened_archive(cfg: Config | None, archive: str, target_name: str | None = None):
    """open_archive as a context manager: (stream, location), closed after."""
    stream, location, closers = open_archive(cfg, archive, target_name)
    try:
        yield stream, location
    finally:
        for c in closers:
            c.close()


def _match(cfg: Config | None, url) -> TargetConfig:
    """The configured target whose server (bucket, or SFTP host and port) the URL names."""
    if url.scheme == "s3":
        candidates = [t for t in (cfg.backup.targets.values() if cfg else ())
                      if t.kind == "s3" and urlparse(t.path).netloc == url.netloc]
        if candidates:
            return candidates[0]
        # no configured target: the standard AWS credential chain
        return TargetConfig(name="s3", kind="s3", path=url.geturl())
    candidates = [t for t in (cfg.backup.targets.values() if cfg else ())
                  if t.kind == "sftp" and t.options.get("host") == url.hostname
                  and int(t.options.get("port") or 22) == (url.port or 22)]
    if not candidates:
        raise ReplicatorError(f"no sftp target in the configuration for {url.hostname}:{url.port or 22}; "
                              f"name one with --target")
    return candidates[0]
