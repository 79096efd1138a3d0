"""`replicator config from-go` and `config schema`.

from-go: the YAML equivalent of a Go replicator
command line and environment, with comments. Passwords never appear: each
becomes a `${VAR}` reference (when the Go tool read it from the
environment) or a `password_file` to fill in (when it was a flag or the Go
tool's default)."""
from __future__ import annotations

import argparse
import json
import os

from reconciler.config import go_flags
from reconciler.config.encrypted import is_encrypted

CREDENTIALS = "/etc/immudb-replicator/credentials"
PASSWORDS = {  # section -> (Go flag, Go variable, the Go tool's default, file name)
    "primary": ("master-pass", "MASTER_PASSWORD", "immudb", "primary-password"),
    "replica": ("replica-pass", "REPLICA_PASSWORD", "immudb", "replica-password"),
    "follower": ("follower-pass", "FOLLOWER_PASSWORD", "zyQQurat.0", "follower-password"),
}


def _scalar(value) -> str:
    return json.dumps(value) if isinstance(value, str) else ("true" if value is True else "false"
                                                             if value is False else str(value))


def from_go(args: argparse.Namespace, env=None) -> str:
    """The configuration text; never a secret's value."""
    env = os.environ if env is None else env
    found, problems = go_flags.collect(args, env)
    given = {path: (value, origin) for path, value, origin in found}  # later (higher precedence) wins

    def value(path, default):
        return given[path][0] if path in given else default

    def origin(path) -> str:
        if path not in given:
            return "  # the Go tool's default"
        source = given[path][1]
        return f"  # {source[1:] if source.startswith('--') else source}"  # flags as the Go tool spells them

    out = ["# immudb-replicator configuration, from the Go replicator's command line and environment",
           "# (replicator config from-go). Passwords are never written here: each is a ${VAR} reference",
           "# or a file to fill in. Check it with: replicator validate -c THIS_FILE", ""]
    encrypted = False
    for section in ("primary", "replica"):
        out.append(f"{section}:")
        for key, default in (("host", ""), ("port", 3322), ("username", "immudb")):
            out.append(f"  {key}: {_scalar(value((section, key), default))}{origin((section, key))}")
        lines, enc = _password(section, given, env)
        out += lines
        encrypted |= enc
        if section == "replica":
            path: tuple = ("replica", "data_dir")
            out.append(f"  data_dir: {_scalar(value(path, '/var/lib/immudb'))}{origin(path)}")
        out.append("")
    path = ("follower", "username")
    out += ["follower:", f"  username: {_scalar(value(path, 'follower'))}{origin(path)}"]
    lines, enc = _password("follower", given, env)
    out += lines
    encrypted |= enc
    out.append("")
    out += ["reconcile:"]
    path = ("reconcile", "interval")
    out.append(f"  interval: {_scalar(value(path, 3600))}{origin(path)}")
    out += ["  rename: {defaultdb: defaultdbbak}   # as the Go tool: the replica's own defaultdb cannot be a replica",
            "  on_primary_removed: ignore          # as the Go tool: orphans are only reported",
            "  replication:"]
    for key, default in (("sync", "auto"), ("prefetch_tx_buffer_size", 100), ("commit_concurrency", 10),
                         ("allow_tx_discarding", False)):
        path = ("reconcile", "replication", key)
        out.append(f"    {key}: {_scalar(value(path, default))}{origin(path)}")
    out += ["",
            "backup:",
            "  # The Go tool took its target from each request (POST /backup/start), which still works for",
            "  # file targets under api.file_target_dirs. Named targets, schedules and retention go here:",
            "  targets: {}",
            "",
            "api:",
            "  # The Go tool listened on :8081 on every interface with no authentication. Here: loopback by",
            "  # default; another address (0.0.0.0:8081 for a pod's probes) needs a token.",
            "  listen: 127.0.0.1:8081",
            "  file_target_dirs: [/var/backups/immudb]   # where the Go tool's {\"type\": \"file\"} requests may write"]
    if encrypted:
        out += ["", "secrets:",
                "  # enc: passwords were decrypted with the Go tool's build-time AES_KEY: put it in this file",
                "  # (or set REPLICATOR_AES_KEY / AES_KEY_FILE)",
                f"  aes_key_file: {CREDENTIALS}/aes-key"]
    for problem in problems:
        out.insert(3, f"# NOTE: {problem}")
    return "\n".join(out) + "\n"


def _password(section: str, given: dict, env) -> tuple[list[str], bool]:
    """The lines for one password, and whether it is enc: encrypted."""
    flag, variable, default, file_name = PASSWORDS[section]
    for path in ((section, "password"), (section, "password_file")):
        if path not in given:
            continue
        value, origin = given[path]
        if path[1] == "password_file":
            text = _read(value)
            return [f"  password_file: {_scalar(value)}  # {origin}"], text is not None and is_encrypted(text)
        encrypted = is_encrypted(value)
        if origin == variable:
            return [f"  password: ${{{variable}}}  # read from the environment at load, as the Go tool did"], encrypted
        return [f"  password_file: {CREDENTIALS}/{file_name}  # write the value of -{flag} here (mode 0600):",
                "  # a flag shows in the process list, a file does not"], encrypted
    return [f"  password_file: {CREDENTIALS}/{file_name}  # the Go tool's built-in default was in use:",
            "  # write a real password here"], False


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def run(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        from reconciler.config.validate import load_schema
        print(json.dumps(load_schema(), indent=2))
        return 0
    print(from_go(args), end="")
    return 0
