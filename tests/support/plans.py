"""Configurations and observations for the planner's tests: no servers."""
from __future__ import annotations

import dataclasses

from reconciler import config
from reconciler.plan import desired_replication
from reconciler.secret import Secret
from reconciler.state import PERMISSION_ADMIN, DatabaseInfo, StoreLimits, UserInfo

PASSWORD = Secret("Follower-pw-1")


def make_config(**reconcile) -> config.Config:
    data = {
        "primary": {"host": "10.0.0.5", "password": "Primary-pw-1"},
        "replica": {"host": "127.0.0.1", "password": "Replica-pw-1"},
        "follower": {"password": "Follower-pw-1"},
        "reconcile": reconcile,
    }
    from reconciler.config.validate import logic_problems, schema_problems
    assert not schema_problems(data, {}) and not logic_problems(data, {})
    return config.Config.from_dict(data, "test")


def primary_db(name: str, tx: int = 5, sync_acks: int = 0) -> DatabaseInfo:
    return DatabaseInfo(name, tx_count=tx, sync_acks=sync_acks,
                        limits=StoreLimits(max_key_len=1024, max_value_len=4096, max_tx_entries=1024))


def replica_of(cfg, name: str, source: str | DatabaseInfo | None = None, tx: int = 5, loaded: bool = True,
               password: Secret = PASSWORD, **changes) -> DatabaseInfo:
    source = source if isinstance(source, DatabaseInfo) else primary_db(source or name)
    settings = dataclasses.replace(desired_replication(cfg, source, password), **changes)
    return DatabaseInfo(name, loaded=loaded, tx_count=tx, replication=settings,
                        limits=StoreLimits(max_key_len=1024, max_value_len=4096, max_tx_entries=1024))


def follower(*databases: str, active: bool = True) -> UserInfo:
    return UserInfo("follower", active, {d: PERMISSION_ADMIN for d in databases})


