"""`replicator run`: the long-running process.

An APScheduler BackgroundScheduler runs the reconcile pass at start and every
`reconcile.interval` seconds (one instance at a time, missed runs coalesced
into one). The main thread waits for SIGTERM/SIGINT and then stops the
scheduler, letting a running pass finish.
"""
from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.config.model import Config
from reconciler.log import event
from reconciler.reconcile import Reconciler

log = logging.getLogger(__name__)


class Service:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.reconciler = Reconciler.from_config(cfg)
        self.scheduler = BackgroundScheduler(timezone=timezone.utc, job_defaults={
            "coalesce": True, "max_instances": 1,
            # a pass that could not start on time (process suspended, previous pass long) runs
            # as soon as possible rather than being dropped
            "misfire_grace_time": None,
        })
        self.stopping = threading.Event()

    def _reconcile_job(self) -> None:
        try:
            self.reconciler.run_pass()
        except Exception as exc:  # noqa: BLE001 - a pass must never kill the scheduler thread
            event(log, "pass_crashed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")

    def start(self) -> None:
        self.scheduler.add_job(self._reconcile_job, "interval", seconds=self.cfg.reconcile.interval,
                               id="reconcile", name="reconcile", next_run_time=datetime.now(timezone.utc))
        self.scheduler.start()
        event(log, "started", config=self.cfg.source, primary=self.cfg.primary.address,
              replica=self.cfg.replica.address, interval=self.cfg.reconcile.interval)

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)
        self.reconciler.close()
        event(log, "stopped")

    def run_until_signalled(self) -> int:
        def on_signal(signum, _frame):
            event(log, "signal", name=signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            while not self.stopping.wait(1.0):
                pass
        finally:
            self.stop()
        return 0
