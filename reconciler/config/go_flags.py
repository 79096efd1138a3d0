"""The Go tool's flags and environment variables, as overrides of the YAML.

Precedence: flags > environment > file > defaults. With no YAML at all,
`replicator run --master-addr 10.0.0.5 --replica-addr 127.0.0.1 ...` behaves
like the Go replicator. Passwords may also come from a file named by
`<VAR>_FILE` (Kubernetes Secrets, systemd credentials).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.config.model import SECRET_KEYS


def go_bool(text: str) -> bool:
    """A boolean as Go's flag package parses it."""
    value = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


@dataclass(frozen=True)
class Override:
    flag: str            # without dashes, as the Go tool spells it
    env: str | None      # the Go tool's variable, if it had one
    path: tuple[str, ...]
    kind: Callable[[str], Any] = str  # a type, or go_bool
    secret: bool = False
    help: str = ""
    file_env: str | None = None  # the variable naming a file with the value (default: env + "_FILE")

    @property
    def file_envs(self) -> tuple[str, ...]:
        if not (self.secret and self.env):
            return ()
        return (self.env + "_FILE",) + ((self.file_env,) if self.file_env else ())


OVERRIDES = (
    Override("master-addr", "MASTER_ADDRESS", ("primary", "host"), help="primary immudb host"),
    Override("master-port", None, ("primary", "port"), int, help="primary immudb port"),
    Override("master-user", None, ("primary", "username"), help="sysadmin user on the primary"),
    Override("master-pass", "MASTER_PASSWORD", ("primary", "password"), secret=True,
             help="its password (prefer MASTER_PASSWORD_FILE: flags show in the process list)"),
    Override("replica-addr", "REPLICA_ADDRESS", ("replica", "host"), help="replica immudb host"),
    Override("replica-port", None, ("replica", "port"), int, help="replica immudb port"),
    Override("replica-user", None, ("replica", "username"), help="sysadmin user on the replica"),
    Override("replica-pass", "REPLICA_PASSWORD", ("replica", "password"), secret=True,
             help="its password (prefer REPLICA_PASSWORD_FILE)"),
    Override("follower-user", None, ("follower", "username"), help="user the replicas log in to the primary as"),
    Override("follower-pass", "FOLLOWER_PASSWORD", ("follower", "password"), secret=True,
             help="its password (prefer FOLLOWER_PASSWORD_FILE)"),
    Override("delay", None, ("reconcile", "interval"), int, help="seconds between reconcile passes"),
    Override("data-dir", "DATADIR", ("replica", "data_dir"), help="the replica's data directory (backups)"),
    Override("replication-sync", None, ("reconcile", "replication", "sync"),
             help="auto (default: synchronous replicas of databases with syncAcks > 0), sync or async"),
    Override("replication-prefetch-tx-buffer-size", None, ("reconcile", "replication", "prefetch_tx_buffer_size"), int,
             help="transactions a replica prefetches"),
    Override("replication-commit-concurrency", None, ("reconcile", "replication", "commit_concurrency"), int,
             help="transactions a replica commits concurrently"),
    Override("replication-allow-tx-discarding", None, ("reconcile", "replication", "allow_tx_discarding"), go_bool,
             help="synchronous replicas may discard precommitted transactions"),
)
# Not flags of the Go tool: the API token, and the AES key its encrypted passwords were made
# with (a build-time constant there; AES_KEY_FILE is what its deployments name)
API_TOKEN = Override("api-token", "REPLICATOR_API_TOKEN", ("api", "token"), secret=True)
AES_KEY = Override("aes-key", "REPLICATOR_AES_KEY", ("secrets", "aes_key"), secret=True, file_env="AES_KEY_FILE")
ENV_ONLY = (API_TOKEN, AES_KEY)


def hint(path: tuple) -> str:
    """How else the value at `path` (e.g. ('primary', 'password')) can be
    given, for error messages: '--master-pass or MASTER_PASSWORD or ...'."""
    key = tuple(path[:2])
    for o in OVERRIDES + ENV_ONLY:
        if key not in (o.path, (o.path[0], o.path[1] + "_file")):
            continue
        ways = [] if o in ENV_ONLY else [f"--{o.flag}"]
        if o.env:
            ways += [o.env, *o.file_envs]
        return " or ".join(ways)
    return ""


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the Go tool's flags; each takes one or two dashes (-master-addr)."""
    group = parser.add_argument_group("Go replicator compatible overrides (flags > environment > file)")
    for o in OVERRIDES:
        if o.kind is go_bool:  # `-flag` alone means true, as in Go; or -flag=false
            group.add_argument(f"-{o.flag}", f"--{o.flag}", dest="go_" + o.flag.replace("-", "_"),
                               type=go_bool, nargs="?", const=True, default=None, metavar="BOOL", help=o.help)
            continue
        group.add_argument(f"-{o.flag}", f"--{o.flag}", dest="go_" + o.flag.replace("-", "_"),
                           type=o.kind, default=None, metavar=o.kind.__name__.upper(), help=o.help)


def collect(args: argparse.Namespace | None, env: Mapping[str, str]) -> tuple[list[tuple[tuple, Any, str]], list[str]]:
    """The overrides in force, lowest precedence first, as (path, value, origin)
    where a secret's path ends in `password_file`/`token_file` when it came from
    a file; and problems (a variable and its _FILE twin both set, a bad number)."""
    found: list[tuple[tuple, Any, str]] = []
    problems: list[str] = []
    for o in OVERRIDES + ENV_ONLY:
        if o.env:
            plain = env.get(o.env)
            files = [(name, env[name]) for name in o.file_envs if env.get(name)]
            if len(files) > 1 or (plain and files):
                names = [o.env, *o.file_envs]
                problems.append(f"set {names[0]} or {names[1]}, not both" if len(names) == 2 else
                                f"set one of {', '.join(names)}, not several")
            elif files:
                found.append((o.path[:1] + (o.path[1] + "_file",), files[0][1], files[0][0]))
            elif plain:
                try:
                    found.append((o.path, o.kind(plain), o.env))
                except ValueError:
                    problems.append(f"{o.env} must be {'a whole number' if o.kind is int else o.kind.__name__}")
    for o in OVERRIDES:
        value = getattr(args, "go_" + o.flag.replace("-", "_"), None) if args is not None else None
        if value is not None:
            found.append((o.path, value, "--" + o.flag))
    return found, problems


def given(args: argparse.Namespace | None, env: Mapping[str, str]) -> bool:
    """True when any of the Go tool's flags or variables is set: then a
    configuration without a YAML file is meant (the API token alone is not)."""
    go = [o for o in collect(args, env)[0] if o[2] not in (API_TOKEN.env, *API_TOKEN.file_envs)]
    return bool(go)


def apply(data: dict, overrides: list[tuple[tuple, Any, str]]) -> dict:
    """Set each override into `data` (a copy is returned). Giving a secret
    replaces both its forms: a flag password wins over a password_file."""
    import copy
    out = copy.deepcopy(data)
    for path, value, _origin in overrides:
        *sections, key = path
        where = out
        for section in sections:
            if not isinstance(where.get(section), dict):
                where[section] = {}
            where = where[section]
        base = key[: -len("_file")] if key.endswith("_file") else key
        if base in SECRET_KEYS:
            where.pop(base, None)
            where.pop(base + "_file", None)
        where[key] = value
    return out
