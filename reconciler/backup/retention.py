"""Which archives to delete after a successful backup. Pure.

An archive is kept when any rule keeps it: it is among the newest
`keep_last`, or younger than `max_age`. Only archives the target lists (names
its template produces) are ever considered, and the archive just written is
always kept.
"""
from __future__ import annotations

from reconciler.targets.base import ArchiveInfo, Retention, sort_key


def expired(archives: list[ArchiveInfo], policy: Retention | None, now: float, just_written: str) -> list[ArchiveInfo]:
    if policy is None or (policy.keep_last is None and policy.max_age_seconds is None):
        return []
    newest_first = sorted(archives, key=sort_key, reverse=True)
    keep = {just_written}
    if policy.keep_last is not None:
        keep |= {a.name for a in newest_first[: policy.keep_last]}
    if policy.max_age_seconds is not None:
        keep |= {a.name for a in newest_first if now - sort_key(a)[0] < policy.max_age_seconds}
    return [a for a in sorted(archives, key=sort_key) if a.name not in keep]
