"""The alert rules (examples/prometheus/alerts.yaml) under `promtool test
rules`: every rule has a case where it fires and one where it does not.
The cases are written here and handed to promtool as its test file; the
expected annotations are the rule's own, with the alert's labels filled in
(the rules use labels only), so a changed runbook needs no change here."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.support.cli import system_binary

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "prometheus" / "alerts.yaml"
I = 'instance="r1:8081",job="immudb-replicator"'  # noqa: E741 - short, as it is in every series of the tables below
SERIES = {"instance": "r1:8081", "job": "immudb-replicator"}  # the scrape's labels on every series

# alert -> [(input series, minutes to evaluate at, labels of the alerts expected to fire then)]
CASES: dict[str, list[tuple[list[tuple[str, str]], int, list[dict]]]] = {
    "ReplicatorDown": [
        ([(f"up{{{I}}}", "1x20")], 15, []),
        ([(f"up{{{I}}}", "1 1 0x20")], 4, []),                      # down, not yet for 5 minutes
        ([(f"up{{{I}}}", "1 1 0x20")], 10, [{**SERIES}]),
    ],
    "ReplicaLagging": [
        ([(f'replicator_database_lag_transactions{{{I},database="shop"}}', "5000x5 0x20")], 20, []),
        ([(f'replicator_database_lag_transactions{{{I},database="shop"}}', "5000x20")], 15, [{"instance": "r1:8081", "database": "shop"}]),
    ],
    "ReplicaDatabaseNotInSync": [
        ([(f'replicator_database_state{{{I},database="shop",state="drift"}}', "0x30"),
          (f'replicator_database_state{{{I},database="shop",state="in_sync"}}', "1x30")], 25, []),
        ([(f'replicator_database_state{{{I},database="shop",state="unloaded"}}', "1x10 0x20")], 25, []),
        ([(f'replicator_database_state{{{I},database="shop",state="unloaded"}}', "1x30")], 20,
         [{"instance": "r1:8081", "database": "shop", "state": "unloaded"}]),
    ],
    "ReconcilePassesFailing": [
        ([(f"replicator_reconcile_passes_total{{{I}}}", "0+1x40"),
          (f"replicator_reconcile_failures_total{{{I}}}", "0+0x10 1+0x30")], 35, []),   # one failed, others fine
        ([(f"replicator_reconcile_passes_total{{{I}}}", "0+1x40"),
          (f"replicator_reconcile_failures_total{{{I}}}", "0+1x40")], 35, [{**SERIES}]),
    ],
    "BackupMissing": [
        ([(f'replicator_backup_last_success_timestamp_seconds{{{I},target="s3"}}', "0+60x30")], 25, []),
        ([(f'replicator_backup_last_success_timestamp_seconds{{{I},target="s3"}}', "0x2000")], 27 * 60,
         [{"instance": "r1:8081", "target": "s3"}]),
    ],
    "BackupNeverSucceeded": [
        ([(f'replicator_backup_failures_total{{{I},target="s3"}}', "1x10"),
          (f'replicator_backup_last_success_timestamp_seconds{{{I},target="s3"}}', "100x10")], 5, []),
        ([(f'replicator_backup_failures_total{{{I},target="s3"}}', "1x10")], 5, [{**SERIES, "target": "s3"}]),
    ],
    "BackupFailed": [
        ([(f'replicator_backup_failures_total{{{I},target="s3"}}', "2x100")], 90, []),
        ([(f'replicator_backup_failures_total{{{I},target="s3"}}', "2x50 3x50")], 60, [{**SERIES, "target": "s3"}]),
    ],
    "RestoreDrillFailed": [
        ([(f'replicator_drill_failures_total{{{I},target="s3"}}', "0x100")], 90, []),
        ([(f'replicator_drill_failures_total{{{I},target="s3"}}', "0x50 1x50")], 60, [{**SERIES, "target": "s3"}]),
    ],
    "RestoreDrillMissing": [
        ([(f'replicator_drill_last_success_timestamp_seconds{{{I},target="s3"}}', "0+60x30")], 25, []),
        ([(f'replicator_drill_last_success_timestamp_seconds{{{I},target="s3"}}', "0x13000")], 8 * 1440 + 60,
         [{"instance": "r1:8081", "target": "s3"}]),
    ],
    "JournalLagging": [
        ([(f'replicator_journal_lag_seconds{{{I},database="shop"}}', "3x30")], 20, []),
        ([(f'replicator_journal_lag_seconds{{{I},database="shop"}}', "90x3 1x30")], 20, []),   # a spike
        ([(f'replicator_journal_lag_seconds{{{I},database="shop"}}', "0 0 90+60x30")], 20,
         [{"instance": "r1:8081", "database": "shop"}]),
    ],
    "JournalSpoolFilling": [
        ([(f'replicator_journal_state{{{I},database="shop",state="spool_full"}}', "0x10")], 5, []),
        ([(f'replicator_journal_state{{{I},database="shop",state="spool_full"}}', "1x10")], 5,
         [{"instance": "r1:8081", "database": "shop"}]),
    ],
    "ConfigReloadRefused": [
        ([(f'replicator_config_reloads_total{{{I},result="error"}}', "0x30")], 20, []),
        ([(f'replicator_config_reloads_total{{{I},result="error"}}', "0x10 1x20")], 20, [{**SERIES, "result": "error"}]),
    ],
}


def rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def expected(rule: dict, labels: dict) -> dict:
    """What promtool must see: the labels the expression keeps (`labels`)
    and the rule's, and the annotations with those labels filled in."""
    all_labels = {**labels, **rule.get("labels", {})}

    def fill(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: all_labels.get(m.group(1), ""), text)

    return {"exp_labels": all_labels, "exp_annotations": {k: fill(v) for k, v in rule["annotations"].items()}}


def test_every_rule_has_a_firing_and_a_quiet_case():
    assert set(CASES) == set(rules())
    for alert, cases in CASES.items():
        assert any(fire for *_, fire in cases) and any(not fire for *_, fire in cases), alert


def test_promtool_checks_and_unit_tests_pass(tmp_path):
    promtool = system_binary("promtool", "prometheus")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = []
    for alert, cases in CASES.items():
        rule = rules()[alert]
        for series, minutes, firing in cases:
            tests.append({
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [{"eval_time": f"{minutes}m", "alertname": alert,
                                     "exp_alerts": [expected(rule, labels) for labels in firing]}],
            })
    (tmp_path / "alerts.yaml").write_text(RULES.read_text())
    (tmp_path / "alerts.test.yaml").write_text(yaml.safe_dump({"rule_files": ["alerts.yaml"],
                                                                "evaluation_interval": "1m", "tests": tests}))
    done = subprocess.run([promtool, "test", "rules", "alerts.test.yaml"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
