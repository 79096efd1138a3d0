"""Continuous backup: every transaction of a replica's databases shipped to a
target in small segments (format.py), resumed without gap or duplicate
(shipper.py), kept with the bases it needs (store.py) and replayed to any
transaction or time (replay.py)."""
