"""Finding an archive named on the command line: a local path, a name at a
named target, or an `s3://` / `sftp://` location matched to a configured
target for its credentials."""
from __future__ import annotations

import contextlib
import posixpath
from typing import BinaryIO
from urllib.parse import urlparse

from reconciler import targets
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
    if url.scheme:
        target = targets.build(targets.for_url(list(cfg.backup.targets.values()) if cfg else [], url))
        base = posixpath.basename(url.path)
        return target.read(base), archive, [target]
    try:
        stream = open(archive, "rb")
    except OSError as exc:
        raise ReplicatorError(f"cannot read {archive}: {exc.strerror or exc}") from None
    return stream, archive, [stream]


def archive_target(cfg: Config | None, archive: str, target_name: str | None = None) -> tuple[TargetConfig, str]:
    """(the target the archive is at, its name there): what its local
    checkpoint is kept under (trust/checkpoints.py keys them by where the
    target is, so a path names the same place as the file target there)."""
    import os
    if target_name:
        return target_named(cfg, target_name), posixpath.basename(archive)
    url = urlparse(archive)
    if url.scheme:
        return targets.for_url(list(cfg.backup.targets.values()) if cfg else [], url), posixpath.basename(url.path)
    path = os.path.abspath(archive)
    return TargetConfig("path", "file", path), os.path.basename(path)


@contextlib.contextmanager
def opened_archive(cfg: Config | None, archive: str, target_name: str | None = None):
    """open_archive as a context manager: (stream, location), closed after."""
    stream, location, closers = open_archive(cfg, archive, target_name)
    try:
        yield stream, location
    finally:
        for c in closers:
            c.close()
