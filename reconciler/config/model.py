"""The validated configuration as typed, immutable values.

Built only from data that passed `validate` (defaults filled), so no field
is checked again here. Secrets are `Secret` objects: they print as `***`.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from reconciler.secret import Secret
from reconciler.state import ReplicationSettings
from reconciler.targets.base import Retention, TargetConfig  # the storage layer's own records (re-exported)

# every key whose value is a secret (each may be given as KEY_file instead): never printed,
# never in a message, only hashed into the configuration's digest
SECRET_KEYS = frozenset({"password", "token", "secret_key", "passphrase", "access_key", "aes_key", "hmac_key"})


def _secret(section: dict, key: str, origin: str, decode: Callable[[str], str] | None = None) -> Secret | None:
    if key in section:
        return Secret(str(section[key]), origin=f"{origin}.{key}", decode=decode)
    if f"{key}_file" in section:
        return Secret(file=section[f"{key}_file"], origin=f"{origin}.{key}_file", decode=decode)
    return None


def _password(section: dict, origin: str, aes_key: Secret | None) -> Secret:
    """One of the three passwords the Go tool let be `enc:<hex>` (inline or
    in its file): decrypted with the AES key each time it is read."""
    from reconciler.config.encrypted import decrypt
    key_origin = "password" if "password" in section else "password_file"
    field = f"{origin}.{key_origin}"
    password = _secret(section, "password", origin, decode=lambda given: decrypt(
        given, aes_key.reveal().encode() if aes_key is not None else None, field))
    assert password is not None, f"{origin}: validation requires password or password_file"
    return password


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    username: str
    password: Secret
    timeout: float

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_dict(cls, d: dict, origin: str, aes_key: Secret | None = None) -> ServerConfig:
        return cls(d["host"], d["port"], d["username"], _password(d, origin, aes_key), float(d["timeout"]))


@dataclass(frozen=True)
class ReplicaConfig(ServerConfig):
    data_dir: Path = Path("/var/lib/immudb")

    @classmethod
    def from_dict(cls, d: dict, origin: str, aes_key: Secret | None = None) -> ReplicaConfig:
        base = ServerConfig.from_dict(d, origin, aes_key)
        return cls(base.host, base.port, base.username, base.password, base.timeout, Path(d["data_dir"]))


@dataclass(frozen=True)
class FollowerConfig:
    username: str
    password: Secret


@dataclass(frozen=True)
class Selection:
    """Shell-style globs: a name is selected when it matches an include
    pattern and no exclude pattern."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __contains__(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude)

    @classmethod
    def from_dict(cls, d: dict) -> Selection:
        return cls(tuple(d["include"]), tuple(d["exclude"]))


@dataclass(frozen=True)
class ReconcileConfig:
    interval: int
    databases: Selection
    rename: Mapping[str, str]
    on_primary_removed: str
    adopt_existing: bool
    replication: ReplicationSettings  # what every replica gets: primary's address, follower, options
    sync: str                         # auto | sync | async (reconcile.replication.sync; plan.desired_replication)
    max_new_replicas: int
    batch_interval: int
    backoff_initial: float
    backoff_max: float
    seed_from: str | None = None      # a backup target new replicas are seeded from (reconcile/seeding.py)

    def replica_name(self, primary_name: str) -> str:
        return self.rename.get(primary_name, primary_name)

    def primary_name(self, replica_name: str) -> str:
        """The primary's name of the database that replica database
        `replica_name` follows (the inverse of `rename`)."""
        for primary, replica in self.rename.items():
            if replica == replica_name:
                return primary
        return replica_name


def _retention(d: dict | None) -> Retention | None:
    if not d:
        return None
    age = d.get("max_age")
    seconds = None
    if age:
        seconds = int(age[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[age[-1]]
    return Retention(d.get("keep_last"), seconds, d.get("keep_daily"), d.get("keep_weekly"), d.get("keep_monthly"),
                     d.get("keep_yearly"))


def _target(name: str, d: dict) -> TargetConfig:
    """backup.targets.NAME as the storage layer takes it (targets/base.py):
    the kind's other fields as options, every secret as a `Secret`."""
    origin = f"backup.targets.{name}"
    options: dict[str, Any] = {k: v for k, v in d.items() if k not in ("type", "path", "retention")
                               and k.removesuffix("_file") not in SECRET_KEYS}
    for key in sorted(SECRET_KEYS):
        if (secret := _secret(d, key, origin)) is not None:
            options[key] = secret
    return TargetConfig(name, d["type"], d["path"], MappingProxyType(options), _retention(d.get("retention")))


@dataclass(frozen=True)
class Schedule:
    cron: str
    target: str
    timezone: str | None = None
    action: str = "backup"  # backup | drill


@dataclass(frozen=True)
class DrillConfig:
    immudb_binary: str | None = None
    scratch_dir: Path | None = None
    sample_keys: int = 20
    start_timeout: float = 300


@dataclass(frozen=True)
class BackupConfig:
    databases: Selection
    compression: str
    compression_level: int | None
    staging_dir: Path | None
    targets: Mapping[str, TargetConfig]
    schedules: tuple[Schedule, ...]
    verify_after_upload: str = "bytes"   # bytes (true) | full | off (false): what proves the stored archive
    drill: DrillConfig = DrillConfig()
    continuous: ContinuousConfig | None = None   # None: off
    trust: TrustConfig = None  # type: ignore[assignment]  # filled by __post_init__
    encryption: EncryptionConfig = None  # type: ignore[assignment]  # filled by __post_init__

    def __post_init__(self) -> None:
        if self.trust is None:
            object.__setattr__(self, "trust", TrustConfig())
        if self.encryption is None:
            object.__setattr__(self, "encryption", EncryptionConfig())


@dataclass(frozen=True)
class ContinuousConfig:
    """backup.continuous: the journal (reconciler/journal)."""

    target: str
    databases: Selection = Selection()
    segment_max_seconds: float = 5.0
    segment_max_bytes: int = 16 * 1024 * 1024
    spool_dir: Path | None = None
    spool_max_bytes: int = 1024 * 1024 * 1024

    @classmethod
    def from_dict(cls, d: dict) -> ContinuousConfig | None:
        if not d.get("target"):
            return None
        return cls(d["target"], Selection.from_dict(d["databases"]), float(d["segment_max_seconds"]),
                   int(d["segment_max_bytes"]), Path(d["spool_dir"]) if d["spool_dir"] else None,
                   int(d["spool_max_bytes"]))


DEFAULT_STATE_DIR = Path("/var/lib/immudb-replicator")


@dataclass(frozen=True)
class EncryptionConfig:
    """backup.encryption: archives encrypted to age recipients (reconciler/encryption.py)."""

    recipients: tuple[str, ...] = ()
    recipients_file: Path | None = None
    identity_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.recipients) or self.recipients_file is not None

    @classmethod
    def from_dict(cls, d: dict) -> EncryptionConfig:
        return cls(tuple(d["recipients"]), Path(d["recipients_file"]) if d["recipients_file"] else None,
                   Path(d["identity_file"]) if d["identity_file"] else None)


@dataclass(frozen=True)
class TrustConfig:
    """backup.trust: the anchors restores are checked against (reconciler/trust)."""

    state_dir: Path | None = None        # None: $STATE_DIRECTORY or DEFAULT_STATE_DIR
    hmac_key: Secret | None = None
    public_key_file: Path | None = None

    @property
    def state_folder(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        import os
        given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(given) if given else DEFAULT_STATE_DIR

    @classmethod
    def from_dict(cls, d: dict) -> TrustConfig:
        return cls(Path(d["state_dir"]) if d["state_dir"] else None, _secret(d, "hmac_key", "backup.trust"),
                   Path(d["public_key_file"]) if d["public_key_file"] else None)


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool
    listen: str
    token: Secret | None
    file_target_dirs: tuple[Path, ...]
    max_body_bytes: int
    inline_targets: tuple[str, ...] = ("file",)
    inline_endpoint_urls: tuple[str, ...] = ()
    inline_known_hosts_file: str | None = None
    inline_host_key_fingerprints: bool = False
    allowed_hosts: tuple[str, ...] = ()

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    @property
    def loopback_only(self) -> bool:
        """True when only this machine can reach the API."""
        return is_loopback(self.host_port[0])


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (an empty host or 0.0.0.0 is every interface)."""
    import ipaddress
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DaemonConfig:
    config_check_interval: float = 5
    shutdown_grace: float = 30
    backup_misfire_grace: int = 3600


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    primary: ServerConfig
    replica: ReplicaConfig
    follower: FollowerConfig
    reconcile: ReconcileConfig
    backup: BackupConfig
    api: ApiConfig
    logging: LoggingConfig
    daemon: DaemonConfig = DaemonConfig()
    source: str = "(flags and environment)"
    digest: str = ""  # sha256 of the effective settings, secrets as digests

    @classmethod
    def from_dict(cls, d: dict, source: str) -> Config:
        rec, rep = d["reconcile"], d["reconcile"]["replication"]
        aes_key = _secret(d["secrets"], "aes_key", "secrets")
        primary = ServerConfig.from_dict(d["primary"], "primary", aes_key)
        backup = d["backup"]
        return cls(
            primary=primary,
            replica=ReplicaConfig.from_dict(d["replica"], "replica", aes_key),
            follower=FollowerConfig(d["follower"]["username"], _password(d["follower"], "follower", aes_key)),
            reconcile=ReconcileConfig(
                interval=rec["interval"],
                databases=Selection.from_dict(rec["databases"]),
                rename=MappingProxyType(dict(rec["rename"])),
                on_primary_removed=rec["on_primary_removed"],
                adopt_existing=rec["adopt_existing"],
                max_new_replicas=rec["max_new_replicas"],
                batch_interval=rec["batch_interval"],
                seed_from=rec["seed_from"],
                # the options of reconcile.replication are ReplicationSettings' fields of the same names
                replication=ReplicationSettings(
                    replica=True, primary_host=rep["primary_host"] or primary.host,
                    primary_port=rep["primary_port"] or primary.port,
                    primary_username=d["follower"]["username"],
                    **{f.name: rep[f.name] for f in dataclasses.fields(ReplicationSettings)
                       if f.name in rep and f.name not in ("primary_host", "primary_port")}),
                sync=rep["sync"],
                backoff_initial=float(rec["backoff"]["initial"]),
                backoff_max=float(rec["backoff"]["max"]),
            ),
            backup=BackupConfig(
                databases=Selection.from_dict(backup["databases"]),
                compression=backup["compression"],
                compression_level=backup["compression_level"],
                staging_dir=Path(backup["staging_dir"]) if backup["staging_dir"] else None,
                targets=MappingProxyType({n: _target(n, t) for n, t in backup["targets"].items()}),
                schedules=tuple(Schedule(s["cron"], s["target"], s["timezone"], s["action"])
                                for s in backup["schedules"]),
                verify_after_upload={True: "bytes", False: "off"}.get(backup["verify_after_upload"], "full"),
                drill=DrillConfig(backup["drill"]["immudb_binary"],
                                  Path(backup["drill"]["scratch_dir"]) if backup["drill"]["scratch_dir"] else None,
                                  backup["drill"]["sample_keys"], float(backup["drill"]["start_timeout"])),
                continuous=ContinuousConfig.from_dict(backup["continuous"]),
                trust=TrustConfig.from_dict(backup["trust"]),
                encryption=EncryptionConfig.from_dict(backup["encryption"]),
            ),
            api=ApiConfig(
                enabled=d["api"]["enabled"],
                listen=d["api"]["listen"],
                token=_secret(d["api"], "token", "api"),
                file_target_dirs=tuple(Path(p) for p in d["api"]["file_target_dirs"]),
                max_body_bytes=d["api"]["max_body_bytes"],
                inline_targets=tuple(d["api"]["inline_targets"]),
                inline_endpoint_urls=tuple(d["api"]["inline_endpoint_urls"]),
                inline_known_hosts_file=d["api"]["inline_known_hosts_file"],
                inline_host_key_fingerprints=d["api"]["inline_host_key_fingerprints"],
                allowed_hosts=tuple(d["api"]["allowed_hosts"]),
            ),
            logging=LoggingConfig(d["logging"]["level"], d["logging"]["format"]),
            daemon=DaemonConfig(float(d["daemon"]["config_check_interval"]), float(d["daemon"]["shutdown_grace"]),
                                int(d["daemon"]["backup_misfire_grace"])),
            source=source,
            digest=_digest(d),
        )


def _digest(d: dict) -> str:
    """Identifies the effective settings; secret values enter only as hashes."""
    def scrub(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: scrub(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if key in SECRET_KEYS:
            return "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()
        return value
    return hashlib.sha256(json.dumps(scrub(d), sort_keys=True, default=str).encode()).hexdigest()
