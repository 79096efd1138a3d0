"""Backups of the replica: consistent archives (unload, copy, load again)
written to a target (file, SFTP, S3), verified and restored."""
