"""The typed records the daemon answers with (reconciler/status.py): pure."""
from __future__ import annotations

import json

from reconciler.status import BackupStatus, BackupSummary, JournalState, JournalStatus


def _last(ok: bool = True) -> BackupSummary:
    return BackupSummary(id="b1", target="t", result="ok" if ok else "error", error=None if ok else "boom",
                         started_at=1.0, finished_at=2.0, location="/x", databases=["a"], bytes_in=10, bytes_out=5)


def test_backup_status_before_any_backup_is_idle_at_zero():
    s = BackupStatus.of({}, running=False, last=None).as_dict()
    assert (s["running"], s["progress"], s["progress_bytes"], s["backup_id"], s["last_result"]) == (
        False, 0, 0.0, None, None)


def test_backup_status_progress_is_the_go_tools_integer_percent_of_databases():
    snap = {"backup_id": "b2", "databases_total": 3, "databases_done": 2, "bytes_total": 300, "bytes_done": 100}
    s = BackupStatus.of(snap, running=True, last=_last()).as_dict()
    assert s["progress"] == 66 and isinstance(s["progress"], int)
    assert s["progress_bytes"] == 0.3333
    assert s["backup_id"] == "b2"  # the running one, not the last one
    assert s["last_result"]["id"] == "b1"


def test_backup_status_after_a_backup_says_100_and_names_it():
    s = BackupStatus.of({"databases_total": 0}, running=False, last=_last(ok=False)).as_dict()
    assert (s["progress"], s["backup_id"], s["last_result"]["result"], s["last_result"]["error"]) == (
        100, "b1", "error", "boom")
    json.dumps(s)  # what the API sends


def test_journal_status_serialises_its_state_as_the_plain_word():
    j = JournalStatus("db", "t", state=JournalState.NEEDS_BASE, replica_tx=7, shipped_tx=5).as_dict()
    assert json.loads(json.dumps(j))["state"] == "needs_base"
    assert j["lag_transactions"] == 2
