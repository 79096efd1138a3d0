"""Anchors: what a restore, verify or drill checks what it read against,
kept where a writer of the backup target cannot reach (docs/architecture.md)."""
