"""Reading the YAML file: data plus the line of every value, for messages."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import ConfigError

Lines = dict[tuple, int]


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

    Raises ConfigError for syntax errors, duplicate keys and a top level
    that is not a mapping. Messages give line and column but never echo the
    offending line, which may hold a secret.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{source}: {where}invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {type(exc).__name__}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (primary:, replica:, ...)")
    lines: Lines = {}
    problems: list[str] = []
    _walk(node, (), lines, problems)
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return data, lines


def _walk(node: yaml.Node, path: tuple, lines: Lines, problems: list[str]) -> None:
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
            _walk(value_node, path + (key,), lines, problems)
            lines[path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), lines, problems)
