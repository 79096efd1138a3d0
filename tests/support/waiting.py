"""Waiting for a condition, never for a fixed time.

Deadlines are generous on purpose: on a busy 2-core machine the servers and
the code under test may be several times slower than on an idle one. A wait
costs only as long as its condition takes; its deadline matters only when
the test is failing anyway. Every deadline passed here is multiplied by
PATIENCE ($REPLICATOR_TEST_PATIENCE, default 3).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

PATIENCE = float(os.environ.get("REPLICATOR_TEST_PATIENCE", "3"))

T = TypeVar("T")


def patient(seconds: float) -> float:
    """A deadline of `seconds` on an idle machine, as this run allows it."""
    return seconds * PATIENCE


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """The first truthy value of `predicate()`, polled every `interval`
    seconds; AssertionError naming `what` after `patient(timeout)` seconds."""
    deadline = time.monotonic() + patient(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {patient(timeout):.0f}s waiting for {what}")
        time.sleep(interval)
