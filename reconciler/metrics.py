"""Prometheus metrics, rendered at every scrape from the status records
(reconciler/status.py) of whatever serves them: the daemon."""
from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reconciler.status import STATES, DatabaseStatus, JournalState, ServiceStats, TargetInfo


class Source(Protocol):
    """What the metrics read."""

    stats: ServiceStats

    @property
    def backup_running(self) -> bool: ...

    def databases(self) -> list[DatabaseStatus]: ...

    def journal_statuses(self) -> list[dict]: ...

    def targets(self) -> dict[str, TargetInfo]: ...


class _Collector:
    def __init__(self, source: Source):
        self.source = source

    def collect(self):
        stats = self.source.stats
        yield _counter("replicator_reconcile_passes", "Reconcile passes run.", stats.passes)
        yield _counter("replicator_reconcile_failures", "Passes that could not observe or had a failed action.",
                       stats.pass_failures)
        yield _gauge("replicator_reconcile_last_pass_duration_seconds", "Duration of the last pass.",
                     stats.last_pass_seconds)
        yield _gauge("replicator_reconcile_last_pass_timestamp_seconds", "When the last pass ended.",
                     stats.last_pass_at)
        actions = CounterMetricFamily("replicator_reconcile_actions", "Actions reconcile passes took, by result "
                                      "(done, failed, skipped, deferred).", labels=["result"])
        for result in ("done", "failed", "skipped", "deferred"):
            actions.add_metric([result], stats.actions.get(result, 0))
        yield actions
        states = GaugeMetricFamily("replicator_databases", "Replica databases by reconcile state.", labels=["state"])
        per_database = GaugeMetricFamily("replicator_database_state", "1 for the reconcile state each replica "
                                         "database is in, 0 for the others.", labels=["database", "state"])
        counts = {state: 0 for state in STATES}
        lag = GaugeMetricFamily("replicator_database_lag_transactions",
                                "Primary transactions not yet on the replica.", labels=["database"])
        for db in self.source.databases():
            counts[db.state] = counts.get(db.state, 0) + 1
            for state in STATES:
                per_database.add_metric([db.name, state], 1 if db.state == state else 0)
            if db.lag is not None:
                lag.add_metric([db.name], db.lag)
        for state, count in counts.items():
            states.add_metric([state], count)
        yield states
        yield per_database
        yield lag
        running = GaugeMetricFamily("replicator_backup_running", "1 while a backup runs.")
        running.add_metric([], 1 if self.source.backup_running else 0)
        yield running
        families = {
            "duration": GaugeMetricFamily("replicator_backup_last_duration_seconds", "Duration of the last backup.",
                                          labels=["target"]),
            "success": GaugeMetricFamily("replicator_backup_last_success_timestamp_seconds",
                                         "When the last successful backup ended.", labels=["target"]),
            "failures": CounterMetricFamily("replicator_backup_failures", "Failed or skipped backups.",
                                            labels=["target"]),
            "read": CounterMetricFamily("replicator_backup_read_bytes", "Database bytes archived.", labels=["target"]),
            "written": CounterMetricFamily("replicator_backup_written_bytes", "Archive bytes written.",
                                           labels=["target"]),
            "size": GaugeMetricFamily("replicator_backup_last_size_bytes", "Size of the last successful archive.",
                                      labels=["target"]),
            "drilled": GaugeMetricFamily("replicator_drill_last_success_timestamp_seconds",
                                         "When the last successful restore drill of the target's newest archive ended.",
                                         labels=["target"]),
            "drill_failures": CounterMetricFamily("replicator_drill_failures", "Restore drills that failed.",
                                                  labels=["target"]),
        }
        for target, t in sorted(stats.targets.items()):
            if t.last_success_at is not None or t.backup_failures:
                families["duration"].add_metric([target], t.last_duration)
            # counters from zero for every configured target (a series that appears only with its
            # first failure hides that failure from increase()); timestamps only once there is one
            families["read"].add_metric([target], t.bytes_read)
            families["written"].add_metric([target], t.bytes_written)
            families["failures"].add_metric([target], t.backup_failures)
            families["drill_failures"].add_metric([target], t.drill_failures)
            if t.last_success_at is not None:
                families["success"].add_metric([target], t.last_success_at)
                families["size"].add_metric([target], t.last_size)
            if t.drill_success_at is not None:
                families["drilled"].add_metric([target], t.drill_success_at)
        yield from families.values()
        encrypted = GaugeMetricFamily("replicator_target_encrypted", "1 when the target's archives are encrypted "
                                      "(backup.encryption), 0 when they are stored in the clear.", labels=["target"])
        for name, info in sorted(self.source.targets().items()):
            encrypted.add_metric([name], 1 if info.encrypted else 0)
        yield encrypted
        locked = GaugeMetricFamily("replicator_target_object_lock", "1 when the target stores under S3 Object Lock "
                                   "(object_lock), 0 when not.", labels=["target"])
        for name, info in sorted(self.source.targets().items()):
            locked.add_metric([name], 1 if info.object_lock else 0)
        yield locked
        yield from _journal_families(self.source.journal_statuses())
        reloads = CounterMetricFamily("replicator_config_reloads", "Configuration reloads.", labels=["result"])
        reloads.add_metric(["ok"], stats.reloads_ok)
        reloads.add_metric(["error"], stats.reloads_failed)
        yield reloads


# the journal's metrics: (name, help, kind, the status field)
_JOURNAL = (
    ("replicator_journal_lag_seconds", "Age of the oldest committed replica transaction not yet on the journal's "
                                       "target (0 when all are).", GaugeMetricFamily, "lag_seconds"),
    ("replicator_journal_lag_transactions", "Committed replica transactions not yet on the journal's target.",
     GaugeMetricFamily, "lag_transactions"),
    ("replicator_journal_shipped_tx", "The last transaction on the journal's target.", GaugeMetricFamily,
     "shipped_tx"),
    ("replicator_journal_shipped_bytes", "Compressed segment bytes uploaded.", CounterMetricFamily, "shipped_bytes"),
    ("replicator_journal_shipped_transactions", "Transactions uploaded.", CounterMetricFamily,
     "shipped_transactions"),
    ("replicator_journal_spool_bytes", "Closed segments waiting for the target.", GaugeMetricFamily, "spool_bytes"),
    ("replicator_journal_last_upload_timestamp_seconds", "When the last segment was uploaded.", GaugeMetricFamily,
     "last_upload_at"),
    ("replicator_journal_gaps_filled", "Holes in the target's journal exported again from the replica.",
     CounterMetricFamily, "gaps_filled"),
)


def _journal_families(journals: list[dict]):
    families = [(kind(name, doc, labels=["database"]), key) for name, doc, kind, key in _JOURNAL]
    state = GaugeMetricFamily("replicator_journal_state", "1 for the state each database's journal is in.",
                              labels=["database", "state"])
    for j in journals:
        for family, key in families:
            if j.get(key) is not None:
                family.add_metric([j["database"]], j[key])
        for s in JournalState:
            state.add_metric([j["database"], s], 1 if j["state"] == s else 0)
    yield from (family for family, _ in families)
    yield state


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def render(source: Source) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(source))
    return generate_latest(registry), CONTENT_TYPE_LATEST
