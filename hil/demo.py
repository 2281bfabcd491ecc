"""``make demo``: the whole system on this machine, readings arriving at the receiver live.

    python -m hil.demo                    # interactive: a refreshing table until Ctrl-C
    python -m hil.demo --duration 30      # non-interactive: 30 s, then a summary; exit 0 only
                                          # if readings arrived at the receiver end to end
    python -m hil.demo --dir demo-state   # keep everything (PKI, databases, logs, demo.json)

It builds a :class:`hil.stack.Stack` (software TPM, root CA, an organization, its receiver,
simulated M-Bus meters and a Modbus meter, one logger enrolled with a TPM key) and watches it:
the receiver's storage for what arrived, the logger's status file and buffer for what was
taken.

Exit codes: 0 readings arrived end to end (or an interactive run stopped with Ctrl-C); 1 they
did not; 2 usage (``--dir`` not empty); 3 the stack did not come up (the message names the
part and its log file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hil.stack import Stack, StackError

REFRESH_S = 1.0
PROGRESS_EVERY_S = 5.0
RECORDS_PER_METER = 4


@dataclass
class Row:
    meter: str
    record: str
    value: str
    unit: str
    taken: dt.datetime | None


@dataclass
class View:
    """One refresh: the receiver's newest values and the figures of the progress line."""

    rows: list[Row] = field(default_factory=list)
    produced: int = 0
    received: int = 0
    buffer_depth: int | None = None
    oldest_age_s: float | None = None
    lost: int = 0
    meters_ok: int = 0
    meters_total: int = 0
    failing: list[str] = field(default_factory=list)
    cert_days_left: int | None = None
    uplink: str = ""


class Watcher:
    """Reads the running stack's state the way an operator would: the receiver's storage,
    the logger's status file and ``mbus-logger buffer`` commands."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def cert_days_left(self) -> int | None:
        from cryptography import x509

        path = self.stack.logger.state_dir / "device-cert.pem"
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return None
        left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
        return left.days

    def view(self) -> View:
        node = self.stack.logger
        status = node.status() or {}
        try:
            # Now, not as of the last tick (the status file's copy): the pusher drains between.
            buffer = node.buffer_stats()
        except (StackError, ValueError):
            buffer = status.get("buffer") or {}
        meters = status.get("meters") or []
        view = View(
            produced=max(int(buffer.get("next_seq", 1)) - 1, 0),
            buffer_depth=buffer.get("depth"),
            oldest_age_s=buffer.get("oldest_age_s"),
            lost=int(buffer.get("lost_total", 0)),
            meters_total=len(meters),
            meters_ok=sum(1 for m in meters if m.get("state") == "up"),
            failing=[m["meter"] for m in meters if m.get("state") == "down"],
            cert_days_left=self.cert_days_left(),
        )
        uplink = (status.get("services") or {}).get("uplink")
        if isinstance(uplink, dict):
            connection = uplink.get("connection") or {}
            view.uplink = str(connection.get("state") or "")
            if connection.get("error_kind"):
                view.uplink += f" ({connection['error_kind']})"
        self._from_receiver(view)
        return view

    def _from_receiver(self, view: View) -> None:
        snap = self.stack.receiver.snapshot(readings=False)
        uri = self.stack.logger.application_uri
        latest = [v for v in snap.latest if v.device_uri == uri]
        # Everything up to the newest acknowledged sequence number has arrived (the logger
        # pushes oldest first and the receiver acknowledges whole batches).
        view.received = max((v.sequence for v in latest), default=0)
        view.rows = [
            Row(v.meter, v.record, v.value, v.unit, v.logger_time)
            for v in sorted(latest, key=lambda v: (v.meter, v.record))
        ]

    def final_count(self) -> tuple[int, int, list[float]]:
        """Readings stored at the receiver for the logger, distinct (epoch, sequence) pairs
        among them, and the delays from the logger's clock to the receiver's storage."""
        snap = self.stack.receiver.snapshot(readings=True)
        mine = snap.for_device(self.stack.logger.application_uri)
        keys = {(r.epoch, r.sequence) for r in mine}
        delays = [
            (r.received_at - r.logger_time).total_seconds()
            for r in mine
            if r.logger_time is not None and r.received_at is not None
        ]
        return len(mine), len(keys), delays


# --- rendering -----------------------------------------------------------------------------


def _age(taken: dt.datetime | None, now: dt.datetime) -> str:
    if taken is None:
        return "-"
    seconds = max((now - taken).total_seconds(), 0.0)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[Row], per_meter: int = RECORDS_PER_METER) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    header = f"{'meter':<12} {'record':<28} {'value':>16} {'unit':<8} {'age':>7}"
    out = [header, "-" * len(header)]
    by_meter: dict[str, list[Row]] = {}
    for row in rows:
        by_meter.setdefault(row.meter, []).append(row)
    for meter in sorted(by_meter):
        items = by_meter[meter]
        for row in items[:per_meter]:
            out.append(
                f"{_clip(meter, 12):<12} {_clip(row.record, 28):<28} "
                f"{_clip(row.value, 16):>16} {_clip(row.unit, 8):<8} {_age(row.taken, now):>7}"
            )
        if len(items) > per_meter:
            out.append(f"{'':<12} (+{len(items) - per_meter} more records)")
    if not rows:
        out.append("(no readings yet)")
    return out


def progress(view: View, elapsed: float) -> str:
    parts = [f"{elapsed:5.0f} s", f"produced {view.produced}", f"received {view.received}"]
    depth = "-" if view.buffer_depth is None else str(view.buffer_depth)
    parts.append(f"buffer {depth}")
    if view.oldest_age_s is not None:
        parts.append(f"oldest {view.oldest_age_s:.0f} s")
    parts.append(f"meters {view.meters_ok}/{view.meters_total} ok")
    if view.failing:
        parts.append("failing: " + ", ".join(view.failing))
    if view.lost:
        parts.append(f"lost {view.lost}")
    days = "-" if view.cert_days_left is None else str(view.cert_days_left)
    parts.append(f"certificate {days} days left")
    if view.uplink:
        parts.append(f"uplink {view.uplink}")
    return " | ".join(parts)


def banner(stack: Stack, out: TextIO) -> None:
    d = stack.description()
    receiver = d["receivers"][stack.orgs[0]]
    print("mbus-ua-logger demo", file=out)
    print(f"  state      {d['root']}  (demo.json, logs/)", file=out)
    print(f"  TPM        {d['tpm']['tcti']}", file=out)
    print(f"  receiver   {receiver['endpoint']}  ({receiver['application_uri']})", file=out)
    print(f"             storage {receiver['db']}", file=out)
    node = stack.logger
    print(f"  logger     {node.serial}  {node.application_uri}", file=out)
    print(f"             TPM key {hex(node.handle)}, config {node.config_path}", file=out)

    def meter_text(m: dict[str, Any]) -> str:
        extra = f", {m['telegrams']} telegrams" if m["telegrams"] > 1 else ""
        return f"{m['id']} ({m['kind']}{extra})"

    meters = ", ".join(meter_text(m) for m in d["meters"]["list"])
    print(f"  meters     {meters}", file=out)
    print(
        f"             M-Bus line {d['meters']['mbus_device']} at {d['meters']['baudrate']} Bd",
        file=out,
    )
    print(file=out)


# --- the two modes ---------------------------------------------------------------------------


def interactive(stack: Stack, watcher: Watcher, out: TextIO) -> int:
    started = time.monotonic()
    tty = out.isatty()
    if not tty:
        # Not a terminal (a log, a pipe): progress lines instead of a refreshing screen.
        try:
            while True:
                print(progress(watcher.view(), time.monotonic() - started), file=out, flush=True)
                time.sleep(PROGRESS_EVERY_S)
        except KeyboardInterrupt:
            print("stopping…", file=out)
            return 0
    try:
        while True:
            view = watcher.view()
            lines = ["readings at the receiver (Ctrl-C stops)", ""]
            lines += table(view.rows)
            lines += ["", progress(view, time.monotonic() - started)]
            out.write("\x1b[H\x1b[J")  # home, clear to the end
            banner(stack, out)
            out.write("\n".join(lines) + "\n")
            out.flush()
            time.sleep(REFRESH_S)
    except KeyboardInterrupt:
        print("\nstopping…", file=out)
        return 0


def timed(stack: Stack, watcher: Watcher, duration: float, out: TextIO) -> int:
    started = time.monotonic()
    next_progress = 0.0
    view = watcher.view()
    while (elapsed := time.monotonic() - started) < duration:
        if elapsed >= next_progress:
            view = watcher.view()
            print(progress(view, elapsed), file=out, flush=True)
            next_progress += PROGRESS_EVERY_S
        time.sleep(min(REFRESH_S, max(duration - elapsed, 0.0)))
    view = watcher.view()
    print(file=out)
    print("readings at the receiver:", file=out)
    print("\n".join(table(view.rows, per_meter=2)), file=out)
    print(file=out)
    return summary(stack, watcher, view, time.monotonic() - started, out)


def summary(stack: Stack, watcher: Watcher, view: View, elapsed: float, out: TextIO) -> int:
    print("summary", file=out)
    print(f"  ran                {elapsed:.0f} s", file=out)
    print(f"  readings produced  {view.produced} (committed to the logger's buffer)", file=out)
    rate = view.produced / elapsed if elapsed > 0 else 0.0
    print(f"  production rate    {rate:.1f} readings/s", file=out)
    print(
        f"  meters             {view.meters_ok} ok, {view.meters_total - view.meters_ok} failed"
        + (f" ({', '.join(view.failing)})" if view.failing else ""),
        file=out,
    )
    print(f"  buffer depth       {view.buffer_depth}, lost {view.lost}", file=out)
    print(f"  certificate        {view.cert_days_left} days left", file=out)
    total, distinct, delays = watcher.final_count()
    print(
        f"  readings received  {total} ({distinct} distinct; duplicates {total - distinct})",
        file=out,
    )
    if delays:
        print(
            f"  logger → receiver  median {statistics.median(delays):.2f} s, "
            f"max {max(delays):.2f} s (logger clock to receiver storage)",
            file=out,
        )
    ok = total > 0 and total == distinct
    print(
        "RESULT: readings arrived end to end" if ok else "RESULT: readings did NOT arrive",
        file=out,
    )
    return 0 if ok else 1


# --- command -------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hil.demo",
        description="The whole system on simulated meters: readings arriving live.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0,
        help="seconds to run, then print a summary (0: interactive until Ctrl-C)",
    )
    parser.add_argument(
        "--dir", type=Path, help="keep all state here (must be new or empty); default a temp dir"
    )
    args = parser.parse_args(argv)
    if args.duration < 0:
        parser.error("--duration must be 0 (interactive) or a number of seconds")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse(argv)
    # Ctrl-C, a closed terminal and a plain kill all stop the stack in order (a process
    # started in the background may inherit SIGINT ignored; SIGTERM would skip the cleanup).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    if args.dir is not None:
        if args.dir.exists() and any(args.dir.iterdir()):
            print(
                f"hil.demo: {args.dir} is not empty (it keeps a previous run's state); "
                "give a new directory or remove it",
                file=sys.stderr,
            )
            return 2
        root = args.dir
        keep = True
    else:
        root = Path(tempfile.mkdtemp(prefix="mbus-demo-"))
        keep = False
    print(f"starting the stack in {root} …", file=out, flush=True)
    code = 3
    try:
        with Stack(root) as stack:
            try:
                stack.start()
            except StackError as exc:
                print(f"hil.demo: the stack did not come up: {exc}", file=sys.stderr)
                return 3
            banner(stack, out)
            watcher = Watcher(stack)
            if args.duration > 0:
                code = timed(stack, watcher, args.duration, out)
            else:
                code = interactive(stack, watcher, out)
            stack.write_description()
    except KeyboardInterrupt:
        print("\nstopped", file=out)
        code = 0
    finally:
        if keep:
            print(f"state kept in {root} (see demo.json)", file=out)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
