"""The `replicator` command. Errors a user can meet print as one line each
(`error: ...`) with an exit code, never a traceback:
0 ok / in sync, 1 failure, 2 invalid configuration or usage, or changes
pending (`plan`, as `terraform plan -detailed-exitcode`), 130 interrupted."""
from __future__ import annotations

import argparse
import os
import sys

from reconciler import __version__
from reconciler.config import go_flags
from reconciler.errors import ReplicatorError
from reconciler.secret import redact


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", default=os.environ.get("REPLICATOR_CONFIG") or None,
                        help="YAML configuration (default: $REPLICATOR_CONFIG; optional where the Go "
                             "tool's flags/environment give everything)")
    go_flags.add_flags(parser)


def _target_kinds() -> list[str]:
    """The target kinds, one module each (adding a kind is adding a module)."""
    from reconciler.targets import kinds
    return sorted(kinds())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replicator",
        description="Keeps an immudb replica server following every database of its primary, and backs it up.",
        epilog="Exit codes: 0 ok/in sync, 1 failure, 2 invalid configuration (plan: changes pending), "
               "130 interrupted.")
    parser.add_argument("--version", action="version", version=f"immudb-replicator {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check a configuration file; print every problem with its YAML path")
    _config_args(p)

    p = sub.add_parser("plan", help="show what a reconcile pass would change (exit 0 in sync, 2 changes pending)")
    _config_args(p)

    p = sub.add_parser("reconcile", help="run reconcile passes now")
    p.add_argument("--once", action="store_true", help="one pass, then exit (non-zero if anything failed)")
    _config_args(p)

    p = sub.add_parser("status", help="per replica database: state, lag, last error")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("run", help="the daemon: reconcile every interval until SIGTERM/SIGINT")
    _config_args(p)

    p = sub.add_parser("backup", help="back up the replica's databases now (progress on a terminal)",
                       description="Back up to a target named in the configuration (--target) or to one "
                                   "given inline with the Go tool's request fields (--type, --path, ...).")
    _config_args(p)
    p.add_argument("--target", metavar="NAME", help="a target from backup.targets")
    inline = p.add_argument_group("inline target (the Go tool's REST fields)")
    kinds = _target_kinds()
    inline.add_argument("--type", choices=kinds, help="a target kind: " + ", ".join(kinds))
    inline.add_argument("--path", help="file path, remote path, or s3://bucket/key; may contain {timestamp}")
    inline.add_argument("--host", help="sftp host, or the AWS region for s3")
    inline.add_argument("--port", type=int, help="sftp port (22)")
    inline.add_argument("--username", help="sftp user, or the access key for s3")
    inline.add_argument("--password-file", metavar="FILE",
                        help="file holding the sftp password or s3 secret key (a flag would show in ps)")
    inline.add_argument("--endpoint-url", help="s3: an S3-compatible endpoint")
    inline.add_argument("--known-hosts-file", help="sftp: known_hosts to check the host key against")

    p = sub.add_parser("verify", help="check an archive: structure, every file's size and sha256, and that what "
                                      "it records is vouched for by an anchor (exit 0 only if all hold)")
    p.add_argument("archive", help="a local path, s3://bucket/key or sftp://host/path, or a name with --target")
    p.add_argument("--target", metavar="NAME", help="the archive is at this configured target")
    _anchor_flags(p)
    _identity_flag(p)
    p.add_argument("-c", "--config", metavar="FILE", default=os.environ.get("REPLICATOR_CONFIG") or None,
                   help="configuration, for the credentials of remote archives")

    p = sub.add_parser("restore", help="extract an archive into an immudb data directory, checking every file; or "
                                       "replay a database's journal to a transaction or a time (--to-tx, --to-time)",
                       description="With an archive: extract it into --data-dir. With --to-tx/--to-time (or "
                                   "--to-end): replay the journal of --database at --target, checked transaction "
                                   "by transaction, into a new database (--as) of a running immudb (--server), or "
                                   "of a throwaway immudb opened on --data-dir.")
    p.add_argument("archive", nargs="?", help="a local path, s3://bucket/key or sftp://host/path, or a name with "
                                              "--target (not with --to-tx/--to-time)")
    p.add_argument("--data-dir", metavar="DIR", help="where to restore (an archive: must be empty unless --force; "
                                                     "a journal: opened by a throwaway immudb)")
    p.add_argument("--database", action="append", metavar="NAME", help="restore only this database (repeatable); "
                                                                       "with --to-tx/--to-time: the journal's database")
    p.add_argument("--force", action="store_true", help="restore into a non-empty directory, replacing those databases")
    p.add_argument("--target", metavar="NAME", help="the archive (or the journal) is at this configured target")
    point = p.add_mutually_exclusive_group()
    point.add_argument("--to-tx", type=int, metavar="N", help="replay the journal up to transaction N")
    point.add_argument("--to-time", metavar="TIME", help="replay the journal up to the last transaction at or "
                                                         "before TIME (ISO 8601 with a zone, e.g. 2026-11-27T14:05:00Z)")
    point.add_argument("--to-end", action="store_true", help="replay the whole journal")
    p.add_argument("--as", dest="restore_as", metavar="NAME", help="the restored database's name (default: "
                                                                   "<database>_restored)")
    p.add_argument("--server", choices=("replica", "primary"), default=None,
                   help="replay into this running configured server, into a new database (--as); without it a "
                        "journal is replayed only into a throwaway immudb on --data-dir")
    _anchor_flags(p)
    _identity_flag(p)
    p.add_argument("--allow-rollback", action="store_true",
                   help="restore to the journal's end although a live server or the local checkpoint holds more "
                        "(its newest segments are missing or behind)")
    p.add_argument("--immudb-binary", metavar="PATH",
                   help="the immudb server that opens restored data: to replay a journal, and to prove an archive's "
                        "values when no local checkpoint vouches for its bytes (default: backup.drill.immudb_binary, "
                        "else immudb on PATH)")
    p.add_argument("--all", action="store_true",
                   help="every database whose journal the target holds (--database narrows it), to --to-time or "
                        "--to-end, into one new --data-dir: a whole server")
    p.add_argument("--if-empty", action="store_true",
                   help="with --all: do nothing (exit 0) when --data-dir already holds something (an init container "
                        "before immudb)")
    p.add_argument("--parallel", type=int, metavar="N", default=None,
                   help="with --all: databases replayed at once (default 4)")
    p.add_argument("-c", "--config", metavar="FILE", default=os.environ.get("REPLICATOR_CONFIG") or None,
                   help="configuration, for the credentials of remote archives")

    p = sub.add_parser("drill", help="restore an archive into a throwaway immudb and check it (exit 0 only if all match)",
                       description="Restores the archive (or the newest at --target) into a scratch folder, opens it "
                                   "with a throwaway immudb on loopback, and checks every database's transaction id "
                                   "and state hash against the manifest and a sample of keys with immudb's proofs.")
    p.add_argument("archive", nargs="?", help="a local path, s3://bucket/key or sftp://host/path, or a name with "
                                              "--target (default: the newest archive at --target)")
    p.add_argument("--target", metavar="NAME", help="the configured target the archive is at")
    p.add_argument("--immudb-binary", metavar="PATH", help="immudb server to open it with (default: "
                                                           "backup.drill.immudb_binary, else immudb on PATH)")
    _anchor_flags(p)
    _identity_flag(p)
    p.add_argument("-c", "--config", metavar="FILE", default=os.environ.get("REPLICATOR_CONFIG") or None,
                   help="configuration, for targets and drill settings")

    p = sub.add_parser("config", help="configuration helpers: from-go")
    config_sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    p = config_sub.add_parser("from-go", help="print the YAML equivalent of a Go replicator command line and "
                                              "environment (passwords as references, never inline)",
                              description="Give the Go replicator's flags as you ran it; its environment "
                                          "variables (MASTER_ADDRESS, MASTER_PASSWORD, ...) are read too.")
    go_flags.add_flags(p)
    config_sub.add_parser("schema", help="print the configuration's whole JSON Schema (with every target kind), "
                                         "for editors and CI")

    for name, what in (("pin", "keep an archive whatever the target's retention says (`list` shows it pinned)"),
                       ("unpin", "let the target's retention delete an archive again")):
        p = sub.add_parser(name, help=what)
        _config_args(p)
        p.add_argument("--target", metavar="NAME", required=True)
        p.add_argument("archive", help="the archive's name at the target (as `list` shows it)")

    p = sub.add_parser("list", help="archives at a target, with size and time; or its journal (--journal)")
    _config_args(p)
    p.add_argument("--target", metavar="NAME", required=True)
    p.add_argument("--journal", action="store_true", help="the continuous backup at the target: per database, "
                                                          "transactions held, segments, newest transaction's time, gaps")
    return parser


def _identity_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identity", metavar="FILE", action="append",
                   help="the age identity (age-keygen's key file, or an OpenSSH private key) that decrypts an "
                        "encrypted archive (default: backup.encryption.identity_file); never printed; repeat it "
                        "for archives and segments written to different keys (a journal across a key change)")


def _anchor_flags(p: argparse.ArgumentParser) -> None:
    """What may vouch for what is read (README, 'What a restore trusts')."""
    p.add_argument("--unanchored", action="store_true",
                   help="accept what the target holds although nothing outside it (a live server, the primary's "
                        "signature, the local checkpoint) vouches for it: checked only against itself")
    p.add_argument("--no-live", action="store_true",
                   help="do not check against the running servers (e.g. an older history of a database created "
                        "again under its name)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from reconciler import commands  # each command imports what it needs, when it runs
    try:
        return commands.run(args.command, args)
    except ReplicatorError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {redact(line)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # noqa: BLE001 - the last net: one line, no traceback
        print(f"error: internal error ({type(exc).__name__}): {redact(str(exc))}; "
              f"run with REPLICATOR_DEBUG=1 for details and please report it", file=sys.stderr)
        if os.environ.get("REPLICATOR_DEBUG"):
            import traceback
            print(redact(traceback.format_exc()), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
