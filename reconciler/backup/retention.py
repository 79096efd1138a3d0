"""Which archives to delete after a successful backup. Pure.

An archive is kept when any rule keeps it:
- it is among the newest `keep_last`;
- it is younger than `max_age`;
- calendar rules (restic's and borg's): `keep_daily: N` keeps the newest
  archive of each of the newest N days that have an archive, and so on for
  ISO weeks, months and years (UTC, by the time the archive's name holds);
  a day without an archive is not counted.

Only archives the target lists (names its template produces) are ever
considered; the archive just written and the pinned ones (backup/pins.py)
are always kept. With no rule set, nothing is deleted.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable, Collection

from reconciler.targets.base import ArchiveInfo, Retention, sort_key

_PERIODS: dict[str, Callable[[datetime.datetime], tuple]] = {
    "keep_daily": lambda t: (t.year, t.month, t.day),
    "keep_weekly": lambda t: tuple(t.isocalendar())[:2],
    "keep_monthly": lambda t: (t.year, t.month),
    "keep_yearly": lambda t: (t.year,),
}


def expired(archives: list[ArchiveInfo], policy: Retention | None, now: float, just_written: str,
            pinned: Collection[str] = ()) -> list[ArchiveInfo]:
    if policy is None or policy.keeps_all:
        return []
    newest_first = sorted(archives, key=sort_key, reverse=True)
    keep = {just_written} | set(pinned) | kept(newest_first, policy, now)
    return [a for a in sorted(archives, key=sort_key) if a.name not in keep]


def kept(newest_first: list[ArchiveInfo], policy: Retention, now: float) -> set[str]:
    """The names that some rule of `policy` keeps (newest first given)."""
    keep: set[str] = set()
    if policy.keep_last is not None:
        keep |= {a.name for a in newest_first[: policy.keep_last]}
    if policy.max_age_seconds is not None:
        keep |= {a.name for a in newest_first if now - sort_key(a)[0] < policy.max_age_seconds}
    for rule, period in _PERIODS.items():
        count = getattr(policy, rule)
        if not count:
            continue
        seen: list[tuple] = []
        for archive in newest_first:
            key = period(datetime.datetime.fromtimestamp(sort_key(archive)[0], datetime.timezone.utc))
            if seen and seen[-1] == key:
                continue  # an older archive of a period already kept
            if len(seen) == count:
                break
            seen.append(key)
            keep.add(archive.name)
    return keep
