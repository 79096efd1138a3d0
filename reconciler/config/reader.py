"""Reading the YAML file: data plus the line of every value, for messages."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import ConfigError

Lines = dict[tuple, int]

# A configuration nests six levels and holds a few hundred values. More is an
# accident or an attack (a recursive or exponentially expanding &anchor/*alias).
MAX_DEPTH = 64
MAX_VALUES = 100_000
# PyYAML's messages quote what they found: one character (kept: it helps), or
# a tag, alias or anchor name, which may be a password written unquoted
# (`password: !Secret`, `password: *Secret`): never echoed.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')
_HARMLESS = re.compile(r"""(['"])(?:[^\\]|\\[^xuU]|\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\U[0-9a-fA-F]{8}"""
                       r"""|<[a-z ]+>)\1""")


class _TooLarge(Exception):
    pass


def _without_values(text: str) -> str:
    return _QUOTED.sub(lambda m: m.group(0) if _HARMLESS.fullmatch(m.group(0)) else "'...'", text)


def read_file(path: str | Path) -> str:
    """The file's text. Raises ConfigError when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def parse_yaml(text: str, source: str) -> tuple[dict[str, Any], Lines]:
    """Parse YAML into plain data and a map from path (tuple of keys and
    indexes) to 1-based line number.

    Raises ConfigError for syntax errors, duplicate keys, a top level that
    is not a mapping, and documents nested deeper than MAX_DEPTH or holding
    more than MAX_VALUES values once aliases are expanded. Messages give line
    and column but never echo the offending line, nor a tag, alias or anchor
    name (a password written unquoted after `!`, `*` or `&`): either may hold
    a secret.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = _without_values(" ".join(p for p in (exc.context, exc.problem) if p))
        hint = " (quote a value that starts with !, * or &)" if "'...'" in what else ""
        raise ConfigError(f"{source}: {where}invalid YAML: {what}{hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {type(exc).__name__}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - a constructor's own error (`!!int x`, a 5000-digit number)
        raise ConfigError(f"{source}: invalid YAML: a value cannot be converted to its type ({type(exc).__name__}): "
                          f"a number too long, or a tag such as !!int on a value that is not one") from None
    if data is None or node is None:  # an empty document (node is None only when data is too)
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (primary:, replica:, ...)")
    lines: Lines = {}
    problems: list[str] = []
    try:
        _walk(node, (), lines, problems, [MAX_VALUES])
    except _TooLarge as exc:
        raise ConfigError(f"{source}: {exc.args[0]}") from None
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return data, lines


def _walk(node: yaml.Node, path: tuple, lines: Lines, problems: list[str], budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0 or len(path) > MAX_DEPTH:
        raise _TooLarge(f"line {node.start_mark.line + 1}: more than {MAX_VALUES} values or {MAX_DEPTH} levels "
                        f"once aliases are expanded (a recursive or repeated *alias?)")
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                dotted = ".".join(str(p) for p in path + (key,))
                problems.append(f"At '{dotted}' (line {line}): duplicate key, first given on line {seen[key]}")
            seen[key] = line
            _walk(value_node, path + (key,), lines, problems, budget)
            lines[path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), lines, problems, budget)
