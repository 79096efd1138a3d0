"""The alert rules and the Grafana dashboard against a real Prometheus
scraping a running `replicator run` on real immudb servers: every metric
they name exists with the labels they use; stopping the replica server
makes the not-in-sync alert fire, a failed backup makes its alert fire, and
recovery clears both; every dashboard query returns data."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.support import immudb_data
from tests.support.configs import unique_name
from tests.support.daemon import Daemon
from tests.support.servers import PrometheusServer, admin_for
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "examples" / "grafana" / "replicator.json"


def fast_rules(where: Path) -> Path:
    """The example rules with every `for:` at one second (evaluation every second)."""
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "1s"
    path = where / "alerts.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"].replace("$job", "immudb-replicator").replace("$__rate_interval", "1m")
            for p in panels for t in p["targets"]]


def used_labels(expr: str) -> dict[str, set[str]]:
    """metric -> the labels an expression selects on or groups by (the
    scrape's own `instance` and `job` aside)."""
    found: dict[str, set[str]] = {}
    by = set(re.findall(r"by \(([^)]*)\)", expr))
    grouped = {label.strip() for group in by for label in group.split(",")}
    for name, selector in re.findall(r"(replicator_[a-z_]+)(\{[^}]*\})?", expr):
        labels = set(re.findall(r"(\w+)\s*[=!~]", selector or ""))
        found.setdefault(name, set()).update(labels | grouped)
    return {name: labels - {"instance", "job", "__name__"} for name, labels in found.items()}


@pytest.mark.timeout(900)
def test_alerts_and_dashboard_against_a_real_prometheus(tmp_path, pair, immudb_build):
    primary, replica = pair()  # its own: the replica server is stopped
    prefix = unique_name("pm") + "_"
    name = f"{prefix}db"
    with admin_for(primary, "primary") as admin:
        admin.create_database(name)
    immudb_data.write(primary, name, 5)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the broken target wants a folder")
    d = Daemon(tmp_path, primary, replica, prefix, reconcile={"interval": 1}, backup={
        "targets": {"local": {"type": "file", "path": str(tmp_path / "out" / "l-{timestamp}.tar.gz")},
                    "broken": {"type": "file", "path": str(blocker / "b-{timestamp}.tar.gz")}},
        "continuous": {"target": "local", "segment_max_seconds": 1, "spool_dir": str(tmp_path / "spool")},
        "drill": {"immudb_binary": str(immudb_build / "immudb"), "scratch_dir": str(tmp_path / "scratch")},
        "schedules": [{"cron": "* * * * *", "target": "local", "action": "drill"}]}).start()
    prometheus = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{d.port}"], fast_rules(tmp_path)).start()
    try:
        wait_for(lambda: d.request("GET", "/status")[1]["journal"], 60, "the replica database and its journal")
        assert d.request("POST", "/backup/start", {"target": "local"})[0] == 202
        assert d.wait_backup()["last_result"]["result"] == "ok"
        assert d.request("POST", "/backup/start", {"target": "broken"})[0] == 202
        assert d.wait_backup()["last_result"]["result"] == "error"
        wait_for(lambda: prometheus.firing("BackupNeverSucceeded"), 60, "the failed backup's alert")
        assert [a["target"] for a in prometheus.firing("BackupNeverSucceeded")] == ["broken"]
        wait_for(lambda: prometheus.query("replicator_drill_last_success_timestamp_seconds"), 150,
                 "a scheduled drill seen by Prometheus")
        assert prometheus.firing("ReplicaDatabaseNotInSync") == []

        # every metric the rules and the dashboard name exists, with the labels they use
        exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
        needed: dict[str, set[str]] = {}
        for expr in exprs + dashboard_queries():
            for metric, labels in used_labels(expr).items():
                needed.setdefault(metric, set()).update(labels)
        for metric, labels in sorted(needed.items()):
            series = wait_for(lambda: prometheus.api("series", **{"match[]": metric}), 30, f"series of {metric}")
            have = set().union(*(s.keys() for s in series))
            assert labels <= have, f"{metric}: labels {sorted(labels - have)} missing (has {sorted(have)})"

        replica.stop()  # the replica server goes away: no database is known to be in sync
        alert = wait_for(lambda: prometheus.firing("ReplicaDatabaseNotInSync"), 120, "the not-in-sync alert")
        assert {(a["database"], a["state"]) for a in alert} == {(name, "error")}
        # with something in every panel's data now, each dashboard query returns data
        for expr in dashboard_queries():
            assert wait_for(lambda: prometheus.query(expr), 60, f"data for {expr}"), expr

        replica.start()
        blocker.unlink()
        assert d.request("POST", "/backup/start", {"target": "broken"})[0] == 202
        assert d.wait_backup()["last_result"]["result"] == "ok"
        wait_for(lambda: not prometheus.firing("ReplicaDatabaseNotInSync"), 120, "the not-in-sync alert to clear")
        wait_for(lambda: not prometheus.firing("BackupNeverSucceeded"), 60, "the backup alert to clear")
    finally:
        prometheus.stop()
        assert d.stop() == 0
