"""A directory on an SFTP server (paramiko).

The server's host key is checked: against `known_hosts_file` (strict by
default; `accept-new` adds a host seen for the first time to that file) or
against a pinned `host_key_fingerprint` (SHA256:..., as `ssh-keygen -l`
prints it). Uploads go to `.NAME.partial` and are renamed on commit (SFTP's
rename refuses to replace an existing file); abort removes the partial file.
"""
from __future__ import annotations

import base64
import builtins
import dataclasses
import hashlib
import posixpath
import stat
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import ParseResult

if TYPE_CHECKING:
    import paramiko as _paramiko

from reconciler.secret import Secret
from reconciler.targets.base import (
    PARTIAL_SUFFIX,
    ArchiveExists,
    ArchiveInfo,
    InlinePolicy,
    RequestRefused,
    Target,
    TargetConfig,
    TargetError,
    Upload,
    lazy_import,
    sort_key,
)

paramiko = lazy_import("paramiko")

KIND = "sftp"
URL_SCHEME = "sftp"
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["host", "username"],
    "properties": {
        "type": {"const": "sftp"},
        "path": {"$ref": "#/$defs/archive_path"},
        "host": {"type": "string", "minLength": 1},
        "port": {"$ref": "#/$defs/port", "default": 22},
        "username": {"type": "string", "minLength": 1},
        "password": {"$ref": "#/$defs/secret"},
        "password_file": {"$ref": "#/$defs/path"},
        "private_key_file": {"$ref": "#/$defs/path"},
        "passphrase": {"$ref": "#/$defs/secret"},
        "passphrase_file": {"$ref": "#/$defs/path"},
        "known_hosts_file": {"description": "known_hosts to check the server's host key against (default "
                                            "~/.ssh/known_hosts).", "$ref": "#/$defs/path"},
        "host_key_fingerprint": {"description": "Pinned host key, as ssh-keygen -l prints it: SHA256:base64.",
                                 "type": "string", "pattern": "^SHA256:[A-Za-z0-9+/]{43}=?$"},
        "host_key_policy": {"description": "strict: the key must be known; accept-new: a host not yet in "
                                           "known_hosts_file is added on first use.",
                            "enum": ["strict", "accept-new"], "default": "strict"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "default": 30},
        "create_dirs": {"type": "boolean", "default": False},
        "retention": {"$ref": "#/$defs/retention"},
    },
}

# what a request (POST /backup/start, `replicator backup --type sftp`) must give
REQUEST_SCHEMA = {"required": ["host", "username"],
                  "properties": {"host": {"minLength": 1}, "username": {"minLength": 1}}}


def config_problems(target: dict, data_dir: Path) -> list[tuple[str | None, str]]:
    if not {"password", "password_file", "private_key_file"} & set(target):
        return [(None, "set password, password_file or private_key_file")]
    return []


def options_from_request(body: dict, policy: InlinePolicy | None) -> dict:
    """Host, port, username and password from the Go tool's fields. The
    server's key is checked against `known_hosts_file` (a request may name
    one only when trusted; else the policy's), or a pinned fingerprint the
    policy lets a request give."""
    if policy is not None:
        if "known_hosts_file" in body:
            raise RequestRefused(403, "a request cannot name a local file: inline sftp targets use "
                                      "api.inline_known_hosts_file", "known_hosts_file")
        if "host_key_fingerprint" in body and not policy.host_key_fingerprints:
            raise RequestRefused(403, "host keys cannot come from a request unless "
                                      "api.inline_host_key_fingerprints is true", "host_key_fingerprint")
    options = {"host": body["host"], "port": int(body.get("port") or 22), "username": body["username"]}
    if body.get("password"):
        options["password"] = Secret(body["password"], origin="inline.password")
    known_hosts = body.get("known_hosts_file") or (policy.known_hosts_file if policy is not None else None)
    if known_hosts:
        options["known_hosts_file"] = known_hosts
    if body.get("host_key_fingerprint"):
        options["host_key_fingerprint"] = body["host_key_fingerprint"]
    return options


def target_for_url(url: ParseResult, configured: list[TargetConfig]) -> TargetConfig:
    """The configured target for the location's host and port, in the
    location's folder."""
    for t in configured:
        if t.options.get("host") == url.hostname and int(t.options.get("port") or 22) == (url.port or 22):
            return dataclasses.replace(t, path=url.path)
    raise TargetError(f"no sftp target in the configuration for {url.hostname}:{url.port or 22}; "
                      f"name one with --target")


def build(cfg: TargetConfig) -> SftpTarget:
    return SftpTarget(cfg.name, cfg.path, **cfg.options)


def fingerprint(key: _paramiko.PKey) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _PinnedKey:
    """A host key policy (paramiko only calls missing_host_key): the key
    must have the pinned fingerprint."""

    def __init__(self, expected: str):
        self.expected = expected.rstrip("=")

    def missing_host_key(self, client: _paramiko.SSHClient, hostname: str, key: _paramiko.PKey) -> None:
        seen = fingerprint(key)
        if seen != self.expected:
            raise paramiko.SSHException(f"host key {seen} does not match the pinned {self.expected}")


class _AcceptNew:
    """Trust on first use: record an unknown host's key in known_hosts."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client: _paramiko.SSHClient, hostname: str, key: _paramiko.PKey) -> None:
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as out:
            out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class SftpUpload(Upload):
    """Writes are pipelined (not waiting for each answer makes SFTP fast over
    a WAN), but every one is acknowledged: paramiko reports a refused write
    (a full disk, a quota) only to whoever reads its answer, and its close()
    reads the last ones and drops their errors. So at most IN_FLIGHT writes
    go unanswered, commit reads every answer left, and compares the file's
    size on the server with the bytes sent before it renames the file."""

    IN_FLIGHT = 32  # writes of up to 32 KiB: 1 MiB unanswered at most

    def __init__(self, target: SftpTarget, final: str):
        self.target, self.final = target, final
        self.partial = posixpath.join(posixpath.dirname(final), "." + posixpath.basename(final) + PARTIAL_SUFFIX)
        self.sent = 0
        try:
            self.file = target.sftp.open(self.partial, "wb")
        except (OSError, paramiko.SSHException) as exc:
            raise target.error(f"cannot create {self.partial}", exc) from None
        try:
            self.file.chmod(0o600)  # the archive holds whole databases: private before any byte arrives
            self.file.set_pipelined(True)
        except (OSError, paramiko.SSHException) as exc:
            self.abort()
            raise target.error(f"cannot make {self.partial} private (mode 0600)", exc) from None

    def _acknowledge(self, keep: int = 0) -> None:
        """Read the server's answers to our writes until at most `keep` are
        unanswered. Raises OSError for a refused write. (paramiko keeps the
        unanswered writes in SFTPFile._reqs; its _read_response raises for
        an error status.)"""
        pending = self.file._reqs  # type: ignore[attr-defined]
        while len(pending) > keep:
            self.file.sftp._read_response(pending.popleft())  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
            self.sent += len(data)
            self._acknowledge(keep=self.IN_FLIGHT)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise self.target.error(f"cannot write {self.partial} (a full disk or a quota on the server?)",
                                    exc) from None

    def commit(self) -> str:
        try:
            self.file.flush()
            self._acknowledge()
            arrived = self.file.stat().st_size
            if arrived != self.sent:
                raise TargetError(f"target {self.target.name}: {self.partial} holds {arrived} bytes of the "
                                  f"{self.sent} sent (a full disk or a quota on the server?); not committed")
            self.file.close()
            self.target.sftp.rename(self.partial, self.final)
        except TargetError:
            self.abort()
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.abort()
            if self.target.exists(self.final):
                raise ArchiveExists(f"target {self.target.name}: {self.target.location(self.final)} exists; "
                                    f"it is never overwritten") from None
            raise self.target.error(f"cannot finish {self.final} (a full disk or a quota on the server?)",
                                    exc) from None
        return self.target.location(posixpath.basename(self.final))

    def abort(self) -> None:
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 - the connection may be gone; nothing more to do
            pass
        try:
            self.target.sftp.remove(self.partial)
        except Exception:  # noqa: BLE001 - a dead connection leaves a partial file: cleaned on the next run
            pass


class SftpTarget(Target):
    kind = "sftp"

    def __init__(self, name: str, path_template: str, host: str, username: str, port: int = 22,
                 password: Secret | None = None, private_key_file: str | None = None,
                 passphrase: Secret | None = None, known_hosts_file: str | None = None,
                 host_key_fingerprint: str | None = None, host_key_policy: str = "strict",
                 timeout: float = 30, create_dirs: bool = False):
        super().__init__(name, path_template)
        self.host, self.port, self.username = host, port, username
        self.password, self.private_key_file, self.passphrase = password, private_key_file, passphrase
        self.known_hosts = Path(known_hosts_file).expanduser() if known_hosts_file else Path("~/.ssh/known_hosts").expanduser()
        self.fingerprint, self.policy = host_key_fingerprint, host_key_policy
        self.timeout, self.create_dirs = timeout, create_dirs
        self._client: _paramiko.SSHClient | None = None
        self._sftp: _paramiko.SFTPClient | None = None

    def error(self, what: str, exc: BaseException) -> TargetError:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
            detail = exc.strerror
        return TargetError(f"target {self.name} (sftp {self.username}@{self.host}:{self.port}): {what}: {detail}")

    def location(self, name: str) -> str:
        return f"sftp://{self.host}:{self.port}{posixpath.join(self.directory or '.', name)}"

    @property
    def sftp(self) -> _paramiko.SFTPClient:
        if self._sftp is None:
            self._connect()
        return self._sftp  # type: ignore[return-value]

    def _connect(self) -> None:
        client = paramiko.SSHClient()
        if self.fingerprint:
            client.set_missing_host_key_policy(_PinnedKey(self.fingerprint))
        else:
            if self.known_hosts.exists():
                self._load_known_hosts(client)
            elif self.policy == "strict":
                raise TargetError(f"target {self.name}: known_hosts file {self.known_hosts} does not exist; "
                                  f"add the server's key there, pin host_key_fingerprint, or use "
                                  f"host_key_policy: accept-new")
            client.set_missing_host_key_policy(
                _AcceptNew(self.known_hosts) if self.policy == "accept-new" else paramiko.RejectPolicy())
        pkey = None
        try:
            if self.private_key_file:
                pkey = paramiko.PKey.from_path(self.private_key_file,
                                               self.passphrase.reveal().encode() if self.passphrase else None)
            client.connect(self.host, port=self.port, username=self.username,
                           password=self.password.reveal() if self.password else None, pkey=pkey,
                           timeout=self.timeout, banner_timeout=self.timeout, auth_timeout=self.timeout,
                           allow_agent=False, look_for_keys=False)
            self._sftp = client.open_sftp()
            self._sftp.get_channel().settimeout(self.timeout)  # type: ignore[union-attr]  # open_sftp() made it
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise TargetError(f"target {self.name}: the host key of {self.host}:{self.port} "
                              f"({fingerprint(exc.key)}) does not match the one in {self.known_hosts}: refusing "
                              f"to connect") from None
        except paramiko.AuthenticationException:
            client.close()
            raise TargetError(f"target {self.name}: {self.username}@{self.host}:{self.port} refused the "
                              f"credentials") from None
        except (paramiko.SSHException, OSError, TimeoutError, EOFError, ValueError) as exc:
            client.close()
            text = str(exc)
            if "not found in known_hosts" in text or "does not match the pinned" in text:
                raise TargetError(f"target {self.name}: unknown host key for {self.host}:{self.port}: {text}; "
                                  f"refusing to connect") from None
            raise self.error("cannot connect", exc) from None
        self._client = client

    def _load_known_hosts(self, client: _paramiko.SSHClient) -> None:
        """Never quotes the file: whatever it holds stays out of messages."""
        try:
            client.load_host_keys(str(self.known_hosts))
        except OSError as exc:
            raise TargetError(f"target {self.name}: cannot read known_hosts file {self.known_hosts}: "
                              f"{exc.strerror or exc}") from None
        except Exception as exc:  # noqa: BLE001 - paramiko's parse errors quote the offending line
            raise TargetError(f"target {self.name}: known_hosts file {self.known_hosts} has a malformed line "
                              f"({type(exc).__name__}); fix or remove it") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = self._sftp = None

    def exists(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
            return True
        except (OSError, paramiko.SSHException):
            return False

    def _ensure_dir(self) -> None:
        directory = self.directory or "."
        try:
            if stat.S_ISDIR(self.sftp.stat(directory).st_mode):  # type: ignore[arg-type]  # None: the server sent no mode
                return
            raise TargetError(f"target {self.name}: {directory} on {self.host} is not a directory")
        except FileNotFoundError:
            if not self.create_dirs:
                raise TargetError(f"target {self.name}: directory {directory} does not exist on {self.host} "
                                  f"(create_dirs is off)") from None
        parts, path = [p for p in directory.split("/") if p], "/" if directory.startswith("/") else ""
        for part in parts:
            path = posixpath.join(path, part) if path else part
            try:
                self.sftp.stat(path)
            except FileNotFoundError:
                try:
                    self.sftp.mkdir(path, mode=0o700)
                except OSError as exc:
                    raise self.error(f"cannot create directory {path}", exc) from None

    def open(self, name: str, size_hint: int | None = None) -> Upload:
        self._ensure_dir()
        final = posixpath.join(self.directory or ".", name)
        if self.exists(final):
            raise ArchiveExists(f"target {self.name}: {self.location(name)} exists; it is never overwritten "
                                f"(put {{timestamp}} in the target's path)")
        return SftpUpload(self, final)

    def read(self, name: str) -> BinaryIO:
        path = posixpath.join(self.directory or ".", name)
        try:
            f = self.sftp.open(path, "rb")
            f.prefetch()
            return f  # type: ignore[return-value]
        except (OSError, paramiko.SSHException) as exc:
            raise self.error(f"cannot read {path}", exc) from None

    def _entries(self) -> list:
        """The directory's entries with their attributes ([] when it does not exist)."""
        try:
            return self.sftp.listdir_attr(self.directory or ".")
        except FileNotFoundError:
            return []
        except (OSError, paramiko.SSHException) as exc:
            raise self.error(f"cannot list {self.directory}", exc) from None

    def list(self) -> list[ArchiveInfo]:
        found = [ArchiveInfo(e.filename, e.st_size or 0, float(e.st_mtime or 0), self.location(e.filename))
                 for e in self._entries() if stat.S_ISREG(e.st_mode or 0) and self.owns(e.filename)]
        return sorted(found, key=sort_key)

    def folders(self) -> builtins.list[str]:
        return sorted(e.filename for e in self._entries() if stat.S_ISDIR(e.st_mode or 0))

    def delete(self, name: str) -> None:
        path = posixpath.join(self.directory or ".", name)
        try:
            self.sftp.remove(path)
        except (OSError, paramiko.SSHException) as exc:
            raise self.error(f"cannot delete {path}", exc) from None

    def cleanup_partial(self) -> builtins.list[str]:
        removed: list[str] = []
        try:
            entries = self.sftp.listdir(self.directory or ".")
        except (OSError, paramiko.SSHException):
            return removed
        for entry in entries:
            if entry.startswith(".") and entry.endswith(PARTIAL_SUFFIX) and self.owns(entry[1:-len(PARTIAL_SUFFIX)]):
                try:
                    self.sftp.remove(posixpath.join(self.directory or ".", entry))
                    removed.append(entry)
                except (OSError, paramiko.SSHException):
                    pass
        return removed
