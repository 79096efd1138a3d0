"""immudb-replicator: keeps an immudb replica following its primary, and backs it up."""

__version__ = "0.1.0"
