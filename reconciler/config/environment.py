"""`${VAR}` and `${VAR:-default}` in string values, resolved before validation.

`$${VAR}` stands for the literal text `${VAR}`. A `$` not followed by `{` is
left alone, so passwords containing `$` need no escaping.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REFERENCE = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(data: Any, env: Mapping[str, str], path: tuple = ()) -> tuple[Any, list[tuple[tuple, str]]]:
    """Return `data` with references replaced, and the problems found as
    (path, message) pairs (an unset variable without a default)."""
    problems: list[tuple[tuple, str]] = []
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out[key], sub = interpolate(value, env, path + (key,))
            problems += sub
        return out, problems
    if isinstance(data, list):
        items = []
        for index, value in enumerate(data):
            item, sub = interpolate(value, env, path + (index,))
            items.append(item)
            problems += sub
        return items, problems
    if not isinstance(data, str) or "${" not in data:
        return data, problems

    def replace(match: re.Match) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append((path, f"environment variable {name} is not set (use ${{{name}:-default}} for a default)"))
        return ""

    return REFERENCE.sub(replace, data), problems
