"""``mbus-logger run | check-config | status | buffer``: the daemon and its inspection commands.

``run`` is the systemd service's ``ExecStart``. The other commands never talk to the running
daemon: ``status`` reads the status file the daemon replaces atomically after every tick, and
``buffer`` opens the SQLite buffer read-only (WAL lets it read while the daemon writes). None
of them imports pyserial, pymodbus, asyncua or tpm2-pytss.

Exit codes (logger.cli.common): ``check-config`` 0 valid, 2 invalid (every problem listed with
its line); ``status`` 0 daemon running, 1 not running (or its status is stale), 3 no status
file yet; ``buffer`` 0, 1 when there is no buffer database, 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logger.cli.common import (
    CHECK_FAILED,
    OK,
    PERMANENT,
    TRANSIENT,
    USAGE,
    CliError,
    add_format,
    load_config,
    print_json,
    print_table,
)

if TYPE_CHECKING:
    from logger.config import Config

EXPORT_PAGE = 1000
STALE_FACTOR = 3
"""``status`` calls the daemon stale when its status file is older than this many of its
shortest polling intervals (and at least :data:`STALE_MIN_S`)."""
STALE_MIN_S = 120.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the logger daemon",
        description="Poll the configured meters into the durable buffer until SIGTERM; "
        "SIGHUP reloads the configuration. Under systemd (Type=notify) it reports READY, "
        "STATUS and pings the watchdog.",
    )
    run.add_argument("--config", required=True, type=Path, help="the TOML configuration file")
    run.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    run.set_defaults(handler=cmd_run)

    check = subparsers.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate FILE as a whole and list every problem with its line.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    add_format(check)
    check.set_defaults(handler=cmd_check_config)

    status = subparsers.add_parser(
        "status",
        help="show the running daemon's state",
        description="Meters' health, buffer depth and age, last poll and losses, as the "
        "running daemon last wrote them to its status file.",
    )
    status.add_argument("--config", required=True, type=Path)
    add_format(status)
    status.set_defaults(handler=cmd_status)

    buffer = subparsers.add_parser(
        "buffer",
        help="inspect or export the local buffer",
        description="Read the durable buffer (read-only; safe while the daemon runs).",
    )
    sub = buffer.add_subparsers(dest="buffer_command", metavar="stats|export")
    sub.required = True
    stats = sub.add_parser("stats", help="depth, size, age, sequence numbers and losses")
    stats.add_argument("--config", required=True, type=Path)
    add_format(stats)
    stats.set_defaults(handler=cmd_buffer_stats)
    export = sub.add_parser("export", help="the pending readings, oldest first")
    export.add_argument("--config", required=True, type=Path)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument(
        "--since", type=int, default=0, metavar="SEQ", help="only readings with seq > SEQ"
    )
    export.set_defaults(handler=cmd_buffer_export)


# --- run -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from logger.config import ConfigError

    if not args.verbose and "MBUS_LOG_LEVEL" not in os.environ:
        # A daemon's journal should show starts, stops, meters going down/up and commits.
        logging.getLogger().setLevel(logging.INFO)
    from logger.app import DaemonError, run_daemon

    try:
        return run_daemon(args.config)
    except ConfigError as exc:
        raise CliError(f"refusing to start: {exc}", USAGE) from exc
    except DaemonError as exc:
        raise CliError(str(exc), exc.code) from exc


# --- check-config ----------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    from logger.config import ConfigError, load

    try:
        config = load(args.file)
    except ConfigError as exc:
        if args.format == "json":
            print_json(
                {
                    "file": str(args.file),
                    "valid": False,
                    "problems": [
                        {"where": p.where, "key": p.key, "message": p.message} for p in exc.problems
                    ],
                }
            )
        else:
            print(exc, file=sys.stderr)  # "FILE: N problem(s)" then one line per problem
        return USAGE
    summary = _config_summary(config)
    if args.format == "json":
        print_json({"file": str(args.file), "valid": True, "problems": [], **summary})
    else:
        print(
            f"{args.file}: ok ({summary['buses']} buses, {summary['meters']} meters, "
            f"buffer {config.paths.database}, uplink "
            f"{'configured' if config.uplink else 'none'})"
        )
    return OK


def _config_summary(config: Config) -> dict[str, Any]:
    return {
        "buses": len(config.buses),
        "meters": sum(1 for m in config.meters if m.enabled),
        "database": str(config.paths.database),
        "status_file": str(config.paths.status_file),
        "uplink": config.uplink is not None,
    }


# --- status ----------------------------------------------------------------------------------


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user (the service account)
    # A pid is reused after a crash: make sure it is still a daemon ("... run --config ...").
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (or hidden by hidepid): trust the signal check
    return b"run" in argv


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def read_status(path: Path) -> dict[str, Any]:
    """The daemon's status document, with ``running``, ``stale`` and ``age_s`` added."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CliError(
            f"no status file {path}: the daemon has not run with this configuration yet",
            TRANSIENT,
        ) from exc
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the status file {path}: {exc}", TRANSIENT) from exc
    if not isinstance(doc, dict):
        raise CliError(f"{path}: not a status document", PERMANENT)
    updated = _parse_time(doc.get("updated"))
    age = (datetime.now(UTC) - updated).total_seconds() if updated else None
    interval = doc.get("shortest_interval_s") or 0
    limit = max(STALE_MIN_S, STALE_FACTOR * float(interval))
    running = doc.get("state") == "running" and _pid_alive(doc.get("pid"))
    doc["running"] = running
    doc["age_s"] = round(age, 3) if age is not None else None
    doc["stale"] = bool(running and age is not None and age > limit)
    return doc


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    doc = read_status(config.paths.status_file)
    if args.format == "json":
        print_json(doc)
    else:
        _print_status(doc)
    return OK if doc["running"] and not doc["stale"] else CHECK_FAILED


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _print_status(doc: dict[str, Any]) -> None:
    if doc["running"]:
        state = "running, STALE" if doc["stale"] else "running"
    else:
        state = "NOT running" + (" (stopped cleanly)" if doc.get("state") == "stopped" else "")
    print(
        f"daemon:     {state} (pid {doc.get('pid')}, started {doc.get('started')}, "
        f"status written {_ago(doc.get('age_s'))} ago)"
    )
    print(f"config:     {doc.get('config')}  cloud layer: {doc.get('cloud_version') or '-'}")
    clock = doc.get("clock") or {}
    synced = {"True": "synchronised", "False": "NOT synchronised (readings flagged)"}.get(
        str(clock.get("synchronised")), "unknown"
    )
    jumps = clock.get("jumps") or 0
    jump_text = f", {jumps} jump(s), last {clock.get('last_jump_s')} s" if jumps else ""
    print(f"clock:      {synced}{jump_text}")
    last = doc.get("last_poll")
    if last:
        commit = last.get("commit") or {}
        seqs = (
            f", seq {commit.get('first_seq')}..{commit.get('last_seq')}"
            if commit.get("first_seq") is not None
            else ""
        )
        error = f", NOT STORED: {last['store_error']}" if last.get("store_error") else ""
        print(
            f"last poll:  {last.get('tick')}: {last.get('meters_ok')}/{last.get('meters')} "
            f"meters, {last.get('readings')} readings{seqs}{error}"
        )
    else:
        print("last poll:  none yet")
    buf = doc.get("buffer")
    if buf:
        print(
            f"buffer:     {buf['depth']} readings, {_size(buf.get('bytes'))}, oldest "
            f"{_ago(buf.get('oldest_age_s'))} old, next seq {buf.get('next_seq')}, "
            f"epoch {buf.get('epoch')}"
        )
        print(
            f"losses:     {buf.get('lost_total', 0)} readings ({buf.get('loss_records', 0)} "
            "records)"
        )
    if doc.get("last_reload_error"):
        print("reload:     REFUSED, running the previous configuration")
    print()
    rows = []
    for meter in doc.get("meters") or []:
        success = _parse_time(meter.get("last_success"))
        rows.append(
            {
                "meter": meter.get("meter"),
                "kind": meter.get("kind"),
                "state": meter.get("state"),
                "last_success": success.strftime("%Y-%m-%d %H:%M:%S") if success else "-",
                "failures": meter.get("consecutive_failures"),
                "last_error": (meter.get("last_error") or "")[:70]
                if meter.get("state") == "down"
                else "",
            }
        )
    print_table(rows, ["meter", "kind", "state", "last_success", "failures", "last_error"])


# --- buffer ----------------------------------------------------------------------------------


def _open_readonly(config: Config) -> Any:
    from logger.store.api import StoreError
    from logger.store.sqlite import SqliteStore

    try:
        return SqliteStore(config.paths.database, config.buffer, readonly=True)
    except StoreError as exc:
        raise CliError(str(exc), CHECK_FAILED) from exc


def cmd_buffer_stats(args: argparse.Namespace) -> int:
    from logger.app import stats_dict

    config = load_config(args.config)
    store = _open_readonly(config)
    try:
        stats = stats_dict(store.stats())
        losses = [
            {
                "id": loss.id,
                "at": loss.at.isoformat(),
                "reason": loss.reason.value,
                "count": loss.count,
                "first_seq": loss.first_seq,
                "last_seq": loss.last_seq,
                "detail": loss.detail,
            }
            for loss in store.losses()
        ]
    finally:
        store.close()
    if args.format == "json":
        print_json({"database": str(config.paths.database), **stats, "losses": losses})
        return OK
    print(f"database:    {config.paths.database}")
    print(f"epoch:       {stats['epoch']}")
    print(f"depth:       {stats['depth']} readings, {_size(stats['bytes'])}")
    print(
        f"sequence:    oldest {stats['oldest_seq']}, newest {stats['newest_seq']}, "
        f"next {stats['next_seq']}"
    )
    print(f"oldest:      {stats['oldest_time'] or '-'} ({_ago(stats['oldest_age_s'])} old)")
    limits = stats["limits"]
    print(
        f"limits:      {_size(limits['max_bytes'])}, {_ago(limits['max_age_s'])}, keep "
        f"{_size(limits['min_free_bytes'])} free, policy {limits['policy']}"
    )
    print(f"losses:      {stats['lost_total']} readings in {stats['loss_records']} records")
    if losses:
        print()
        print_table(losses, ["id", "at", "reason", "count", "first_seq", "last_seq", "detail"])
    return OK


def cmd_buffer_export(args: argparse.Namespace) -> int:
    from logger.store.export import csv_lines, iter_records, jsonl

    if args.since < 0:
        raise CliError("--since must be 0 or a sequence number", USAGE)
    config = load_config(args.config)
    store = _open_readonly(config)
    try:
        records = iter_records(store, args.since, EXPORT_PAGE)
        lines = csv_lines(records) if args.format == "csv" else jsonl(records)
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    finally:
        store.close()
    return OK
