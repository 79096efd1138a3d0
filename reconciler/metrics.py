"""Prometheus metrics, read from the service's state at every scrape."""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from reconciler.daemon import Service

STATES = ("in_sync", "missing", "drift", "unloaded", "conflict", "orphan", "busy", "error")


class _Collector:
    def __init__(self, service: "Service"):
        self.service = service

    def collect(self):
        s = self.service
        stats = s.stats
        yield _counter("replicator_reconcile_passes", "Reconcile passes run.", stats["passes"])
        yield _counter("replicator_reconcile_failures", "Passes that could not observe or had a failed action.",
                       stats["pass_failures"])
        yield _gauge("replicator_reconcile_last_pass_duration_seconds", "Duration of the last pass.",
                     stats["last_pass_seconds"])
        yield _gauge("replicator_reconcile_last_pass_timestamp_seconds", "When the last pass ended.",
                     stats["last_pass_at"])
        states = GaugeMetricFamily("replicator_databases", "Replica databases by reconcile state.", labels=["state"])
        counts = {state: 0 for state in STATES}
        lag = GaugeMetricFamily("replicator_database_lag_transactions",
                                "Primary transactions not yet on the replica.", labels=["database"])
        for db in s.reconciler.statuses():
            counts[db.state] = counts.get(db.state, 0) + 1
            if db.lag is not None:
                lag.add_metric([db.name], db.lag)
        for state, count in counts.items():
            states.add_metric([state], count)
        yield states
        yield lag
        running = GaugeMetricFamily("replicator_backup_running", "1 while a backup runs.")
        running.add_metric([], 1 if s.backups.running else 0)
        yield running
        duration = GaugeMetricFamily("replicator_backup_last_duration_seconds", "Duration of the last backup.",
                                     labels=["target"])
        success = GaugeMetricFamily("replicator_backup_last_success_timestamp_seconds",
                                    "When the last successful backup ended.", labels=["target"])
        for target, t in stats["backup_last"].items():
            duration.add_metric([target], t["duration"])
            if t.get("success_at"):
                success.add_metric([target], t["success_at"])
        yield duration
        yield success
        failures = CounterMetricFamily("replicator_backup_failures", "Failed or skipped backups.", labels=["target"])
        for target, n in stats["backup_failures"].items():
            failures.add_metric([target], n)
        yield failures
        bytes_in = CounterMetricFamily("replicator_backup_read_bytes", "Database bytes archived.", labels=["target"])
        bytes_out = CounterMetricFamily("replicator_backup_written_bytes", "Archive bytes written.", labels=["target"])
        for target, (read, written) in stats["backup_bytes"].items():
            bytes_in.add_metric([target], read)
            bytes_out.add_metric([target], written)
        yield bytes_in
        yield bytes_out
        drilled = GaugeMetricFamily("replicator_drill_last_success_timestamp_seconds",
                                    "When the last successful restore drill of the target's newest archive ended.",
                                    labels=["target"])
        for target, at in stats["drill_success_at"].items():
            drilled.add_metric([target], at)
        yield drilled
        drill_failures = CounterMetricFamily("replicator_drill_failures", "Restore drills that failed.",
                                             labels=["target"])
        for target, n in stats["drill_failures"].items():
            drill_failures.add_metric([target], n)
        yield drill_failures
        reloads = CounterMetricFamily("replicator_config_reloads", "Configuration reloads.", labels=["result"])
        reloads.add_metric(["ok"], stats["reloads_ok"])
        reloads.add_metric(["error"], stats["reloads_failed"])
        yield reloads


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def render(service: "Service") -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(service))
    return generate_latest(registry), CONTENT_TYPE_LATEST
