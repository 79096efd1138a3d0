"""The configuration file: schema, defaults, interpolation, overrides, secrets."""
from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from reconciler import config
from reconciler.cli import build_parser
from reconciler.errors import ConfigError
from reconciler.secret import Secret
from tests.support.cli import replicator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "replicator.yaml"

MINIMAL = """
primary: {host: 10.0.0.5, password: "Primary-pw-1"}
replica: {host: 127.0.0.1, password: "Replica-pw-1"}
follower: {password: "Follower-pw-1"}
"""


def write(tmp_path: Path, text: str, name: str = "replicator.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path, args=None, env=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.load(path, args, env or {})
    return caught.value.problems


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PASSWORD", "FOLLOWER_PASSWORD")}
    full_env.update(env or {})
    return replicator(*argv, env=full_env, timeout=60)


# ---------------------------------------------------------------- example and defaults

def test_example_config_is_valid():
    cfg = config.load(EXAMPLE, env={})
    assert set(cfg.backup.targets) == {"local", "offsite", "cloud"}
    assert [s.action for s in cfg.backup.schedules] == ["backup", "backup", "drill"]


def test_validate_command_accepts_the_example():
    result = run_cli("validate", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_defaults_match_the_go_tool(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL), env={})
    assert (cfg.primary.port, cfg.primary.username) == (3322, "immudb")
    assert (cfg.replica.port, str(cfg.replica.data_dir)) == (3322, "/var/lib/immudb")
    assert cfg.follower.username == "follower"
    assert cfg.reconcile.interval == 3600
    assert dict(cfg.reconcile.rename) == {"defaultdb": "defaultdbbak"}
    assert cfg.reconcile.on_primary_removed == "ignore"
    assert cfg.api.listen == "127.0.0.1:8081"
    assert cfg.reconcile.replication.primary_host == "10.0.0.5"


def test_follower_password_has_no_default(tmp_path):
    text = MINIMAL.replace('follower: {password: "Follower-pw-1"}', "")
    found = problems(write(tmp_path, text))
    assert any(p.startswith("At 'follower'") and "FOLLOWER_PASSWORD" in p for p in found), found


# ---------------------------------------------------------------- errors

def test_every_error_has_its_path_and_line(tmp_path):
    path = write(tmp_path, """\
        primary:
          host: 10.0.0.1
          port: "x"
          pasword: Hunter2-secret
        replica:
          host: 127.0.0.1
          password: 12345678
        follower: {password: "Follower-pw-1"}
        reconcile:
          on_primary_removed: nuke
        """)
    found = problems(path)
    assert "At 'primary.port' (line 3): expected integer, got a string" in found
    assert "At 'primary.pasword' (line 4): unknown key (did you mean 'password'?)" in found
    assert any(p.startswith("At 'replica.password' (line 7): expected string") for p in found)
    assert any(p.startswith("At 'reconcile.on_primary_removed' (line 10): must be one of") for p in found)


def test_broken_config_exits_2_with_one_line_per_error_and_no_traceback(tmp_path):
    path = write(tmp_path, """\
        primary: {host: 10.0.0.1, port: 99999, password: "Very-Secret-77"}
        replica: {host: 127.0.0.1, password: "Other-Secret-88"}
        follower: {password: "Third-Secret-99", username: "bad name"}
        """)
    result = run_cli("validate", "-c", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("error: At '") for line in lines)
    for secret in ("Very-Secret-77", "Other-Secret-88", "Third-Secret-99"):
        assert secret not in result.stderr + result.stdout


def test_secret_of_wrong_type_is_not_echoed(tmp_path):
    path = write(tmp_path, MINIMAL.replace('"Follower-pw-1"', "[Listed-Secret-1]"))
    found = problems(path)
    assert found and not any("Listed-Secret-1" in p for p in found)


def test_yaml_syntax_error_gives_line_without_echoing_it(tmp_path):
    path = write(tmp_path, 'primary:\n  host: x\n  password: "Unclosed-Secret-5\nreplica: {host: y}\n')
    found = problems(path)
    assert len(found) == 1 and "line" in found[0] and "invalid YAML" in found[0]
    assert "Unclosed-Secret-5" not in found[0]


def test_duplicate_keys_are_reported(tmp_path):
    path = write(tmp_path, MINIMAL + "follower: {password: Other-pw-2}\n")
    assert any("duplicate key" in p and "follower" in p for p in problems(path))


def test_missing_file_is_a_config_error(tmp_path):
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_primary_and_replica_must_differ(tmp_path):
    path = write(tmp_path, MINIMAL.replace("10.0.0.5", "localhost"))
    assert any("the replica is the primary" in p for p in problems(path))


def test_schedule_must_name_a_known_target(tmp_path):
    path = write(tmp_path, MINIMAL + """
backup:
  targets: {local: {type: file, path: /srv/backups/a.tar.gz}}
  schedules: [{cron: "0 3 * * *", target: remote}]
""")
    found = problems(path)
    assert any("unknown target 'remote'" in p and "local" in p for p in found), found


def test_invalid_cron_expression_is_reported(tmp_path):
    path = write(tmp_path, MINIMAL + """
backup:
  targets: {local: {type: file, path: /srv/backups/a.tar.gz}}
  schedules: [{cron: "61 3 * * *", target: local}]
""")
    assert any(p.startswith("At 'backup.schedules[0].cron'") for p in problems(path))


def test_rename_into_the_replicas_own_database_is_refused(tmp_path):
    path = write(tmp_path, MINIMAL + "reconcile: {rename: {defaultdb: defaultdb}}\n")
    assert any("cannot become a replica" in p for p in problems(path))


def test_two_databases_renamed_to_one_name_are_refused(tmp_path):
    path = write(tmp_path, MINIMAL + "reconcile: {rename: {a: c, b: c}}\n")
    assert any("would both be replicated into 'c'" in p for p in problems(path))


def test_staging_dir_inside_data_dir_is_refused(tmp_path):
    path = write(tmp_path, MINIMAL + "backup: {staging_dir: /var/lib/immudb/staging}\n")
    assert any("outside the replica's data_dir" in p for p in problems(path))


def test_continuous_backup_must_name_a_known_target_and_spool_outside_the_data_dir(tmp_path):
    path = write(tmp_path, MINIMAL + """
backup:
  targets: {local: {type: file, path: "/srv/backups/a-{timestamp}.tar.gz"}}
  continuous: {target: remote, spool_dir: /var/lib/immudb/spool}
""")
    found = problems(path)
    assert any(p.startswith("At 'backup.continuous.target'") and "unknown target 'remote'" in p for p in found), found
    assert any(p.startswith("At 'backup.continuous.spool_dir'") and "outside the replica's data_dir" in p
               for p in found), found


def test_continuous_backup_is_off_unless_a_target_is_named(tmp_path):
    assert config.load(write(tmp_path, MINIMAL), None, {}).backup.continuous is None
    path = write(tmp_path, MINIMAL + """
backup:
  targets: {local: {type: file, path: "/srv/backups/a-{timestamp}.tar.gz"}}
  continuous: {target: local, segment_max_seconds: 2.5}
""", name="on.yaml")
    continuous = config.load(path, None, {}).backup.continuous
    assert (continuous.target, continuous.segment_max_seconds, continuous.spool_max_bytes) == ("local", 2.5, 1 << 30)
    path = write(tmp_path, MINIMAL + "backup: {continuous: {segment_max_seconds: 0}}\n", name="zero.yaml")
    assert any("segment_max_seconds" in p for p in problems(path))


# ---------------------------------------------------------------- environment and secrets

def test_environment_references_are_resolved(tmp_path):
    path = write(tmp_path, MINIMAL.replace("10.0.0.5", "\"${PRIMARY_HOST}\"").replace(
        '"Follower-pw-1"', '"${FOLLOWER_PW:-Fallback-pw-1}"'))
    cfg = config.load(path, env={"PRIMARY_HOST": "db.internal"})
    assert cfg.primary.host == "db.internal"
    assert cfg.follower.password.reveal() == "Fallback-pw-1"


def test_unset_variable_without_default_is_an_error(tmp_path):
    path = write(tmp_path, MINIMAL.replace("10.0.0.5", "\"${PRIMARY_HOST}\""))
    found = problems(path)
    assert any("At 'primary.host'" in p and "PRIMARY_HOST is not set" in p for p in found)


def test_double_dollar_escapes_a_reference(tmp_path):
    path = write(tmp_path, MINIMAL.replace('"Follower-pw-1"', '"Pa$${NOT_A_VAR}1x"'))
    assert config.load(path, env={}).follower.password.reveal() == "Pa${NOT_A_VAR}1x"


def test_password_file_is_read_at_the_point_of_use(tmp_path):
    secret_file = tmp_path / "follower"
    secret_file.write_text("From-file-pw-1\n")
    path = write(tmp_path, MINIMAL.replace('follower: {password: "Follower-pw-1"}',
                                           f"follower: {{password_file: {secret_file}}}"))
    cfg = config.load(path, env={})
    assert cfg.follower.password.reveal() == "From-file-pw-1"
    secret_file.write_text("Rotated-pw-2\n")  # a rotated Kubernetes Secret
    assert cfg.follower.password.reveal() == "Rotated-pw-2"
    assert "Rotated" not in repr(cfg)


def test_unreadable_password_file_is_reported(tmp_path):
    path = write(tmp_path, MINIMAL.replace('follower: {password: "Follower-pw-1"}',
                                           f"follower: {{password_file: {tmp_path / 'missing'}}}"))
    assert any("cannot read secret file" in p for p in problems(path))


def test_secret_prints_as_stars():
    secret = Secret("Top-secret-1")
    assert str(secret) == repr(secret) == f"{secret}" == "***"
    assert "Top-secret-1" not in repr({"password": secret})


# ---------------------------------------------------------------- Go tool overrides

GO_ENV = {"MASTER_ADDRESS": "10.1.1.1", "MASTER_PASSWORD": "Env-master-1", "REPLICA_ADDRESS": "127.0.0.1",
          "REPLICA_PASSWORD": "Env-replica-1", "FOLLOWER_PASSWORD": "Env-follower-1", "DATADIR": "/data"}


def _args(*argv: str):
    return build_parser().parse_args(["plan", *argv])


def test_go_tool_environment_alone_is_a_complete_config():
    cfg = config.load(None, _args(), GO_ENV)
    assert cfg.primary.host == "10.1.1.1" and cfg.primary.password.reveal() == "Env-master-1"
    assert str(cfg.replica.data_dir) == "/data"
    assert cfg.follower.password.reveal() == "Env-follower-1"


def test_go_tool_flags_with_one_dash_work_without_yaml():
    args = _args("-master-addr", "10.2.2.2", "-master-pass", "Flag-master-1", "-replica-addr", "127.0.0.1",
                 "-replica-pass", "Flag-replica-1", "-follower-pass", "Flag-follower-1", "-delay", "60",
                 "--master-port", "4000", "-follower-user", "repl")
    cfg = config.load(None, args, {})
    assert (cfg.primary.host, cfg.primary.port, cfg.reconcile.interval) == ("10.2.2.2", 4000, 60)
    assert cfg.follower.username == "repl"


def test_precedence_is_flags_then_environment_then_file(tmp_path):
    path = write(tmp_path, MINIMAL.replace("10.0.0.5", "file-host"))
    assert config.load(path, _args(), {}).primary.host == "file-host"
    assert config.load(path, _args(), {"MASTER_ADDRESS": "env-host"}).primary.host == "env-host"
    assert config.load(path, _args("--master-addr", "flag-host"), {"MASTER_ADDRESS": "env-host"}).primary.host == "flag-host"


def test_password_file_variable_overrides_the_file(tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text("Env-file-pw-1")
    cfg = config.load(write(tmp_path, MINIMAL), _args(), {"FOLLOWER_PASSWORD_FILE": str(secret_file)})
    assert cfg.follower.password.reveal() == "Env-file-pw-1"
    assert cfg.follower.password.file == secret_file


def test_variable_and_its_file_twin_together_are_refused(tmp_path):
    found = problems(write(tmp_path, MINIMAL), _args(), {"FOLLOWER_PASSWORD": "a-Secret-1", "FOLLOWER_PASSWORD_FILE": "/x"})
    assert "set FOLLOWER_PASSWORD or FOLLOWER_PASSWORD_FILE, not both" in found


def test_missing_primary_names_the_go_flag():
    found = problems(None, _args(), {})
    assert any(p.startswith("At 'primary'") and "--master-addr" in p for p in found)


@pytest.mark.parametrize("command", ["validate", "plan", "status", "reconcile", "run", "list"])
def test_no_config_and_no_go_flags_says_the_same_for_every_command(command):
    import os
    env = {k: v for k, v in os.environ.items() if k != "REPLICATOR_CONFIG" and not k.startswith(
        ("MASTER_", "REPLICA_", "FOLLOWER_", "DATADIR"))}
    argv = [command] + (["--target", "x"] if command == "list" else [])
    done = replicator(*argv, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: -c/--config FILE or $REPLICATOR_CONFIG is required (without a file, "
                                   "the Go tool's flags and environment variables work too: --master-addr or "
                                   "MASTER_ADDRESS, ...)")


def test_go_flags_without_a_file_still_reach_the_configuration():
    done = run_cli("validate", "--master-addr", "10.2.2.2", "--master-pass", "Flag-master-1", "--replica-addr",
                   "127.0.0.1", "--replica-pass", "Flag-replica-1",
                   env={"FOLLOWER_PASSWORD": "Env-follower-1", "REPLICATOR_CONFIG": ""})
    assert done.returncode == 0, done.stderr
    assert "(flags and environment): valid; primary 10.2.2.2:3322" in done.stdout


def test_the_go_tools_replication_flags_reach_the_configuration():
    args = _args("-master-addr", "10.2.2.2", "-master-pass", "Flag-master-1", "-replica-addr", "127.0.0.1",
                 "-replica-pass", "Flag-replica-1", "-follower-pass", "Flag-follower-1", "-replication-sync", "sync",
                 "-replication-prefetch-tx-buffer-size", "250", "--replication-commit-concurrency=4",
                 "-replication-allow-tx-discarding")
    rec = config.load(None, args, {}).reconcile
    r = rec.replication
    assert (rec.sync, r.prefetch_tx_buffer_size, r.commit_concurrency, r.allow_tx_discarding) == ("sync", 250, 4, True)
    assert config.load(None, _args("-master-addr", "h", "-master-pass", "P-pw-1", "-replica-addr", "r",
                                   "-replica-pass", "R-pw-1", "-follower-pass", "F-pw-1",
                                   "-replication-allow-tx-discarding=false"), {}).reconcile.replication \
        .allow_tx_discarding is False
    assert any("must be one of" in p for p in problems(None, _args("-master-addr", "h", "-replication-sync", "maybe"),
                                                        {}))


def test_config_from_go_gives_a_valid_file_with_references_instead_of_passwords(tmp_path):
    import os
    secret_file = tmp_path / "replica-pw"
    secret_file.write_text("Replica-file-pw-1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "REPLICA_", "FOLLOWER_", "DATADIR"))}
    env.update(MASTER_PASSWORD="Env-master-pw-1", REPLICA_PASSWORD_FILE=str(secret_file), DATADIR="/data/immudb")
    done = replicator("config", "from-go", "-master-addr", "10.0.0.5", "-replica-addr", "127.0.0.1",
                      "-follower-pass", "Flag-follower-pw-1", "-delay", "600", "-replication-sync", "async",
                      env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for secret in ("Env-master-pw-1", "Flag-follower-pw-1", "Replica-file-pw-1"):
        assert secret not in text
    assert "password: ${MASTER_PASSWORD}" in text and f'password_file: "{secret_file}"' in text
    assert "write the value of -follower-pass here" in text and "# -master-addr" in text
    follower_file = "/etc/immudb-replicator/credentials/follower-password"
    written = tmp_path / "from-go.yaml"
    written.write_text(text.replace(follower_file, str(tmp_path / "follower-pw")))
    (tmp_path / "follower-pw").write_text("Follower-file-pw-1")
    cfg = config.load(written, env={"MASTER_PASSWORD": "Env-master-pw-1"})
    assert (cfg.primary.host, cfg.replica.data_dir.as_posix(), cfg.reconcile.interval) == ("10.0.0.5", "/data/immudb",
                                                                                            600)
    assert cfg.reconcile.sync == "async" and cfg.reconcile.rename == {"defaultdb": "defaultdbbak"}
    assert cfg.primary.password.reveal() == "Env-master-pw-1"
