"""Errors a user can meet. Each message says what went wrong and what to do;
the CLI prints it on one line and exits with `exit_code`, never a traceback."""
from __future__ import annotations


class ReplicatorError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = 1


class ConfigError(ReplicatorError):
    """The configuration is invalid; `problems` holds one line per error,
    each starting with the YAML path it concerns."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
