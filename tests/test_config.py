"""The configuration: the example file, every problem with its line, the cloud layer, the
wall-clock schedule."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logger.config import (
    PROFILES,
    BusKind,
    CloudLayerStore,
    ConfigError,
    MeterKind,
    RegisterType,
    WordOrder,
    apply_cloud_layer,
    load,
    next_due,
    parse_duration,
    parse_size,
)
from logger.config.lines import key_lines
from logger.store.api import BufferPolicy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "config" / "logger.example.toml"
CASES = Path(__file__).parent / "data" / "config"


def test_the_example_config_loads() -> None:
    config = load(EXAMPLE)
    assert config.installation.timezone == "Europe/Berlin"
    assert [b.name for b in config.buses] == ["mbus0", "rs485"]
    assert config.bus("mbus0").kind is BusKind.MBUS and config.bus("mbus0").quirks.get("echo")
    assert config.buffer.policy is BufferPolicy.DROP_OLDEST
    assert config.buffer.max_bytes == 256 * 1024 * 1024
    assert config.uplink is not None and config.uplink.key_handle == 0x81000001
    kinds = {m.id: m.kind for m in config.meters}
    assert kinds["heat-main"] is MeterKind.MBUS and kinds["pv-inverter"] is MeterKind.MODBUS_TCP
    assert config.meter("heat-flat-3").quirks.get("pause_after_nke") == 20.0
    assert config.meter("cold-water").secondary_address == "876543212C2D0107"
    assert config.meter("heat-flat-3").secondary_address == "12345678FFFFFFFF"  # wildcards
    assert config.meter("main-supply").interval_s == 300
    assert config.meter("heat-main").interval_s == 900
    pv = config.meter("pv-inverter")
    assert (pv.host, pv.port) == ("192.168.10.20", 502)
    assert pv.registers[2].scale == Decimal("0.01")  # a TOML float kept exact
    assert config.meter("main-supply").registers == PROFILES["eastron_sdm630"]


def test_the_minimal_config_has_sane_defaults() -> None:
    config = load(CASES / "minimal.toml")
    assert config.uplink is None
    assert config.default_interval_s == 900
    assert config.paths.database == Path("/tmp/mbus-logger-minimal/buffer.db")
    bus = config.bus("mbus0")
    assert (bus.baud_rate, bus.parity, bus.timeout_s, bus.retries) == (2400, "E", None, 3)


@pytest.mark.parametrize("case", ["many_problems.toml", "inline_registers.toml"])
def test_every_problem_is_reported_with_its_line(case: str) -> None:
    path = CASES / case
    expected = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = re.search(r"# ERROR: (.+)$", line)
        if m:
            expected[number] = m.group(1)
    with pytest.raises(ConfigError) as info:
        load(path)
    got: dict[int, list[str]] = {}
    for problem in info.value.problems:
        m = re.match(rf"^{re.escape(str(path))}:(\d+)$", problem.where)
        assert m, f"problem without a line: {problem}"
        got.setdefault(int(m.group(1)), []).append(str(problem))
    for number, text in expected.items():
        assert any(text in p for p in got.get(number, [])), (number, text, got.get(number))
    assert set(got) == set(expected), {n: got[n] for n in set(got) - set(expected)}


def test_a_toml_syntax_error_names_its_line() -> None:
    with pytest.raises(ConfigError) as info:
        load(CASES / "not_toml.toml")
    (problem,) = info.value.problems
    assert problem.where.endswith("not_toml.toml:3") and "not valid TOML" in problem.message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.toml")


def test_key_lines_follow_tables_arrays_and_multiline_values() -> None:
    text = (
        'a = """one\ntwo"""\n'  # 1-2
        "[t]\n"  # 3
        "x = [\n  1,\n  2,\n]\n"  # 4-7
        "'quoted.key' = 1\n"  # 8
        "[[t.rows]]\n"  # 9
        "n = 1\n"  # 10
        "[[t.rows]]\n"  # 11
        "n = 2  # [not a header]\n"  # 12
        "[u]\n"  # 13
        "y.z = 'w'\n"  # 14
    )
    lines = key_lines(text)
    assert lines[("a",)] == 1
    assert lines[("t", "x")] == 4
    assert lines[("t", "quoted.key")] == 8
    assert lines[("t", "rows", 0, "n")] == 10
    assert lines[("t", "rows", 1, "n")] == 12
    assert lines[("u", "y", "z")] == 14


def test_profiles_have_the_manufacturers_addresses() -> None:
    sdm630 = {r.name: r for r in PROFILES["eastron_sdm630"]}
    assert sdm630["total_active_energy"].address == 0x0156
    assert sdm630["import_active_energy"].type is RegisterType.FLOAT32
    abb = {r.name: r for r in PROFILES["abb_b23"]}
    assert (abb["import_active_energy"].address, abb["import_active_energy"].type) == (
        0x5000,
        RegisterType.UINT64,
    )
    em24 = {r.name: r for r in PROFILES["carlo_gavazzi_em24"]}
    assert em24["import_active_energy"].word_order is WordOrder.LITTLE
    for name, regs in PROFILES.items():
        assert len({r.name for r in regs}) == len(regs), name


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("1h30m", 5400), ("500ms", 0.5), (30, 30), ("400d", 400 * 86400)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("256 MiB", 256 * 2**20), ("64MB", 64 * 10**6), ("512k", 512000), (4096, 4096)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["15", "m", "1x", "-1s", True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


# --- cloud layer ----------------------------------------------------------------------------

LAYER = {
    "version": 7,
    "default_interval": "1h",
    "meters": [
        {
            "id": "heat-main",
            "kind": "mbus",
            "bus": "mbus0",
            "primary_address": 1,
            "interval": "15m",
        },
        {
            "id": "sub-meter",
            "kind": "modbus_rtu",
            "bus": "rs485",
            "unit_id": 9,
            "profile": "eastron_sdm120",
            "registers": [
                {
                    "name": "frequency",
                    "address": 70,
                    "function": "input",
                    "type": "float32",
                    "unit": "Hz",
                }
            ],
        },
    ],
}


def test_cloud_layer_replaces_meters_and_intervals_only() -> None:
    base = load(EXAMPLE)
    merged = apply_cloud_layer(base, LAYER)
    assert merged.cloud_version == "7"
    assert [m.id for m in merged.meters] == ["heat-main", "sub-meter"]
    assert merged.default_interval_s == 3600
    assert merged.meter("sub-meter").interval_s == 3600
    assert merged.meter("heat-main").interval_s == 900
    assert len(merged.meter("sub-meter").registers) == len(PROFILES["eastron_sdm120"])
    assert (merged.buses, merged.uplink, merged.paths, merged.buffer, merged.installation) == (
        base.buses,
        base.uplink,
        base.paths,
        base.buffer,
        base.installation,
    )


@pytest.mark.parametrize(
    "forbidden", ["uplink", "buses", "paths", "buffer", "installation", "trust_dir", "security"]
)
def test_cloud_layer_cannot_touch_device_settings(forbidden: str) -> None:
    layer = {**LAYER, forbidden: {"endpoint": "opc.tcp://evil.example:4840"}}
    with pytest.raises(ConfigError) as info:
        apply_cloud_layer(load(EXAMPLE), layer)
    assert any(
        f"/{forbidden}" in p.where and "belongs to the local file" in p.message
        for p in info.value.problems
    )


def test_invalid_cloud_layer_lists_every_reason_with_its_pointer() -> None:
    layer = {
        "version": 8,
        "meters": [
            {"id": "a", "kind": "mbus", "bus": "nope", "primary_address": 1},
            {
                "id": "b",
                "kind": "modbus_tcp",
                "host": "h",
                "registers": [{"name": "x", "address": 1, "type": "float16"}],
            },
            {"id": "c", "kind": "mbus", "bus": "rs485", "primary_address": 2},
        ],
    }
    with pytest.raises(ConfigError) as info:
        apply_cloud_layer(load(EXAMPLE), layer)
    wheres = sorted(p.where for p in info.value.problems)
    assert wheres == [
        "cloud layer v8 /meters/0/bus",
        "cloud layer v8 /meters/1/registers/0/type",
        "cloud layer v8 /meters/2/bus",
    ]


def test_cloud_layer_store_keeps_the_last_good_one(tmp_path: Path) -> None:
    base = load(EXAMPLE)
    store = CloudLayerStore(tmp_path / "state" / "cloud-layer.json")
    assert store.load(base) == base  # nothing received yet
    merged = store.offer(base, LAYER)
    assert store.load(base) == merged
    saved = store.path.read_bytes()
    bad = {**LAYER, "version": 9, "meters": [{"id": "x", "kind": "mbus"}]}
    with pytest.raises(ConfigError):
        store.offer(base, bad)
    assert store.path.read_bytes() == saved
    assert store.load(base).cloud_version == "7"
    # saved private (0600) and durably, with no temporary file left next to it
    assert [p.name for p in store.path.parent.iterdir()] == ["cloud-layer.json"]
    assert store.path.stat().st_mode & 0o777 == 0o600


def test_saved_layer_that_no_longer_fits_the_file_is_not_applied(tmp_path: Path) -> None:
    store = CloudLayerStore(tmp_path / "cloud-layer.json")
    store.path.write_text(json.dumps(LAYER))
    smaller = load(CASES / "minimal.toml")  # has no bus "rs485"
    assert store.load(smaller) == smaller


# --- schedule -------------------------------------------------------------------------------


def test_quarter_hours_align_to_the_wall_clock() -> None:
    t = datetime(2026, 5, 4, 10, 7, 31, tzinfo=UTC)
    assert next_due(t, 900) == datetime(2026, 5, 4, 10, 15, tzinfo=UTC)
    assert next_due(datetime(2026, 5, 4, 10, 15, tzinfo=UTC), 900) == datetime(
        2026, 5, 4, 10, 30, tzinfo=UTC
    )
    assert next_due(t, 900, offset_s=30) == datetime(2026, 5, 4, 10, 15, 30, tzinfo=UTC)
    berlin = ZoneInfo("Europe/Berlin")
    assert next_due(t, 86400, tz=berlin) == datetime(2026, 5, 4, 22, 0, tzinfo=UTC)
    kathmandu = ZoneInfo("Asia/Kathmandu")  # UTC+5:45: local :00 is UTC :15
    assert next_due(t, 3600, tz=kathmandu) == datetime(2026, 5, 4, 10, 15, tzinfo=UTC)


INTERVALS = [i for i in range(1, 86401) if 86400 % i == 0]


@given(
    after=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    interval=st.sampled_from(INTERVALS),
    data=st.data(),
    zone=st.sampled_from(
        ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe"]
    ),
)
def test_next_due_is_the_next_aligned_slot(
    after: datetime, interval: int, data: st.DataObject, zone: str
) -> None:
    offset = data.draw(st.integers(0, interval - 1))
    tz = ZoneInfo(zone)
    due = next_due(after, interval, offset, tz)
    assert due > after
    # Aligned on the local grid (whole seconds since local midnight, minus the offset).
    local = due.astimezone(tz)
    since_midnight = local.hour * 3600 + local.minute * 60 + local.second
    if (
        local.dst() == (local + timedelta(hours=3)).dst()
        and local.dst() == (local - timedelta(hours=3)).dst()
    ):
        assert (since_midnight - offset) % interval == 0
        assert due.microsecond == 0
        # Nothing aligned was skipped: the slot one interval earlier is not after "after".
        assert due - timedelta(seconds=interval) <= after


def test_mbus_quirks_are_the_bus_layer_s_names() -> None:
    """What the config accepts, the M-Bus master takes (logger.bus.quirks)."""
    from logger.bus.quirks import Quirks as BusQuirks

    config = load(EXAMPLE)
    for meter in config.meters:
        if meter.kind is MeterKind.MBUS:
            assert meter.bus is not None
            merged = config.bus(meter.bus).quirks.merged(meter.quirks)
            BusQuirks.from_mapping(dict(merged.values))
    every = {
        "echo": True,
        "pause_after_nke": 20.0,
        "no_reset": True,
        "max_telegrams": 4,
        "retries": 2,
        "timeout": 1.5,
        "fallback_baudrate": 300,
        "any_address": True,
    }
    BusQuirks.from_mapping(every)
    from logger.config import QUIRKS

    assert set(QUIRKS["mbus"]) == set(every)


def test_meters_round_trip_through_a_cloud_layer() -> None:
    from logger.config import meters_layer, to_data

    config = load(EXAMPLE)
    layer = json.loads(json.dumps(meters_layer(config, 3)))  # as it travels
    again = apply_cloud_layer(config, layer)
    assert again.meters == config.meters
    assert again.cloud_version == "3"
    doc = json.loads(json.dumps(to_data(config)))
    assert doc["meters"][0]["id"] == "heat-main"
    assert doc["buffer"]["policy"] == "drop_oldest"
    assert doc["meters"][-1]["registers"][2]["scale"] == "0.01"


@pytest.mark.parametrize(
    ("host", "port", "expect"),
    [
        ("10.0.0.9", None, ("10.0.0.9", 502)),
        ("10.0.0.9:1502", None, ("10.0.0.9", 1502)),
        ("gw.example", 5020, ("gw.example", 5020)),
        ("[fd00::7]:1502", None, ("fd00::7", 1502)),
        ("fd00::7", None, ("fd00::7", 502)),
        ("10.0.0.9:502", 502, "given twice"),
        ("10.0.0.9:99999", None, "port 1..65535"),
    ],
)
def test_modbus_tcp_host_and_port(host: str, port: int | None, expect: object) -> None:
    meter: dict[str, object] = {
        "id": "m",
        "kind": "modbus_tcp",
        "host": host,
        "profile": "eastron_sdm120",
    }
    if port is not None:
        meter["port"] = port
    base = load(CASES / "minimal.toml")
    if isinstance(expect, tuple):
        got = apply_cloud_layer(base, {"version": 1, "meters": [meter]}).meters[0]
        assert (got.host, got.port) == expect
    else:
        with pytest.raises(ConfigError, match=str(expect)):
            apply_cloud_layer(base, {"version": 1, "meters": [meter]})
