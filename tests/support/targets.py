"""A target of every kind on its real server: the parameters of the shared
target suite (tests/test_targets.py) and of every backup test. Adding a
target kind adds one entry to KINDS."""
from __future__ import annotations

from reconciler.config.model import TargetConfig
from reconciler.secret import Secret
from tests.support.configs import unique_name


def file_target(tmp_path, **_) -> TargetConfig:
    return TargetConfig("local", "file", str(tmp_path / "archives" / "immudb-{timestamp}.tar.gz"),
                        {"create_dirs": True})


def sftp_target(tmp_path, sftp_server, **_) -> TargetConfig:
    folder = f"{sftp_server.upload_dir}/{unique_name('t')}"
    return TargetConfig("remote", "sftp", folder + "/immudb-{timestamp}.tar.gz", {
        "host": "127.0.0.1", "port": sftp_server.port, "username": sftp_server.username,
        "password": Secret(sftp_server.password), "known_hosts_file": str(sftp_server.known_hosts),
        "create_dirs": True})


def s3_target(tmp_path, s3_server, **_) -> TargetConfig:
    bucket = unique_name("b").replace("_", "-")
    s3_server.client().create_bucket(Bucket=bucket)
    return TargetConfig("cloud", "s3", f"s3://{bucket}/backups/immudb-{{timestamp}}.tar.gz", {
        "endpoint_url": s3_server.endpoint_url, "region": "us-east-1",
        "access_key": Secret(s3_server.access_key), "secret_key": Secret(s3_server.secret_key),
        "addressing_style": "path", "part_size_mib": 5})


# kind -> (the server fixture it needs, or None; its factory)
KINDS = {"file": (None, file_target), "sftp": ("sftp_server", sftp_target), "s3": ("s3_server", s3_target)}


def target_config(kind: str, tmp_path, request) -> TargetConfig:
    """A target of `kind`, asking pytest for its server."""
    server, factory = KINDS[kind]
    return factory(tmp_path, **({server: request.getfixturevalue(server)} if server else {}))


def target_dict(kind: str, tmp_path, request) -> dict:
    """The YAML form of a test target of `kind` (secrets inline)."""
    t = target_config(kind, tmp_path, request)
    out = {"type": t.kind, "path": t.path}
    for key, value in t.options.items():
        out[key] = value.reveal() if hasattr(value, "reveal") else value
    return out
