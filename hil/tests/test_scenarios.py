"""The hardware-in-the-loop scenarios (issue 8) on a whole system of real processes.

Each test brings up its own :class:`hil.stack.Stack` (software TPM, PKI made by
``mbus-provision``, ``mbus-receiver serve``, an enrolled ``mbus-logger run``, M-Bus meters on a
pty at 9600 Bd and a Modbus TCP meter) and checks what an operator would check: the logger's
buffer and status, ``mbus-logger uplink check``, the receiver's storage and audit log.

Every scenario runs the whole data path (the logger pushing readings, fetching its cloud
configuration, ``uplink check``): a part that is missing or broken fails the scenario. With
``MBUS_HIL_DEVICE`` / ``MBUS_HIL_TCTI`` / ``MBUS_HIL_ENDPOINT`` the same scenarios run on real
hardware (``hil/README.md``); those that need to fault a simulated meter or to kill the
receiver say so and skip there.

Counts are bounded (``MBUS_HIL_KILLS`` kill -9 events, default 30; ``MBUS_HIL_SEED`` makes the
kill moments reproducible).
"""

from __future__ import annotations

import http.server
import json
import os
import random
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from hil.stack import (
    Bench,
    LoggerNode,
    LoggerSettings,
    ReceiverNode,
    Stack,
    StackError,
    wait_until,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(240)]

SETTINGS = LoggerSettings(interval="3s")
"""A tick polls every meter in about 1.8 s at 9600 Bd (the five-telegram read-out is most of
it): 3 s keeps the line busy without overlapping ticks and the suite short."""
BENCH = Bench.from_env()


# --- fixtures and helpers ------------------------------------------------------------------------


def _leftovers(stack: Stack) -> list[str]:
    """Process groups of the stack that still exist (nothing may be left running)."""
    alive = []
    for proc in stack.processes():
        assert proc.pid is not None
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.append(f"{proc.name} (pgid {proc.pid})")
    return alive


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    """Build stacks in this test's directory; each is closed and checked for leftovers."""
    made: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        kwargs.setdefault("settings", SETTINGS)
        stack = Stack(tmp_path / f"stack{len(made)}", bench=BENCH, **kwargs)
        made.append(stack)
        return stack.start()

    yield make
    for stack in made:
        stack.close()
        assert not _leftovers(stack), f"left running: {_leftovers(stack)}"


@pytest.fixture
def stack(stack_factory: Any) -> Stack:
    made: Stack = stack_factory()
    return made


def need_simulated_meters() -> None:
    if not BENCH.simulated_meters:
        pytest.skip("needs the simulated M-Bus line to set meter faults (MBUS_HIL_DEVICE is set)")


def need_own_receiver() -> None:
    if not BENCH.own_receiver:
        pytest.skip("needs a receiver the suite runs itself (MBUS_HIL_ENDPOINT is set)")


def delivered(receiver: ReceiverNode, node: LoggerNode) -> list[Any]:
    """The readings the receiver stored for a logger, in arrival order."""
    return receiver.snapshot(readings=True).for_device(node.application_uri)


def wait_delivered(
    receiver: ReceiverNode, node: LoggerNode, upto: int, timeout: float = 60.0
) -> list[Any]:
    """Wait until the receiver holds readings 1..``upto`` of the logger's epoch."""
    epoch = node.buffer_stats()["epoch"]

    def complete() -> list[Any] | None:
        got = delivered(receiver, node)
        seqs = {r.sequence for r in got if r.epoch == epoch}
        return got if seqs.issuperset(range(1, upto + 1)) else None

    result: list[Any] = wait_until(
        f"the receiver to hold readings 1..{upto} of {node.serial}", complete, timeout, 0.5
    )
    return result


def assert_exactly_once(readings: list[Any], epoch: str, upto: int) -> None:
    """Every sequence number 1..upto of the epoch stored once; arrival order = sequence order."""
    mine = [r for r in readings if r.epoch == epoch]
    counts = Counter(r.sequence for r in mine)
    duplicates = {s: n for s, n in counts.items() if n > 1}
    assert not duplicates, f"stored more than once: {sorted(duplicates)[:10]}"
    missing = set(range(1, upto + 1)) - set(counts)
    assert not missing, f"never stored: {sorted(missing)[:10]} ({len(missing)} in all)"
    arrival = [r.sequence for r in mine]
    assert arrival == sorted(arrival), "readings of one epoch arrived out of order"


def assert_buffer_consistent(node: LoggerNode, epoch: str) -> list[dict[str, Any]]:
    """The buffer kept its epoch; pending readings have strictly increasing sequence numbers;
    nothing was lost by the buffer policy."""
    stats = node.buffer_stats()
    assert stats["epoch"] == epoch, "the buffer got a new epoch (database recreated)"
    assert stats["lost_total"] == 0, f"readings lost: {stats['losses']}"
    pending = node.buffered()
    seqs = [r["seq"] for r in pending]
    assert seqs == sorted(set(seqs)), "buffered sequence numbers repeat or go backwards"
    return pending


def taken(stack: Stack, node: LoggerNode) -> list[dict[str, Any]]:
    """Every reading of the current epoch taken so far, as dicts (seq, meter, key, value,
    logger_time): what the receiver stored plus what is still buffered. Call it with the daemon
    stopped: while it runs, a reading may move from the buffer to the receiver in between."""
    assert not node.alive, "stop the logger first for a stable view"
    epoch = node.buffer_stats()["epoch"]
    rows = {r["seq"]: r for r in node.buffered()}
    for r in delivered(stack.receiver, node):
        if r.epoch == epoch:
            rows.setdefault(
                r.sequence,
                {
                    "seq": r.sequence,
                    "meter": r.meter,
                    "key": r.record,
                    "value": r.value,
                    "logger_time": r.logger_time.isoformat(),
                },
            )
    return [rows[k] for k in sorted(rows)]


def last_meter_state(node: LoggerNode, meter: str) -> dict[str, Any]:
    status = node.status() or {}
    for entry in status.get("meters", []):
        if entry["meter"] == meter:
            result: dict[str, Any] = entry
            return result
    raise AssertionError(f"meter {meter} is not in the status file")


def uplink_connection(node: LoggerNode) -> dict[str, Any]:
    """The uplink's connection state from the daemon's status file ({} when absent)."""
    services = (node.status() or {}).get("services") or {}
    connection = (services.get("uplink") or {}).get("connection") or {}
    result: dict[str, Any] = dict(connection)
    result["connected"] = str(connection.get("state", "")).startswith("connected")
    return result


def wait_ticks(node: LoggerNode, ticks: int, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the running daemon has finished ``ticks`` more ticks."""
    start = (node.status() or {}).get("ticks", 0)
    result: dict[str, Any] = wait_until(
        f"{ticks} more ticks of logger {node.serial}",
        lambda: (s := node.status()) and s.get("ticks", 0) >= start + ticks and s,
        timeout,
        0.2,
    )
    return result


# --- normal operation ----------------------------------------------------------------------------


def test_normal_operation_every_meter_into_the_buffer(stack: Stack) -> None:
    """All meters (the multi-telegram ones whole) are read each tick into one commit, with the
    values the meters served, exact."""
    node = stack.logger
    wait_ticks(node, 2)
    status = node.status()
    assert status is not None
    assert {m["meter"]: m["state"] for m in status["meters"]} == {
        m.id: "up" for m in stack.meters.specs
    }
    assert_buffer_consistent(node, node.buffer_stats()["epoch"])
    node.stop()
    pending = taken(stack, node)
    assert [r["seq"] for r in pending] == list(range(1, len(pending) + 1))
    by_tick: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for reading in pending:
        by_tick[(reading["meter"], reading["logger_time"])].append(reading)
    per_meter: dict[str, set[int]] = defaultdict(set)
    for (meter, _tick), readings in by_tick.items():
        per_meter[meter].add(len(readings))
    assert set(per_meter) == {m.id for m in stack.meters.specs}
    # One read-out = one fixed record count: a multi-telegram meter is never stored in part.
    assert all(len(counts) == 1 for counts in per_meter.values()), per_meter
    if not BENCH.simulated_meters:
        return
    assert per_meter["multi"] == {6}  # 3 telegrams x 2 records
    assert len(stack.meters.line.meter(9).expected_frames()) == 5
    assert per_meter["abb-a41"] == {97}
    # The synthetic meters' values as served (raw integers) equal the stored exact decimals.
    served = [s for s in stack.meters.line.served if s["address"] == 2 and s["values"]]
    stored = {Decimal(r["value"]) for r in pending if r["meter"] == "water" and r["key"] == "0C13"}
    served_m3 = {Decimal(s["values"]["volume_l"]) / 1000 for s in served}
    assert stored and stored <= served_m3, (stored, served_m3)
    modbus = {r["key"]: r["value"] for r in pending if r["meter"] == "main-supply"}
    assert "import_active_energy" in modbus and "." in modbus["import_active_energy"]


def test_normal_operation_end_to_end(stack: Stack) -> None:
    """Readings reach the receiver over SignAndEncrypt with the TPM key, exactly once and in
    order; the receiver knows the logger by its certificate and where it is installed."""
    node = stack.logger
    upto = node.wait_readings(200)
    got = wait_delivered(stack.receiver, node, upto)
    assert_exactly_once(got, node.buffer_stats()["epoch"], upto)
    snap = stack.receiver.snapshot(readings=False)
    device = next(d for d in snap.devices if d.application_uri == node.application_uri)
    assert device.serial == node.serial
    assert device.location and node.serial in device.location
    latest = {v.meter for v in snap.latest if v.device_uri == node.application_uri}
    assert latest == {m.id for m in stack.meters.specs}


# --- receiver outage -----------------------------------------------------------------------------


def test_receiver_outage_and_recovery(stack: Stack) -> None:
    """The receiver goes away for a while: the logger keeps buffering; when it is back the
    backlog arrives, exactly once and in order, while live readings keep coming."""
    need_own_receiver()
    node, receiver = stack.logger, stack.receiver
    first = node.wait_readings(100)
    wait_delivered(receiver, node, first)
    receiver.stop()
    during = node.committed()
    wait_ticks(node, 3)
    stats = node.buffer_stats()
    grown = int(stats["next_seq"]) - 1 - during
    assert grown > 0, "nothing was taken during the outage"
    assert stats["depth"] >= grown, "readings taken during the outage left the buffer"
    assert node.alive
    receiver.start()
    target = node.committed() + 100  # the backlog and live readings after the restart
    node.wait_readings(target)
    got = wait_delivered(receiver, node, target, timeout=90)
    assert_exactly_once(got, stats["epoch"], target)


# --- kill -9 storm -------------------------------------------------------------------------------


def _kills() -> int:
    return int(os.environ.get("MBUS_HIL_KILLS", 30))


def test_kill9_storm(stack: Stack) -> None:
    """SIGKILL at random moments (the logger, and the receiver when it is ours): the buffer
    keeps its epoch and its order, nothing is lost, and afterwards the receiver holds every
    committed reading exactly once."""
    seed = int(os.environ.get("MBUS_HIL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    node, receiver = stack.logger, stack.receiver
    node.wait_readings(1)
    epoch = node.buffer_stats()["epoch"]
    kill_receiver = BENCH.own_receiver
    kills = _kills()
    history: list[str] = []
    for n in range(kills):
        # A moment somewhere in a tick (polls, commit) or an upload.
        time.sleep(rng.uniform(0.0, 1.5))
        if kill_receiver and n % 2 == 1:
            receiver.kill9()
            history.append("receiver")
            receiver.start()
        else:
            node.kill9()
            history.append("logger")
            node.start()
    assert node.alive and receiver.alive
    done = node.wait_readings(node.committed() + 1)
    assert_buffer_consistent(node, epoch)
    print(f"kill -9 storm: seed {seed}, {Counter(history)}, {done} readings committed")
    got = wait_delivered(receiver, node, done, timeout=120)
    assert_exactly_once(got, epoch, done)


# --- meter faults --------------------------------------------------------------------------------


def test_meter_faults(stack: Stack) -> None:
    """A silent meter and one answering with a bad checksum go down; the others are polled as
    before; a broken multi-telegram read-out stores nothing of it; all come back."""
    need_simulated_meters()
    node = stack.logger
    wait_ticks(node, 1)
    heat_before = last_meter_state(node, "heat")["polls"]
    stack.meters.set_fault("water", silence=True)
    stack.meters.set_fault("multi", bad_checksum=True)
    wait_until(
        "water and multi to be reported down",
        lambda: (
            last_meter_state(node, "water")["state"] == "down"
            and last_meter_state(node, "multi")["state"] == "down"
        ),
        60.0,
        0.2,
    )
    status = wait_ticks(node, 1)
    water = last_meter_state(node, "water")
    assert water["last_error"], "a down meter must say why"
    for meter in ("heat", "abb-a41", "main-supply"):
        assert last_meter_state(node, meter)["state"] == "up", meter
    assert last_meter_state(node, "heat")["polls"] >= heat_before + 2
    assert status["last_poll"]["meters_ok"] == len(stack.meters.specs) - 2
    stack.meters.set_fault("water")
    stack.meters.set_fault("multi")
    wait_until(
        "water and multi to come back",
        lambda: (
            last_meter_state(node, "water")["state"] == "up"
            and last_meter_state(node, "multi")["state"] == "up"
        ),
        60.0,
        0.2,
    )
    assert_buffer_consistent(node, node.buffer_stats()["epoch"])
    node.stop()
    multi_ticks = Counter(r["logger_time"] for r in taken(stack, node) if r["meter"] == "multi")
    assert multi_ticks
    assert set(multi_ticks.values()) == {6}, "a part of a failed multi-telegram read-out was kept"
    log = node.log_path.read_text(encoding="utf-8", errors="replace")
    assert log.count("water") >= 2, "going down and coming back are logged"


# --- revocation ----------------------------------------------------------------------------------


def test_revocation(stack: Stack) -> None:
    """A revoked logger is refused within one CRL refresh of the receiver and keeps
    buffering; the refusal is in the receiver's audit log."""
    need_own_receiver()
    node, receiver = stack.logger, stack.receiver
    first = node.uplink_check()
    assert first.returncode == 0, first.stderr
    thumbprint = json.loads(first.stdout).get("client_thumbprint")
    stack.provisioning.json(
        "device", "revoke", "--serial", node.serial, "--reason", "key-compromise"
    )
    revoked_at = time.monotonic()
    # The receiver re-reads its CRL within 30 s (CLI.md); the check itself takes < 40 s.
    wait_until(
        "the revoked logger to be refused",
        lambda: node.uplink_check().returncode == 4,
        45.0,
        1.0,
    )
    refused_after = time.monotonic() - revoked_at
    assert refused_after < 40.0
    events = [e for e in receiver.audit_events() if e.device_uri == node.application_uri]
    assert any("revoked" in (e.event + e.detail).lower() for e in events), [
        (e.event, e.detail) for e in events
    ]
    if thumbprint:
        assert any(e.thumbprint == thumbprint for e in events)
    before = node.committed()
    wait_ticks(node, 2)
    assert node.alive and node.committed() > before, "the logger stopped buffering"
    # The running daemon's own channel is refused too, and nothing more is stored.
    wait_until(
        "the running logger's uplink to report the refusal",
        lambda: (c := uplink_connection(node)).get("error_kind") and not c.get("connected"),
        40.0,
        0.5,
    )
    stored = max((r.sequence for r in delivered(receiver, node)), default=0)
    taken_before = node.committed()
    wait_ticks(node, 2)
    assert node.committed() > taken_before
    assert max((r.sequence for r in delivered(receiver, node)), default=0) == stored
    assert node.buffer_stats()["depth"] >= node.committed() - stored


# --- short-lived certificate ---------------------------------------------------------------------


class _Webhook(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.event = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    outer.posts.append(json.loads(body))
                except ValueError:
                    outer.posts.append({"raw": body.decode(errors="replace")})
                outer.event.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/reminders"


def test_short_lived_certificate(stack_factory: Any) -> None:
    """A certificate with 30 days left: the reminder fires (once), renewal puts a new TPM key
    and certificate in place under the same identity, and no reading is lost."""
    stack: Stack = stack_factory(cert_days=30)
    node = stack.logger
    node.wait_readings(1)
    epoch = node.buffer_stats()["epoch"]
    old = stack.provisioning.json("registry", "list")
    old_thumb = next(d["thumbprint"] for d in old if d["serial"] == node.serial)

    hook = _Webhook()
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        stack.provisioning.run("remind", "--webhook", hook.url)
        assert hook.event.wait(10.0), "no reminder was sent for a certificate expiring in 30 days"
        text = json.dumps(hook.posts)
        assert node.serial in text and old_thumb.lower() in text.lower()
        sent = len(hook.posts)
        stack.provisioning.run("remind", "--webhook", hook.url)  # the same threshold: once
        assert len(hook.posts) == sent, "the reminder fired twice for one threshold"
    finally:
        hook.shutdown()
        hook.server_close()

    committed = node.committed()
    node.stop()
    node.renew(stack.provisioning)
    node.start()
    new = stack.provisioning.json("registry", "list")
    entry = next(d for d in new if d["serial"] == node.serial and d["thumbprint"] != old_thumb)
    assert entry["thumbprint"] != old_thumb
    shown = json.loads(
        node.cli("cert", "show", "--state-dir", str(node.state_dir), "--format", "json").stdout
    )
    assert json.dumps(shown).lower().count(old_thumb.lower()) == 0, "the old certificate is used"
    node.wait_readings(committed + 1)
    assert_buffer_consistent(node, epoch)
    check = node.uplink_check()
    assert check.returncode == 0, check.stderr
    upto = node.wait_readings(node.committed() + 1)
    got = wait_delivered(stack.receiver, node, upto)
    assert_exactly_once(got, epoch, upto)
    device = next(
        d
        for d in stack.receiver.snapshot(readings=False).devices
        if d.application_uri == node.application_uri
    )
    assert device.thumbprint and device.thumbprint.lower() == entry["thumbprint"].lower()


# --- a logger of the wrong organization ----------------------------------------------------------


def test_logger_of_the_wrong_organization(stack: Stack) -> None:
    """A logger with a valid certificate of another organization is refused by this
    organization's receiver (audited), buffers on, and none of its data lands there; its own
    organization's receiver then gets all of it."""
    need_own_receiver()
    stack.add_org("globex")
    stranger = stack.add_logger("SN-0666", org="globex")
    stranger.wait_readings(1)
    # Its own trust list has only its organization's CA: it refuses the receiver first.
    check = stranger.uplink_check()
    assert check.returncode == 4, (check.returncode, check.stdout, check.stderr)
    # Even if it trusted this receiver (copied CA files: misconfiguration or an attacker),
    # the receiver refuses it on its own and audits the refusal.
    for sub in ("trust", "crl"):
        for pem in (stack.receiver.dir / sub).glob("*.pem"):
            shutil.copy(pem, stranger.state_dir / sub / pem.name)
    check = stranger.uplink_check()
    assert check.returncode == 4, (check.returncode, check.stdout, check.stderr)
    refusals = wait_until(
        "the refusal in the receiver's audit log",
        lambda: [
            e for e in stack.receiver.audit_events() if e.device_uri == stranger.application_uri
        ],
        15.0,
        0.5,
    )
    assert any("organization" in (e.event + e.detail) for e in refusals), [
        (e.event, e.detail) for e in refusals
    ]
    before = stranger.committed()
    wait_ticks(stranger, 2)
    assert stranger.alive and stranger.committed() > before
    wait_delivered(stack.receiver, stack.logger, stack.logger.wait_readings(50))
    snap = stack.receiver.snapshot(readings=True)
    assert not snap.for_device(stranger.application_uri)
    assert stranger.application_uri not in {d.application_uri for d in snap.devices}
    # Pointed at its own organization's receiver, it delivers everything it buffered
    # while refused, exactly once - and still nothing of it at the other organization.
    own = stack.add_receiver("globex")
    stranger.stop()
    epoch = stranger.buffer_stats()["epoch"]
    stranger.write_config(
        stack.meters.specs,
        stack.meters.device,
        stack.meters.baudrate,
        own.endpoint,
        own.application_uri,
    )
    stranger.start()
    upto = stranger.wait_readings(stranger.committed() + 1)
    got = wait_delivered(own, stranger, upto)
    assert_exactly_once(got, epoch, upto)
    assert not stack.receiver.snapshot(readings=True).for_device(stranger.application_uri)


# --- a bad configuration from the cloud ----------------------------------------------------------


def test_bad_configuration_from_the_cloud(stack: Stack, tmp_path: Path) -> None:
    """A valid cloud layer is applied within one configuration poll; an invalid one is
    refused, the last good one stays in force, and no buffered reading is lost."""
    need_own_receiver()
    node, receiver = stack.logger, stack.receiver
    node.wait_readings(1)
    epoch = node.buffer_stats()["epoch"]
    # The first M-Bus meter and the Modbus meter: the cloud drops the others.
    keep = [
        next(m for m in stack.meters.specs if m.kind == "mbus"),
        next(m for m in stack.meters.specs if m.kind != "mbus"),
    ]
    kept = {m.id for m in keep}
    good = {
        "default_interval": stack.settings.interval,
        "meters": [m.as_config() for m in keep],
    }
    good_file = tmp_path / "good.json"
    good_file.write_text(json.dumps(good))
    receiver.cli("config", "set", "--device", node.application_uri, str(good_file))
    wait_until(
        "the logger to run cloud layer 1",
        lambda: str((node.status() or {}).get("cloud_version")) == "1",
        45.0,
        0.5,
    )
    status = wait_ticks(node, 1)
    assert {m["meter"] for m in status["meters"]} == kept

    bad = dict(
        good,
        meters=[
            *good["meters"],
            {"id": "ghost", "kind": "mbus", "bus": "mbus9", "primary_address": 7},
        ],
    )
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad))
    receiver.cli("config", "set", "--device", node.application_uri, str(bad_file))
    wait_until(
        "the logger to refuse cloud layer 2",
        lambda: "mbus9" in node.log_path.read_text(encoding="utf-8", errors="replace"),
        45.0,
        0.5,
    )
    status = wait_ticks(node, 2)
    assert str(status.get("cloud_version")) == "1", "the invalid layer replaced the good one"
    assert {m["meter"] for m in status["meters"]} == kept
    assert node.alive
    assert node.buffer_stats()["epoch"] == epoch and node.buffer_stats()["lost_total"] == 0


def test_stack_fails_loudly_and_cleans_up(tmp_path: Path) -> None:
    """A part that cannot start names itself and its log, and nothing is left running."""
    stack = Stack(tmp_path / "bad", bench=BENCH)
    stack.settings = type(stack.settings)(interval="7s")  # does not divide a day
    with pytest.raises(StackError, match="logger SN-0001 exited with code 2"):
        stack.start()
    assert not _leftovers(stack)
