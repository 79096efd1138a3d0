"""Validation: the JSON Schema (which also supplies defaults), then the
checks a schema cannot express. Every problem is one line:
`At 'a.b[0]' (line N): what is wrong and what is expected`.

Messages never echo a value found under a secret key: jsonschema's own
messages embed the instance, so they are rebuilt here from the error's kind.
"""
from __future__ import annotations

import copy
import difflib
import json
import os
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema
from jsonschema import Draft202012Validator

from reconciler import schemas
from reconciler.config import go_flags
from reconciler.config.model import SECRET_KEYS
from reconciler.config.reader import Lines
from reconciler.paths import inside
from reconciler.state import SERVER_DATABASES

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"})


@cache
def load_schema(name: str = "replicator.schema.json") -> dict:
    """A schema shipped in the package (`reconciler/schemas/`), with what the
    target kinds hold (reconciler/targets/*.py) put in: their names,
    and each one's own definition (of a configured target, of a request)."""
    from reconciler import targets
    schema = copy.deepcopy(schemas.load(name))
    kinds = targets.kinds()
    if name == "replicator.schema.json":
        target = schema["$defs"]["target"]
        target["properties"]["type"]["enum"] = sorted(kinds)
        target["allOf"] = [{"if": {"properties": {"type": {"const": kind}}}, "then": {"$ref": f"#/$defs/{kind}_target"}}
                           for kind in sorted(kinds)]
        for kind, module in kinds.items():
            schema["$defs"][f"{kind}_target"] = module.SCHEMA
    if name == "backup-request.schema.json":
        inline = schema["oneOf"][1]
        inline["properties"]["type"]["enum"] = sorted(kinds)
        inline["allOf"] = [{"if": {"properties": {"type": {"const": kind}}}, "then": kinds[kind].REQUEST_SCHEMA}
                           for kind in sorted(kinds) if kinds[kind].REQUEST_SCHEMA]
    return schema


def _with_defaults(cls: Any) -> Any:
    validate_properties = cls.VALIDATORS["properties"]

    def properties(validator: Any, props: dict, instance: Any, schema: dict) -> Iterator[jsonschema.ValidationError]:
        if isinstance(instance, dict):
            for name, sub in props.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": properties})


DefaultingValidator = _with_defaults(Draft202012Validator)


def dotted(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def line_of(path: tuple, lines: Lines) -> int:
    """The line of `path`, or of its nearest ancestor in the file; 0 if none."""
    probe = tuple(path)
    while probe:
        if probe in lines:
            return lines[probe]
        probe = probe[:-1]
    return 0


def at(path: tuple, lines: Lines) -> str:
    line = line_of(path, lines)
    return f"At '{dotted(path)}'" + (f" (line {line})" if line else "")


def schema_problems(data: dict, lines: Lines, schema_name: str = "replicator.schema.json") -> list[str]:
    """Validate `data` in place (filling defaults); one line per problem."""
    schema = load_schema(schema_name)
    validator = DefaultingValidator(schema)
    found = []
    for error in validator.iter_errors(data):
        extra_path, message = _describe(error, schema)
        path = tuple(error.absolute_path) + extra_path
        hint = (go_flags.hint(path) or go_flags.hint(path + ("host",))) if error.validator == "required" else ""
        found.append((line_of(path, lines), dotted(path), f"{at(path, lines)}: {message}" + (f" (or {hint})" if hint else "")))
    # in file order, as an operator reads them
    return list(dict.fromkeys(problem for _, _, problem in sorted(found)))


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "nothing (null)"}.get(type(value), type(value).__name__)


def _allowed_keys(schema_part: dict, root: dict) -> list[str]:
    keys = set(schema_part.get("properties", {}))
    ref = schema_part.get("$ref", "")
    if ref.startswith("#/$defs/"):
        keys |= set(root["$defs"][ref.rsplit("/", 1)[1]].get("properties", {}))
    return sorted(keys)


def _describe(error: jsonschema.ValidationError, root: dict) -> tuple[tuple, str]:
    """(extra path below error.path, message) for one schema error."""
    kind, value = error.validator, error.instance
    expected: Any = error.validator_value
    secret = any(str(p) in SECRET_KEYS for p in error.absolute_path)
    shown = "the value" if secret or isinstance(value, (dict, list)) else repr(value)
    if kind == "type":
        wanted = " or ".join(expected) if isinstance(expected, list) else expected
        quote = ": put it in quotes" if wanted == "string" and isinstance(value, (int, float, bool)) else ""
        return (), f"expected {wanted}, got {_type_name(value)}{quote}"
    if kind == "required":
        # one error per missing key, named in jsonschema's message
        name = error.message.split("'")[1] if error.message.count("'") >= 2 else "?"
        return (name,), "required, missing"
    if kind in ("additionalProperties", "unevaluatedProperties"):
        allowed = _allowed_keys(cast(dict, error.schema), root)
        extras = [k for k in value if k not in allowed] if isinstance(value, dict) else []
        if len(extras) == 1:
            close = difflib.get_close_matches(str(extras[0]), allowed, n=1)
            return (extras[0],), "unknown key" + (f" (did you mean '{close[0]}'?)" if close else
                                                  f"; allowed: {', '.join(allowed)}")
        return (), f"unknown keys {', '.join(map(repr, extras))}; allowed: {', '.join(allowed)}"
    if kind == "enum":
        return (), f"must be one of {', '.join(json.dumps(v) for v in expected)}, got {shown}"
    if kind == "const":
        return (), f"must be {json.dumps(expected)}"
    if kind == "pattern":
        return (), f"{shown} is not of the expected form (regular expression {expected})"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return (), f"must be {op} {expected}, got {shown}"
    if kind == "minLength":
        return (), "must not be empty" if expected == 1 else f"must have at least {expected} characters"
    if kind == "propertyNames":
        return (), f"name {error.instance!r} is not allowed: {error.message}"
    return (), "invalid value" if secret else error.message


# --------------------------------------------------------------------------
# checks the schema cannot express

def _secret_problems(section: dict, path: tuple, lines: Lines, key: str = "password", required: bool = True) -> list[str]:
    has_value, has_file = key in section, f"{key}_file" in section
    if has_value and has_file:
        return [f"{at(path + (key,), lines)}: give {key} or {key}_file, not both"]
    if has_file:
        file = section[f"{key}_file"]
        if not os.path.isfile(file) or not os.access(file, os.R_OK):
            return [f"{at(path + (key + '_file',), lines)}: cannot read secret file {file}"]
    if required and not (has_value or has_file):
        hint = go_flags.hint(path + (key,))
        return [f"{at(path, lines)}: {key} is required: set {key} or {key}_file" + (f" (or {hint})" if hint else "")]
    return []


def _same_server(a: dict, b: dict) -> bool:
    def norm(host: str) -> str:
        host = host.strip().lower()
        return "localhost" if host in LOCAL_HOSTS else host
    return norm(a["host"]) == norm(b["host"]) and a["port"] == b["port"]


def logic_problems(data: dict, lines: Lines) -> list[str]:
    """Checks on a schema-valid config (defaults filled)."""
    problems: list[str] = []
    for name in ("primary", "replica", "follower"):
        problems += _secret_problems(data[name], (name,), lines)
    problems += _secret_problems(data["api"], ("api",), lines, "token", required=False)
    problems += _secret_problems(data["secrets"], ("secrets",), lines, "aes_key", required=False)

    if _same_server(data["primary"], data["replica"]):
        problems.append(f"{at(('replica',), lines)}: the replica is the primary "
                        f"({data['replica']['host']}:{data['replica']['port']}); point it at another server")
    if data["follower"]["username"] == data["primary"]["username"]:
        problems.append(f"{at(('follower', 'username'), lines)}: the follower must not be the primary's admin user "
                        f"'{data['primary']['username']}' (its password is managed by this tool)")

    rec = data["reconcile"]
    targets: dict[str, str] = {}
    for source, target in rec["rename"].items():
        if target in SERVER_DATABASES:
            problems.append(f"{at(('reconcile', 'rename', source), lines)}: '{target}' on the replica is the "
                            f"server's own database and cannot become a replica; choose another name")
        if target in targets:
            problems.append(f"{at(('reconcile', 'rename', source), lines)}: '{source}' and '{targets[target]}' "
                            f"would both be replicated into '{target}'")
        targets[target] = source
    for pattern in rec["databases"]["include"] + rec["databases"]["exclude"]:
        if pattern.strip() != pattern:
            problems.append(f"{at(('reconcile', 'databases'), lines)}: pattern {pattern!r} has surrounding spaces")
    if "sync_replication" in rec["replication"]:
        problems.append(f"{at(('reconcile', 'replication', 'sync_replication'), lines)}: replaced by "
                        f"reconcile.replication.sync: auto (each replica as its primary database asks, the "
                        f"default), sync or async")
    if rec["backoff"]["initial"] > rec["backoff"]["max"]:
        problems.append(f"{at(('reconcile', 'backoff', 'initial'), lines)}: must not exceed backoff.max")

    api = data["api"]
    has_token = "token" in api or "token_file" in api
    if api["enabled"] and not has_token:
        from reconciler.config.model import is_loopback
        host = api["listen"].rpartition(":")[0].strip("[]")
        if not is_loopback(host):
            problems.append(f"{at(('api', 'listen'), lines)}: {api['listen']} is reachable from other machines and "
                            f"api.token is not set: anyone there could start backups. Set api.token (or "
                            f"api.token_file, REPLICATOR_API_TOKEN_FILE), or listen on 127.0.0.1")

    problems += _backup_problems(data, lines)
    return problems


def _backup_problems(data: dict, lines: Lines) -> list[str]:
    problems: list[str] = []
    backup = data["backup"]
    data_dir = data["replica"]["data_dir"]
    level, compression = backup["compression_level"], backup["compression"]
    if level is not None and compression == "gzip" and level > 9:
        problems.append(f"{at(('backup', 'compression_level'), lines)}: gzip levels are 1 to 9, got {level}")
    if level is not None and compression == "none":
        problems.append(f"{at(('backup', 'compression_level'), lines)}: has no meaning with compression: none")
    if backup["staging_dir"] and inside(backup["staging_dir"], data_dir):
        problems.append(f"{at(('backup', 'staging_dir'), lines)}: must be outside the replica's data_dir "
                        f"{data_dir}: immudb loads every folder there as a database")
    from reconciler import targets
    for name, target in backup["targets"].items():
        path: tuple = ("backup", "targets", name)
        for key in sorted(SECRET_KEYS):
            problems += _secret_problems(target, path, lines, key, required=False)
        for option, message in targets.config_problems(target, Path(data_dir)):
            problems.append(f"{at(path + ((option,) if option else ()), lines)}: {message}")
    for i, schedule in enumerate(backup["schedules"]):
        path = ("backup", "schedules", i)
        if schedule["target"] not in backup["targets"]:
            known = ", ".join(sorted(backup["targets"])) or "none defined"
            problems.append(f"{at(path + ('target',), lines)}: unknown target '{schedule['target']}' "
                            f"(targets: {known})")
        problem = cron_problem(schedule["cron"], schedule["timezone"])
        if problem:
            problems.append(f"{at(path + ('cron',), lines)}: {problem}")
    seed_from = data["reconcile"]["seed_from"]
    if seed_from is not None and seed_from not in backup["targets"]:
        known = ", ".join(sorted(backup["targets"])) or "none defined"
        problems.append(f"{at(('reconcile', 'seed_from'), lines)}: unknown target '{seed_from}' (targets: {known})")
    continuous = backup["continuous"]
    path = ("backup", "continuous")
    if continuous["target"] is not None and continuous["target"] not in backup["targets"]:
        known = ", ".join(sorted(backup["targets"])) or "none defined"
        problems.append(f"{at(path + ('target',), lines)}: unknown target '{continuous['target']}' (targets: {known})")
    if continuous["spool_dir"] and inside(continuous["spool_dir"], data_dir):
        problems.append(f"{at(path + ('spool_dir',), lines)}: must be outside the replica's data_dir {data_dir}: "
                        f"immudb loads every folder there as a database")
    problems += _trust_problems(backup, data_dir, lines)
    problems += _encryption_problems(backup, lines)
    return problems


def _encryption_problems(backup: dict, lines: Lines) -> list[str]:
    """backup.encryption, fail closed: every recipient parses, the files can
    be read, and nothing the encryption does not cover yet is asked for."""
    encryption, path = backup["encryption"], ("backup", "encryption")
    if not encryption["recipients"] and not encryption["recipients_file"]:
        if encryption["identity_file"]:
            return [f"{at(path + ('identity_file',), lines)}: names an identity but no recipient: set recipients "
                    f"or recipients_file (archives are written unencrypted otherwise)"]
        if any(p[:2] == path for p in lines):  # the section is written, and says nothing: never in the clear then
            return [f"{at(path, lines)}: names no recipient (recipients or recipients_file): archives would be "
                    f"written unencrypted; remove the section to mean that"]
        return []
    from reconciler.encryption import EncryptionError, load_identities, load_recipients
    problems = []
    try:
        load_recipients(encryption["recipients"],
                        [Path(encryption["recipients_file"])] if encryption["recipients_file"] else [])
    except EncryptionError as exc:
        problems.append(f"{at(path, lines)}: {exc}")
    if encryption["identity_file"]:
        try:
            load_identities(Path(encryption["identity_file"]))
        except EncryptionError as exc:
            problems.append(f"{at(path + ('identity_file',), lines)}: {exc}")
    else:
        if backup["verify_after_upload"] == "full":
            problems.append(f"{at(('backup', 'verify_after_upload'), lines)}: full decrypts the archive read back: "
                            f"set backup.encryption.identity_file, or use true (the stored bytes are proven "
                            f"without decrypting)")
        for i, schedule in enumerate(backup["schedules"]):
            if schedule.get("action") == "drill":
                problems.append(f"{at(('backup', 'schedules', i, 'action'), lines)}: a drill decrypts the archive: "
                                f"set backup.encryption.identity_file (on the machine that drills)")
    return problems


def _trust_problems(backup: dict, data_dir: str, lines: Lines) -> list[str]:
    """backup.trust: the state folder apart from the data and every file
    target (an anchor on the target would be no anchor), a readable HMAC key,
    the primary's public key a P-256 key."""
    trust, path = backup["trust"], ("backup", "trust")
    problems = _secret_problems(trust, path, lines, "hmac_key", required=False)
    state_dir = trust["state_dir"]
    if state_dir:
        if inside(state_dir, data_dir):
            problems.append(f"{at(path + ('state_dir',), lines)}: must be outside the replica's data_dir {data_dir}")
        for name, target in backup["targets"].items():
            if target["type"] == "file" and inside(state_dir, os.path.dirname(target["path"]) or "."):
                problems.append(f"{at(path + ('state_dir',), lines)}: is inside the folder of target {name}: a "
                                f"checkpoint kept where the backups are is no anchor against whoever writes there")
    if trust["public_key_file"]:
        from reconciler.signed import PublicKey, TrustError
        try:
            PublicKey(trust["public_key_file"])
        except TrustError as exc:
            problems.append(f"{at(path + ('public_key_file',), lines)}: {str(exc).split(': ', 1)[-1]}")
    return problems


def cron_problem(expression: str, timezone: str | None) -> str | None:
    """None when APScheduler accepts the five-field expression and time zone."""
    from apscheduler.triggers.cron import CronTrigger

    if len(expression.split()) != 5:
        return f"expected five fields (minute hour day month weekday), got {expression!r}"
    try:
        CronTrigger.from_crontab(expression, timezone=timezone)
    except (ValueError, LookupError) as exc:
        return f"invalid cron expression {expression!r}: {exc}"
    except Exception as exc:  # noqa: BLE001 - unknown time zone names raise the zoneinfo library's own errors
        return f"invalid time zone {timezone!r}: {type(exc).__name__}"
    return None

