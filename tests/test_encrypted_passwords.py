"""`enc:<hex>` passwords, as the Go replicator accepts them, checked with
vectors its own code produced (tests/data/go-enc-vectors.json: key,
configured value, what the Go tool ends up using)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import config
from reconciler.config.encrypted import decrypt
from reconciler.errors import ConfigError
from tests.support.cli import replicator

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((Path(__file__).parent / "data" / "go-enc-vectors.json").read_text())
DECRYPTED = [v for v in VECTORS if v["go_tool_uses"] is not None and "go_tool_error" not in v]
REFUSED = [v for v in VECTORS if v["go_tool_uses"] is None or "go_tool_error" in v]


@pytest.mark.parametrize("vector", DECRYPTED, ids=[v["note"] for v in DECRYPTED])
def test_what_the_go_tool_decrypts_decrypts_the_same(vector):
    assert decrypt(vector["configured_value"], vector["aes_key"].encode(), "follower.password") == \
        vector["go_tool_uses"]


@pytest.mark.parametrize("vector", REFUSED, ids=[v["note"] for v in REFUSED])
def test_where_the_go_tool_falls_back_or_panics_it_is_a_config_error_naming_the_field(vector):
    with pytest.raises(ConfigError) as caught:
        decrypt(vector["configured_value"], vector["aes_key"].encode(), "follower.password")
    message = str(caught.value)
    assert message.startswith("At 'follower.password': ")
    assert vector["configured_value"] not in message and vector["configured_value"][4:20] not in message


def test_an_encrypted_value_without_a_key_says_how_to_give_one():
    with pytest.raises(ConfigError, match="no AES key is given: set REPLICATOR_AES_KEY, AES_KEY_FILE"):
        decrypt(DECRYPTED[0]["configured_value"], None, "primary.password")


MINIMAL = """
primary: {host: 10.0.0.5, password: "Primary-pw-1"}
replica: {host: 127.0.0.1, password: "Replica-pw-1"}
follower: {password: "Follower-pw-1"}
"""


def _vector(note_start: str) -> dict:
    return next(v for v in VECTORS if v["note"].startswith(note_start))


@pytest.mark.parametrize("how", ["yaml", "env", "env_file", "yaml_file"])
def test_all_three_passwords_in_all_their_forms_are_decrypted(tmp_path, how):
    v256, around = _vector("AES-256"), _vector("text around")
    path = tmp_path / "replicator.yaml"
    text = MINIMAL
    env = {"REPLICATOR_AES_KEY": v256["aes_key"]}
    encrypted = {"primary": v256, "replica": around, "follower": _vector("AES-256")}
    if how == "yaml":
        for section, vector in encrypted.items():
            text = text.replace(f'"{section.capitalize()}-pw-1"', json.dumps(vector["configured_value"]))
    elif how == "yaml_file":
        for section, vector in encrypted.items():
            secret = tmp_path / section
            secret.write_text(vector["configured_value"] + "\n")
            text = text.replace(f'password: "{section.capitalize()}-pw-1"', f"password_file: {secret}")
    elif how == "env":
        env.update(MASTER_PASSWORD=v256["configured_value"], REPLICA_PASSWORD=around["configured_value"],
                   FOLLOWER_PASSWORD=v256["configured_value"])
    else:
        for name, vector in (("MASTER", v256), ("REPLICA", around), ("FOLLOWER", v256)):
            secret = tmp_path / name
            secret.write_text(vector["configured_value"])
            env[f"{name}_PASSWORD_FILE"] = str(secret)
        key = tmp_path / "aes-key"
        key.write_text(v256["aes_key"] + "\n")
        del env["REPLICATOR_AES_KEY"]
        env["AES_KEY_FILE"] = str(key)
    path.write_text(text)
    cfg = config.load(path, env=env)
    assert cfg.primary.password.reveal() == v256["go_tool_uses"]
    assert cfg.replica.password.reveal() == around["go_tool_uses"]
    assert cfg.follower.password.reveal() == v256["go_tool_uses"]


def test_validate_refuses_a_value_that_cannot_be_decrypted_naming_the_field_never_the_value(tmp_path):
    wrong_key = _vector("encrypted with another key")
    path = tmp_path / "replicator.yaml"
    path.write_text(MINIMAL.replace('"Replica-pw-1"', json.dumps(wrong_key["configured_value"])))
    done = replicator("validate", "-c", str(path), timeout=60,
                      env={"REPLICATOR_AES_KEY": wrong_key["aes_key"], "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: At 'replica.password': the enc: value does not decrypt with the AES key "
                                   "given (encrypted with another key?)")
    assert wrong_key["aes_key"] not in done.stdout + done.stderr
