"""Retention by calendar (backup/retention.py): pure, on generated
histories of archives (hypothesis), and on the schedule operators write."""
from __future__ import annotations

import datetime
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.backup.retention import expired
from reconciler.targets.base import ArchiveInfo, Retention

DAY = 86400
NOW = 1_800_000_000  # 2027-01-15


def archive(at: int) -> ArchiveInfo:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))
    return ArchiveInfo(f"immudb-{stamp}.tar.gz", 1, float(at), "")


def day(a: ArchiveInfo) -> tuple:
    t = datetime.datetime.fromtimestamp(a.modified, datetime.timezone.utc)
    return (t.year, t.month, t.day)


histories = st.lists(st.integers(min_value=NOW - 800 * DAY, max_value=NOW), min_size=1, max_size=60,
                     unique_by=lambda t: time.strftime("%Y%m%dT%H%M%S", time.gmtime(t))).map(
                         lambda ts: [archive(t) for t in sorted(ts)])
counts = st.one_of(st.none(), st.integers(min_value=1, max_value=12))
policies = st.builds(Retention, keep_last=counts, keep_daily=counts, keep_weekly=counts, keep_monthly=counts,
                     keep_yearly=counts)


def survivors(history, policy):
    doomed = {a.name for a in expired(history, policy, NOW, history[-1].name)}
    return [a for a in history if a.name not in doomed]


@settings(max_examples=300, deadline=None)
@given(histories, policies)
def test_the_newest_is_kept_and_applying_the_policy_again_deletes_nothing_more(history, policy):
    kept = survivors(history, policy)
    assert history[-1] in kept
    assert survivors(kept, policy) == kept


@settings(max_examples=300, deadline=None)
@given(histories, st.integers(min_value=1, max_value=12))
def test_keep_daily_keeps_the_newest_archive_of_each_of_the_newest_n_days_that_have_one(history, n):
    kept = survivors(history, Retention(keep_daily=n))
    days = sorted({day(a) for a in history}, reverse=True)[:n]
    want = {max((a for a in history if day(a) == d), key=lambda a: a.modified).name for d in days}
    assert {a.name for a in kept} == want | {history[-1].name}


@settings(max_examples=300, deadline=None)
@given(histories, policies, st.sampled_from(["keep_last", "keep_daily", "keep_weekly", "keep_monthly",
                                             "keep_yearly"]))
def test_a_larger_count_never_deletes_more(history, policy, rule):
    """(Among policies with a rule: with none, nothing is deleted at all.)"""
    if policy.keeps_all:
        policy = Retention(keep_yearly=1)
    more = Retention(**{**policy.__dict__, rule: (getattr(policy, rule) or 0) + 1})
    assert {a.name for a in survivors(history, policy)} <= {a.name for a in survivors(history, more)}


@settings(max_examples=300, deadline=None)
@given(histories, policies)
def test_no_more_archives_are_kept_than_the_rules_count(history, policy):
    rules = [policy.keep_last, policy.keep_daily, policy.keep_weekly, policy.keep_monthly, policy.keep_yearly]
    if all(r is None for r in rules):
        assert survivors(history, policy) == history  # no rule: nothing deleted
    else:
        assert len(survivors(history, policy)) <= 1 + sum(r or 0 for r in rules)


def test_a_nightly_schedule_keeps_a_week_of_days_a_month_of_weeks_and_a_year_of_months():
    """400 nights of backups at 03:15 UTC; restic's example policy."""
    history = [archive(NOW - (400 - i) * DAY + 3 * 3600 + 900 - NOW % DAY) for i in range(400)]
    kept = survivors(history, Retention(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=2))
    ages = sorted((NOW - int(a.modified)) // DAY for a in kept)
    assert ages[:7] == list(range(ages[0], ages[0] + 7))  # the last seven nights, every one
    weeks = {datetime.datetime.fromtimestamp(a.modified, datetime.timezone.utc).isocalendar()[:2] for a in kept}
    months = {datetime.datetime.fromtimestamp(a.modified, datetime.timezone.utc).strftime("%Y-%m") for a in kept}
    assert len(weeks) >= 4 and len(months) >= 12
    assert len(kept) <= 7 + 4 + 12 + 2
    assert 300 <= max(ages) <= 366  # the twelfth month back (the yearly ones fall on months already kept)


def test_the_calendar_rules_are_read_from_the_configuration(tmp_path):
    from reconciler import config
    path = tmp_path / "r.yaml"
    path.write_text("""
primary: {host: 127.0.0.1, password: Some-secret-1}
replica: {host: 127.0.0.1, port: 3323, password: Some-secret-1}
follower: {password: Some-secret-1}
backup:
  targets:
    t: {type: file, path: "/var/backups/immudb-{timestamp}.tar.gz",
        retention: {keep_daily: 7, keep_weekly: 4, keep_monthly: 12, keep_yearly: 3, max_age: 2d}}
""")
    policy = config.load(path, env={}).backup.targets["t"].retention
    assert policy == Retention(keep_last=None, max_age_seconds=2 * DAY, keep_daily=7, keep_weekly=4, keep_monthly=12,
                               keep_yearly=3)


@settings(max_examples=200, deadline=None)
@given(histories, policies, st.data())
def test_a_pinned_archive_is_never_deleted(history, policy, data):
    pins = set(data.draw(st.lists(st.sampled_from([a.name for a in history]), max_size=5)))
    doomed = {a.name for a in expired(history, policy, NOW, history[-1].name, pins)}
    assert not doomed & pins
    assert doomed == {a.name for a in expired(history, policy, NOW, history[-1].name)} - pins
