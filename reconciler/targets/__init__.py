"""Backup targets: one module per kind in this package, found by name; each
owns everything about its kind (see base.py). Adding a kind is adding a
module here (and a line to the shared test suite's kinds)."""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import ParseResult

from reconciler.targets.base import (
    ArchiveExists,
    ArchiveInfo,
    InlinePolicy,
    RequestRefused,
    Retained,
    StoredMismatch,
    Target,
    TargetConfig,
    TargetError,
    Upload,
    register_placeholder,
)

if TYPE_CHECKING:
    import jsonschema

__all__ = ["ArchiveExists", "ArchiveInfo", "InlinePolicy", "RequestRefused", "Retained", "StoredMismatch", "Target",
           "TargetError",
           "Upload", "register_placeholder",
           "build", "from_request", "kind", "kinds", "for_url", "config_problems", "put_new", "refusal",
           "settings_problems"]


@cache
def kinds() -> dict[str, ModuleType]:
    """Every kind, by its name: the modules of this package but base."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            loaded = importlib.import_module(f"{__name__}.{module.name}")
            found[loaded.KIND] = loaded
    return found


def kind(name: str) -> ModuleType:
    try:
        return kinds()[name]
    except KeyError:
        raise TargetError(f"unknown target type {name!r} (known: {', '.join(sorted(kinds()))})") from None


def build(cfg: TargetConfig) -> Target:
    """The target a config entry describes."""
    return kind(cfg.kind).build(cfg)


def put_new(target: Target, name: str, body: bytes) -> bool:
    """`body` stored as `name`, whole or absent; False when an object of
    that name is there already (written by an earlier try: names of small
    objects say what they hold)."""
    try:
        upload = target.open(name, size_hint=len(body))
    except ArchiveExists:
        return False
    try:
        upload.write(body)
        upload.commit()
    except BaseException:
        upload.abort()
        raise
    return True


def settings_problems(configured: Mapping[str, TargetConfig]) -> list[str]:
    """What the stores say against the targets' settings (Target.check_settings:
    S3 Object Lock on the bucket), one message per target that fails. Only
    targets that promise something are asked (the others need no network)."""
    problems = []
    for _, cfg in sorted(configured.items()):
        if not cfg.options.get("object_lock"):
            continue
        try:
            with build(cfg) as target:
                target.check_settings()
        except TargetError as exc:
            problems.append(str(exc))
    return problems


def config_problems(target: Mapping[str, Any], data_dir: Path) -> list[tuple[str | None, str]]:
    """(key or None, message) for what the kind's schema cannot check."""
    return kind(target["type"]).config_problems(target, data_dir)


def from_request(body: Mapping[str, Any], policy: InlinePolicy | None = None, name: str = "inline") -> TargetConfig:
    """A target from the Go tool's request fields: type, path, host, port,
    username, password (for s3: host is the region, username the access key,
    password the secret key). `policy` says what the request may ask for
    (None: a trusted caller, the command line); raises RequestRefused. The
    body must hold what backup-request.schema.json asks of every kind; what
    its kind asks (REQUEST_SCHEMA) is checked here."""
    module = kind(body["type"])
    _check_request(module, body)
    options = module.options_from_request(body, policy)
    return TargetConfig(name=name, kind=body["type"], path=body["path"], options=options)


def _check_request(module: ModuleType, body: Mapping[str, Any]) -> None:
    """RequestRefused for the first thing the kind's REQUEST_SCHEMA finds
    wrong. The API checks the same schema earlier, as part of
    backup-request.schema.json; this is for the command line."""
    from jsonschema import Draft202012Validator
    for error in Draft202012Validator(module.REQUEST_SCHEMA).iter_errors(dict(body)):
        raise refusal(error)


def refusal(error: jsonschema.ValidationError) -> RequestRefused:
    """A request's schema error (jsonschema's ValidationError) as a 400 that
    names the field, never echoing a password or a username (for s3 it is
    the access key)."""
    field = str(error.absolute_path[0]) if error.absolute_path else None
    if error.validator == "required":
        field = error.message.split("'")[1]
        return RequestRefused(400, f"missing field '{field}'", field)
    if error.validator == "additionalProperties":
        instance, schema = cast(dict, error.instance), cast(dict, error.schema)  # an object, and its schema
        extra = sorted(set(instance) - set(schema.get("properties", {})))
        return RequestRefused(400, f"unknown field '{extra[0]}'", extra[0])
    shown = "" if field in ("password", "username") else f": {error.message}"
    return RequestRefused(400, f"invalid field '{field}'{shown}", field)


def for_url(configured: list[TargetConfig], url: ParseResult) -> TargetConfig:
    """The configured target whose credentials serve archive location `url`
    (urllib's parse result), with the location's folder. Raises TargetError."""
    for module in kinds().values():
        if module.URL_SCHEME and module.URL_SCHEME == url.scheme:
            return module.target_for_url(url, [t for t in configured if t.kind == module.KIND])
    schemes = sorted(f"{m.URL_SCHEME}://..." for m in kinds().values() if m.URL_SCHEME)
    raise TargetError(f"unsupported archive location {url.geturl()!r}: use a path, {' or '.join(schemes)}")
