"""Configuration files for the test servers: one builder for every test,
the daemon helper, the benchmarks and the demo."""
from __future__ import annotations

import hashlib
import itertools
import tempfile
import time
from pathlib import Path

import yaml

_names = itertools.count(1)


def unique_name(prefix: str = "db") -> str:
    """A database (or folder, bucket) name no other test uses (immudb names: [a-z0-9_])."""
    return f"{prefix}{int(time.time() * 1000) % 10_000_000}_{next(_names)}"


def _section_of(key: str) -> str:
    """The configuration section a top-level key of `reconcile` or `backup` belongs to."""
    from reconciler.config.validate import load_schema
    sections = load_schema()["properties"]
    found = [section for section in ("backup", "reconcile") if key in sections[section]["properties"]]
    if len(found) != 1:
        raise TypeError(f"config_data: {key!r} is " + (f"a key of both {' and '.join(found)}: pass it inside "
                                                       "reconcile={...} or backup={...}" if found else
                                                       "neither a section nor a key of reconcile or backup"))
    return found[0]


def config_data(primary_server, replica_server, prefix: str, follower: str | None = None, *,
                password: str = "Follower-pw-1", timeout: float = 30, **changes) -> dict:
    """A configuration of the test servers that follows and backs up the
    databases named `prefix*`. `changes` are whole sections (`api={...}`),
    added to the defaults, or keys of `reconcile` or `backup`
    (`compression="none"`, `targets={...}`, `max_new_replicas=0`)."""
    data = {
        "primary": {"host": "127.0.0.1", "port": primary_server.port, "password": primary_server.password,
                    "timeout": timeout},
        "replica": {"host": "127.0.0.1", "port": replica_server.port, "password": replica_server.password,
                    "timeout": timeout, "data_dir": str(replica_server.data_dir)},
        "follower": {"username": follower or "fol_" + prefix.strip("_"), "password": password},
        "reconcile": {"databases": {"include": [f"{prefix}*"]}, "backoff": {"initial": 0.1, "max": 1}},
        "backup": {"databases": {"include": [f"{prefix}*"]}, "targets": {}},
    }
    for key, value in changes.items():
        section = key if key in data or key in ("api", "daemon", "logging", "secrets") else _section_of(key)
        if section == key:
            data[key] = {**data.get(key, {}), **value}
        else:
            data[section][key] = value
    return data


def write_config(where: Path, primary_server, replica_server, prefix: str, follower: str | None = None, *,
                 name: str = "replicator.yaml", **changes) -> Path:
    """config_data(...) written to `where / name`; its path."""
    return write_data(where / name, config_data(primary_server, replica_server, prefix, follower, **changes))


def write_data(path: Path, data: dict) -> Path:
    """`data` as a YAML configuration file at `path`, replaced whole. Its
    local checkpoints (backup.trust.state_dir) go to a folder of its own
    beside the test's, unless the data names one."""
    backup = data.setdefault("backup", {})
    trust = backup.setdefault("trust", {})
    if "state_dir" not in trust:
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        trust["state_dir"] = str(Path(tempfile.gettempdir()) / f"replicator-test-state-{digest}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    tmp.rename(path)
    return path
