"""Everything about the configuration file: nothing else parses YAML.

`load()` reads the YAML (optional: the Go tool's flags and environment
variables alone are enough), resolves `${VAR}` references, applies the
overrides (flags > environment > file > defaults), validates against
`schemas/replicator.schema.json` plus the checks a schema cannot express,
and returns a typed `Config`. Any problem raises ConfigError listing every
problem found, each with its YAML path.

YAML and JSON Schema are imported by `check()`, not here: the command line
imports this package for the Go flags, and `replicator --help` should not
wait for them.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from reconciler.config import go_flags
from reconciler.config.environment import interpolate
from reconciler.config.model import Config
from reconciler.errors import ConfigError

__all__ = ["Config", "ConfigError", "load", "check"]


def load(path: str | Path | None, args: argparse.Namespace | None = None,
         env: Mapping[str, str] | None = None) -> Config:
    """The effective configuration. Raises ConfigError with every problem."""
    data, source = check(path, args, env)
    cfg = Config.from_dict(data, source)
    problems = []
    for password in (cfg.primary.password, cfg.replica.password, cfg.follower.password):
        try:
            password.reveal()  # an enc: value that cannot be decrypted is a config error now, not at first use
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return cfg


def check(path: str | Path | None, args: argparse.Namespace | None = None,
          env: Mapping[str, str] | None = None) -> tuple[dict, str]:
    """Validated plain data (defaults filled) and its source name."""
    from reconciler.config.reader import parse_yaml, read_file
    from reconciler.config.validate import at, logic_problems, schema_problems

    env = os.environ if env is None else env
    if path is not None:
        source = str(path)
        data, lines = parse_yaml(read_file(path), source)
    else:
        source, data, lines = "(flags and environment)", {}, {}

    data, env_problems = interpolate(data, env)
    problems = [f"{at(p, lines)}: {message}" for p, message in env_problems]

    overrides, override_problems = go_flags.collect(args, env)
    problems += override_problems
    data = go_flags.apply(data, overrides)

    schema = schema_problems(data, lines)
    problems += schema
    if not schema:
        problems += logic_problems(data, lines)
    if problems:
        raise ConfigError(problems)
    return data, source
