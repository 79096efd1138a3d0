"""What the tests, the benchmarks and the demo share: the real servers
(servers.py), immudb-py as an independent client (immudb_data.py),
configuration files (configs.py), a `replicator run` process (daemon.py),
targets of every kind (targets.py), checks (checks.py), values for the pure
planner's tests (plans.py) and waiting for conditions (waiting.py).
No test module imports another test module."""
